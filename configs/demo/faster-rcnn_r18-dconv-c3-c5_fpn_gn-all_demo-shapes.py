# The demo's DCNv1 model: the DCNv2 demo model (faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_demo-shapes.py) with
# unmodulated deformable convs in the 3x3 convs of stages c3-c5, same data and schedule: the "dconv" row of
# the DCNv2 paper's ablation, beside the plain, mdconv, mdconv + mdpool and mdconv + mdpool + mimicking demo
# models.
_base_ = './faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_demo-shapes.py'
model = dict(backbone=dict(dcn=dict(type='DConv')))
