"""DynamicViT (Rao et al. 2021): a learned keep/drop predictor, attention masking in training, top-k at inference.

At each pruned stage a local/global predictor
(:class:`~prato_components.pruners.predictor.LocalGlobalPredictor`) gives two logits per live token (keep, drop).

- Training (``train_executor = "attention_mask"``): all tokens stay; the decision is a hard Gumbel-softmax sample
  whose gradient is the soft sample's (straight-through). The executor turns the decisions into a float attention
  policy (a pruned key is masked out for every later block, multiplied into the previous policy so a dropped token
  stays dropped), through which the predictor learns. A ratio loss pulls the fraction of tokens each image keeps
  towards the cumulative target ``keep_ratio ** s`` at the ``s``-th pruned stage:
  ``ratio_weight * mean_b (kept_b / N - keep_ratio ** s) ** 2``.
- Inference: the top ``keep_ratio`` of the live tokens by keep probability, gathered (real savings).

Distillation from an unpruned network is optional: :class:`prato_components.engine.DistillationLoss`.
"""

from __future__ import annotations

import math

import torch

from prato_components.pruners.base import TokenPruner, select_topk
from prato_components.pruners.predictor import LocalGlobalPredictor
from prato_components.pruners.registry import register_pruner
from prato_components.pruners.stp import gumbel_noise
from prato_components.tokens.stage import StageInput, TokenSelection, straight_through

__all__ = ["DynamicViT"]

STAGE_COUNTER_KEY = "dynamicvit.stage_number"


@register_pruner("dynamicvit")
class DynamicViT(TokenPruner):
    """DynamicViT's token sparsification at the common budget.

    Args:
        dim: token width ``C``.
        keep_ratio: fraction of the live tokens kept at each stage boundary (inference) and the per-stage factor of
            the ratio loss's cumulative target (training).
        hidden_dim: width of the predictor (default ``C // 4``; the original uses ``C``).
        ratio_weight: weight of the ratio loss (the paper's 2.0). The network sums the stages' losses (the original
            averages them over stages).
        tau: Gumbel-softmax temperature (the original's 1).
    """

    train_executor = "attention_mask"

    def __init__(
        self,
        dim: int,
        keep_ratio: float = 0.75,
        hidden_dim: int | None = None,
        ratio_weight: float = 2.0,
        tau: float = 1.0,
    ) -> None:
        super().__init__(keep_ratio=keep_ratio)
        if tau <= 0 or ratio_weight < 0:
            raise ValueError(f"tau must be > 0 and ratio_weight >= 0, got {tau} and {ratio_weight}")
        self.ratio_weight, self.tau = ratio_weight, tau
        self.predictor = LocalGlobalPredictor(dim, 2, hidden_dim)

    def keep_log_probs(self, inputs: StageInput) -> torch.Tensor:
        """``[B, n, 2]`` log-probabilities of (keep, drop) per live token."""
        return self.predictor(inputs.tokens, inputs.valid).log_softmax(dim=-1)

    def forward(self, inputs: StageInput) -> TokenSelection:
        stage_number = inputs.memory.get(STAGE_COUNTER_KEY, 0) + 1
        inputs.memory[STAGE_COUNTER_KEY] = stage_number
        log_probs = self.keep_log_probs(inputs)
        if not self.training:
            return select_topk(log_probs[..., 0].exp(), self.keep_ratio, inputs.valid)

        soft = ((log_probs + gumbel_noise(log_probs)) / self.tau).softmax(dim=-1)[..., 0]  # Gumbel-softmax keep
        keep = soft > 0.5  # the hard sample: keep wins over drop
        valid = inputs.valid
        if valid is not None:
            keep = keep & valid
        # never empty an image: its most likely token stays
        best = soft.detach() if valid is None else soft.detach().masked_fill(~valid, -1.0)
        keep = keep | torch.zeros_like(keep).scatter_(1, best.argmax(dim=1, keepdim=True), True)

        decisions = straight_through(keep, soft)
        if valid is not None:
            decisions = decisions * valid
        kept_fraction = decisions.sum(dim=1) / math.prod(inputs.grid_shape)  # dead tokens count as dropped
        target = self.keep_ratio**stage_number
        aux_loss = self.ratio_weight * ((kept_fraction - target) ** 2).mean()
        return TokenSelection(keep_mask=keep, keep_index=None, scores=soft, aux_loss=aux_loss)

    def extra_repr(self) -> str:
        return f"keep_ratio={self.keep_ratio}, ratio_weight={self.ratio_weight}, tau={self.tau}"
