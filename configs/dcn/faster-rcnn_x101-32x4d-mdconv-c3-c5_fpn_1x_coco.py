# DCNv2 c3-c5 on ResNeXt-101 32x4d.
_base_ = './faster-rcnn_r50-mdconv-c3-c5_fpn_1x_coco.py'
model = dict(
    backbone=dict(
        type='DCNResNeXt',
        depth=101,
        groups=32,
        base_width=4,
        init_cfg=dict(type='Pretrained', checkpoint='open-mmlab://resnext101_32x4d')))
