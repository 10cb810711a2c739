# The demo's DCNv1 model: faster-rcnn_r18_fpn_gn-all_demo-shapes.py with (unmodulated) deformable convs in
# the 3x3 convs of stages c3-c5, same data and schedule: the "dconv" row of the DCNv2 paper's ablation,
# beside the plain, mdconv (DCNv2), mdconv + mdpool and mdconv + mdpool + mimicking demo models.
_base_ = './faster-rcnn_r18_fpn_gn-all_demo-shapes.py'
model = dict(
    backbone=dict(
        type='DCNResNet',
        dcn=dict(type='DConv', deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True)))
