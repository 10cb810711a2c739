"""Dataset mistakes are reported in the user's terms before a run starts: an empty dataset, and
config classes that do not match the categories of the annotation file (which mmdet turns into
"need at least one array to concatenate", an IndexError, or silently shifted labels)."""
import json
import os.path as osp

import pytest

from tiny_detector import PY, run, write_tiny

pytestmark = pytest.mark.skipif(not all(__import__('importlib').util.find_spec(m) for m in ('mmdet', 'mmcv')),
                                reason='needs mmdet and mmcv')

CLASSES = ('arrow', 'cross', 'star', 'crescent', 'tee')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp('checks')
    tiny = write_tiny(base, train=4, val=2, seed=4)
    ann = osp.join(tiny['root'], 'annotations', 'instances_train.json')
    with open(ann) as f:
        coco = json.load(f)
    empty = dict(coco, images=[], annotations=[])
    with open(osp.join(tiny['root'], 'annotations', 'instances_empty.json'), 'w') as f:
        json.dump(empty, f)
    unannotated = dict(coco, annotations=[])
    with open(osp.join(tiny['root'], 'annotations', 'instances_unannotated.json'), 'w') as f:
        json.dump(unannotated, f)
    return dict(base=base, **tiny)


def build(data, ann='annotations/instances_train.json', classes=CLASSES, test_mode=False):
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner

    from dcn_plugin.datasets import checked_dataloader_builder
    init_default_scope('mmdet')
    dataset = dict(type='CocoDataset', data_root=data['root'], ann_file=ann, data_prefix=dict(img='train/'),
                   filter_cfg=dict(filter_empty_gt=True, min_size=8), test_mode=test_mode,
                   pipeline=[dict(type='LoadImageFromFile')])
    if classes is not None:
        dataset['metainfo'] = dict(classes=classes)
    loader = dict(batch_size=2, num_workers=0, dataset=dataset, sampler=dict(type='DefaultSampler', shuffle=False))
    return checked_dataloader_builder(Runner.build_dataloader)(loader)


def test_a_matching_dataset_builds(data):
    assert len(build(data).dataset) == 4
    assert len(build(data, classes=('star', 'arrow')).dataset) >= 1  # a subset, in another order, is fine


def test_an_empty_annotation_file_is_reported(data):
    from dcn_plugin.datasets import DatasetError
    with pytest.raises(DatasetError, match=r'the dataset is empty: the annotation file .*instances_empty.json '
                                           r'lists no images'):
        build(data, ann='annotations/instances_empty.json')


def test_images_without_annotations_of_the_classes_are_reported(data):
    from dcn_plugin.datasets import DatasetError
    with pytest.raises(DatasetError, match=r'lists 4 images, 0 of them with annotations of the config\'s classes'):
        build(data, ann='annotations/instances_unannotated.json')


@pytest.mark.parametrize('classes,wrong', [
    (('a', 'b', 'c', 'd', 'e'), "['a', 'b', 'c', 'd', 'e'] are not among its categories"),  # nothing matches
    (('arrow', 'cross', 'starr', 'crescent', 'tee'), "['starr'] is not among its categories"),  # labels would shift
    (('arrow', 'arrow', 'star'), "['arrow'] is listed more than once"),
])
@pytest.mark.parametrize('test_mode', [False, True], ids=['train', 'test'])
def test_classes_that_do_not_match_the_annotation_file_are_reported(data, classes, wrong, test_mode):
    from dcn_plugin.datasets import DatasetError
    with pytest.raises(DatasetError) as e:
        build(data, classes=classes, test_mode=test_mode)
    message = str(e.value)
    assert 'the classes of the config (metainfo.classes = ' in message and wrong in message
    assert "Its categories are ['arrow', 'cross', 'star', 'crescent', 'tee']" in message


def test_the_default_coco_classes_on_other_data_are_reported(data):
    from dcn_plugin.datasets import DatasetError
    with pytest.raises(DatasetError, match=r"\['person', 'bicycle'.* are not among its categories"):
        build(data, classes=None)


def test_a_missing_annotation_file_is_not_hidden(data):
    with pytest.raises(FileNotFoundError):
        build(data, ann='annotations/nothing.json')


@pytest.mark.slow
@pytest.mark.parametrize('tool', ['train', 'test'])
def test_the_tools_stop_before_running_with_the_message(data, tool):
    cfg = osp.join(str(data['base']), f'bad_{tool}.py')
    with open(data['cfg']) as f:
        text = f.read()
    if tool == 'train':
        bad = text.replace('dataset=dict(data_root=data_root, pipeline=train_pipeline)',
                           "dataset=dict(data_root=data_root, ann_file='annotations/instances_empty.json', "
                           'pipeline=train_pipeline)')
    else:
        bad = text.replace('dataset=dict(data_root=data_root, pipeline=test_pipeline)',
                           "dataset=dict(data_root=data_root, metainfo=dict(classes=('arrow', 'cross', 'starr')), "
                           'pipeline=test_pipeline)')
    assert bad != text
    with open(cfg, 'w') as f:
        f.write(bad)
    args = [PY, f'tools/{tool}.py', cfg] + (['unused.pth'] if tool == 'test' else []) + [
        '--work-dir', str(data['base'] / f'w_{tool}')]
    proc = run(args, check=False)
    assert proc.returncode == 1, proc.out[-3000:]
    expected = ('the dataset is empty: the annotation file' if tool == 'train' else
                "['starr'] is not among its categories")
    assert f'{tool}.py: error: ' in proc.stderr and expected in proc.stderr, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr


