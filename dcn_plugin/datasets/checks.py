"""Dataset problems said in the user's terms, before a run starts.

Mistakes that otherwise surface late, without the file's name, or not at all with mmdet's
``CocoDataset``:

- **classes that do not match the annotation file.** ``metainfo.classes`` names the categories to
  train on, in label order; a name the file lacks is silently dropped, so the labels of every later
  class shift by one (training on wrong labels) or, when no name matches, every image is filtered
  out and mmengine fails with "need at least one array to concatenate";
- **an empty dataset** (no images, or none left after ``filter_cfg`` drops images without
  annotations of the classes): the same "need at least one array to concatenate", or an
  ``IndexError`` in a sampler;
- **annotations mmdet drops without a word**: an image id that is not among the file's images, a box
  that is not four finite numbers (NaN, inf), a width or height below one pixel (zero or negative), a
  non-positive area, a box outside its image, a category id that is not among the file's categories.
  They are counted per reason and warned about once per file (:class:`DatasetWarning`, with the
  counts and the file); a split with **no usable box** of the config's classes is refused (an image
  whose boxes are all dropped is still kept by ``filter_empty_gt``, so training would run with zero
  box losses), except a test split whose file lists no annotations at all (images only);
- **files that fail to load without naming themselves**: an annotation file that is not valid JSON
  (truncated, say: a bare ``JSONDecodeError``) and an empty (0-byte) image file (a bare OpenCV
  assertion in a dataloader worker) are reported with their paths.

:func:`checked_dataloader_builder` wraps a runner's ``build_dataloader``: a built dataset is checked
with :func:`check_dataset` (which reads its annotation file once more), and a build that fails is
diagnosed from the dataset's config (:func:`diagnose_dataset_cfg`, which reads the annotation file
only then); both raise :class:`DatasetError` naming the annotation file and what is wrong.
``tools/train.py`` and ``tools/test.py`` build their runners with it
(:func:`dcn_plugin.apis.build_runner`).
"""
import copy
import functools
import json
import math
import os
import os.path as osp
import warnings
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence, Set, Tuple

__all__ = ['DatasetError', 'DatasetWarning', 'check_dataset', 'diagnose_dataset_cfg', 'checked_dataloader_builder',
           'count_annotations', 'load_coco_json']

#: how many file names a message lists before '... (N more)'
_SHOWN = 5
#: annotation files already warned about in this process: (path, size, modification time)
_WARNED: Set[Tuple[str, int, int]] = set()


class DatasetError(ValueError):
    """The dataset a config describes cannot be trained or evaluated on; the message says why."""


class DatasetWarning(UserWarning):
    """Annotations of a dataset are dropped (counted per reason, with the file)."""


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


def load_coco_json(path: str) -> Optional[Dict[str, Any]]:
    """The COCO json at a local ``path`` (None if it is not a local file, or not COCO-style); a
    :class:`DatasetError` naming the file if it cannot be read or parsed."""
    if not path or '://' in path or not osp.isfile(path):
        return None
    try:
        with open(path, 'rb') as f:
            coco = json.load(f)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise DatasetError(f'the annotation file {path} is not valid JSON ({e}); is it truncated or corrupt?') from e
    except OSError as e:
        raise DatasetError(f'cannot read the annotation file {path} ({e})') from e
    if not isinstance(coco, dict) or not isinstance(coco.get('images'), list):
        return None
    return coco


def _coco_summary(path: str) -> Optional[Dict[str, Any]]:
    """Image count, category names and annotations per category of a local COCO json (None if it is
    not one)."""
    coco = load_coco_json(path)
    if coco is None:
        return None
    cats = {c.get('id'): c.get('name') for c in coco.get('categories', []) if isinstance(c, dict)}
    per_cat: Dict[str, set] = {name: set() for name in cats.values()}
    for ann in coco.get('annotations', []):
        name = cats.get(ann.get('category_id')) if isinstance(ann, dict) else None
        if name is not None:
            per_cat[name].add(ann.get('image_id'))
    return {'images': len(coco['images']), 'categories': list(cats.values()), 'images_per_category': per_cat}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _drop_reason(ann: Any, images: Mapping[Any, Any], category_ids: Set[Any]) -> Optional[str]:
    """Why mmdet's ``CocoDataset`` drops an annotation (None: it keeps it; ``ignore`` ones are not
    counted: the file asks for that)."""
    if not isinstance(ann, dict):
        return 'not an object'
    if ann.get('image_id') not in images:
        return 'an image id that is not among the images'
    if ann.get('ignore', False):
        return None
    box = ann.get('bbox')
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_number(v) for v in box):
        return 'a box that is not 4 finite numbers (NaN, inf or missing)'
    x, y, w, h = box
    if w < 1 or h < 1:
        return 'a width or height below 1 pixel (zero or negative)'
    if not _number(ann.get('area')) or ann['area'] <= 0:
        return 'an area that is not a positive number'
    image = images[ann['image_id']]
    width, height = image.get('width'), image.get('height')
    if _number(width) and _number(height) and (min(x + w, width) - max(x, 0)) * (min(y + h, height) - max(y, 0)) <= 0:
        return 'a box outside its image'
    if ann.get('category_id') not in category_ids:
        return 'a category id that is not among the categories'
    return None


