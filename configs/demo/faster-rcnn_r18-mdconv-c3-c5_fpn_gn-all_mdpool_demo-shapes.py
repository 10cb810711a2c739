# The demo's DCNv2 model with modulated deformable RoI pooling in the box head: the DCNv2 paper's
# detector at demo scale. One offset/mask branch shared by the FPN levels in the paper's form (a 2-layer
# trunk and a 3*7*7 head), 256 wide like the demo's box head, over the demo's 2x2 samples per bin.
# The best demo model measured (docs/demo.md): 0.390 +- 0.022 bbox mAP over seeds 0-2, against 0.319 +- 0.007
# for the DCNv2 model without mdpool; its training logs show about 20% more time per iteration.
_base_ = './faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_demo-shapes.py'
model = dict(
    roi_head=dict(
        bbox_roi_extractor=dict(
            type='DeformRoIExtractor',
            share_offset_branch=True,
            roi_layer=dict(type='ModulatedDeformRoIPoolPack', output_channels=64, deform_fc_channels=256,
                           branch='paper'))))
