# The DCNv2 paper's full detector at demo scale: the mdconv + mdpool demo model
# (faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_mdpool_demo-shapes.py) plus R-CNN feature mimicking with the
# demo's mimicking settings (those of faster-rcnn_r18_fpn_gn-all_mimic_demo-shapes.py, where they are
# explained; a test checks that both configs set the branch alike). Training only: the model tests like
# the mdpool config.
# On the demo (docs/demo.md, the DCNv2 paper's ablation, seeds 0-2) it scored 0.349 +- 0.038 against the mdpool
# config's 0.390 +- 0.022: lower in two seeds of three, never higher (not established at three seeds). On the
# demo, prefer the mdpool config; the branch keeps the paper's settings (of six other settings tried on
# the plain model with three seeds each, none scored above the model without the branch beyond the spread).
_base_ = './faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_mdpool_demo-shapes.py'
model = dict(
    type='MimicFasterRCNN',
    roi_head=dict(type='MimicRoIHead', mimic_num_rois=8, mimic_crop_size=64))
