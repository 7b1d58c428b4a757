"""Atomic checkpoints that know the network they hold, and resuming, as ignite handlers.

MONAI's ``CheckpointSaver`` writes with ``atomic=False``, so an interruption while saving can leave a
truncated file in place of the last good one. These handlers write to a temporary file in the same folder
and ``os.replace`` it, so a checkpoint on disk is always complete; only rank 0 writes under torchrun.

Every checkpoint also records the **network settings** of the bundle that trained it (``image_size``, widths,
heads, pruner options, channels and classes: the keys ``network_def`` reads), so ``evaluate.json``,
``inference.json``, the export, a shared zip and the MONAI Label app build the same network without the
training overrides (docs/design.md §9). Weights files (``model.pt``, ``model_final.pt``) are
``{"model": state_dict, "network_settings": {...}}``: MONAI's ``CheckpointLoader`` with
``load_dict={"model": network}`` reads them as it reads a plain state dict.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from prato_components.atomic import atomic_open, atomic_write_text
from prato_components.engine.distributed import is_writer_rank, unwrap

__all__ = [
    "RUN_TIME_SETTINGS",
    "atomic_save",
    "load_weights",
    "trained_settings",
    "differing_settings",
    "check_trained_settings",
    "TrainingCheckpoint",
    "BestModelSaver",
]

RUN_TIME_SETTINGS = ("keep_ratio", "executor", "fill", "protect_boxes", "decode_region", "decode_margin")
"""Network settings that may differ between training and inference (the same weights serve them all); the others
(sizes, widths, heads, stages, channels) fix the shapes of the weights."""

logger = logging.getLogger(__name__)


def atomic_save(obj, path: str) -> None:
    """``torch.save(obj, path)`` through a temporary file and ``os.replace`` (never a partial file)."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def _weights_file(network: torch.nn.Module, settings: Mapping | None) -> dict:
    return {"model": unwrap(network).state_dict(), "network_settings": dict(settings or {})}


def _load(path: str, **kwargs: Any) -> Any:
    """``torch.load(path, weights_only=True)``; ``ValueError`` naming ``path`` when it is not a readable checkpoint
    (torch's own error for a corrupt file can be as bare as ``IndexError: pop from empty list``)."""
    try:
        return torch.load(path, weights_only=True, **kwargs)
    except Exception as error:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"weights {path} are not a readable torch checkpoint (corrupt, truncated or another "
                         f"format?): {type(error).__name__}: {error}") from error


