"""The model mode: a model config with DCN against the same model with plain convolutions, and where the DCN
model's time goes (:func:`breakdown`)."""
import argparse
import importlib.util
import logging
import os
from typing import Any, Callable, Dict, List, Tuple

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from .common import Mode, Runners, positive, sync


def _no_pretrained(node: Any) -> None:
    """Drop every ``Pretrained`` init and ``pretrained=`` from a model config, in place: nothing is loaded."""
    for key, value in node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ():
        if key in ('init_cfg', 'pretrained') and value:
            kept = [c for c in (value if isinstance(value, list) else [value]) if key == 'init_cfg' and
                    c.get('type') != 'Pretrained']
            node[key] = (kept or None) if isinstance(value, list) else (kept[0] if kept else None)
        else:
            _no_pretrained(value)


def build_model(path: str, args: argparse.Namespace) -> Tuple[torch.nn.Module, int]:
    """The ``--part`` of the config's model, initialised as a training from scratch starts (no weights are
    loaded or downloaded), and the divisor its data preprocessor pads images to."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.logging import MMLogger

    from dcn_plugin.apis import load_config
    cfg = load_config(path)
    _no_pretrained(cfg.model)
    register_all_modules(init_default_scope=True)
    torch.manual_seed(args.seed)
    model, logger = MODELS.build(cfg.model), MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)  # init_weights() logs every parameter's init
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    part = {'detector': lambda: model, 'backbone': lambda: model.backbone,
            'backbone+neck': lambda: torch.nn.Sequential(model.backbone, model.neck)}[args.part]()
    return part.to(args.device), cfg.model.get('data_preprocessor', {}).get('pad_size_divisor', 1)


PARTS = ('offset/mask convs (conv_offset)', 'DCN sampling (im2col, offset/mask grad, input grad)', 'DCN GEMMs',
         'DCN op, rest (layout copies, zero fills, autograd)', 'other convolutions', 'everything else')


def breakdown(fn: Callable[[], Any], net: torch.nn.Module, device: torch.device) -> Dict[str, Any]:
    """Where one run of ``fn`` spends its time (:data:`PARTS`), from one torch.profiler run: each event's self
    time (CPU; on CUDA its kernels' time) goes to the part of its innermost classified ancestor or itself.
    ``conv_offset`` modules are scoped through forward hooks, their backward nodes linked through autograd's
    sequence numbers; the op's phases are its own scopes (``dcn_plugin::im2col``, ``::gemm``, ...)."""
    stack, hooks, scope = [], [], 'benchmark::conv_offset'
    for m in [m.conv_offset for m in net.modules() if isinstance(getattr(m, 'conv_offset', None), torch.nn.Module)]:
        hooks += [m.register_forward_pre_hook(lambda *_: stack.append(record_function(scope).__enter__())),
                  m.register_forward_hook(lambda *_: stack.pop().__exit__(None, None, None))]
    try:
        with profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * (device.type == 'cuda')) as prof:
            with record_function('benchmark::step'):
                fn()
                sync(device)
    finally:
        for h in hooks:
            h.remove()
    events, linked, memo = prof.events(), set(), {}

    def part(e: Any) -> int:
        if id(e) not in memo:
            up, n = part(e.cpu_parent) if e.cpu_parent is not None else 5, e.name
            memo[id(e)] = 0 if up == 0 or n == scope or (
                n.startswith('autograd::engine') and (e.fwd_thread, e.sequence_nr) in linked) else \
                1 if n in ('dcn_plugin::im2col', 'dcn_plugin::offset_mask_grad', 'dcn_plugin::input_grad') else \
                2 if n == 'dcn_plugin::gemm' else 3 if 'dcn_plugin' in n else \
                4 if n.startswith('aten::conv') or 'ConvolutionBackward' in n else up
        return memo[id(e)]
    for _ in range(2):  # the second pass knows the backward nodes of conv_offset's forward ops
        memo.clear()
        parts = [part(e) for e in events]
        linked = {(e.thread, e.sequence_nr) for e, p in zip(events, parts) if p == 0 and e.sequence_nr >= 0}
    clock = 'self_device_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    ms = [sum(getattr(e, clock) for e, p in zip(events, parts) if p == i) / 1e3 for i in range(len(PARTS))]
    step = next(e for e in events if e.name == 'benchmark::step')
    return {'parts': dict(zip(PARTS, ms)), 'total_ms': sum(ms), 'step_ms': step.cpu_time_total / 1e3,
            'clock': 'of GPU kernel time' if device.type == 'cuda' else 'of CPU time'}


