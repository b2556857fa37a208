# The conservative preset with the scale's learning rate at 0.2 (67x the rest's 0.003), to show the alerts:
# Adam overshoots past 0.9 x max_scale (near_upper), the raw parameter leaves [min, max], the hard clamp
# cuts its gradient and it stays there (pinned).
#   python examples/mmengine/train.py examples/mmengine/configs/fast-scale-lr.py
_base_ = ["./conservative.py"]
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={"attention_bias_generator": dict(lr_mult=0.2 / 3e-3)}))
train_cfg = dict(max_iters=128)
