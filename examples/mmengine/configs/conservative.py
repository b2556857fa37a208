# Preset "conservative": bias_scale=2.5 in [0.5, 5.0]: most runs, first training, unknown data quality.
#   python examples/mmengine/train.py examples/mmengine/configs/conservative.py
_base_ = ["./_base_/fusion.py"]
model = dict(preset="conservative")
