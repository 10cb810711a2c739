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
