"""Metric writers: the console, a JSON-lines file and (optionally) TensorBoard.

TensorBoard event files are written with ``tensorboardX`` (no TensorFlow needed), an
optional dependency: without it :func:`create_default_writer` writes the console and
``metrics.jsonl`` only. Only process 0 writes; the other hosts get a writer that drops
everything.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Protocol

import jax
import numpy as np

_LOG = logging.getLogger(__name__)

Scalars = Mapping[str, float]


class MetricWriter(Protocol):
    """Writes scalars per step (the subset of ``clu.metric_writers`` that we use)."""

    def write_scalars(self, step: int, scalars: Scalars) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def json_ready(value):
    """``value`` for ``json.dump``: NumPy arrays as lists, NumPy scalars as Python numbers,
    non-finite floats as None (JSON has no NaN or Infinity), mapping keys as strings."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


def _as_float(value) -> float:
    return float(np.asarray(value))


class LoggingWriter:
    """Logs ``step: name=value, ...`` through :mod:`logging` at INFO."""

    def __init__(self, prefix: str = ""):
        self._prefix = prefix

    def write_scalars(self, step: int, scalars: Scalars) -> None:
        text = ", ".join(f"{name}={_as_float(value):.6g}" for name, value in scalars.items())
        _LOG.info("%s[%d] %s", self._prefix, step, text)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlWriter:
    """Appends ``{"step": step, name: value, ...}`` lines to a file (NaN as ``null``)."""

    def __init__(self, path: str | os.PathLike):
        self._path = os.fspath(path)
        os.makedirs(os.path.dirname(self._path) or ".", exist_ok=True)
        self._file = open(self._path, "a", encoding="utf-8")

    def write_scalars(self, step: int, scalars: Scalars) -> None:
        record: dict[str, float | None] = {"step": int(step)}
        for name, value in scalars.items():
            value = _as_float(value)
            record[name] = None if math.isnan(value) else value
        self._file.write(json.dumps(record) + "\n")

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorBoardWriter:
    """TensorBoard event files in ``logdir`` through ``tensorboardX``."""

    def __init__(self, logdir: str | os.PathLike):
        import tensorboardX  # An optional extra (spectral_jax[train]): imported when used.

        self._writer = tensorboardX.SummaryWriter(os.fspath(logdir))

    def write_scalars(self, step: int, scalars: Scalars) -> None:
        for name, value in scalars.items():
            self._writer.add_scalar(name, _as_float(value), int(step))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class MultiWriter:
    """Forwards every call to several writers."""

    def __init__(self, writers: Sequence[MetricWriter]):
        self._writers = tuple(writers)

    def write_scalars(self, step: int, scalars: Scalars) -> None:
        for writer in self._writers:
            writer.write_scalars(step, scalars)

    def flush(self) -> None:
        for writer in self._writers:
            writer.flush()

    def close(self) -> None:
        for writer in self._writers:
            writer.close()


def tensorboard_available() -> bool:
    """Whether ``tensorboardX`` can be imported."""
    try:
        import tensorboardX  # noqa: F401 - the optional extra: only whether it imports.
    except ImportError:
        return False
    return True


def create_default_writer(
    workdir: str | os.PathLike, *, tensorboard: bool = True, console: bool = True
) -> MetricWriter:
    """Console, ``workdir/metrics.jsonl`` and TensorBoard events in ``workdir``.

    Args:
      workdir: the run's directory.
      tensorboard: also write event files when ``tensorboardX`` is installed (a warning
        is logged once otherwise).
      console: also log the scalars.

    Returns:
      a :class:`MetricWriter`; on processes other than 0 one that writes nothing.
    """
    if jax.process_index() != 0:
        return MultiWriter([])
    writers: list[MetricWriter] = [JsonlWriter(os.path.join(os.fspath(workdir), "metrics.jsonl"))]
    if console:
        writers.append(LoggingWriter())
    if tensorboard:
        if tensorboard_available():
            writers.append(TensorBoardWriter(workdir))
        else:
            _LOG.warning("tensorboardX is not installed: no TensorBoard event files.")
    return MultiWriter(writers)
