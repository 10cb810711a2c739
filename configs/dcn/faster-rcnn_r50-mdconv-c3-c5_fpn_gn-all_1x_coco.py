# DCNv2 c3-c5 with GroupNorm in backbone, neck and head (as mmdet's gn-all configs: GN-pretrained
# Detectron R-50, caffe-style input normalisation, 4conv1fc box head).
_base_ = './faster-rcnn_r50-mdconv-c3-c5_fpn_1x_coco.py'
norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)
model = dict(
    data_preprocessor=dict(mean=[103.530, 116.280, 123.675], std=[1.0, 1.0, 1.0], bgr_to_rgb=False),
    backbone=dict(
        norm_cfg=norm_cfg,
        init_cfg=dict(type='Pretrained', checkpoint='open-mmlab://detectron/resnet50_gn')),
    neck=dict(norm_cfg=norm_cfg),
    roi_head=dict(
        bbox_head=dict(type='Shared4Conv1FCBBoxHead', conv_out_channels=256, norm_cfg=norm_cfg)))
