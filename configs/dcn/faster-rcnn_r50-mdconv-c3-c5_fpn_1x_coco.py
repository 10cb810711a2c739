# DCNv2 (modulated deformable conv) in the 3x3 convs of stages c3-c5.
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['dcn_plugin'], allow_failed_imports=False)
# crash-safe checkpoints, exact resume, checkpoints that must fit the model (dcn_plugin.apis.hooks)
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))
custom_hooks = [dict(type='TorchRNGStateHook'), dict(type='CheckpointMatchHook')]
model = dict(
    backbone=dict(
        type='DCNResNet',
        dcn=dict(type='MDConv', deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True)))
