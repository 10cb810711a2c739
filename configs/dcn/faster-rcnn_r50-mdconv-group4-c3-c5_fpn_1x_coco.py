# DCNv2 with 4 offset groups (deform_groups=4) in stages c3-c5.
_base_ = './faster-rcnn_r50-mdconv-c3-c5_fpn_1x_coco.py'
model = dict(backbone=dict(dcn=dict(deform_groups=4)))
