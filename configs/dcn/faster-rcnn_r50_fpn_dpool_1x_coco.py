# Faster R-CNN R-50 FPN with DCNv1 deformable RoI pooling in the box head (mmdet's dpool config, on this
# plugin's layer: CPU and CUDA). One offset branch per FPN level, as mmdet: its checkpoints load.
_base_ = './faster-rcnn_r50_fpn_1x_coco.py'
model = dict(
    roi_head=dict(
        bbox_roi_extractor=dict(
            type='DeformRoIExtractor',
            roi_layer=dict(_delete_=True, type='DeformRoIPoolPack', output_size=7, output_channels=256))))
