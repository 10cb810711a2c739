# Plain Faster R-CNN R-50 FPN 1x COCO: the baseline the DCN configs compare with (mmdet's config, with
# the plugin imported and its crash-safe training hooks).
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['dcn_plugin'], allow_failed_imports=False)
# crash-safe checkpoints, exact resume, checkpoints that must fit the model (dcn_plugin.engine.hooks)
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))
custom_hooks = [dict(type='TorchRNGStateHook'), dict(type='CheckpointMatchHook')]
