# The DCNv2 paper's full detector at demo scale: the mdconv + mdpool demo model
# (faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_mdpool_demo-shapes.py) plus R-CNN feature mimicking with the
# demo's mimicking settings (those of faster-rcnn_r18_fpn_gn-all_mimic_demo-shapes.py, where they are
# explained; a test checks that both configs set the branch alike). Training only: the model tests like
# the mdpool config.
_base_ = './faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_mdpool_demo-shapes.py'
model = dict(
    type='MimicFasterRCNN',
    roi_head=dict(type='MimicRoIHead', mimic_num_rois=8, mimic_crop_size=64))
