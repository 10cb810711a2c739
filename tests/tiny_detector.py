"""A detector small enough to train in seconds on a CPU, for the tests of the tools and of the runner
wiring: the demo DCN config on 96 px demo images, batch 2, a few iterations."""
import os
import os.path as osp
import subprocess
import sys
from typing import Dict, List, Optional

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TESTS = osp.dirname(osp.abspath(__file__))
PY = sys.executable
DEMO_DCN = osp.join(ROOT, 'configs', 'demo', 'faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_demo-shapes.py')
DEMO_PLAIN = osp.join(ROOT, 'configs', 'demo', 'faster-rcnn_r18_fpn_gn-all_demo-shapes.py')

TINY_CFG = '''
_base_ = {base!r}
data_root = {root!r}
image_size = 96
train_pipeline = {train_pipeline!r}
test_pipeline = {test_pipeline!r}
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
test_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                       dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
train_cfg = dict(max_iters=4)
model = dict(test_cfg=dict(rcnn=dict(score_thr=0.0)))  # 4 iterations: keep low scores so COCO eval has results
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=2, end=4, eta_min=1e-5),
]
default_hooks = dict(checkpoint=dict(interval=2, max_keep_ckpts=-1), logger=dict(interval=1))
'''


def write_tiny(base: str, train: int = 8, val: int = 4, seed: int = 1, plain: bool = False, extra: str = '',
               name: Optional[str] = None) -> Dict[str, str]:
    """Generate tiny demo data under ``base/data`` (once) and write a config for it.

    Returns:
        ``{'root': data root, 'cfg': config path}``.
    """
    from dcn_plugin.datasets import demo_dataset_exists, generate_demo_dataset
    root = osp.join(str(base), 'data') + '/'
    if not demo_dataset_exists(root):
        generate_demo_dataset(root, seed=seed, splits={'train': train, 'val': val}, image_size=96)
    cfg = osp.join(str(base), name or ('tiny_plain.py' if plain else 'tiny_dcn.py'))
    demo = DEMO_PLAIN if plain else DEMO_DCN
    with open(cfg, 'w') as f:
        f.write(TINY_CFG.format(base=demo, root=root, **_pipelines(demo, 96)) + extra)
    return {'root': root, 'cfg': cfg}


def _pipelines(config: str, size: int) -> Dict[str, list]:
    """The config's train and test pipelines with images resized to ``size``."""
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    out = {}
    for name in ('train_pipeline', 'test_pipeline'):
        steps = [step.to_dict() for step in cfg[name]]
        for step in steps:
            if step['type'] == 'Resize':
                step['scale'] = (size, size)
        out[name] = steps
    return out


def run(args: List[str], cwd: str = ROOT, timeout: float = 600, env: Optional[dict] = None,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run a command with one OpenMP thread by default; with ``check``, fail with its output unless it
    exits 0. ``proc.out`` holds stdout + stderr."""
    full_env = dict(os.environ, OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '1'))
    full_env.update(env or {})
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)
    proc.out = proc.stdout + proc.stderr
    if check:
        assert proc.returncode == 0, f'{args} failed ({proc.returncode}):\n{proc.out[-6000:]}'
    return proc


def load(path: str):
    """A checkpoint, through the restricted loader."""
    from dcn_plugin.utils import load_checkpoint_file
    return load_checkpoint_file(path, map_location='cpu')


def assert_same_training_state(a: dict, b: dict) -> None:
    """Weights, optimizer state and schedulers of two checkpoints are bit-identical."""
    import torch
    assert a['meta']['iter'] == b['meta']['iter']
    assert a['state_dict'].keys() == b['state_dict'].keys()
    for k in a['state_dict']:
        torch.testing.assert_close(a['state_dict'][k], b['state_dict'][k], rtol=0, atol=0, msg=k)
    sa, sb = a['optimizer']['state'], b['optimizer']['state']
    assert sa.keys() == sb.keys()
    for k in sa:
        for name in sa[k]:
            torch.testing.assert_close(sa[k][name], sb[k][name], rtol=0, atol=0)
    assert a['param_schedulers'] == b['param_schedulers']
