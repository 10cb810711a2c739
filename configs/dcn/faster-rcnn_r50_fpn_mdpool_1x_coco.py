# Faster R-CNN R-50 FPN with DCNv2 modulated deformable RoI pooling in the box head (mmdet's mdpool
# config, on this plugin's layer: CPU and CUDA). One offset/mask branch per FPN level (4 x 26.9M
# parameters), as mmdet: its checkpoints load strictly. For the DCNv2 paper's single shared branch see
# faster-rcnn_r50-mdconv-c3-c5_fpn_mdpool_1x_coco.py.
_base_ = './faster-rcnn_r50_fpn_dpool_1x_coco.py'
model = dict(roi_head=dict(bbox_roi_extractor=dict(roi_layer=dict(type='ModulatedDeformRoIPoolPack'))))
