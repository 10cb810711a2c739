"""Library side of the tools: config loading, runner setup, metrics saving, offset visualisation.

Importing it allow-lists the types mmengine / mmdet checkpoints carry for safe
(``weights_only=True``) loading.
"""
from .runner import (build_runner, default_work_dir, load_config, save_metrics, set_data_root,
                     setup_distributed, setup_test_cfg, setup_train_cfg, teardown_distributed)

__all__ = ['build_runner', 'default_work_dir', 'load_config', 'save_metrics', 'set_data_root',
           'setup_distributed', 'setup_test_cfg', 'setup_train_cfg', 'teardown_distributed']
