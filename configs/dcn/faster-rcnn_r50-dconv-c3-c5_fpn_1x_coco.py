# DCNv1 (deformable conv, no modulation) in the 3x3 convs of stages c3-c5: the DCNv2 config with the
# unmodulated layer.
_base_ = './faster-rcnn_r50-mdconv-c3-c5_fpn_1x_coco.py'
model = dict(backbone=dict(dcn=dict(type='DConv')))
