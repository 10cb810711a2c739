"""The modes of tools/benchmark.py: op.py, model.py and roi_pool.py, each a :class:`common.Mode` with its own
options; common.py runs and measures any mode, reports.py writes the results."""
