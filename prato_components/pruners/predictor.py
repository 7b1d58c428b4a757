"""The local/global token score network shared by STP and DynamicViT.

DynamicViT (Rao et al. 2021) and STP (Zhou et al. 2023) score each token from its own features concatenated with a
feature pooled over the whole image, then an MLP. Their public predictors run at the full token width; here the
first layer reduces ``C -> C/4`` (configurable), so the predictor costs a few percent of one transformer block.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["LocalGlobalPredictor"]


class LocalGlobalPredictor(nn.Module):
    """``LayerNorm -> Linear(C, H) -> GELU``; the first half of the ``H`` features stays per token (local), the second
    half is averaged over the live tokens (global); both are concatenated and an MLP ``H -> H/2 -> out`` scores each
    token.

    Args:
        dim: token width ``C``.
        out_features: outputs per token (1 for STP's score, 2 for DynamicViT's keep/drop logits).
        hidden_dim: ``H``; default ``max(4, C // 4)``.
    """

    def __init__(self, dim: int, out_features: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden_dim = max(4, dim // 4) if hidden_dim is None else hidden_dim
        if hidden_dim < 2 or out_features < 1:
            raise ValueError(f"hidden_dim must be >= 2 and out_features >= 1, got {hidden_dim} and {out_features}")
        self.hidden_dim, self.local_dim = hidden_dim, hidden_dim // 2
        self.embed = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden_dim), nn.GELU())
        self.head = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim // 2), nn.GELU(), nn.Linear(hidden_dim // 2, out_features)
        )

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Scores ``[B, n, out_features]`` of ``tokens`` ``[B, n, C]``; ``valid`` ``[B, n]`` excludes padding rows
        from the global average."""
        features = self.embed(tokens)
        local, glob = features[..., : self.local_dim], features[..., self.local_dim :]
        if valid is None:
            pooled = glob.mean(dim=1, keepdim=True)
        else:
            weight = valid.unsqueeze(-1).to(glob.dtype)
            pooled = (glob * weight).sum(dim=1, keepdim=True) / weight.sum(dim=1, keepdim=True).clamp(min=1)
        return self.head(torch.cat([local, pooled.expand(-1, local.shape[1], -1)], dim=-1))
