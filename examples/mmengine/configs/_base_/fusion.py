# The camera/LiDAR fusion example on mmengine's Runner, watched by scalewatch's ScaleMonitorHook.
# The presets (../conservative.py, ...) inherit this file through `_base_` and set the model's preset.
#   python examples/mmengine/train.py examples/mmengine/configs/conservative.py
custom_imports = dict(imports=["scalewatch.callbacks.mmengine", "fusion_modules"], allow_failed_imports=False)

model = dict(type="SensorFusionNet", preset="conservative", learnable_scale=True, bound="hard")

# 320 iterations of 64 scenes, a validation every 64 (one pass over the 4096 training scenes).
train_dataloader = dict(batch_size=64, dataset=dict(type="SensorFusionScenes", num_samples=4096, seed=0),
                        sampler=dict(type="InfiniteSampler", shuffle=True), collate_fn=dict(type="default_collate"))
val_dataloader = dict(batch_size=256, dataset=dict(type="SensorFusionScenes", num_samples=1024, seed=1),
                      sampler=dict(type="DefaultSampler", shuffle=False), collate_fn=dict(type="default_collate"))
val_evaluator = dict(type="FusionMetric")
train_cfg = dict(by_epoch=False, max_iters=320, val_interval=64)
val_cfg = dict()

# No weight decay on the scale; `lr_mult` here is the scale's own learning rate (see fast-scale-lr.py).
optim_wrapper = dict(optimizer=dict(type="AdamW", lr=3e-3, weight_decay=0.01),
                     paramwise_cfg=dict(custom_keys={"attention_bias_generator": dict(decay_mult=0.0)}))

default_hooks = dict(logger=dict(type="LoggerHook", interval=10),
                     checkpoint=dict(type="CheckpointHook", interval=160, by_epoch=False))
custom_hooks = [
    # interval = LoggerHook's: every reading sits on a log line (grep "scalewatch/" the .log)
    dict(type="ScaleMonitorHook", interval=10, warn_fraction=0.9, patience=3, on_saturation="warn"),
]
log_processor = dict(by_epoch=False)
visualizer = dict(type="Visualizer", vis_backends=[dict(type="LocalVisBackend"), dict(type="TensorboardVisBackend")])

randomness = dict(seed=0)
env_cfg = dict(dist_cfg=dict(backend="gloo"))  # a model this small trains on the CPU
