# DCNv2 c3-c5 trained with automatic mixed precision (float16 autocast, dynamic loss scale; needs a GPU).
_base_ = './faster-rcnn_r50-mdconv-c3-c5_fpn_1x_coco.py'
optim_wrapper = dict(type='AmpOptimWrapper', loss_scale='dynamic')
