"""Bad input: each a clear error naming the argument and the value, raised before any
training step; an unwritable log directory is the one bad input training survives."""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Dict, Tuple

import pytest
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from scalewatch.callbacks import PLOT_FILENAME, ScaleMonitor, metric_key
from scalewatch.monitor import HISTORY_FILENAME, AttentionBiasGenerator, LearnableScale

from .support import GEN, DriftModel, LogitScaleModel, MemoryLogger, csv_series, make_trainer, read_csv_metrics

NAN, INF = float("nan"), float("inf")

# id -> (what to build, error type, strings the message must contain: the argument and the value)
CASES: Dict[str, Tuple[Callable[[], Any], type, Tuple[str, ...]]] = {
    # ScaleMonitor(every_n_steps=...)
    "every_n_steps=0": (lambda: ScaleMonitor(every_n_steps=0), MisconfigurationException, ("`every_n_steps`", "got 0")),
    "every_n_steps=-1": (lambda: ScaleMonitor(every_n_steps=-1), MisconfigurationException, ("`every_n_steps`", "got -1")),
    "every_n_steps=2.5": (lambda: ScaleMonitor(every_n_steps=2.5), MisconfigurationException, ("`every_n_steps`", "got 2.5")),
    "every_n_steps=True": (lambda: ScaleMonitor(every_n_steps=True), MisconfigurationException, ("`every_n_steps`", "got True")),
    "every_n_steps='50'": (lambda: ScaleMonitor(every_n_steps="50"), MisconfigurationException, ("`every_n_steps`", "got '50'")),
    # warn_fraction outside (0, 1]
    "warn_fraction=0": (lambda: ScaleMonitor(warn_fraction=0), MisconfigurationException, ("`warn_fraction`", "got 0")),
    "warn_fraction=-0.5": (lambda: ScaleMonitor(warn_fraction=-0.5), MisconfigurationException, ("`warn_fraction`", "got -0.5")),
    "warn_fraction=1.5": (lambda: ScaleMonitor(warn_fraction=1.5), MisconfigurationException, ("`warn_fraction`", "got 1.5")),
    "warn_fraction=nan": (lambda: ScaleMonitor(warn_fraction=NAN), MisconfigurationException, ("`warn_fraction`", "got nan")),
    "warn_fraction=inf": (lambda: ScaleMonitor(warn_fraction=INF), MisconfigurationException, ("`warn_fraction`", "got inf")),
    # patience < 1
    "patience=0": (lambda: ScaleMonitor(patience=0), MisconfigurationException, ("`patience`", "got 0")),
    "patience=-3": (lambda: ScaleMonitor(patience=-3), MisconfigurationException, ("`patience`", "got -3")),
    "patience=1.5": (lambda: ScaleMonitor(patience=1.5), MisconfigurationException, ("`patience`", "got 1.5")),
    # unknown on_saturation, other arguments
    "on_saturation='explode'": (lambda: ScaleMonitor(on_saturation="explode"), MisconfigurationException,
                                ("`on_saturation`", "'explode'", "'warn'", "'stop'")),
    "on_saturation='Stop'": (lambda: ScaleMonitor(on_saturation="Stop"), MisconfigurationException,
                             ("`on_saturation`", "'Stop'")),
    "alert_callback=not callable": (lambda: ScaleMonitor(alert_callback="print"), MisconfigurationException,
                                    ("`alert_callback`", "'print'")),
    "plot_every_n_checks=0": (lambda: ScaleMonitor(plot_every_n_checks=0), MisconfigurationException,
                              ("`plot_every_n_checks`", "got 0")),
    "max_plot_panels=0": (lambda: ScaleMonitor(max_plot_panels=0), MisconfigurationException,
                          ("`max_plot_panels`", "got 0")),
    # AttentionBiasGenerator bounds: swapped, equal, NaN, Inf, max <= 0
    "gen min/max swapped": (lambda: AttentionBiasGenerator(bias_scale=2.5, min_scale=5.0, max_scale=0.5), ValueError,
                            ("`min_scale`", "`max_scale`", "min_scale=5.0", "max_scale=0.5")),
    "gen min == max": (lambda: AttentionBiasGenerator(bias_scale=2.0, min_scale=2.0, max_scale=2.0), ValueError,
                       ("`min_scale`", "`max_scale`", "min_scale=2.0", "max_scale=2.0")),
    "gen min_scale=nan": (lambda: AttentionBiasGenerator(min_scale=NAN), ValueError, ("`min_scale`", "got nan")),
    "gen max_scale=nan": (lambda: AttentionBiasGenerator(max_scale=NAN), ValueError, ("`max_scale`", "got nan")),
    "gen max_scale=inf": (lambda: AttentionBiasGenerator(max_scale=INF), ValueError, ("`max_scale`", "got inf")),
    "gen min_scale=-inf": (lambda: AttentionBiasGenerator(min_scale=-INF), ValueError, ("`min_scale`", "got -inf")),
    "gen max_scale=-1": (lambda: AttentionBiasGenerator(bias_scale=-2.0, min_scale=-3.0, max_scale=-1.0), ValueError,
                         ("`max_scale`", "got -1.0")),
    "gen max_scale='5'": (lambda: AttentionBiasGenerator(max_scale="5"), ValueError, ("`max_scale`", "got '5'")),
    # bias_scale init outside the bounds / not finite
    "gen bias_scale above max": (lambda: AttentionBiasGenerator(bias_scale=6.0, min_scale=0.5, max_scale=5.0),
                                 ValueError, ("`bias_scale`", "got 6.0", "[0.5, 5.0]")),
    "gen bias_scale below min": (lambda: AttentionBiasGenerator(bias_scale=0.1, min_scale=0.5, max_scale=5.0),
                                 ValueError, ("`bias_scale`", "got 0.1", "[0.5, 5.0]")),
    "gen bias_scale=nan": (lambda: AttentionBiasGenerator(bias_scale=NAN), ValueError, ("`bias_scale`", "got nan")),
    "gen soft bound at max": (lambda: AttentionBiasGenerator(bias_scale=5.0, bound="soft"), ValueError,
                              ("`bias_scale`", "got 5.0", "soft")),
    "gen bound='clip'": (lambda: AttentionBiasGenerator(bound="clip"), ValueError, ("`bound`", "'clip'")),
    "LearnableScale init above max": (lambda: LearnableScale(init=11.0, min_scale=0.0, max_scale=10.0), ValueError,
                                      ("`init`", "got 11.0")),
    # params: bounds swapped, equal, NaN, Inf, not a pair, not a mapping
    "params bounds swapped": (lambda: ScaleMonitor(params={"logit_scale": (4.6052, 1.0)}), MisconfigurationException,
                              ("params['logit_scale'] min", "params['logit_scale'] max", "=4.6052 >=", "=1.0")),
    "params bounds equal": (lambda: ScaleMonitor(params={"logit_scale": (1.0, 1.0)}), MisconfigurationException,
                            ("params['logit_scale']", "=1.0 >=")),
    "params min nan": (lambda: ScaleMonitor(params={"logit_scale": (NAN, 4.6)}), MisconfigurationException,
                       ("params['logit_scale'] min", "got nan")),
    "params max inf": (lambda: ScaleMonitor(params={"logit_scale": (0.0, INF)}), MisconfigurationException,
                       ("params['logit_scale'] max", "got inf")),
    "params bounds 1-tuple": (lambda: ScaleMonitor(params={"logit_scale": (4.6,)}), MisconfigurationException,
                              ("`params['logit_scale']`", "(min, max) pair", "(4.6,)")),
    "params bounds 3-tuple": (lambda: ScaleMonitor(params={"logit_scale": (0, 1, 2)}), MisconfigurationException,
                              ("`params['logit_scale']`", "(min, max) pair", "(0, 1, 2)")),
    "params bounds scalar": (lambda: ScaleMonitor(params={"logit_scale": 4.6}), MisconfigurationException,
                             ("`params['logit_scale']`", "(min, max) pair", "4.6")),
    "params bounds string": (lambda: ScaleMonitor(params={"logit_scale": "04"}), MisconfigurationException,
                             ("`params['logit_scale']`", "(min, max) pair", "'04'")),
    "params not a mapping": (lambda: ScaleMonitor(params=["logit_scale"]), MisconfigurationException,
                             ("`params`", "['logit_scale']")),
    "params key not a name": (lambda: ScaleMonitor(params={3: (0.0, 1.0)}), MisconfigurationException,
                              ("`params`", "got 3")),
}


