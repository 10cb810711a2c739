# DCNv2 c3-c5 with LayerNorm over each sample's (C, H, W) ('SampleLN', = GroupNorm(1, C)) in backbone,
# neck and head (4conv1fc box head, as the gn-all config). No LN-pretrained R-50 exists: the ImageNet
# convs are loaded from torchvision, the norm layers start fresh (weight 1, bias 0).
_base_ = './faster-rcnn_r50-mdconv-c3-c5_fpn_1x_coco.py'
norm_cfg = dict(type='SampleLN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg, norm_eval=False),
    neck=dict(norm_cfg=norm_cfg),
    roi_head=dict(
        bbox_head=dict(type='Shared4Conv1FCBBoxHead', conv_out_channels=256, norm_cfg=norm_cfg)))
