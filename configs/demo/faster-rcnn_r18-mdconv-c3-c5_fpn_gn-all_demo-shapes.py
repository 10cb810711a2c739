# The demo's DCN model: faster-rcnn_r18_fpn_gn-all_demo-shapes.py with DCNv2 in the 3x3 convs of
# stages c3-c5, same data and schedule. This is what `bash tools/run_demo.sh` trains.
# The backbone block is that of configs/dcn/faster-rcnn_r50-mdconv-c3-c5_fpn_1x_coco.py, stated once per family:
# mmengine cannot merge two bases that both set `model`.
_base_ = './faster-rcnn_r18_fpn_gn-all_demo-shapes.py'
model = dict(
    backbone=dict(
        type='DCNResNet',
        dcn=dict(type='MDConv', deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True)))
