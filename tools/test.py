"""Evaluate a checkpoint: ``python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--show-dir DIR] ...``.

Prints the COCO bbox metrics (pycocotools' table, through mmdet's CocoMetric) and saves them as
``<work dir>/test_metrics.json``. The checkpoint must fit the model exactly (otherwise the keys that
differ are listed and the exit status is 1) unless ``--allow-partial-load`` is given. A thin script
over mmengine's Runner; the work lives in :mod:`dcn_plugin.apis`.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a fresh clone too

from dcn_plugin import apis  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and evaluate) a detector')
    parser.add_argument('config', help='test config file path')
    apis.add_checkpoint_arguments(parser, 'evaluate')
    parser.add_argument('--work-dir', help='where metrics and logs go (default: work_dirs/<config name>)')
    parser.add_argument('--out', help='also dump the raw predictions to this .pkl file')
    parser.add_argument('--show', action='store_true', help='show the detections in a window')
    parser.add_argument('--show-dir', help='save drawn detections to <work dir>/<timestamp>/<show dir>')
    parser.add_argument('--wait-time', type=float, default=2, help='seconds each picture is shown (--show)')
    return apis.parse_tool_args(parser, argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        raise SystemExit('--out must name a .pkl or .pickle file')
    with apis.exit_on_user_error('test.py'):
        cfg = apis.load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
        apis.setup_test_cfg(cfg, args.checkpoint, show_dir=args.show_dir, show=args.show, wait_time=args.wait_time)
        remedy = 'To evaluate with the weights that fit anyway, pass --allow-partial-load.'
        runner = apis.build_runner(cfg, strict_load=not args.allow_partial_load, load_remedy=remedy)
        if args.out is not None:
            from mmdet.evaluation import DumpDetResults
            runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
        metrics = runner.test()
    apis.save_metrics(metrics, cfg.work_dir, checkpoint=args.checkpoint, config=args.config)
    apis.teardown_distributed()
    return metrics


if __name__ == '__main__':
    main()
