"""Random token masking: a uniform random subset of ``keep_count(n, keep_ratio)`` live tokens per image.

The floor every learned pruner must beat at the same token budget. Draws are made per grid cell and read at the live
tokens' cells. In eval the selection is reproducible: a
generator seeded from ``(seed, stage)`` at every call gives the same subset in every forward pass. In training
every call draws fresh randomness, still reproducible from ``seed`` (the generator is seeded from
``(seed, stage, call number)``), or from torch's global generator with ``seed=None``.
"""

from __future__ import annotations

import math

import torch

from prato_components.pruners.base import TokenPruner, select_topk
from prato_components.pruners.registry import register_pruner
from prato_components.tokens.stage import StageInput, TokenSelection

__all__ = ["RandomPruner"]

_MODULUS = 2**63 - 1


@register_pruner("random")
class RandomPruner(TokenPruner):
    """Keep a uniform random ``keep_ratio`` of the live tokens of every image (fixed ``K``, gathered).

    Args:
        keep_ratio: fraction of the live tokens kept at each stage boundary.
        seed: seed of the selection; ``None`` draws from torch's global generator in training (seed it with
            ``torch.manual_seed`` or MONAI's ``set_determinism``) and uses seed 0 in eval.
    """

    def __init__(self, keep_ratio: float = 0.75, seed: int | None = 0) -> None:
        super().__init__(keep_ratio=keep_ratio)
        if seed is not None and (not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
        self.seed = seed
        self._train_calls = 0
        self._eval_draws: dict[tuple, torch.Tensor] = {}

    def _generator(self, device: torch.device, stage: int) -> torch.Generator | None:
        if self.training:
            if self.seed is None:
                return None
            self._train_calls += 1
            key = (self.seed * 1_000_003 + stage * 7_919 + self._train_calls) % _MODULUS
        else:
            key = ((self.seed or 0) * 1_000_003 + stage * 7_919) % _MODULUS
        return torch.Generator(device=device).manual_seed(key)

    def _draws(self, inputs: StageInput) -> torch.Tensor:
        """One uniform draw per grid cell (plus a slot for padding rows), read at the live tokens' cells: the shape
        drawn is static even where the live count is data-dependent (Swin's alive parents under torch.export)."""
        tokens = inputs.tokens
        shape = (int(tokens.shape[0]), math.prod(inputs.grid_shape) + 1)
        if self.training:
            grid = torch.rand(shape, generator=self._generator(tokens.device, inputs.stage), device=tokens.device)
        else:
            # eval: the same draws for a given (stage, shape) every call; kept, so that torch.export (which cannot
            # replay a torch.Generator) captures them as constants after one eager call
            key = (inputs.stage, shape, str(tokens.device))
            if key not in self._eval_draws:
                if torch.compiler.is_exporting():
                    raise RuntimeError("run the network once eagerly (same input shape) before exporting RandomPruner")
                self._eval_draws[key] = torch.rand(shape, generator=self._generator(tokens.device, inputs.stage),
                                                   device=tokens.device)
            grid = self._eval_draws[key]
        return grid.gather(1, inputs.token_index)

    def forward(self, inputs: StageInput) -> TokenSelection:
        selection = select_topk(self._draws(inputs), self.keep_ratio, inputs.valid)
        selection.scores = None  # nothing to learn: no straight-through weights
        return selection

    def extra_repr(self) -> str:
        return f"keep_ratio={self.keep_ratio}, seed={self.seed}"