def test_matrix_is_big_enough():
    assert len(CASES) >= 20


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_argument_is_named_with_its_value(case):
    build, error, must_contain = CASES[case]
    with pytest.raises(Exception) as info:
        build()
    # ScaleMonitor's MisconfigurationException is both Lightning packages' at once
    assert issubclass(info.type, error), f"{case}: raised {info.type.__name__}: {info.value}"
    message = str(info.value)
    for part in must_contain:
        assert part in message, f"{case}: {part!r} not in {message!r}"


def test_valid_edges_are_accepted():
    """The edges of each valid range are not errors (every_n_steps=1, warn_fraction=1, patience=1,
    bias_scale exactly at a bound)."""
    ScaleMonitor(every_n_steps=1, warn_fraction=1.0, patience=1, params={"logit_scale": [0.0, 4.6052]},
                 on_saturation="stop", plot_every_n_checks=1, max_plot_panels=1)
    assert AttentionBiasGenerator(bias_scale=5.0, min_scale=0.5, max_scale=5.0).scale.item() == 5.0
    assert AttentionBiasGenerator(bias_scale=0.5, min_scale=0.5, max_scale=5.0).scale.item() == 0.5
    AttentionBiasGenerator(**dict(bias_scale=2.5, learnable_scale=True, min_scale=0.5, max_scale=5.0,
                                  use_local_bias=True, fp16=True))


