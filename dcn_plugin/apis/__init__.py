"""Library side of the tools: config loading, runner setup (crash-safe checkpoints, exact resume,
checked checkpoints and datasets), metrics saving, offset visualisation."""
from .runner import (build_runner, default_work_dir, exit_on_user_error, load_config, save_metrics, set_data_root,
                     setup_distributed, setup_test_cfg, setup_train_cfg, teardown_distributed,
                     use_atomic_checkpoints)

__all__ = ['build_runner', 'default_work_dir', 'exit_on_user_error', 'load_config', 'save_metrics', 'set_data_root',
           'setup_distributed', 'setup_test_cfg', 'setup_train_cfg', 'teardown_distributed', 'use_atomic_checkpoints']
