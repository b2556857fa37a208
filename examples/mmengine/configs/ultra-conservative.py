# Preset "ultra-conservative": bias_scale=2.0 in [0.5, 3.0]: high-quality features, stability first.
#   python examples/mmengine/train.py examples/mmengine/configs/ultra-conservative.py
_base_ = ["./_base_/fusion.py"]
model = dict(preset="ultra-conservative")
