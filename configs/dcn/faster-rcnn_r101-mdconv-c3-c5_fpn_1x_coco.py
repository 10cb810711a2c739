# DCNv2 c3-c5 on ResNet-101.
_base_ = './faster-rcnn_r50-mdconv-c3-c5_fpn_1x_coco.py'
model = dict(
    backbone=dict(depth=101, init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet101')))
