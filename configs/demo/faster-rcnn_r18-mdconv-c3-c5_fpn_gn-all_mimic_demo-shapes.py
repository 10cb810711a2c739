# The demo's DCNv2 model (faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_demo-shapes.py) with R-CNN feature
# mimicking: the mimicking settings of faster-rcnn_r18_fpn_gn-all_mimic_demo-shapes.py, DCNv2 in the 3x3
# convs of stages c3-c5 (a test checks that both differ from their bases only by what they add).
_base_ = './faster-rcnn_r18_fpn_gn-all_mimic_demo-shapes.py'
model = dict(
    backbone=dict(
        type='DCNResNet',
        dcn=dict(type='MDConv', deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True)))
