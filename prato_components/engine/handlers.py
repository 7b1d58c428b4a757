"""Ignite handlers for pruned networks: token sparsity (from the network's own reports), a pruning warm-up,
per-class validation Dice per epoch."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence

import torch
import torch.nn as nn
from ignite.engine import Engine, Events

from prato_components.atomic import atomic_write_text
from prato_components.engine.distributed import unwrap
from prato_components.pruners.base import TokenPruner
from prato_components.tokens.executor import kept_token_work

__all__ = ["PerClassHistory", "PruningWarmup", "TokenSparsityHandler", "keep_ratio_schedule", "summarise_token_reports"]


def summarise_token_reports(stage_reports: list, block_reports: list) -> dict[str, float]:
    """Token sparsity and kept fractions from the reports of several forward passes.

    Args:
        stage_reports: per forward pass, the network's ``token_report`` (``StageReport`` per pruned stage).
        block_reports: per forward pass, the network's ``block_report`` (``BlockReport`` per transformer block).

    Returns ``{"kept_fraction/stage<s>": tokens kept / tokens in at pruned stage s, "kept_fraction": the token-block
    work done over the work unpruned, "token_sparsity": 1 - kept_fraction}``, both averaged over images. Token
    sparsity is the fraction of the encoder's token-block work that pruning removed (defined once for every
    backbone in :func:`~prato_components.tokens.kept_token_work`); an unpruned network reports 0.
    """
    stage_in: dict[int, float] = {}
    stage_kept: dict[int, float] = {}
    for forward_reports in stage_reports:
        for report in forward_reports:
            stage_in[report.stage] = stage_in.get(report.stage, 0.0) + float(report.tokens_in.sum())
            stage_kept[report.stage] = stage_kept.get(report.stage, 0.0) + float(report.tokens_kept.sum())
    summary = {f"kept_fraction/stage{s}": stage_kept[s] / max(stage_in[s], 1.0) for s in sorted(stage_in)}
    per_image = [kept_token_work(blocks) for blocks in block_reports if blocks]
    summary["kept_fraction"] = float(torch.cat(per_image).mean()) if per_image else 1.0
    summary["token_sparsity"] = 1.0 - summary["kept_fraction"]
    return summary


class TokenSparsityHandler:
    """Collects ``network.token_report`` and ``network.block_report`` after every iteration and, at the end of
    each epoch, writes the token sparsity and kept fractions (:func:`summarise_token_reports`) into
    ``engine.state.metrics`` (so MONAI's ``StatsHandler``/checkpoint handlers see them) and logs them.

    With a sliding-window ``inferer`` (:class:`~prato_components.engine.PromptedSlidingWindowInferer`), the network
    runs once per window batch: the reports of every window batch are collected (``inferer.network_reports``), so the
    token metrics are means over the computed windows, and ``windows_computed`` / ``windows_total`` /
    ``windows_computed_fraction`` (summed over the epoch's images) are written too.

    Args:
        network: the pruned network (DDP-wrapped is fine); it must expose ``token_report`` and ``block_report``.
        prefix: metric name prefix.
        inferer: the engine's inferer, when it runs the network several times per iteration.
    """

    def __init__(self, network: nn.Module, prefix: str = "", logger_name: str | None = None,
                 inferer: object | None = None) -> None:
        self._network = [network]
        self.prefix = prefix
        self.logger = logging.getLogger(logger_name or __name__)
        self.inferer = inferer
        self._reports: list = []
        self._blocks: list = []
        self._windows = [0, 0]  # computed, total

    @property
    def network(self) -> nn.Module:
        return unwrap(self._network[0])

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._publish)

    def _reset(self, engine: Engine) -> None:
        self._reports, self._blocks, self._windows = [], [], [0, 0]

    def _collect(self, engine: Engine) -> None:
        window_report = getattr(self.inferer, "last_report", None)
        if window_report is not None:
            self._windows = [self._windows[0] + window_report.num_computed, self._windows[1] + window_report.total]
            for tokens, blocks in getattr(self.inferer, "network_reports", []):
                self._reports.append(tokens)
                self._blocks.append(blocks)
            return
        self._reports.append(list(getattr(self.network, "token_report", [])))
        self._blocks.append(list(getattr(self.network, "block_report", [])))

    def _publish(self, engine: Engine) -> None:
        summary = summarise_token_reports(self._reports, self._blocks)
        if self._windows[1]:
            summary.update({"windows_computed": float(self._windows[0]), "windows_total": float(self._windows[1]),
                            "windows_computed_fraction": self._windows[0] / self._windows[1]})
        for key, value in summary.items():
            engine.state.metrics[self.prefix + key] = value
        self.logger.info("token sparsity: %s", ", ".join(f"{k}={v:.4f}" for k, v in summary.items()))


def keep_ratio_schedule(epoch: int, target: float, warmup_epochs: int = 0, ramp_epochs: int = 0) -> float:
    """The training keep ratio of (1-based) ``epoch``: 1.0 (no pruning) for the first ``warmup_epochs``, then a
    linear ramp that reaches ``target`` at epoch ``warmup_epochs + ramp_epochs`` and stays there."""
    if epoch <= warmup_epochs:
        return 1.0
    if ramp_epochs <= 0:
        return float(target)
    progress = min(1.0, (epoch - warmup_epochs) / ramp_epochs)
    return 1.0 + (float(target) - 1.0) * progress


class PruningWarmup:
    """Train unpruned first, then ramp every pruner's ``keep_ratio`` to its configured value
    (:func:`keep_ratio_schedule`).

    The scheduled ratio applies to training iterations only: each pruner gets it at ``ITERATION_STARTED`` and its
    own ``keep_ratio`` back at ``ITERATION_COMPLETED``, so validation, checkpoints and evaluation always see the
    configured budget. With ``warmup_epochs = ramp_epochs = 0`` it changes nothing.

    Args:
        network: the pruned network (DDP-wrapped is fine); every :class:`TokenPruner` in it is scheduled.
        warmup_epochs: epochs trained with ``keep_ratio`` 1.0.
        ramp_epochs: epochs of the linear ramp after the warm-up.
    """

    def __init__(self, network: nn.Module, warmup_epochs: int = 0, ramp_epochs: int = 0) -> None:
        if warmup_epochs < 0 or ramp_epochs < 0:
            raise ValueError(f"warmup_epochs and ramp_epochs must be >= 0, got {warmup_epochs} and {ramp_epochs}")
        self._network = [network]
        self.warmup_epochs, self.ramp_epochs = int(warmup_epochs), int(ramp_epochs)
        self._targets: dict[int, float] = {}

    def pruners(self) -> list:
        return [m for m in unwrap(self._network[0]).modules() if isinstance(m, TokenPruner)]

    def keep_ratio(self, epoch: int, target: float) -> float:
        return keep_ratio_schedule(epoch, target, self.warmup_epochs, self.ramp_epochs)

    def attach(self, engine: Engine) -> None:
        if self.warmup_epochs or self.ramp_epochs:
            engine.add_event_handler(Events.ITERATION_STARTED, self._schedule)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._restore)

    def _schedule(self, engine: Engine) -> None:
        for pruner in self.pruners():
            target = self._targets.setdefault(id(pruner), pruner.keep_ratio)
            pruner.keep_ratio = self.keep_ratio(engine.state.epoch, target)

    def _restore(self, engine: Engine) -> None:
        for pruner in self.pruners():
            pruner.keep_ratio = self._targets.get(id(pruner), pruner.keep_ratio)


class PerClassHistory:
    """After every run of an evaluator, append the per-class mean of a metric's details to a JSON file:
    ``[{"epoch": e, "<class>": value, ..., "mean": value}, ...]`` (the metric needs ``save_details=True``). Classes
    absent from every image are NaN (written as ``null``), so a class that is never found shows as 0, not as a gap.

    Args:
        path: the JSON file (rewritten each time; a resumed run appends to what is there).
        class_names: foreground class names, in label order.
        metric_name: the evaluator metric whose details are read.
    """

    def __init__(self, path: str, class_names: Sequence[str], metric_name: str = "val_mean_dice") -> None:
        self.path, self.class_names, self.metric_name = path, list(class_names), metric_name

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        details = (getattr(engine.state, "metric_details", {}) or {}).get(self.metric_name)
        if details is None:
            return
        values = torch.as_tensor(details, dtype=torch.float64)
        values = values[:, None] if values.ndim == 1 else values
        row: dict = {"epoch": int(engine.state.epoch)}
        for i, name in enumerate(self.class_names[: values.shape[1]]):
            column = values[:, i][torch.isfinite(values[:, i])]
            row[name] = float(column.mean()) if column.numel() else None
        mean = engine.state.metrics.get(self.metric_name)
        row["mean"] = None if mean is None or math.isnan(float(mean)) else float(mean)
        history = []
        if os.path.exists(self.path):
            with open(self.path) as f:
                history = [r for r in json.load(f) if r.get("epoch") != row["epoch"]]
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        atomic_write_text(json.dumps(history + [row], indent=1), self.path)
