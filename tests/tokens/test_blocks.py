"""Running a MONAI transformer block on a token subset (prato_components/tokens/blocks.py)."""

import torch
from conftest import UNETR_TINY as TINY
from monai.networks.nets import UNETR

from prato_components.tokens import transformer_block_forward


def test_block_forward_equals_monai_block():
    torch.manual_seed(0)
    block = UNETR(**TINY).vit.blocks[0].eval()
    x = torch.randn(2, 7, 32)
    out, probs = transformer_block_forward(block, x, return_attention=True)
    torch.testing.assert_close(out, block(x), atol=1e-5, rtol=1e-5)
    fast, none = transformer_block_forward(block, x)
    torch.testing.assert_close(fast, out, atol=1e-5, rtol=1e-5)
    assert none is None and probs.shape == (2, 2, 7, 7)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 2, 7))
