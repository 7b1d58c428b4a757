"""Ignite handlers for pruned networks: token sparsity (from the network's own report)."""

from __future__ import annotations

import logging

import torch.nn as nn
from ignite.engine import Engine, Events

from prato_components.engine.distributed import unwrap

__all__ = ["TokenSparsityHandler", "summarise_token_reports"]


def summarise_token_reports(reports: list, num_tokens: int) -> dict[str, float]:
    """Kept fractions per stage and overall from a list of per-forward ``StageReport`` lists.

    Returns ``{"kept_fraction/stage<s>": tokens kept / tokens in at stage s, "kept_fraction": tokens alive after
    the last pruned stage / all tokens, "token_sparsity": 1 - kept_fraction}``; an unpruned network reports 1 and 0.
    """
    stage_in: dict[int, float] = {}
    stage_kept: dict[int, float] = {}
    final_kept, images = 0.0, 0
    for forward_reports in reports:
        for report in forward_reports:
            stage_in[report.stage] = stage_in.get(report.stage, 0.0) + float(report.tokens_in.sum())
            stage_kept[report.stage] = stage_kept.get(report.stage, 0.0) + float(report.tokens_kept.sum())
        if forward_reports:
            final_kept += float(forward_reports[-1].tokens_kept.sum())
            images += int(forward_reports[-1].tokens_kept.numel())
    summary = {f"kept_fraction/stage{s}": stage_kept[s] / max(stage_in[s], 1.0) for s in sorted(stage_in)}
    summary["kept_fraction"] = final_kept / (images * num_tokens) if images else 1.0
    summary["token_sparsity"] = 1.0 - summary["kept_fraction"]
    return summary


class TokenSparsityHandler:
    """Collects ``network.token_report`` after every iteration and, at the end of each epoch, writes the
    kept fractions into ``engine.state.metrics`` (so MONAI's ``StatsHandler``/checkpoint handlers see them)
    and logs them.

    Args:
        network: the pruned network (DDP-wrapped is fine); it must expose ``token_report`` and ``num_tokens``.
        prefix: metric name prefix.
    """

    def __init__(self, network: nn.Module, prefix: str = "", logger_name: str | None = None) -> None:
        self._network = [network]
        self.prefix = prefix
        self.logger = logging.getLogger(logger_name or __name__)
        self._reports: list = []

    @property
    def network(self) -> nn.Module:
        return unwrap(self._network[0])

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._publish)

    def _reset(self, engine: Engine) -> None:
        self._reports = []

    def _collect(self, engine: Engine) -> None:
        self._reports.append(list(getattr(self.network, "token_report", [])))

    def num_tokens(self) -> int:
        """Tokens on the grid of the network's last reported stage."""
        return int(self.network.num_tokens)

    def _publish(self, engine: Engine) -> None:
        summary = summarise_token_reports(self._reports, self.num_tokens())
        for key, value in summary.items():
            engine.state.metrics[self.prefix + key] = value
        self.logger.info("token sparsity: %s", ", ".join(f"{k}={v:.4f}" for k, v in summary.items()))
