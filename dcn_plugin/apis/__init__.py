"""Library side of the tools: config loading, runner setup (crash-safe checkpoints, exact resume,
checked checkpoints and datasets), metrics saving and collecting."""
from .runner import (
    add_checkpoint_arguments,
    build_runner,
    default_work_dir,
    exit_on_user_error,
    load_config,
    parse_tool_args,
    save_metrics,
    set_data_root,
    setup_distributed,
    setup_test_cfg,
    setup_train_cfg,
    teardown_distributed,
)
from .study import format_brief, format_markdown, load_run, summarize_runs

__all__ = ['add_checkpoint_arguments',
           'build_runner', 'default_work_dir', 'exit_on_user_error', 'load_config', 'parse_tool_args', 'save_metrics',
           'set_data_root', 'setup_distributed', 'setup_test_cfg', 'setup_train_cfg', 'teardown_distributed',
           'load_run', 'summarize_runs', 'format_markdown', 'format_brief']
