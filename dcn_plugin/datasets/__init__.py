"""The embedded demo dataset (a deterministic generator of deformed shapes on clutter, COCO format)
and the dataset checks the tools run."""
from .checks import (
                     DatasetError,
                     DatasetWarning,
                     check_dataset,
                     checked_dataloader_builder,
                     count_annotations,
                     diagnose_dataset_cfg,
)
from .demo_shapes import (
                          DEMO_CLASSES,
                          DEMO_SPLITS,
                          GENERATOR_VERSION,
                          MAX_IMAGE_SIZE,
                          MIN_IMAGE_SIZE,
                          check_demo_arguments,
                          demo_dataset_exists,
                          generate_demo_dataset,
                          generate_split,
                          render_image,
)

__all__ = ['DatasetError', 'DatasetWarning', 'check_dataset', 'checked_dataloader_builder', 'count_annotations',
           'diagnose_dataset_cfg', 'DEMO_CLASSES',
           'DEMO_SPLITS', 'GENERATOR_VERSION', 'MAX_IMAGE_SIZE', 'MIN_IMAGE_SIZE', 'check_demo_arguments',
           'demo_dataset_exists', 'generate_demo_dataset', 'generate_split',
           'render_image']
