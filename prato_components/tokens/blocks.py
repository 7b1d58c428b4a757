"""Running MONAI transformer blocks on a pruned token set.

:func:`transformer_block_forward` computes exactly what ``monai.networks.blocks.TransformerBlock`` computes,
with the block's own weights (so state dicts are untouched), but on any number of tokens, with an optional
key mask (``padded`` executor mode) and, only when asked, the attention probabilities. Without attention
maps it uses ``F.scaled_dot_product_attention``, the fast fused path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import TransformerBlock

__all__ = ["check_supported_block", "transformer_block_forward"]


def check_supported_block(block: TransformerBlock) -> None:
    """Raise if ``block`` uses a MONAI option that :func:`transformer_block_forward` does not reproduce."""
    attn = block.attn
    if not attn.use_combined_linear or attn.rel_positional_embedding is not None or attn.causal:
        raise ValueError("pruned ViT blocks support MONAI's default SABlock (combined qkv, no rel. pos., non-causal)")
    if block.with_cross_attention or attn.attention_dtype is not None:
        raise ValueError("pruned ViT blocks do not support cross-attention or attention_dtype")


def transformer_block_forward(
    block: TransformerBlock,
    x: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    return_attention: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One MONAI ``TransformerBlock`` on ``x`` ``[B, n, C]``.

    Args:
        block: the MONAI block whose weights are used.
        x: tokens ``[B, n, C]``.
        key_mask: optional ``[B, n]`` key mask: bool (``False`` keys are not attended to) or a float policy in
            [0, 1] that carries a gradient (DynamicViT's masked softmax: a query always attends to itself).
        return_attention: also return the attention probabilities ``[B, heads, n, n]``.

    Returns:
        the block output and the attention probabilities (``None`` unless asked).
    """
    attn = block.attn
    batch, num, _ = x.shape
    heads, head_dim = attn.num_heads, attn.dim_head
    qkv = attn.qkv(block.norm1(x)).view(batch, num, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    mask = None if key_mask is None else key_mask[:, None, None, :]
    probs = None
    dropout = attn.dropout_rate if block.training else 0.0
    if key_mask is not None and key_mask.is_floating_point():
        logits = (q @ k.transpose(-2, -1)) * attn.scale
        policy = key_mask[:, None, None, :]
        eye = torch.eye(num, dtype=policy.dtype, device=policy.device)
        policy = policy + (1.0 - policy) * eye
        weights = (logits - logits.amax(dim=-1, keepdim=True)).exp() * policy
        probs = weights / (weights.sum(dim=-1, keepdim=True) + 1e-6)
        out = attn.drop_weights(probs) @ v
        probs = probs if return_attention else None
    elif return_attention:
        logits = (q @ k.transpose(-2, -1)) * attn.scale
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        probs = logits.softmax(dim=-1)
        out = attn.drop_weights(probs) @ v
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=attn.scale)
    out = out.transpose(1, 2).reshape(batch, num, heads * head_dim)
    x = x + attn.drop_output(attn.out_proj(out))
    x = x + block.mlp(block.norm2(x))
    return x, probs
