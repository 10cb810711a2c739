"""Dataset problems said in the user's terms, before a run starts.

Two mistakes otherwise surface late or not at all with mmdet's ``CocoDataset``:

- **classes that do not match the annotation file.** ``metainfo.classes`` names the categories to
  train on, in label order; a name the file lacks is silently dropped, so the labels of every later
  class shift by one (training on wrong labels) or, when no name matches, every image is filtered
  out and mmengine fails with "need at least one array to concatenate";
- **an empty dataset** (no images, or none left after ``filter_cfg`` drops images without
  annotations of the classes): the same "need at least one array to concatenate", or an
  ``IndexError`` in a sampler.

:func:`checked_dataloader_builder` wraps a runner's ``build_dataloader``: a built dataset is checked
with :func:`check_dataset`, and a build that fails is diagnosed from the dataset's config
(:func:`diagnose_dataset_cfg`, which reads the annotation file only then); both raise
:class:`DatasetError` naming the annotation file and what is wrong. ``tools/train.py`` and
``tools/test.py`` build their runners with it (:func:`dcn_plugin.apis.build_runner`).
"""
import copy
import functools
import json
import os.path as osp
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence

__all__ = ['DatasetError', 'check_dataset', 'diagnose_dataset_cfg', 'checked_dataloader_builder']


class DatasetError(ValueError):
    """The dataset a config describes cannot be trained or evaluated on; the message says why."""


def _leaves(dataset: Any) -> Iterator[Any]:
    """The innermost datasets of wrappers (``ConcatDataset.datasets``, ``RepeatDataset.dataset``, ...)."""
    inner = getattr(dataset, 'datasets', None)
    if isinstance(inner, (list, tuple)):
        for d in inner:
            yield from _leaves(d)
        return
    wrapped = getattr(dataset, 'dataset', None)
    if wrapped is not None and wrapped is not dataset:
        yield from _leaves(wrapped)
        return
    yield dataset


def _cfg_leaves(cfg: Any) -> Iterator[Mapping]:
    """The dataset configs (dicts with an ``ann_file``) inside a possibly wrapped dataset config."""
    if isinstance(cfg, Mapping):
        if 'ann_file' in cfg:
            yield cfg
        for key in ('dataset', 'datasets'):
            if key in cfg:
                yield from _cfg_leaves(cfg[key])
    elif isinstance(cfg, (list, tuple)):
        for c in cfg:
            yield from _cfg_leaves(c)


def _ann_path(ann_file: str, data_root: Optional[str]) -> str:
    if ann_file and data_root and not osp.isabs(ann_file) and '://' not in ann_file:
        return osp.join(data_root, ann_file)
    return ann_file


def _coco_summary(path: str) -> Optional[Dict[str, Any]]:
    """Image count, category names and annotations per category of a local COCO json (None if it is
    not one)."""
    if not path or '://' in path or not osp.isfile(path):
        return None
    try:
        with open(path) as f:
            coco = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(coco, dict) or 'images' not in coco:
        return None
    cats = {c.get('id'): c.get('name') for c in coco.get('categories', []) if isinstance(c, dict)}
    per_cat: Dict[str, set] = {name: set() for name in cats.values()}
    for ann in coco.get('annotations', []):
        name = cats.get(ann.get('category_id'))
        if name is not None:
            per_cat[name].add(ann.get('image_id'))
    return {'images': len(coco['images']), 'categories': list(cats.values()), 'images_per_category': per_cat}


def _class_problem(classes: Sequence[str], names: Sequence[str], path: str) -> Optional[str]:
    missing = [c for c in classes if c not in names]
    repeated = sorted({c for c in classes if list(classes).count(c) > 1})
    if not missing and not repeated:
        return None
    what = []
    if missing:
        what.append(f'{missing} {"is" if len(missing) == 1 else "are"} not among its categories')
    if repeated:
        what.append(f'{repeated} {"is" if len(repeated) == 1 else "are"} listed more than once')
    return (f'the classes of the config (metainfo.classes = {list(classes)}) do not match the categories of the '
            f'annotation file {path}: {"; ".join(what)}. Its categories are {list(names)}; metainfo.classes must name '
            'some of them, each once, in the order of the model\'s labels')


