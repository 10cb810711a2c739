"""Train a detector: ``python tools/train.py CONFIG [--work-dir DIR] [--amp] [--resume [CKPT]] ...``.

A thin script over mmengine's Runner (as mmdet's ``tools/train.py``); the work lives in
:mod:`dcn_plugin.apis`. The work dir defaults to ``work_dirs/<config name>``.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a fresh clone too

from dcn_plugin import apis  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a detector')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='where logs and checkpoints go (default: work_dirs/<config name>)')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision (needs a GPU)')
    parser.add_argument('--auto-scale-lr', action='store_true', help='scale the LR with the total batch size')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from this checkpoint, or without a path from the newest intact one in the work '
                             'dir (a truncated or corrupt newest checkpoint is skipped with a warning)')
    return apis.parse_tool_args(parser, argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    with apis.exit_on_user_error('train.py'):
        cfg = apis.load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
        apis.setup_train_cfg(cfg, amp=args.amp, resume=args.resume, auto_scale_lr=args.auto_scale_lr)
        runner = apis.build_runner(cfg)
        runner.train()
    apis.teardown_distributed()


if __name__ == '__main__':
    main()
