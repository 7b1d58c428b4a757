"""Ignite handlers for pruned networks: token sparsity (from the network's own reports)."""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
from ignite.engine import Engine, Events

from prato_components.engine.distributed import unwrap
from prato_components.networks.tokens import kept_token_work

__all__ = ["TokenSparsityHandler", "summarise_token_reports"]


def summarise_token_reports(stage_reports: list, block_reports: list) -> dict[str, float]:
    """Token sparsity and kept fractions from the reports of several forward passes.

    Args:
        stage_reports: per forward pass, the network's ``token_report`` (``StageReport`` per pruned stage).
        block_reports: per forward pass, the network's ``block_report`` (``BlockReport`` per transformer block).

    Returns ``{"kept_fraction/stage<s>": tokens kept / tokens in at pruned stage s, "kept_fraction": the token-block
    work done over the work unpruned, "token_sparsity": 1 - kept_fraction}``, both averaged over images. Token
    sparsity is the fraction of the encoder's token-block work that pruning removed (defined once for every
    backbone in :func:`~prato_components.networks.tokens.kept_token_work`); an unpruned network reports 0.
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

    Args:
        network: the pruned network (DDP-wrapped is fine); it must expose ``token_report`` and ``block_report``.
        prefix: metric name prefix.
    """

    def __init__(self, network: nn.Module, prefix: str = "", logger_name: str | None = None) -> None:
        self._network = [network]
        self.prefix = prefix
        self.logger = logging.getLogger(logger_name or __name__)
        self._reports: list = []
        self._blocks: list = []

    @property
    def network(self) -> nn.Module:
        return unwrap(self._network[0])

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._publish)

    def _reset(self, engine: Engine) -> None:
        self._reports, self._blocks = [], []

    def _collect(self, engine: Engine) -> None:
        self._reports.append(list(getattr(self.network, "token_report", [])))
        self._blocks.append(list(getattr(self.network, "block_report", [])))

    def _publish(self, engine: Engine) -> None:
        summary = summarise_token_reports(self._reports, self._blocks)
        for key, value in summary.items():
            engine.state.metrics[self.prefix + key] = value
        self.logger.info("token sparsity: %s", ", ".join(f"{k}={v:.4f}" for k, v in summary.items()))
