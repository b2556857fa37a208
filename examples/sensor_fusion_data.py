"""Synthetic camera/LiDAR data where one sensor is unreliable per sample.

Every sample is a scene of ``num_positions`` cells, each holding a
``content_dim``-vector drawn from N(0, 1). Both sensors observe every cell:
camera token ``p`` and LiDAR token ``p`` carry the cell's content plus Gaussian
noise. Per sample one sensor, chosen by a coin flip, is unreliable: its noise
standard deviation is drawn from ``[bad_noise_min, bad_noise_max]`` instead of
``good_noise``. Each token also carries a health reading (the log of its
sensor's noise level plus a little jitter), the kind of self-diagnosis a real
sensor driver reports.

The task is to reconstruct each cell's clean content. The best possible
answer weighs the two observations of a cell by inverse variance, so the model
must move attention from the unreliable sensor's token to the reliable one by a
margin that grows with the noise ratio, ``log(var_bad / var_good)``: 3.2 for noise
0.2 vs 1.0, 5.4 for 0.2 vs 3.0 with the defaults. That is what the attention bias
is for: the router reads the health channel, the bias generator scales its
output. With the scale fixed at 0.5 the bias can shift a logit pair by at most
1.0, far short of what the data needs.
:func:`oracle_mse` gives that floor.

All randomness comes from a ``torch.Generator`` seeded by ``seed`` (validation
uses ``seed + 1``), so the data is identical on every run and every process.
"""
from __future__ import annotations

from typing import Dict, Optional

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

#: token order inside a sample: all camera tokens, then all LiDAR tokens
CAMERA, LIDAR = 0, 1
SENSOR_NAMES = ("camera", "lidar")


def make_sensor_fusion_samples(num_samples: int, seed: int, num_positions: int = 8, content_dim: int = 4,
                               good_noise: float = 0.2, bad_noise_min: float = 1.0, bad_noise_max: float = 3.0,
                               health_jitter: float = 0.1) -> Dict[str, Tensor]:
    """Draw ``num_samples`` scenes and both sensors' view of them.

    Returns a dict of tensors, first dimension ``num_samples``, ``K = 2 * num_positions``:

    - ``tokens`` ``[N, K, content_dim]``: noisy observations, camera tokens first.
    - ``health`` ``[N, K, 1]``: each token's reported log noise level (with jitter).
    - ``target`` ``[N, num_positions, content_dim]``: the clean scene.
    - ``noise_std`` ``[N, K]``: the true noise level of each token.
    - ``reliable`` ``[N, K]``: 1.0 for tokens of the sample's reliable sensor.
    """
    if num_samples < 1 or num_positions < 1 or content_dim < 1:
        raise ValueError("`num_samples`, `num_positions` and `content_dim` must be >= 1")
    if not 0 < good_noise <= bad_noise_min <= bad_noise_max:
        raise ValueError(f"need 0 < good_noise <= bad_noise_min <= bad_noise_max, got "
                         f"{good_noise}, {bad_noise_min}, {bad_noise_max}")
    g = torch.Generator().manual_seed(seed)
    n, p = num_samples, num_positions
    target = torch.randn(n, p, content_dim, generator=g)
    bad_sensor = torch.randint(0, 2, (n,), generator=g)
    bad_noise = bad_noise_min + (bad_noise_max - bad_noise_min) * torch.rand(n, generator=g)
    sensor_std = torch.full((n, 2), good_noise)
    sensor_std[torch.arange(n), bad_sensor] = bad_noise
    noise_std = sensor_std.repeat_interleave(p, dim=1)  # [N, K]: camera x p, lidar x p
    clean = torch.cat([target, target], dim=1)  # both sensors see the same scene
    tokens = clean + noise_std.unsqueeze(-1) * torch.randn(n, 2 * p, content_dim, generator=g)
    health = noise_std.log() + health_jitter * torch.randn(n, 2 * p, generator=g)
    reliable = (noise_std == good_noise).float()
    return {"tokens": tokens, "health": health.unsqueeze(-1), "target": target,
            "noise_std": noise_std, "reliable": reliable}


def oracle_mse(samples: Dict[str, Tensor]) -> float:
    """The lowest mean squared error any model can reach on ``samples``.

    Knowing the true noise levels, the best estimate of a cell (flat prior aside)
    is the inverse-variance weighted mean of its two observations; with the N(0, 1)
    prior it is the posterior mean. Its expected error per entry is
    ``1 / (1 + 1/var_cam + 1/var_lidar)``, averaged over samples.
    """
    var = samples["noise_std"] ** 2
    p = samples["target"].shape[1]
    precision = 1.0 + 1.0 / var[:, :p] + 1.0 / var[:, p:]
    return float((1.0 / precision).mean())


class SensorFusionDataset(Dataset):
    """Pre-drawn samples from :func:`make_sensor_fusion_samples`, one dict per item."""

    def __init__(self, samples: Dict[str, Tensor]) -> None:
        self.samples = samples
        self._length = len(samples["target"])

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> Dict[str, Tensor]:
        return {key: value[index] for key, value in self.samples.items()}


class SensorFusionDataModule(pl.LightningDataModule):
    """Camera/LiDAR scenes with one unreliable sensor per sample, deterministic by ``seed``.

    Args:
        num_positions: scene cells; the model has one query per cell and attends
            over ``2 * num_positions`` tokens.
        content_dim: size of each cell's content vector.
        train_samples: training scenes (drawn with ``seed``).
        val_samples: validation scenes (drawn with ``seed + 1``).
        batch_size: scenes per batch.
        seed: seed of the data generator (independent of ``seed_everything``).
        good_noise: noise standard deviation of the reliable sensor.
        bad_noise_min: lower end of the unreliable sensor's noise standard deviation.
        bad_noise_max: upper end of the unreliable sensor's noise standard deviation.
        health_jitter: standard deviation of the error in each token's reported log noise.
    """

    def __init__(self, num_positions: int = 8, content_dim: int = 4, train_samples: int = 4096,
                 val_samples: int = 1024, batch_size: int = 64, seed: int = 0, good_noise: float = 0.2,
                 bad_noise_min: float = 1.0, bad_noise_max: float = 3.0, health_jitter: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_set: Optional[SensorFusionDataset] = None
        self.val_set: Optional[SensorFusionDataset] = None

    def _draw(self, num_samples: int, seed: int) -> Dict[str, Tensor]:
        h = self.hparams
        return make_sensor_fusion_samples(num_samples, seed, h.num_positions, h.content_dim, h.good_noise,
                                          h.bad_noise_min, h.bad_noise_max, h.health_jitter)

    def setup(self, stage: str) -> None:
        if self.train_set is None:
            self.train_set = SensorFusionDataset(self._draw(self.hparams.train_samples, self.hparams.seed))
            self.val_set = SensorFusionDataset(self._draw(self.hparams.val_samples, self.hparams.seed + 1))

    def train_dataloader(self) -> DataLoader:
        # Shuffling follows the global seed (seed_everything), so runs repeat exactly.
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size)

    def val_oracle_mse(self) -> float:
        """The validation loss floor (see :func:`oracle_mse`)."""
        if self.val_set is None:
            self.setup("fit")
        return oracle_mse(self.val_set.samples)

