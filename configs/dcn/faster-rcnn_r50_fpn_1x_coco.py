# Plain Faster R-CNN R-50 FPN 1x COCO: the baseline the DCN configs compare with (mmdet's config as is).
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['dcn_plugin'], allow_failed_imports=False)