def _empty_problem(classes: Optional[Sequence[str]], summary: Optional[Dict[str, Any]], path: str,
                   filter_cfg: Any) -> str:
    if summary is not None and summary['images'] == 0:
        return f'the dataset is empty: the annotation file {path} lists no images'
    if summary is not None and classes is not None:
        with_ann = set().union(*(summary['images_per_category'].get(c, set()) for c in classes))
        return (f'the dataset is empty: the annotation file {path} lists {summary["images"]} images, '
                f'{len(with_ann)} of them with annotations of the config\'s classes {list(classes)}, and none is left '
                f'after filtering (filter_cfg={dict(filter_cfg) if filter_cfg else None})')
    return f'the dataset built from {path} is empty (no images, or none left after filter_cfg={filter_cfg})'


def check_dataset(dataset: Any) -> None:
    """Raise :class:`DatasetError` if a built dataset is empty or its classes do not match its
    annotation file (datasets with ``cat_ids``, i.e. mmdet's COCO-style ones; wrappers are opened)."""
    for leaf in _leaves(dataset):
        classes = (getattr(leaf, 'metainfo', None) or {}).get('classes')
        cat_ids = getattr(leaf, 'cat_ids', None)
        path = getattr(leaf, 'ann_file', '') or ''
        if classes is not None and cat_ids is not None and len(cat_ids) != len(classes):
            summary = _coco_summary(path)
            names = summary['categories'] if summary else []
            problem = _class_problem(list(classes), names, path) if summary else None
            raise DatasetError(problem or f'the classes of the config (metainfo.classes = {list(classes)}) do not '
                               f'match the categories of the annotation file {path}: only {len(cat_ids)} of them '
                               'were found in it')
    if len(dataset) == 0:
        leaf = next(_leaves(dataset))
        classes = (getattr(leaf, 'metainfo', None) or {}).get('classes')
        path = getattr(leaf, 'ann_file', '') or ''
        raise DatasetError(_empty_problem(classes, _coco_summary(path), path, getattr(leaf, 'filter_cfg', None)))


def _configured_classes(cfg: Mapping) -> Optional[Sequence[str]]:
    """The classes a dataset config resolves to (its ``metainfo``, else its class's default)."""
    classes = (cfg.get('metainfo') or {}).get('classes')
    if classes is not None:
        return list(classes)
    try:  # the dataset class's METAINFO, resolved by the registry without loading any data
        from mmengine.registry import DATASETS
        lazy = DATASETS.build(dict(copy.deepcopy(dict(cfg)), lazy_init=True))
        return list((lazy.metainfo or {}).get('classes') or []) or None
    except Exception:
        return None


def diagnose_dataset_cfg(dataset_cfg: Any) -> Optional[str]:
    """What is wrong with the (COCO-style) datasets a config describes, from their annotation files:
    classes that do not match the file's categories, no images, nothing left after filtering.
    None when nothing of the kind is found."""
    for cfg in _cfg_leaves(dataset_cfg):
        path = _ann_path(str(cfg.get('ann_file') or ''), cfg.get('data_root'))
        summary = _coco_summary(path)
        if summary is None:
            continue
        classes = _configured_classes(cfg)
        if classes is not None:
            problem = _class_problem(list(classes), summary['categories'], path)
            if problem:
                return problem
        if summary['images'] == 0:
            return _empty_problem(classes, summary, path, cfg.get('filter_cfg'))
        if classes is not None and cfg.get('filter_cfg') and not cfg.get('test_mode', False):
            with_ann = set().union(*(summary['images_per_category'].get(c, set()) for c in classes))
            if not with_ann and (cfg.get('filter_cfg') or {}).get('filter_empty_gt', False):
                return _empty_problem(classes, summary, path, cfg.get('filter_cfg'))
    return None


def checked_dataloader_builder(build: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a ``Runner.build_dataloader``: check what it builds (:func:`check_dataset`) and explain a
    build that fails (:func:`diagnose_dataset_cfg`)."""
    @functools.wraps(build)
    def build_checked(dataloader: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(dataloader, Mapping):
            return build(dataloader, *args, **kwargs)
        dataset_cfg = copy.deepcopy(dataloader.get('dataset'))
        try:
            loader = build(dataloader, *args, **kwargs)
        except DatasetError:
            raise
        except Exception as e:
            problem = diagnose_dataset_cfg(dataset_cfg)
            if problem is None:
                raise
            raise DatasetError(problem) from e
        check_dataset(loader.dataset)
        return loader
    build_checked._dcn_plugin_checked = True  # type: ignore[attr-defined]
    return build_checked

