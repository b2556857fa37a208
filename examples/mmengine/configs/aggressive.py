# Preset "aggressive": bias_scale=3.5 in [1.0, 8.0]: noisy sensors, strong modulation needed, experiments.
#   python examples/mmengine/train.py examples/mmengine/configs/aggressive.py
_base_ = ["./_base_/fusion.py"]
model = dict(preset="aggressive")