# ---- errors that need the model: raised in setup, before the first step ------------------------

@pytest.mark.parametrize("params, must_contain", [
    ({"logit_scal": (0.0, 4.6052)}, ("`params`", "'logit_scal'", "not a parameter or buffer", "'logit_scale'")),
    ({"*.temperature": (None, 4.6052)}, ("`params`", "'*.temperature'", "matches no parameter")),
], ids=["missing parameter", "pattern matching nothing"])
def test_params_the_model_lacks_fail_before_the_first_step(tmp_path, params, must_contain):
    trainer = make_trainer(tmp_path, max_steps=4, callbacks=[ScaleMonitor(every_n_steps=1, params=params)])
    with pytest.raises(Exception) as info:
        trainer.fit(LogitScaleModel())
    assert issubclass(info.type, MisconfigurationException), f"{info.type.__name__}: {info.value}"
    for part in must_contain:
        assert part in str(info.value), f"{part!r} not in {str(info.value)!r}"
    assert trainer.global_step == 0
    assert not list(tmp_path.rglob(HISTORY_FILENAME)) and not list(tmp_path.rglob(PLOT_FILENAME))


# ---- a log directory that cannot be written: training goes on ----------------------------------

def _cannot_write_warnings(caught):
    return [w for w in caught if "cannot write its history file" in str(w.message)]


def _check_memory_readings(monitor, steps):
    assert not monitor.history.on_disk
    kept = monitor.history.records()
    assert [r["step"] for r in kept] == steps
    assert all(r["name"] == GEN and math.isfinite(r["scale"]) for r in kept)
    return kept


def test_log_dir_under_a_regular_file(tmp_path):
    """The run's log directory is ``some_file/sub``: nothing (not even root) can create it."""
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a regular file\n")
    bad_dir = blocker / "sub"
    memory = MemoryLogger(save_dir=str(bad_dir))           # first logger: trainer.log_dir = bad_dir
    csv_logger = CSVLogger(str(tmp_path), name="csv")     # a second logger that can write
    monitor = ScaleMonitor(every_n_steps=2)
    trainer = make_trainer(tmp_path, max_steps=8, logger=[memory, csv_logger], callbacks=[monitor])
    assert trainer.log_dir == str(bad_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(DriftModel(lr=0.05))
    assert trainer.global_step == 8                        # training went on
    found = _cannot_write_warnings(caught)
    assert len(found) == 1, [str(w.message) for w in caught]
    assert str(bad_dir / HISTORY_FILENAME) in str(found[0].message)
    kept = _check_memory_readings(monitor, [1, 3, 5, 7])
    # ... and in the loggers, the same values
    in_memory_logger = {s: m[metric_key(GEN, "scale")] for s, m in memory.metrics if metric_key(GEN, "scale") in m}
    assert in_memory_logger == {r["step"]: r["scale"] for r in kept}
    rows = read_csv_metrics(csv_logger.log_dir)
    assert csv_series(rows, metric_key(GEN, "scale")) == pytest.approx({r["step"]: r["scale"] for r in kept})
    assert not bad_dir.exists() and blocker.read_text() == "a regular file\n"


def test_history_path_taken_by_a_directory(tmp_path):
    """The log directory exists but its history file cannot be opened (a directory holds the
    name): TensorBoard and CSV, writing in the same directory, get every reading."""
    tb = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    (tmp_path / "tb" / "version_0" / HISTORY_FILENAME).mkdir(parents=True)
    monitor = ScaleMonitor(every_n_steps=2)
    csv_logger = CSVLogger(str(tmp_path), name="csv", version=0)
    trainer = make_trainer(tmp_path, max_steps=8, logger=[tb, csv_logger], callbacks=[monitor])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(DriftModel(lr=0.05))
    assert trainer.global_step == 8
    assert len(_cannot_write_warnings(caught)) == 1, [str(w.message) for w in caught]
    kept = _check_memory_readings(monitor, [1, 3, 5, 7])
    rows = read_csv_metrics(csv_logger.log_dir)
    assert csv_series(rows, metric_key(GEN, "raw")) == pytest.approx({r["step"]: r["raw"] for r in kept})
    from .support import read_tb, tb_series
    acc = read_tb(tb.log_dir)
    assert tb_series(acc, metric_key(GEN, "scale")) == pytest.approx({r["step"]: r["scale"] for r in kept})


def test_no_logger_and_default_root_dir_under_a_file(tmp_path):
    """logger=False: the history goes to default_root_dir, which here cannot be created."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monitor = ScaleMonitor(every_n_steps=2)
    trainer = make_trainer(blocker / "sub", max_steps=6, logger=False, callbacks=[monitor])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(DriftModel(lr=0.05))
    assert trainer.global_step == 6
    assert len(_cannot_write_warnings(caught)) == 1, [str(w.message) for w in caught]
    _check_memory_readings(monitor, [1, 3, 5])
