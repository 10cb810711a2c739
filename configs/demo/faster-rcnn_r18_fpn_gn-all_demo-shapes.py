# The demo's plain-conv model: Faster R-CNN, ResNet-18 (half width) + FPN (64 channels), GroupNorm in
# every conv of backbone and neck (the box head is 2fc, with no conv to normalise), a light RPN / RoI
# budget, trained from scratch on the embedded "deformed shapes" data (tools/generate_demo_data.py)
# in a CPU-sized schedule (docs/demo.md). faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_demo-shapes.py is the same
# model with DCNv2.
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['dcn_plugin'], allow_failed_imports=False)

# ------------------------------------------------------------------ data
data_root = 'data/demo/'
# = dcn_plugin.datasets.DEMO_CLASSES (a test checks they agree)
metainfo = dict(
    classes=('arrow', 'cross', 'star', 'crescent', 'tee'),
    palette=[(220, 20, 60), (0, 130, 255), (255, 190, 0), (0, 200, 80), (170, 60, 255)])
image_size = 256
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=1,
    persistent_workers=True,
    # an endless sampler for the iteration-based schedule, as mmdet's iteration configs use (the default
    # sampler's epochs end, and mmengine restarts it with a warning each time); resuming stays exact
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=8),
        pipeline=train_pipeline))
test_dataloader = dict(
    batch_size=4,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        pipeline=test_pipeline))
test_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json', classwise=True)
# no validation during training (tools/test.py evaluates the final checkpoint)
val_dataloader = None
val_evaluator = None
val_cfg = None

# ------------------------------------------------------------------ model
norm_cfg = dict(type='GN', num_groups=16, requires_grad=True)
model = dict(
    backbone=dict(
        depth=18,
        base_channels=32,
        frozen_stages=-1,
        norm_cfg=norm_cfg,
        norm_eval=False,
        init_cfg=None),  # from scratch: no pretrained weights are downloaded
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=64, norm_cfg=norm_cfg),
    rpn_head=dict(in_channels=64, feat_channels=64),
    roi_head=dict(
        # RoIAlign with a fixed 2x2 samples per bin, 2fc box head: the 4conv head on every RoI cost
        # more than the whole backbone on this CPU budget
        # finest_scale 28 (mmdet: 56): RoIs of 56-112 px pool from P3, larger from P4, for 256 px images
        bbox_roi_extractor=dict(roi_layer=dict(sampling_ratio=2), out_channels=64, finest_scale=28),
        bbox_head=dict(in_channels=64, fc_out_channels=256, num_classes=5)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=500, max_per_img=200),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(
        rpn=dict(nms_pre=500, max_per_img=150),
        rcnn=dict(max_per_img=50)))

# ------------------------------------------------------------------ schedule
max_iters = 1500  # 15 epochs of the 400 training images, batch 4
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
    clip_grad=dict(max_norm=10, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=100, end=max_iters, eta_min=1e-5),
]
# crash-safe checkpoints, exact resume, checkpoints that must fit the model (dcn_plugin.engine.hooks)
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False, interval=500, max_keep_ckpts=2))
custom_hooks = [dict(type='TorchRNGStateHook'), dict(type='CheckpointMatchHook')]
log_processor = dict(by_epoch=False, window_size=20)
randomness = dict(seed=0)
auto_scale_lr = dict(enable=False, base_batch_size=4)
