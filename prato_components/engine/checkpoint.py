"""Atomic checkpoints that know the network they hold, and resuming, as ignite handlers.

MONAI's ``CheckpointSaver`` writes with ``atomic=False``, so an interruption while saving can leave a
truncated file in place of the last good one. These handlers write to a temporary file in the same folder
and ``os.replace`` it, so a checkpoint on disk is always complete; only rank 0 writes under torchrun.

Every checkpoint also records the **network settings** of the bundle that trained it (``image_size``, widths,
heads, pruner options, channels and classes: the keys ``network_def`` reads), so ``evaluate.json``,
``inference.json``, the export, a shared zip and the MONAI Label app build the same network without the
training overrides (docs/design.md §9). Every file keeps the weights under one key, ``"model"`` (the Model Zoo's):
weights files (``model.pt``, ``model_final.pt``) are ``{"model": state_dict, "network_settings": {...}}`` and
``last.pt`` adds the training state, so MONAI's ``CheckpointLoader`` with ``load_dict={"model": network}`` reads any of
them. Older files that keep the weights under ``"network"`` (or under both keys) still load.

A **fresh run** (``resume`` false, or no ``last.pt``) first moves the outputs of the run that trained in the folder
before (:data:`RUN_FILES`) into ``models/previous-<time>/``, so no older weights are left beside the new run's, and
``best_metric.txt`` records the id of the run that wrote it (``training_run.json``): a best value of another run is
never compared against. ``last.pt`` records every random state (torch, CUDA, numpy, python, the data loader's
generators, the streams of MONAI's randomizable transforms), so a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from monai.transforms import Randomizable, Transform

from prato_components.atomic import atomic_open, atomic_write_text
from prato_components.engine.distributed import is_writer_rank, unwrap
from prato_components.errors import InputError, UserError

__all__ = [
    "RUN_FILES",
    "RUN_TIME_SETTINGS",
    "WEIGHTS_KEY",
    "atomic_save",
    "read_checkpoint",
    "set_aside_previous_run",
    "random_state",
    "restore_random_state",
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

WEIGHTS_KEY = "model"
"""The one key under which every checkpoint keeps the network weights (MONAI's ``CheckpointLoader`` convention)."""
LEGACY_WEIGHTS_KEYS = ("network", "state_dict")
"""Keys older checkpoints (or other tools) keep the weights under; read when ``"model"`` is absent."""
RUN_FILES = ("last.pt", "model.pt", "model_final.pt", "model.pt2", "best_metric.txt", "val_per_class.json",
             "training_run.json")
"""What a training run writes into ``models/`` (the split, ``datalist_*.json``, is shared by every run and stays)."""
RUN_RECORD = "training_run.json"
STREAM_COUNTERS = ("_train_calls",)
"""Module attributes that seed a module's own random stream and live outside its state dict (``RandomPruner``)."""
LEGACY_RUN = "legacy"
"""The run id of a ``last.pt`` or ``best_metric.txt`` written before runs had ids."""

logger = logging.getLogger(__name__)


def atomic_save(obj, path: str) -> None:
    """``torch.save(obj, path)`` through a temporary file and ``os.replace`` (never a partial file)."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def _weights_file(network: torch.nn.Module, settings: Mapping | None) -> dict:
    return {WEIGHTS_KEY: unwrap(network).state_dict(), "network_settings": dict(settings or {})}


def read_checkpoint(path: str, fix: str, what: str = "checkpoint", **kwargs: Any) -> Any:
    """``torch.load(path, weights_only=True)``; an :class:`~prato_components.errors.InputError` (a ``UserError``
    and a ``ValueError``) naming ``path`` and saying how to proceed (``fix``) when it is not a readable checkpoint
    (torch's own error for a truncated file, ``PytorchStreamReader failed reading zip archive``, names neither)."""
    try:
        return torch.load(path, weights_only=True, **kwargs)
    except Exception as error:  # noqa: BLE001 - re-raised with the file named
        raise InputError(f"{what} {path} is not a readable torch checkpoint (corrupt, truncated or another format?): "
                         f"{type(error).__name__}: {error}", fix=fix) from error


def _load(path: str, **kwargs: Any) -> Any:
    return read_checkpoint(path, fix=f"delete or replace {path}: train again, or pass --ckpt_path with another "
                           "checkpoint (e.g. models/model_final.pt)", **kwargs)


def load_weights(path: str, map_location: Any = "cpu") -> tuple[dict, dict]:
    """The state dict and the network settings in a checkpoint: a weights file or ``last.pt`` (``{"model": ...}``),
    an older one (``{"network": ...}``, or both keys) or a plain state dict (no settings: ``{}``)."""
    state = _load(path, map_location=map_location)
    settings = state.get("network_settings", {}) if isinstance(state, dict) else {}
    for key in (WEIGHTS_KEY, *LEGACY_WEIGHTS_KEYS):
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
    return {name: unwrap(obj).state_dict() for name, obj in objects.items()}


# ------------------------------------------------------------------------------------------------------ random states
def _randomizables(root: Any) -> list[Randomizable]:
    """Every MONAI ``Randomizable`` in ``root`` (a transform, a ``Compose``, a list of them) and in the transforms it
    holds (``RandAffined`` keeps a ``RandAffine`` with a ``RandAffineGrid``, each with a stream), in a fixed order."""
    found: list[Randomizable] = []
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (list, tuple)):
            stack.extend(reversed(obj))
            continue
        if isinstance(obj, Randomizable):
            found.append(obj)
        if isinstance(obj, (Randomizable, Transform)):
            stack.extend(v for v in reversed(list(vars(obj).values()))
                         if isinstance(v, (Randomizable, Transform, list, tuple)))
    return found


def _numpy_state(state: tuple) -> dict:
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _numpy_tuple(state: Mapping) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return state["name"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"]


def _generators(loader: Any) -> dict[str, torch.Generator]:
    """The torch generators a data loader draws its order and worker seeds from, when it was given its own."""
    found = {"loader": getattr(loader, "generator", None), "sampler": getattr(getattr(loader, "sampler", None),
                                                                             "generator", None)}
    return {k: g for k, g in found.items() if isinstance(g, torch.Generator)}


def _stream_counters(network: torch.nn.Module | None) -> dict[str, dict[str, int]]:
    """``{module name: {counter: value}}`` for the modules of ``network`` that seed a random stream of their own from
    a counter kept outside their state dict (:data:`STREAM_COUNTERS`)."""
    if network is None:
        return {}
    return {name: {c: int(getattr(m, c)) for c in STREAM_COUNTERS if isinstance(getattr(m, c, None), int)}
            for name, m in unwrap(network).named_modules() if any(hasattr(m, c) for c in STREAM_COUNTERS)}


def random_state(loader: Any = None, network: torch.nn.Module | None = None) -> dict:
    """Every random state a training epoch draws from: torch (CPU and CUDA), numpy, python ``random``, the data
    loader's own generators, the streams of the randomizable transforms of its dataset (those draw in the main
    process when ``num_workers`` is 0; worker processes are seeded from torch's generator) and the stream counters
    of ``network``'s modules (``RandomPruner`` seeds each training draw from a call count)."""
    transforms = _randomizables(getattr(getattr(loader, "dataset", None), "transform", None))
    python = random.getstate()
    return {
        "modules": _stream_counters(network),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": _numpy_state(np.random.get_state()),
        "python": [python[0], list(python[1]), python[2]],
        "generators": {k: g.get_state() for k, g in _generators(loader).items()},
        "transforms": [_numpy_state(t.R.get_state()) for t in transforms],
    }


def restore_random_state(state: Mapping, loader: Any = None, network: torch.nn.Module | None = None) -> None:
    """Set the random states recorded by :func:`random_state`; a warning where the transforms differ in number
    (another pipeline: their streams stay as seeded)."""
    modules = dict(unwrap(network).named_modules()) if network is not None else {}
    for name, counters in state.get("modules", {}).items():
        for counter, value in counters.items():
            if name in modules:
                setattr(modules[name], counter, value)
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(_numpy_tuple(state["numpy"]))
    version, values, gauss = state["python"]
    random.setstate((version, tuple(values), gauss))
    for name, generator in _generators(loader).items():
        if name in state["generators"]:
            generator.set_state(state["generators"][name])
    transforms = _randomizables(getattr(getattr(loader, "dataset", None), "transform", None))
    if len(transforms) != len(state["transforms"]):
        logger.warning("the checkpoint records %d random transform streams, this pipeline has %d: they are not "
                       "restored (the resumed run is not the uninterrupted one)", len(state["transforms"]),
                       len(transforms))
        return
    for transform, recorded in zip(transforms, state["transforms"]):
        transform.R.set_state(_numpy_tuple(recorded))


# -------------------------------------------------------------------------------------------------------- runs
def run_id(save_dir: str) -> str:
    """The id of the run training into ``save_dir`` (``training_run.json``); :data:`LEGACY_RUN` when there is none."""
    path = os.path.join(save_dir, RUN_RECORD)
    if not os.path.isfile(path):
        return LEGACY_RUN
    with open(path) as f:
        return str(json.load(f).get("run_id", LEGACY_RUN))


def _new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


def set_aside_previous_run(save_dir: str) -> str | None:
    """Move what an earlier run wrote into ``save_dir`` (:data:`RUN_FILES`) into ``save_dir/previous-<time>/``,
    one ``os.replace`` per file (each file is in one place or the other, never lost), and log where; the folder, or
    ``None`` when there was nothing but a ``training_run.json``. A ``UserError`` saying how to proceed if moving
    fails."""
    present = [f for f in RUN_FILES if os.path.lexists(os.path.join(save_dir, f))]
    if not [f for f in present if f != RUN_RECORD]:
        return None
    target = stem = os.path.join(save_dir, f"previous-{time.strftime('%Y%m%d-%H%M%S')}")
    attempt = 1
    while os.path.lexists(target):  # an earlier set in the same second
        attempt += 1
        target = f"{stem}-{attempt}"
    try:
        os.mkdir(target)
        for name in present:
            os.replace(os.path.join(save_dir, name), os.path.join(target, name))
    except OSError as error:
        raise UserError(f"a new run cannot move the previous run's outputs in {save_dir} ({', '.join(present)}) "
                        f"aside to {target}: {error}",
                        fix="move or delete them yourself, or train into another folder (--bundle_root)") from error
    logger.warning("a new run starts in %s: the previous run's outputs (%s) were moved to %s", save_dir,
                   ", ".join(present), target)
    return target


def _rank_and_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _every_rank(state: dict) -> list[dict]:
    """``[state of rank 0, state of rank 1, ...]`` (a collective under torchrun: every rank calls it)."""
    size = _rank_and_size()[1]
    if size == 1:
        return [state]
    states: list = [None] * size
    dist.all_gather_object(states, state)
    return states


def _this_rank(states: list[dict]) -> dict:
    """This process's entry of :func:`_every_rank`'s list (the last one where the run has more processes)."""
    rank, size = _rank_and_size()
    if len(states) != size:
        logger.warning("the checkpoint records the random states of %d processes, this run has %d: process %d "
                       "restores those of process %d", len(states), size, rank, min(rank, len(states) - 1))
    return states[min(rank, len(states) - 1)]


class TrainingCheckpoint:
    """Save everything needed to resume (``last.pt``) after every epoch, and resume from it at start.

    A run that does not resume (``resume`` false, or no ``last.pt``) is a new run: it first moves the outputs of
    the previous run in ``save_dir`` aside (:func:`set_aside_previous_run`) and records its own id in
    ``training_run.json``.

    Args:
        save_dir: checkpoint folder.
        save_dict: objects with ``state_dict``/``load_state_dict``, e.g. ``{"model": net, "optimizer": opt}``.
        resume: load ``save_dir/last.pt`` when training starts, if it exists.
        filename: name of the resume checkpoint.
        final_filename: also write the network weights alone under this name when training completes.
        network_key: the ``save_dict`` key of the network.
        engine_key: the engine the handler is attached to is saved too under this key (its state restores the
            epoch and iteration counters); ``None`` leaves it out.
        settings: the bundle's network settings, recorded in every file written; resuming from a ``last.pt``
            whose shape-fixing settings differ is an ``InputError`` (a ``ValueError``) naming them.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: Mapping,
        resume: bool = True,
        filename: str = "last.pt",
        final_filename: str | None = "model_final.pt",
        network_key: str = WEIGHTS_KEY,
        engine_key: str | None = "trainer",
        settings: Mapping | None = None,
    ) -> None:
        self.save_dir, self.save_dict, self.resume = save_dir, dict(save_dict), resume
        self.settings = dict(settings or {})
        self.engine_key = engine_key
        self.path = os.path.join(save_dir, filename)
        self.final_path = os.path.join(save_dir, final_filename) if final_filename else None
        self.network_key = network_key
        self.run_id = LEGACY_RUN

    def attach(self, engine: Engine) -> None:
        if self.engine_key:
            self.save_dict[self.engine_key] = engine
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)
        if self.final_path:
            engine.add_event_handler(Events.COMPLETED, self.save_final)

    def load(self, engine: Engine) -> None:
        if not (self.resume and os.path.exists(self.path)):
            self.run_id = _new_run_id()
            if is_writer_rank():
                set_aside_previous_run(self.save_dir)
                self._record_run()
            return
        max_epochs = engine.state.max_epochs
        checkpoint = read_checkpoint(self.path, what="resume checkpoint", map_location="cpu",
                                     fix=f"delete {self.path} to train from the start, or pass --resume False "
                                     "(the previous run's files are then moved to models/previous-<time>/)")
        differ = differing_settings(checkpoint.get("network_settings", {}), self.settings)
        if differ:
            listed = ", ".join(f"{k}={t!r} (this run: {c!r})" for k, (t, c) in differ.items())
            raise InputError(f"{self.path} was written by a run with {listed}",
                             fix="resume with those settings, train into another --bundle_root, or pass --resume False "
                             "to start afresh (the previous run's files are then moved to models/previous-<time>/)")
        for key in LEGACY_WEIGHTS_KEYS:
            if self.network_key not in checkpoint and key in checkpoint:
                checkpoint[self.network_key] = checkpoint[key]
        objects = {k: unwrap(v) for k, v in self.save_dict.items() if k in checkpoint}
        Checkpoint.load_objects(to_load=objects, checkpoint=checkpoint)
        engine.state.max_epochs = max_epochs
        if "random_state" in checkpoint:
            restore_random_state(_this_rank(checkpoint["random_state"]), engine.state.dataloader,
                                 self.save_dict.get(self.network_key))
        else:
            logger.warning("%s records no random states (written by an older version): the resumed run draws other "
                           "augmentations and data order than an uninterrupted one would", self.path)
        self.run_id = str(checkpoint.get("run_id", LEGACY_RUN))
        if is_writer_rank() and run_id(self.save_dir) != self.run_id:
            self._record_run()
        logger.info("resumed from %s at epoch %d of %d", self.path, engine.state.epoch, max_epochs)

    def _record_run(self) -> None:
        record = {"run_id": self.run_id, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "network_settings": self.settings}
        atomic_write_text(json.dumps(record, indent=1, default=str), os.path.join(self.save_dir, RUN_RECORD))

    def save(self, engine: Engine) -> None:
        states = _every_rank(random_state(engine.state.dataloader, self.save_dict.get(self.network_key)))
        if is_writer_rank():
            atomic_save({**_state_dicts(self.save_dict), "network_settings": self.settings, "run_id": self.run_id,
                         "random_state": states}, self.path)

    def save_final(self, engine: Engine) -> None:
        if is_writer_rank():
            atomic_save(_weights_file(self.save_dict[self.network_key], self.settings), self.final_path)


class BestModelSaver:
    """Write the network weights to ``save_dir/filename`` whenever the evaluator's key metric improves.

    Attach to the validation evaluator. The best value survives resuming through ``best_metric.txt``, which records
    the id of the run that wrote it (``training_run.json``, written by :class:`TrainingCheckpoint`): a value recorded by
    another run is never compared against. The file records ``settings`` (the bundle's network settings) beside the
    weights.
    """

    def __init__(self, save_dir: str, network: torch.nn.Module, metric_name: str, filename: str = "model.pt",
                 settings: Mapping | None = None) -> None:
        self.save_dir, self.network, self.metric_name = save_dir, network, metric_name
        self.settings = dict(settings or {})
        self.path = os.path.join(save_dir, filename)
        self.record = os.path.join(save_dir, "best_metric.txt")

    def best(self, run: str | None = None) -> float:
        """The best value recorded by run ``run`` (default: the current run of ``save_dir``); ``-inf`` if none."""
        run = run_id(self.save_dir) if run is None else run
        if not os.path.exists(self.record):
            return float("-inf")
        with open(self.record) as f:
            fields = f.read().split()
        recorded = fields[1] if len(fields) > 1 else LEGACY_RUN
        if recorded != run:
            logger.warning("%s was written by run %s, not by this run (%s): not compared against", self.record,
                           recorded, run)
            return float("-inf")
        return float(fields[0])

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        value = float(engine.state.metrics[self.metric_name])
        if not is_writer_rank():
            return
        run = run_id(self.save_dir)
        if value <= self.best(run):
            return
        atomic_save(_weights_file(self.network, self.settings), self.path)
        atomic_write_text(f"{value} {run}\n", self.record)
        logger.info("new best %s = %.4f -> %s", self.metric_name, value, self.path)
