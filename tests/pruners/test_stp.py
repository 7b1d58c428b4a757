"""STP and its multi-layer token assembly (MTA) (prato_components/pruners/stp.py)."""

import pytest
import torch
from conftest import image, stage_input, tiny_mta, tiny_unetr

from prato_components.efficiency import count_flops
from prato_components.pruners import STP, MultiLayerTokenAssembly
from prato_components.tokens import TokenSelection, TokenState, transformer_block_forward


def test_stp_noise_only_in_training():
    torch.manual_seed(0)
    pruner = STP(dim=32, keep_ratio=0.5)
    inputs = stage_input(torch.randn(2, 64, 32))
    pruner.eval()
    with torch.no_grad():
        plain = pruner(inputs)
        expected = pruner.score(inputs).topk(32, dim=1).indices.sort(1).values
    assert torch.equal(plain.keep_index, expected)  # plain top-k of log sigmoid(score)
    assert torch.equal(plain.keep_mask, pruner(inputs).keep_mask)
    pruner.train()
    noisy = [pruner(inputs) for _ in range(2)]
    assert not torch.equal(noisy[0].keep_mask, noisy[1].keep_mask)
    assert not torch.equal(noisy[0].keep_mask, plain.keep_mask)
    assert noisy[0].num_kept.eq(32).all()
    torch.testing.assert_close(noisy[0].scores.sum(1), torch.ones(2))  # softmax over the tokens
    scores = pruner.score(inputs)
    assert (scores <= 0).all()  # log-sigmoid


def test_stp_gradients_reach_the_score_net_and_mta():
    mta = tiny_mta()
    net = tiny_unetr("stp", mta).train()
    for assembler in mta.assemblers.values():
        torch.nn.init.normal_(assembler.proj_out.weight, std=0.02)  # zero at init: open the residual branch
    net(image()).square().mean().backward()
    for stage in ("1", "2"):
        grads = [p.grad for p in net.pruners[stage].score_net.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads)
    for name, parameter in mta.named_parameters():
        if name.startswith("stage_tokens"):
            assert parameter.grad[:2].abs().sum() > 0 and parameter.grad[2].abs().sum() == 0  # no stage 3 pruning
        elif "norm_cross_attn" not in name:  # MONAI's TransformerBlock always builds it; unused without cross-attention
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_mta_adds_the_stage_token_where_each_token_was_pruned():
    mta = tiny_mta()
    state = TokenState(torch.randn(1, 16, 32), (4, 4))
    keep1 = torch.ones(1, 16, dtype=torch.bool)
    keep1[0, [0, 5, 9]] = False
    inputs = state.stage_input(1, (16.0, 16.0), None)
    state.apply(TokenSelection(keep_mask=keep1, keep_index=keep1[0].nonzero().T), 1, inputs)
    inputs = state.stage_input(2, (16.0, 16.0), None)
    keep2 = torch.ones(1, 13, dtype=torch.bool)
    keep2[0, [0, 12]] = False  # grid positions 1 and 15
    state.apply(TokenSelection(keep_mask=keep2, keep_index=keep2[0].nonzero().T), 2, inputs)
    grid = state.restore()
    added = mta.assemble(grid, state) - grid
    for position in range(16):
        stage = 1 if position in (0, 5, 9) else 2 if position in (1, 15) else 0
        expected = mta.stage_tokens[stage - 1] if stage else torch.zeros(32)
        torch.testing.assert_close(added[0, position], expected)


def test_mta_feeds_the_decoder_taps_after_pruning():
    x = image()
    plain = tiny_unetr("stp").eval()
    mta = tiny_mta()
    net = tiny_unetr("stp", mta).eval()
    taps = []
    mta.register_forward_hook(lambda module, args, out: taps.append(args[2]))
    with torch.no_grad():
        torch.nn.init.zeros_(mta.stage_tokens)
        torch.testing.assert_close(net(x), plain(x))  # zero stage tokens + zero output projection: carry fill
        assert taps == [2, 3, 4]
        mta.stage_tokens[0] += 1.0  # only positions pruned at stage 1 change ...
        filled = net(x)
        assert not torch.allclose(filled, plain(x))  # ... and the decoder sees it
        torch.nn.init.normal_(mta.assemblers["4"].proj_out.weight)
        assert not torch.allclose(net(x), filled)  # the final tap's transformer output feeds the decoder
    later = tiny_unetr("stp", tiny_mta(), prune_stages=(2,)).eval()
    taps.clear()
    later.completion.register_forward_hook(lambda module, args, out: taps.append(args[2]))
    with torch.no_grad():
        later(x)
    assert taps == [3, 4]
    with pytest.raises(ValueError, match="hidden_size must be a positive multiple of 4"):
        MultiLayerTokenAssembly(32, hidden_size=10, num_heads=2)
    with pytest.raises(ValueError, match="MTA expects a grid"):
        mta(torch.zeros(1, 16, 8), TokenState(torch.zeros(1, 16, 8), (4, 4)), 4)


def test_mta_is_cheap():
    """MTA's transformers run at a quarter width: all three cost less than one ViT block of the network."""
    x = image(1)
    net = tiny_unetr("stp").eval()
    with_mta = tiny_unetr("stp", tiny_mta()).eval()
    extra = count_flops(with_mta, x) - count_flops(net, x)
    block = count_flops(lambda t: transformer_block_forward(net.vit.blocks[0], t), torch.randn(1, 16, 32))
    assert 0 < extra < block


def test_mta_window_attention_stays_within_its_windows():
    torch.manual_seed(0)
    mta = MultiLayerTokenAssembly(32, depth=1, window_size=2, taps=(4,))
    torch.nn.init.normal_(mta.assemblers["4"].proj_out.weight, std=0.1)
    state = TokenState(torch.randn(1, 16, 32), (4, 4))
    grid = torch.randn(1, 16, 32)
    moved = grid.clone()
    moved[0, 0] += torch.randn(32)  # cell (0, 0): window (0, 0) holds cells 0, 1, 4, 5
    with torch.no_grad():
        changed = (mta(moved, state, 4) - mta(grid, state, 4)).abs().sum(-1)[0] > 1e-6
    assert changed.nonzero().flatten().tolist() == [0, 1, 4, 5]
    assert "window_size=2" in repr(mta)
