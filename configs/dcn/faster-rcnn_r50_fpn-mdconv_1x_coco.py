# DCNv2 in the neck: FPN whose 3x3 output convs are modulated deformable convs ('DCNFPN');
# plain R-50 backbone.
_base_ = './faster-rcnn_r50_fpn_1x_coco.py'
model = dict(neck=dict(type='DCNFPN'))
