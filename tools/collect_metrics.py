"""Summarise several runs: ``python tools/collect_metrics.py RUN [RUN ...] [--metrics ...] [--out FILE]``.

Each RUN is a work dir holding ``test_metrics.json`` (``tools/test.py ... --work-dir RUN``) and, when it
also trained there, its training log. Runs tested with the same config form one arm; the output is a
Markdown table of each arm's mean ± sample standard deviation (min–max) over its runs (seeds), the
training speed, and one row per run (``--brief``: one line of metrics per run). ``--baseline ARM`` adds a
table of every other arm against that one on the first metric: the difference of the means, its standard
error and Welch's t-test (``--paired``: a paired t-test over the seeds both arms ran). The work lives in
:mod:`dcn_plugin.apis.study`.
"""
import argparse
import json
import os.path as osp
import sys
from dataclasses import asdict

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a fresh clone too

from dcn_plugin.apis.study import (  # noqa: E402
    DEFAULT_METRICS,
    compare_arms,
    format_brief,
    format_comparison,
    format_markdown,
    load_run,
    summarize_runs,
)


def _folder_arm(path: str) -> str:
    """The name of the folder that holds the run's work dir."""
    work_dir = osp.dirname(path) if path.endswith('.json') else path
    return osp.basename(osp.dirname(osp.abspath(work_dir)))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Mean and spread of test metrics per config over several runs')
    parser.add_argument('runs', nargs='+', help='work dirs (or their test_metrics.json)')
    parser.add_argument('--metrics', nargs='+', default=list(DEFAULT_METRICS),
                        help=f'keys of test_metrics.json to summarise (default: {" ".join(DEFAULT_METRICS)})')
    parser.add_argument('--out', help='also write the Markdown tables to this file')
    parser.add_argument('--json', help='also write the runs and the summaries as JSON to this file')
    parser.add_argument('--arm-from', choices=('config', 'dir'), default='config',
                        help="what names a run's arm: the config it was tested with (default), or the folder "
                             'that holds the run folder (OUT/<arm>/seed<S>, as tools/mimic_study.sh lays out '
                             'its runs and ablations)')
    parser.add_argument('--brief', action='store_true', help='print one line of metrics per run instead of the tables')
    parser.add_argument('--baseline', metavar='ARM',
                        help='also compare every other arm with this one on the first metric (Welch\'s t-test)')
    parser.add_argument('--paired', action='store_true',
                        help='with --baseline: compare run by run over the seeds both arms ran (paired t-test)')
    args = parser.parse_args(argv)
    if args.baseline is not None and args.brief:
        parser.error('--baseline compares arms; it does not go with --brief')
    if args.paired and args.baseline is None:
        parser.error('--paired needs --baseline ARM')
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    runs = [load_run(path, arm=_folder_arm(path) if args.arm_from == 'dir' else None) for path in args.runs]
    # the brief lines show a metric a run lacks as nan; the statistics need it in every run
    summaries = summarize_runs(runs, args.metrics) if not args.brief or args.json else []
    text = format_brief(runs, args.metrics) if args.brief else format_markdown(summaries, args.metrics)
    if args.baseline is not None:
        try:
            comparisons = compare_arms(summaries, args.baseline, args.metrics[0], paired=args.paired)
        except KeyError as e:
            raise SystemExit(f'collect_metrics.py: --baseline: {e.args[0]}')
        text += '\n' + format_comparison(comparisons)
    print(text, end='')
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump([asdict(s) for s in summaries], f, indent=2)
    return text


if __name__ == '__main__':
    main()
