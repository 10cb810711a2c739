"""Initialisation order shared by the modules whose learned-offset branches must start at zero."""
from typing import Callable

from mmengine.model import BaseModule
from mmengine.model.weight_init import PretrainedInit, initialize


def init_then_reset_then_pretrained(module: BaseModule, base_init: Callable[[], None],
                                    reset: Callable[[], None]) -> None:
    """``base_init()`` with the ``Pretrained`` entries of ``module.init_cfg`` held back, then
    ``reset()``, then those entries: a checkpoint always has the last word.

    mmengine applies a module's ``init_cfg`` (e.g. Xavier on every ``Conv2d`` or ``Linear``) to all its
    submodules and does not call ``init_weights()`` of modules inside plain ``nn.ModuleList`` s, so
    offset branches that must start at zero are reset here, after the init and before any checkpoint.

    Args:
        module: the module whose ``init_cfg`` is read.
        base_init: the parent class's ``init_weights`` bound to ``module`` (``super().init_weights``).
        reset: re-initialises what ``init_cfg`` must not decide (zeroes the offset branches).
    """
    cfgs = module.init_cfg if isinstance(module.init_cfg, list) else [module.init_cfg] if module.init_cfg else []
    pretrained = [c for c in cfgs if c.get('type') in ('Pretrained', PretrainedInit)]
    if not pretrained:
        base_init()
        reset()
        return
    original = module.init_cfg
    module.init_cfg = [c for c in cfgs if c not in pretrained]
    try:
        base_init()
    finally:
        module.init_cfg = original
    reset()
    initialize(module, pretrained)
