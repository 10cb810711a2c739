# DCNv1 (deformable conv, no modulation) in the 3x3 convs of stages c3-c5.
# The baseline (mmdet's config with the plugin imported and its crash-safe training hooks) plus:
_base_ = './faster-rcnn_r50_fpn_1x_coco.py'
model = dict(
    backbone=dict(
        type='DCNResNet',
        dcn=dict(type='DConv', deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True)))