def load_weights(path: str, map_location: Any = "cpu") -> tuple[dict, dict]:
    """The state dict and the network settings in a checkpoint: a weights file (``{"model": ...}``), a training
    checkpoint (``{"network": ...}``, e.g. ``last.pt``) or a plain state dict (no settings: ``{}``)."""
    state = _load(path, map_location=map_location)
    settings = state.get("network_settings", {}) if isinstance(state, dict) else {}
    for key in ("model", "network", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            return state[key], dict(settings)
    return state, dict(settings)


def trained_settings(path: str) -> dict:
    """The network settings recorded in checkpoint ``path``; ``{}`` when it does not exist or records none."""
    if not os.path.isfile(path):
        return {}
    try:
        state = _load(path, map_location="cpu", mmap=True)  # reads only the settings' bytes of a large file
    except ValueError:
        state = _load(path, map_location="cpu")  # a legacy (non-zip) file cannot be memory-mapped
    return dict(state.get("network_settings", {})) if isinstance(state, dict) else {}


def differing_settings(trained: Mapping, current: Mapping, run_time: Sequence[str] = RUN_TIME_SETTINGS) -> dict:
    """``{key: (trained value, current value)}`` for the shape-fixing settings that differ."""
    return {k: (trained[k], current[k]) for k in current if k in trained and k not in run_time
            and _comparable(trained[k]) != _comparable(current[k])}


def _comparable(value: Any) -> Any:
    return [_comparable(v) for v in value] if isinstance(value, (list, tuple)) else value


def check_trained_settings(trained: Mapping, current: Mapping, checkpoint: str) -> None:
    """``ValueError`` naming every shape-fixing setting of this run that differs from the checkpoint's, with the
    override that fixes it (the checkpoint's values are the defaults of ``evaluate.json`` and ``inference.json``,
    so only an explicit override can differ)."""
    differ = differing_settings(trained, current)
    if differ:
        listed = ", ".join(f"{k}={t!r} (this run: {c!r})" for k, (t, c) in differ.items())
        fix = " ".join(f"--{k} {json_text(t)}" for k, (t, _) in differ.items())
        raise ValueError(f"{checkpoint} holds a network trained with {listed}; drop those overrides (the "
                         f"checkpoint's settings are used by default) or pass {fix}")


def json_text(value: Any) -> str:
    """A setting as it is typed on the command line."""
    return json.dumps(value).replace(" ", "")


def _state_dicts(objects: Mapping) -> dict:
    out = {}
    for name, obj in objects.items():
        obj = unwrap(obj)
        out[name] = obj.state_dict()
    return out


class TrainingCheckpoint:
    """Save everything needed to resume (``last.pt``) after every epoch, and resume from it at start.

    Args:
        save_dir: checkpoint folder.
        save_dict: objects with ``state_dict``/``load_state_dict``, e.g. ``{"network": net, "optimizer": opt}``.
        engine_key: the engine the handler is attached to is saved too under this key (its state restores the
            epoch and iteration counters); ``None`` leaves it out.
        resume: load ``save_dir/last.pt`` when training starts, if it exists.
        filename: name of the resume checkpoint.
        final_filename: also write the network weights alone under this name when training completes.
        settings: the bundle's network settings, recorded in every file written; resuming from a ``last.pt``
            whose shape-fixing settings differ is a ``ValueError`` naming them.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: Mapping,
        resume: bool = True,
        filename: str = "last.pt",
        final_filename: str | None = "model_final.pt",
        network_key: str = "network",
        engine_key: str | None = "trainer",
        settings: Mapping | None = None,
    ) -> None:
        self.save_dir, self.save_dict, self.resume = save_dir, dict(save_dict), resume
        self.settings = dict(settings or {})
        self.engine_key = engine_key
        self.path = os.path.join(save_dir, filename)
        self.final_path = os.path.join(save_dir, final_filename) if final_filename else None
        self.network_key = network_key

    def attach(self, engine: Engine) -> None:
        if self.engine_key:
            self.save_dict[self.engine_key] = engine
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)
        if self.final_path:
            engine.add_event_handler(Events.COMPLETED, self.save_final)

    def load(self, engine: Engine) -> None:
        if not (self.resume and os.path.exists(self.path)):
            return
        max_epochs = engine.state.max_epochs
        checkpoint = torch.load(self.path, map_location="cpu", weights_only=False)
        differ = differing_settings(checkpoint.get("network_settings", {}), self.settings)
        if differ:
            listed = ", ".join(f"{k}={t!r} (this run: {c!r})" for k, (t, c) in differ.items())
            raise ValueError(f"{self.path} was written by a run with {listed}; resume with those settings, train into "
                             "another bundle_root, or pass --resume False to start afresh (last.pt is overwritten)")
        objects = {k: unwrap(v) for k, v in self.save_dict.items() if k in checkpoint}
        Checkpoint.load_objects(to_load=objects, checkpoint=checkpoint)
        engine.state.max_epochs = max_epochs
        logger.info("resumed from %s at epoch %d of %d", self.path, engine.state.epoch, max_epochs)

    def save(self, engine: Engine) -> None:
        if is_writer_rank():
            atomic_save({**_state_dicts(self.save_dict), "network_settings": self.settings}, self.path)

    def save_final(self, engine: Engine) -> None:
        if is_writer_rank():
            atomic_save(_weights_file(self.save_dict[self.network_key], self.settings), self.final_path)


class BestModelSaver:
    """Write the network weights to ``save_dir/filename`` whenever the evaluator's key metric improves.

    Attach to the validation evaluator. The best value survives resuming through ``best_metric.txt``. The file
    records ``settings`` (the bundle's network settings) beside the weights.
    """

    def __init__(self, save_dir: str, network: torch.nn.Module, metric_name: str, filename: str = "model.pt",
                 settings: Mapping | None = None) -> None:
        self.save_dir, self.network, self.metric_name = save_dir, network, metric_name
        self.settings = dict(settings or {})
        self.path = os.path.join(save_dir, filename)
        self.record = os.path.join(save_dir, "best_metric.txt")

    def best(self) -> float:
        if os.path.exists(self.record):
            with open(self.record) as f:
                return float(f.read().split()[0])
        return float("-inf")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        value = float(engine.state.metrics[self.metric_name])
        if not is_writer_rank() or value <= self.best():
            return
        atomic_save(_weights_file(self.network, self.settings), self.path)
        atomic_write_text(f"{value}\n", self.record)
        logger.info("new best %s = %.4f -> %s", self.metric_name, value, self.path)