# --------------------------------------------------------------------------- annotations mmdet drops, files that fail
def _write_variant(data, name, change):
    """A copy of the train annotation file with ``change(coco)`` applied, as ``annotations/<name>``."""
    with open(osp.join(data['root'], 'annotations', 'instances_train.json')) as f:
        coco = json.load(f)
    change(coco)
    with open(osp.join(data['root'], 'annotations', name), 'w') as f:
        json.dump(coco, f)  # NaN and inf are written as JSON's NaN / Infinity, which mmdet's loader reads
    return f'annotations/{name}', osp.join(data['root'], 'annotations', name)


def _add_bad_annotations(coco):
    good = coco['annotations'][0]
    bad = [dict(category_id=99), dict(category_id=98), dict(bbox=[10, 10, -5, 8]), dict(bbox=[10, 10, 8, 0]),
           dict(bbox=[float('nan'), 10, 8, 8]), dict(bbox=[10, 10, float('inf'), 8]), dict(image_id=12345)]
    for i, change in enumerate(bad):
        coco['annotations'].append(dict(good, id=10_000 + i, **change))


def test_dropped_annotations_are_counted_per_reason_and_warned_once_with_the_file(data):
    from dcn_plugin.datasets import DatasetWarning
    ann, path = _write_variant(data, 'instances_bad_boxes.json', _add_bad_annotations)
    with pytest.warns(DatasetWarning) as record:
        assert len(build(data, ann=ann).dataset) == 4  # the good annotations still train
    messages = [str(w.message) for w in record if issubclass(w.category, DatasetWarning)]
    assert len(messages) == 1, messages
    message = messages[0]
    assert message.startswith(f'the annotation file {path}: 7 of its ')
    for part in ('2 with a category id that is not among the categories',
                 '2 with a width or height below 1 pixel (zero or negative)',
                 '2 with a box that is not 4 finite numbers (NaN, inf or missing)',
                 '1 with an image id that is not among the images'):
        assert part in message, message
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('error', DatasetWarning)
        build(data, ann=ann)  # once per file


@pytest.mark.parametrize('test_mode', [False, True], ids=['train', 'test'])
def test_a_split_without_a_usable_box_is_refused(data, test_mode):
    """Every box invalid: mmdet keeps the images (filter_empty_gt looks at the raw annotations), so training
    would run with zero box losses."""
    from dcn_plugin.datasets import DatasetError

    def break_every_box(coco):
        for ann in coco['annotations']:
            ann['bbox'][2] = float('nan')

    ann, path = _write_variant(data, 'instances_no_usable_box.json', break_every_box)
    with pytest.raises(DatasetError, match=rf'the dataset has no usable box: the annotation file {path} lists \d+ '
                                           r'annotations, \d+ of them dropped as invalid'):
        build(data, ann=ann, test_mode=test_mode)


def test_a_test_split_that_lists_images_only_builds(data):
    assert len(build(data, ann='annotations/instances_unannotated.json', test_mode=True).dataset) == 4


def test_a_truncated_annotation_file_is_named(data):
    from dcn_plugin.datasets import DatasetError
    with open(osp.join(data['root'], 'annotations', 'instances_train.json')) as f:
        text = f.read()
    path = osp.join(data['root'], 'annotations', 'instances_truncated.json')
    with open(path, 'w') as f:
        f.write(text[:len(text) // 2])
    with pytest.raises(DatasetError, match=rf'the annotation file {path} is not valid JSON \(.*\); is it truncated'):
        build(data, ann='annotations/instances_truncated.json')


def test_an_empty_image_file_is_named(data):
    from dcn_plugin.datasets import DatasetError
    first = {}

    def point_at_an_empty_image(coco):
        first.update(coco['images'][0])
        coco['images'][0]['file_name'] = 'empty_000.png'

    ann, _ = _write_variant(data, 'instances_empty_image.json', point_at_an_empty_image)
    open(osp.join(data['root'], 'train', 'empty_000.png'), 'wb').close()
    with pytest.raises(DatasetError, match=r'1 image file\(s\) listed in the annotation file .*instances_empty_image'
                                           r'.json are empty \(0 bytes\) and cannot be decoded: .*train/empty_000.png'):
        build(data, ann=ann)
