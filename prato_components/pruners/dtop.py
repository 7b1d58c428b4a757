"""DToP (Tang et al. 2023): dynamic token pruning by early exit of confidently classified tokens.

Every pruned stage has an auxiliary segmentation head (``LayerNorm + Linear: C -> num_classes``) on its live
tokens. A token whose top class probability exceeds ``confidence`` exits early with that prediction (it is pruned
and excluded from the later blocks), except the ``keep_per_class`` most confident tokens of every predicted class,
which stay to keep context for the remaining tokens. The selection is not differentiable: the heads learn from
their auxiliary logits (``TokenSelection.aux_logits``), supervised with the label by
:class:`~prato_components.engine.PrunedSegLoss`.

The auxiliary logits cover the full grid like DToP's prediction canvas: live positions hold this stage's head
output, positions that exited at an earlier stage keep the logits they exited with.

Budgets (``budget=``):

- ``"threshold"``: the paper's rule, a data-dependent number of tokens per image (executor ``"padded"``, or
  ``"mask"``/``"attention_mask"`` as references).
- ``"topk"`` (default): the same ranking at the common budget: the protected tokens first, then the least
  confident ones, exactly ``keep_count(n, keep_ratio)`` per image (fixed ``K``, executor ``"gather"``), for the
  comparison at matched token budgets and batched speed.

Everything is batched: the per-class protection is one ``topk`` over a ``[B, n, classes]`` tensor, no loop over
images (the public DToP code loops over images in Python).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from prato_components.pruners.base import TokenPruner, select_topk
from prato_components.pruners.registry import register_pruner
from prato_components.tokens.attention import coarsen, load_grid_scores, store_grid_scores
from prato_components.tokens.stage import StageInput, TokenSelection

__all__ = ["DTOP_BUDGETS", "DToP", "protected_tokens"]

DTOP_BUDGETS = ("topk", "threshold")
MEMORY_KEY = "dtop.canvas"


def protected_tokens(
    confidence: torch.Tensor, label: torch.Tensor, num_classes: int, per_class: int, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """``[B, n]`` bool: the ``per_class`` most confident tokens of every predicted class, per image.

    Args:
        confidence: ``[B, n]`` top class probability of every token.
        label: ``[B, n]`` predicted class of every token.
        num_classes: number of classes.
        per_class: tokens protected per class (0 protects none).
        valid: optional ``[B, n]`` bool; padding rows are never protected.
    """
    batch, num = confidence.shape
    if per_class <= 0:
        return torch.zeros(batch, num, dtype=torch.bool, device=confidence.device)
    member = F.one_hot(label, num_classes).bool()  # [B, n, classes]
    if valid is not None:
        member &= valid.unsqueeze(-1)
    ranked = torch.where(member, confidence.unsqueeze(-1), -1.0)
    values, index = ranked.topk(min(per_class, num), dim=1)  # [B, k, classes]
    hits = (values >= 0).to(confidence.dtype)
    counts = torch.zeros_like(confidence).scatter_add(1, index.flatten(1), hits.flatten(1))
    return counts > 0


@register_pruner("dtop")
class DToP(TokenPruner):
    """Early exit of confidently classified tokens through an auxiliary segmentation head.

    Args:
        dim: token width ``C``.
        num_classes: classes of the auxiliary head (the network's ``out_channels``).
        keep_ratio: fraction of the live tokens kept per stage with ``budget="topk"``.
        confidence: exit threshold on the top class probability (the paper: about 0.9); ``budget="threshold"``.
        keep_per_class: most confident tokens of every predicted class that never exit (the public code: 5).
        budget: ``"topk"`` (fixed count, matched budget) or ``"threshold"`` (the paper's variable count).
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        keep_ratio: float = 0.75,
        confidence: float = 0.9,
        keep_per_class: int = 5,
        budget: str = "topk",
    ) -> None:
        super().__init__(keep_ratio=keep_ratio)
        if budget not in DTOP_BUDGETS:
            raise ValueError(f"budget must be one of {DTOP_BUDGETS}, got {budget!r}")
        if not 0.0 < confidence <= 1.0:
            raise ValueError(f"confidence must be in (0, 1], got {confidence}")
        if num_classes < 2 or keep_per_class < 0:
            raise ValueError(f"need num_classes >= 2 and keep_per_class >= 0, got {num_classes} and {keep_per_class}")
        self.num_classes, self.confidence = num_classes, confidence
        self.keep_per_class, self.budget = keep_per_class, budget
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def canvas(self, logits: torch.Tensor, inputs: StageInput) -> torch.Tensor:
        """This stage's logits on the full grid ``[B, classes, *grid]``; positions not live keep earlier logits.

        The canvas lives in ``inputs.memory`` with its grid. When a hierarchical encoder moves to a coarser grid
        (Swin UNETR), the earlier canvas is first averaged onto the new grid (:func:`coarsen`), so a position that
        is not live holds the mean logits of the finer cells it covers, never those of an unrelated cell.
        """
        batch, _, classes = logits.shape
        num_grid = math.prod(inputs.grid_shape)
        grid, previous = load_grid_scores(inputs.memory, MEMORY_KEY)  # [B, N + 1, classes]; the last row collects
        if previous is None:  # padding rows
            previous = logits.new_zeros(batch, num_grid + 1, classes)
        elif grid != tuple(inputs.grid_shape):
            per_class = previous[:, :-1].transpose(1, 2).reshape(batch * classes, -1)
            pooled = coarsen(per_class, grid, inputs.grid_shape, "mean").reshape(batch, classes, num_grid)
            previous = F.pad(pooled.transpose(1, 2), (0, 0, 0, 1))
        index = inputs.token_index.unsqueeze(-1).expand(-1, -1, classes)
        canvas = previous.to(logits.dtype).scatter(1, index, logits)
        store_grid_scores(inputs.memory, MEMORY_KEY, inputs.grid_shape, canvas)
        return canvas[:, :num_grid].transpose(1, 2).reshape(batch, classes, *inputs.grid_shape)

    def forward(self, inputs: StageInput) -> TokenSelection:
        logits = self.head(self.norm(inputs.tokens))  # [B, n, classes]
        with torch.no_grad():
            confidence, label = logits.detach().float().softmax(dim=-1).max(dim=-1)
            protected = protected_tokens(confidence, label, self.num_classes, self.keep_per_class, inputs.valid)
            priority = torch.where(protected, 2.0, 1.0 - confidence)  # protected first, then the least confident
            if self.budget == "topk":
                selection = select_topk(priority, self.keep_ratio, inputs.valid)
                selection.scores = None  # the decision is not differentiable; the head learns from its logits
            else:
                keep = (confidence <= self.confidence) | protected
                if inputs.valid is not None:
                    keep &= inputs.valid
                    priority = priority.masked_fill(~inputs.valid, float("-inf"))
                rows = torch.arange(keep.shape[0], device=keep.device)
                keep[rows, priority.argmax(dim=1)] = True  # never empty an image
                selection = TokenSelection(keep_mask=keep)
        selection.aux_logits = self.canvas(logits, inputs)
        return selection

    def extra_repr(self) -> str:
        return (
            f"keep_ratio={self.keep_ratio}, num_classes={self.num_classes}, confidence={self.confidence}, "
            f"keep_per_class={self.keep_per_class}, budget={self.budget!r}"
        )
