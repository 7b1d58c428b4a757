"""Atomic checkpoints and resuming, as ignite handlers.

MONAI's ``CheckpointSaver`` writes with ``atomic=False``, so an interruption while saving can leave a
truncated file in place of the last good one. These handlers write to a temporary file in the same folder
and ``os.replace`` it, so a checkpoint on disk is always complete; only rank 0 writes under torchrun.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from prato_components.atomic import atomic_open, atomic_write_text
from prato_components.engine.distributed import is_writer_rank, unwrap

__all__ = ["atomic_save", "TrainingCheckpoint", "BestModelSaver"]

logger = logging.getLogger(__name__)


def atomic_save(obj, path: str) -> None:
    """``torch.save(obj, path)`` through a temporary file and ``os.replace`` (never a partial file)."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


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
    ) -> None:
        self.save_dir, self.save_dict, self.resume = save_dir, dict(save_dict), resume
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
        objects = {k: unwrap(v) for k, v in self.save_dict.items() if k in checkpoint}
        Checkpoint.load_objects(to_load=objects, checkpoint=checkpoint)
        engine.state.max_epochs = max_epochs
        logger.info("resumed from %s at epoch %d of %d", self.path, engine.state.epoch, max_epochs)

    def save(self, engine: Engine) -> None:
        if is_writer_rank():
            atomic_save(_state_dicts(self.save_dict), self.path)

    def save_final(self, engine: Engine) -> None:
        if is_writer_rank():
            network = unwrap(self.save_dict[self.network_key])
            atomic_save(network.state_dict(), self.final_path)


class BestModelSaver:
    """Write the network weights to ``save_dir/filename`` whenever the evaluator's key metric improves.

    Attach to the validation evaluator. The best value survives resuming through ``best_metric.txt``.
    """

    def __init__(self, save_dir: str, network: torch.nn.Module, metric_name: str, filename: str = "model.pt") -> None:
        self.save_dir, self.network, self.metric_name = save_dir, network, metric_name
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
        atomic_save(unwrap(self.network).state_dict(), self.path)
        atomic_write_text(f"{value}\n", self.record)
        logger.info("new best %s = %.4f -> %s", self.metric_name, value, self.path)