class ModelMode(Mode):
    """A model config with DCN ('dcn') against the same model with plain convolutions ('baseline'), built from
    the configs without weights, on the same random batch; optionally the DCN model's time by part."""
    impls = {'dcn': lambda args: build_model(args.config, args),
             'baseline': lambda args: build_model(args.baseline, args)}
    ratios = [('dcn', 'baseline', 'time'), ('dcn', 'baseline', 'mem')]
    must_run = ('dcn', 'baseline')
    help = 'a DCN model config against its baseline config'

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add = parser.add_argument
        add('config', help='the model with DCN')
        add('--baseline', required=True, help='the same model with plain convolutions')
        add('--part', default='detector', choices=('detector', 'backbone', 'backbone+neck'))
        add('--mode', default='both', choices=('infer', 'train', 'both'), help='default: both')
        add('--image-size', nargs=2, type=positive(int), default=[800, 1333], metavar=('H', 'W'))
        add('--breakdown', action='store_true', help="the DCN model's time by part, one profiled run")

    @classmethod
    def check_arguments(cls, args: argparse.Namespace, error: Callable[[str], None]) -> None:
        """Batch 1 unless given, float32, both models; the configs must exist and mmdet be installed."""
        args.batch, args.dtype, args.impls = args.batch or 1, 'float32', list(cls.impls)
        for path in (args.config, args.baseline):
            if not os.path.isfile(path):
                error(f'config file not found: {path}')
        if importlib.util.find_spec('mmdet') is None:
            error('the model mode needs mmdet (with mmengine and mmcv) installed')

    def file_stem(self, detail: str = '') -> str:
        """With the DCN config's name, the part and the image size."""
        a = self.args
        name = os.path.splitext(os.path.basename(a.config))[0]
        return super().file_stem(f'_{name}_{a.part}_{"x".join(map(str, a.image_size))}{detail}')

    def title(self) -> str:
        a = self.args
        return f'Model benchmark, {a.part}: dcn = {a.config}, baseline = {a.baseline}; {a.device}' + ', TF32' * a.tf32

    def phases(self) -> Dict[str, str]:
        return {p: t for p, t in (('infer', 'inference'), ('train', 'training step')) if self.args.mode in (p, 'both')}

    def cases(self, impls: Dict[str, Any]) -> List[Dict[str, Any]]:
        """One case: ``--image-size``, padded as the configs' data preprocessors pad it."""
        (h, w), div, n = self.args.image_size, max(d for _, d in impls.values()), self.args.batch
        hp, wp = -(-h // div) * div, -(-w // div) * div
        return [dict(label=f'{h}x{w} batch {n}' + f' (padded to {hp}x{wp})' * ((hp, wp) != (h, w)),
                     image_size=[h, w], input_size=[hp, wp], batch=n)]

    def inputs(self, case: Dict[str, Any]) -> Tuple[Any, ...]:
        """A batch of N(0, 1) images (as normalised) and 5 random ground-truth boxes and labels per image."""
        g, n, (h, w), (hp, wp) = torch.Generator().manual_seed(self.args.seed), *(case[key] for key in (
            'batch', 'image_size', 'input_size'))
        xy, wh = torch.rand(n, 5, 2, generator=g) * 0.7, torch.rand(n, 5, 2, generator=g) * 0.25 + 0.05
        boxes = torch.cat([xy, xy + wh], -1) * torch.tensor([w, h, w, h])
        return (torch.randn(n, 3, hp, wp, generator=g).to(self.device), boxes.to(self.device),
                torch.randint(1 << 16, (n, 5), generator=g).to(self.device), case)

    def bind(self, impl: Tuple[torch.nn.Module, int], inputs: Tuple[Any, ...]) -> Runners:
        """infer: forward in eval() under no_grad (a detector's predict); train: zero_grad, forward in train() (a
        detector's loss on the boxes, else the sum of the outputs x fixed random gradients), backward."""
        (net, _), (x, boxes, labels, case) = impl, inputs
        flat = lambda out: list(out) if isinstance(out, (list, tuple)) else [out]  # noqa: E731
        if self.args.part == 'detector':
            from mmdet.structures import DetDataSample
            from mmengine.structures import InstanceData
            classes = min([m.num_classes for m in net.modules() if isinstance(getattr(m, 'num_classes', None), int)]
                          or [1])
            meta = dict(img_shape=tuple(case['image_size']), ori_shape=tuple(case['image_size']),
                        pad_shape=tuple(case['input_size']), batch_input_shape=tuple(case['input_size']),
                        scale_factor=(1.0, 1.0))
            samples = [DetDataSample(metainfo=meta, gt_instances=InstanceData(bboxes=b, labels=lab % classes))
                       for b, lab in zip(boxes, labels)]
            forward, loss = (lambda: net.predict(x, samples)), (lambda: net.parse_losses(net.loss(x, samples))[0])
        else:
            g = torch.Generator().manual_seed(self.args.seed)
            net.eval()  # (mmdet's ResNet.train() returns None: no chaining)
            with torch.no_grad():
                grads = [torch.randn(o.shape, generator=g).to(o) for o in flat(net(x))]
            forward, loss = (lambda: net(x)), (lambda: sum((o * d).sum() for o, d in zip(flat(net(x)), grads)))

        def infer() -> Any:
            net.eval()
            with torch.no_grad():
                return forward()

        def train() -> None:
            net.train()
            net.zero_grad(set_to_none=True)
            loss().backward()
        return {'infer': infer, 'train': train}

    def extra(self, impls: Dict[str, Any], runners: Dict[str, Runners]) -> Dict[str, Any]:
        if not self.args.breakdown or 'dcn' not in runners:
            return {}
        return {'breakdown': {p: breakdown(fn, impls['dcn'][0], self.device) for p, fn in runners['dcn'].items()}}

