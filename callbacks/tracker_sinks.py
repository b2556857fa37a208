"""Trackers handed to a door as plain objects (Ignite's loggers, an MLflow run) as the engine's sinks.

Recognised by their module, so nothing here imports a tracker that is not in use:
Ignite's ``TensorboardLogger`` (its ``SummaryWriter``), ``WandBLogger`` (its W&B run) and
``MLflowLogger`` (the fluent API's active run); a :class:`ScaleSink` as it is; anything else
with ``log_metrics(metrics, step)`` as a :class:`MetricsSink`.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from scalewatch.callbacks.logger_sinks import MetricsSink, ScaleSink, TensorBoardSink, WandbSink


def _kind(logger: Any) -> str:
    cls = type(logger)
    return f"{cls.__module__}.{cls.__name__}"


def _is_ignite_mlflow(logger: Any) -> bool:
    return _kind(logger).startswith("ignite.") and type(logger).__name__ == "MLflowLogger"


def tracker_log_dir(loggers: Sequence[Any]) -> Optional[str]:
    """A folder of the MLflow run among ``loggers`` (see :func:`~scalewatch.callbacks.mlflow_sink.run_log_dir`)."""
    for logger in loggers:
        if _is_ignite_mlflow(logger):
            import mlflow

            from scalewatch.callbacks.mlflow_sink import run_log_dir

            run = mlflow.active_run()
            if run is not None:
                return run_log_dir(mlflow.tracking.MlflowClient(mlflow.get_tracking_uri()), run.info.run_id)
    return None


def tracker_sink(logger: Any, log_dir: Optional[str] = None) -> ScaleSink:
    """``logger`` as the engine's sink (see the module docstring)."""
    if isinstance(logger, ScaleSink):
        return logger
    kind = _kind(logger)
    if kind.startswith("ignite.") and type(logger).__name__ == "TensorboardLogger":
        return TensorBoardSink(logger.writer)
    if kind.startswith("ignite.") and type(logger).__name__ == "WandBLogger":
        return WandbSink(logger._wandb.run)
    if _is_ignite_mlflow(logger):
        from scalewatch.callbacks.mlflow_sink import active_run_sink

        sink = active_run_sink(log_dir)
        if sink is None:
            raise ValueError("the Ignite MLflowLogger has no active MLflow run")
        return sink
    return MetricsSink(logger)


__all__ = ["tracker_log_dir", "tracker_sink"]
