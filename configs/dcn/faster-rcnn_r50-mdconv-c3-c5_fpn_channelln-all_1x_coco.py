# DCNv2 c3-c5 with LayerNorm over the channels at each position ('ChannelLN', as in ConvNeXt) in
# backbone, neck and head. The ImageNet convs come from torchvision, the norm layers start fresh.
_base_ = './faster-rcnn_r50-mdconv-c3-c5_fpn_sampleln-all_1x_coco.py'
norm_cfg = dict(type='ChannelLN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg),
    neck=dict(norm_cfg=norm_cfg),
    roi_head=dict(bbox_head=dict(norm_cfg=norm_cfg)))