def count_annotations(coco: Mapping[str, Any], classes: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Count the annotations of a COCO dict that mmdet's ``CocoDataset`` keeps and drops.

    Args:
        coco: the parsed annotation file.
        classes: the config's classes (None: every category of the file).

    Returns:
        ``{'total': annotations, 'usable': kept boxes of ``classes``, 'dropped': {reason: count}}``.
    """
    images = {img.get('id'): img for img in coco.get('images', []) if isinstance(img, dict)}
    categories = {c.get('id'): c.get('name') for c in coco.get('categories', []) if isinstance(c, dict)}
    wanted = set(categories.values()) if classes is None else set(classes)
    annotations = coco.get('annotations', []) or []
    dropped: Dict[str, int] = {}
    usable = 0
    for ann in annotations:
        reason = _drop_reason(ann, images, set(categories))
        if reason is not None:
            dropped[reason] = dropped.get(reason, 0) + 1
        elif not ann.get('ignore', False) and categories.get(ann.get('category_id')) in wanted:
            usable += 1
    return {'total': len(annotations), 'usable': usable, 'dropped': dropped}


def _check_annotations(leaf: Any, path: str, classes: Optional[Sequence[str]]) -> None:
    """Warn once about dropped annotations, refuse a split without a usable box or with empty image files."""
    coco = load_coco_json(path)
    if coco is None:
        return
    counts = count_annotations(coco, classes)
    if counts['dropped']:
        stat = os.stat(path)
        key = (osp.abspath(path), stat.st_size, stat.st_mtime_ns)
        if key not in _WARNED:
            _WARNED.add(key)
            reasons = '; '.join(f'{n} with {reason}' for reason, n in
                                sorted(counts['dropped'].items(), key=lambda item: -item[1]))
            warnings.warn(DatasetWarning(
                f'the annotation file {path}: {sum(counts["dropped"].values())} of its {counts["total"]} annotations '
                f'are dropped: {reasons}'), stacklevel=2)
    test_images_only = getattr(leaf, 'test_mode', False) and counts['total'] == 0
    if counts['usable'] == 0 and not test_images_only:
        dropped = sum(counts['dropped'].values())
        raise DatasetError(
            f'the dataset has no usable box: the annotation file {path} lists {counts["total"]} annotations, '
            f'{dropped} of them dropped as invalid, and none of the rest is a box of the config\'s classes '
            f'{list(classes) if classes is not None else "(all categories)"}; training on it would learn no boxes')
    prefix = (getattr(leaf, 'data_prefix', None) or {}).get('img', '') or ''
    if '://' not in prefix:
        empty = []
        for img in coco['images']:
            name = img.get('file_name') if isinstance(img, dict) else None
            if isinstance(name, str):
                image_path = osp.join(prefix, name)
                try:
                    if os.stat(image_path).st_size == 0:
                        empty.append(image_path)
                except OSError:
                    pass  # a missing image is named by the loader when it is read
        if empty:
            shown = ', '.join(empty[:_SHOWN]) + (f', ... ({len(empty) - _SHOWN} more)' if len(empty) > _SHOWN else '')
            raise DatasetError(f'{len(empty)} image file(s) listed in the annotation file {path} are empty (0 bytes) '
                               f'and cannot be decoded: {shown}')


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
    """Raise :class:`DatasetError` if a built dataset is empty, its classes do not match its annotation
    file, it has no usable box or an empty image file; warn (:class:`DatasetWarning`, once per file)
    about the annotations mmdet drops (datasets with ``cat_ids``, i.e. mmdet's COCO-style ones; wrappers
    are opened)."""
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
    for leaf in _leaves(dataset):
        if getattr(leaf, 'cat_ids', None) is not None:  # mmdet's COCO-style datasets
            classes = (getattr(leaf, 'metainfo', None) or {}).get('classes')
            _check_annotations(leaf, getattr(leaf, 'ann_file', '') or '', classes)


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
    """What is wrong with the (COCO-style) datasets a config describes, from their annotation files: a
    file that is not valid JSON, classes that do not match the file's categories, no images, nothing
    left after filtering. None when nothing of the kind is found."""
    for cfg in _cfg_leaves(dataset_cfg):
        path = _ann_path(str(cfg.get('ann_file') or ''), cfg.get('data_root'))
        try:
            summary = _coco_summary(path)
        except DatasetError as e:  # not valid JSON, unreadable
            return str(e)
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

