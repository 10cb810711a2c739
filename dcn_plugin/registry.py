"""The ``dcn_plugin`` registry scope: what mmengine builds a config dict of ``_scope_='dcn_plugin'`` with.

mmengine gives every dict of a config inherited by package scope (``_base_ = 'dcn_plugin::...'``) that
package's scope and then looks for ``dcn_plugin.registry``. The registries here are children of mmdet's,
with no modules of their own: a name resolves as in mmdet's scope (this package registers its modules in
mmdet's and mmengine's registries, so ``type='DCNResNet'`` also works in plain mmdet configs).
"""
from mmdet import registry as mmdet_registry
from mmengine.registry import Registry

SCOPE = 'dcn_plugin'

__all__ = ['SCOPE', 'RUNNERS', 'RUNNER_CONSTRUCTORS', 'LOOPS', 'HOOKS', 'DATASETS', 'DATA_SAMPLERS', 'TRANSFORMS',
           'MODELS', 'MODEL_WRAPPERS', 'WEIGHT_INITIALIZERS', 'OPTIMIZERS', 'OPTIM_WRAPPERS',
           'OPTIM_WRAPPER_CONSTRUCTORS', 'PARAM_SCHEDULERS', 'METRICS', 'EVALUATOR', 'TASK_UTILS', 'VISUALIZERS',
           'VISBACKENDS', 'LOG_PROCESSORS']


def _child(parent: Registry) -> Registry:
    """A registry of this scope under mmdet's ``parent`` (same name: mmengine finds it by scope). Its
    location is the package, whose import registers every module of this plugin."""
    return Registry(parent.name, parent=parent, scope=SCOPE, locations=['dcn_plugin'])


RUNNERS = _child(mmdet_registry.RUNNERS)
RUNNER_CONSTRUCTORS = _child(mmdet_registry.RUNNER_CONSTRUCTORS)
LOOPS = _child(mmdet_registry.LOOPS)
HOOKS = _child(mmdet_registry.HOOKS)
DATASETS = _child(mmdet_registry.DATASETS)
DATA_SAMPLERS = _child(mmdet_registry.DATA_SAMPLERS)
TRANSFORMS = _child(mmdet_registry.TRANSFORMS)
MODELS = _child(mmdet_registry.MODELS)
MODEL_WRAPPERS = _child(mmdet_registry.MODEL_WRAPPERS)
WEIGHT_INITIALIZERS = _child(mmdet_registry.WEIGHT_INITIALIZERS)
OPTIMIZERS = _child(mmdet_registry.OPTIMIZERS)
OPTIM_WRAPPERS = _child(mmdet_registry.OPTIM_WRAPPERS)
OPTIM_WRAPPER_CONSTRUCTORS = _child(mmdet_registry.OPTIM_WRAPPER_CONSTRUCTORS)
PARAM_SCHEDULERS = _child(mmdet_registry.PARAM_SCHEDULERS)
METRICS = _child(mmdet_registry.METRICS)
EVALUATOR = _child(mmdet_registry.EVALUATOR)
TASK_UTILS = _child(mmdet_registry.TASK_UTILS)
VISUALIZERS = _child(mmdet_registry.VISUALIZERS)
VISBACKENDS = _child(mmdet_registry.VISBACKENDS)
LOG_PROCESSORS = _child(mmdet_registry.LOG_PROCESSORS)
