"""The camera/LiDAR fusion example as mmengine modules: model, dataset and metric, registered on import.

The network is the Lightning example's :class:`SensorFusionModel` used as a plain
``nn.Module`` (its optimizer arguments are unused: the config's ``optim_wrapper``
is the optimizer), the data comes from :func:`make_sensor_fusion_samples`. The
configs import this module through ``custom_imports``; ``train.py`` puts this
folder and ``examples/`` on ``sys.path``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel
from mmengine.registry import DATASETS, METRICS, MODELS
from torch import Tensor
from torch.nn import functional as F

from attention_stats import attention_entropy, saturated_row_fraction
from fusion_model import SensorFusionModel
from sensor_fusion_data import SensorFusionDataset, make_sensor_fusion_samples


@MODELS.register_module()
class SensorFusionNet(BaseModel):
    """Object queries read a scene from camera and LiDAR tokens through a routed, bounded attention bias.

    Besides the loss, training logs ``attention_entropy``, ``saturated_rows`` and
    ``reliable_attention`` (see ``examples/fusion_model.py``); the watched scale is
    ``net.fusion_attention.attention_bias_generator``.

    Args:
        **network: :class:`SensorFusionModel`'s arguments: ``preset``, ``bias_scale``,
            ``min_scale``, ``max_scale``, ``learnable_scale``, ``bound``, ``d_model``, ...

    Example::

        model = dict(type="SensorFusionNet", preset="aggressive", bound="hard")
    """

    def __init__(self, **network: Any) -> None:
        super().__init__()
        self.net = SensorFusionModel(**network)

    def forward(self, tokens: Tensor, health: Tensor, target: Optional[Tensor] = None,
                reliable: Optional[Tensor] = None, noise_std: Optional[Tensor] = None,
                mode: str = "tensor") -> Any:
        out = self.net(tokens, health)
        if mode == "tensor":
            return out["prediction"]
        probs = out["attention"].detach()
        reliable_attention = (probs * reliable[:, None, None, :]).sum(-1).mean()
        if mode == "loss":  # keys without "loss" are logged, not summed into it
            return {"loss": F.mse_loss(out["prediction"], target), "attention_entropy": attention_entropy(probs),
                    "saturated_rows": saturated_row_fraction(probs), "reliable_attention": reliable_attention}
        return [{"squared_error": float(F.mse_loss(out["prediction"], target, reduction="sum")),
                 "values": target.numel(), "reliable_attention": float(reliable_attention), "scenes": len(target)}]


@DATASETS.register_module()
class SensorFusionScenes(SensorFusionDataset):
    """``num_samples`` scenes with one unreliable sensor each, drawn with ``seed``.

    Args:
        num_samples: scenes to draw.
        seed: seed of the data generator (validation: another seed).
        **data: :func:`make_sensor_fusion_samples`'s other arguments (``good_noise``, ...).
    """

    def __init__(self, num_samples: int = 4096, seed: int = 0, **data: Any) -> None:
        super().__init__(make_sensor_fusion_samples(num_samples, seed, **data))


@METRICS.register_module()
class FusionMetric(BaseMetric):
    """Validation ``fusion/mse`` (the training loss on held-out scenes) and ``fusion/reliable_attention``."""

    default_prefix = "fusion"

    def process(self, data_batch: Any, data_samples: Sequence[Dict[str, float]]) -> None:
        self.results.extend(data_samples)

    def compute_metrics(self, results: List[Dict[str, float]]) -> Dict[str, float]:
        scenes = sum(r["scenes"] for r in results)
        return {"mse": sum(r["squared_error"] for r in results) / sum(r["values"] for r in results),
                "reliable_attention": sum(r["reliable_attention"] * r["scenes"] for r in results) / scenes}
