"""The embedded demo dataset: a deterministic generator of deformed shapes on clutter (COCO format)."""
from .demo_shapes import (DEMO_CLASSES, DEMO_SPLITS, GENERATOR_VERSION, demo_dataset_exists,
                          generate_demo_dataset, generate_split, render_image)

__all__ = ['DEMO_CLASSES', 'DEMO_SPLITS', 'GENERATOR_VERSION', 'demo_dataset_exists', 'generate_demo_dataset',
           'generate_split', 'render_image']
