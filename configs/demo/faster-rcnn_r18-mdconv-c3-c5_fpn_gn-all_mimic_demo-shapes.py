# The demo's DCNv2 model (faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_demo-shapes.py) with R-CNN feature
# mimicking: the mimicking settings of faster-rcnn_r18_fpn_gn-all_mimic_demo-shapes.py, DCNv2 in the 3x3
# convs of stages c3-c5 (a test checks that both differ from their bases only by what they add).
# On the demo (docs/demo.md) it scored 0.274 +- 0.001 against DCNv2's 0.319 +- 0.001 (2 seeds each, before
# the branch drew from its own random stream; not re-run since). The plain model's mimicking arm moved by
# 4 points with the random draws alone, so that spread is likely too small; the paper's +1 AP for
# deformable models can be neither seen nor ruled out at this scale. The settings stay the paper's, scaled.
# With mdpool and three seeds after the fix (..._mdpool_mimic_demo-shapes.py), mimicking scored lower in two
# seeds of three and never higher.
_base_ = './faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_demo-shapes.py'
model = dict(
    type='MimicFasterRCNN',
    roi_head=dict(type='MimicRoIHead', mimic_num_rois=8, mimic_crop_size=64))
