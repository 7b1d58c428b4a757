"""Evo-ViT: slow-fast token evolution with a representative token (prato_components/pruners/evovit.py)."""

import copy

import pytest
import torch
from conftest import UNETR_GRID as GRID
from conftest import UNETR_TOKENS as N
from conftest import image, random_attention, reduced_example, stage_input, tiny_unetr, window_example

from prato_components.pruners import (
    EvoViT,
    attention_received,
    keep_count,
    reduced_attention_received,
    representative_weights,
    window_attention_received,
)
from prato_components.tokens import TokenState, transformer_block_forward
from prato_components.tokens.attention import WindowAttention


def test_attention_received_sums_heads_and_averages_valid_queries():
    attention = random_attention(2, 3, 5)
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    expected = torch.zeros(2, 5)
    for b in range(2):
        rows = [i for i in range(5) if valid[b, i]]
        for j in range(5):
            expected[b, j] = sum(float(attention[b, h, i, j]) for h in range(3) for i in rows) / len(rows)
    torch.testing.assert_close(attention_received(attention, valid), expected)
    torch.testing.assert_close(attention_received(attention), attention.sum(1).mean(1))
    torch.testing.assert_close(attention_received(attention).sum(1), torch.full((2,), 3.0))


def test_representative_weights():
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 5.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    placeholders = torch.tensor([[True, False, True, False], [True, True, False, False], [False] * 4])
    weights = representative_weights(scores, placeholders)
    torch.testing.assert_close(weights[0], torch.tensor([0.25, 0.0, 0.75, 0.0]))
    torch.testing.assert_close(weights[1], torch.tensor([0.5, 0.5, 0.0, 0.0]))  # zero scores: uniform
    assert not weights[2].any()  # no placeholders: no representative


def test_evovit_scores_are_smoothed_across_layers_and_stages():
    pruner = EvoViT(keep_ratio=0.5, smoothing=0.25)
    state = TokenState(torch.randn(2, N, 8), GRID)
    a1, a2 = random_attention(2, 2, N, seed=1), random_attention(2, 2, N, seed=2)
    inputs = stage_input(state, attentions=[a1, a2])
    selection = pruner(inputs)
    expected = 0.75 * attention_received(a1) + 0.25 * attention_received(a2)
    torch.testing.assert_close(inputs.memory["evovit.scores"][:, :N], expected)
    assert selection.scores is None  # parameter-free
    assert torch.equal(selection.keep_index, expected.topk(8, dim=1).indices.sort(dim=1).values)

    state.memory = inputs.memory
    state.apply(selection, 1, inputs)
    a3 = random_attention(2, 2, 8, seed=3)  # over the 8 kept tokens
    inputs2 = stage_input(state, attentions=[a3], stage=2)
    pruner(inputs2)
    grid = torch.zeros(2, N).scatter(1, selection.keep_index, attention_received(a3))
    kept = state.alive_grid()
    updated = torch.where(kept, 0.75 * expected + 0.25 * grid, expected)  # placeholders keep their last score
    torch.testing.assert_close(inputs2.memory["evovit.scores"][:, :N], updated)


def test_evovit_run_block_moves_placeholders_by_the_representative_residual():
    net = tiny_unetr(None).eval()
    block = net.vit.blocks[4]
    pruner = EvoViT(keep_ratio=0.5)
    state = TokenState(torch.randn(2, N, 32), GRID)
    inputs = stage_input(state, attentions=[random_attention(2, 2, N)])
    state.memory = inputs.memory
    state.apply(pruner(inputs), 1, inputs)
    carry, kept = state.carry.clone(), state.alive_grid()
    scores = inputs.memory["evovit.scores"][:, :N]

    with torch.no_grad():
        tokens, attention = pruner.run_block(block, state, return_attention=True)
        weights = scores * ~kept
        rep = (weights.unsqueeze(-1) * carry).sum(1) / weights.sum(1, keepdim=True)
        reference, _ = transformer_block_forward(block, torch.cat([state.tokens, rep[:, None]], 1))
    torch.testing.assert_close(tokens, reference[:, :-1])
    assert attention.shape == (2, 2, 8, 8)  # over the live tokens only
    delta = state.carry - carry
    torch.testing.assert_close(delta[~kept].view(2, 8, 32), (reference[:, -1] - rep)[:, None].expand(2, 8, 32))
    assert not delta[kept].any()  # kept positions are untouched in the carry buffer


def test_evovit_eval_runs_kept_tokens_plus_one_representative():
    net = tiny_unetr("evovit").eval()
    seen = {}
    for index, block in enumerate(net.vit.blocks):
        block.mlp.register_forward_hook(lambda m, args, out, i=index: seen.__setitem__(i, args[0].shape[1]))
    with torch.no_grad():
        net(image(2))
    first, second = keep_count(N, 0.75), keep_count(keep_count(N, 0.75), 0.75)
    assert [seen[i] for i in range(12)] == [N] * 4 + [first + 1] * 3 + [second + 1] * 5


def test_evovit_placeholders_evolve_and_feed_the_decoder():
    evolving = tiny_unetr(EvoViT()).eval()
    frozen = tiny_unetr(EvoViT(representative=False)).eval()
    x = image(2)
    with torch.no_grad():
        taps_e, final_e, state_e = evolving._encode(x, None)
        taps_f, final_f, state_f = frozen._encode(x, None)
        out_e, out_f = evolving(x), frozen(x)
    torch.testing.assert_close(taps_e[1], taps_f[1])  # before any pruning
    dropped = ~state_e.kept_grids[0][1]  # pruned at stage 1
    assert torch.equal(dropped, ~state_f.kept_grids[0][1])
    # stage-1 placeholders moved through blocks 4-6 (tap 2) and 7-11 (final); frozen ones did not
    assert not torch.allclose(taps_e[2][dropped], taps_f[2][dropped])
    assert not torch.allclose(final_e[dropped], final_f[dropped])
    torch.testing.assert_close(final_f[dropped], frozen.vit.norm(taps_f[1])[dropped])
    assert not torch.allclose(out_e, out_f)


@pytest.mark.parametrize("executor", ["padded", "attention_mask"])
def test_evovit_gather_matches_full_length_references(executor):
    net = tiny_unetr("evovit").eval()
    reference = copy.deepcopy(net)
    reference.executor = executor
    x = image(2)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x), atol=1e-5, rtol=1e-4)


def test_evovit_train_matches_eval_and_eval_is_deterministic():
    net = tiny_unetr("evovit")  # dropout 0: Evo-ViT computes the same slow-fast path in training and eval
    x = image(2)
    with torch.no_grad():
        net.train()
        trained = net(x)
        net.eval()
        first, second = net(x), net(x)
    assert torch.equal(first, second)
    torch.testing.assert_close(trained, first)


def test_evovit_gradients_reach_the_blocks_through_the_placeholders():
    net = tiny_unetr("evovit").train()
    _, final, state = net._encode(image(2), None)
    placeholders = ~state.alive_grid()
    final[placeholders].square().sum().backward()
    # a loss on placeholder positions only reaches the last block through the representative token
    assert net.vit.blocks[11].mlp.linear2.weight.grad.abs().sum() > 0
    assert net.vit.blocks[11].attn.qkv.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- hierarchical attention
def test_window_attention_received_is_the_received_attention_of_the_block_diagonal_map():
    attention, dense = window_example()
    live = attention.live_grid()
    expected = dense.sum(1).sum(1) / live.sum(1, keepdim=True)  # explicit column sums over the image's live queries
    torch.testing.assert_close(window_attention_received(attention), expected)
    torch.testing.assert_close(window_attention_received(attention), attention_received(dense, live))


def test_window_attention_received_does_not_favour_sparse_windows():
    # uniform attention over the live keys: every token scores heads / N_live, whatever its window's population
    cells = torch.tensor([[0, 1, 2, 3], [4, 8, 8, 8]])  # one image of 8 cells: a full window and a lone token
    probs = torch.zeros(2, 3, 4, 4)
    probs[0] = 0.25
    probs[1, :, :, 0] = 1.0
    scores = window_attention_received(WindowAttention(probs, cells, (2, 4), batch_size=1))
    torch.testing.assert_close(scores[0, :5], torch.full((5,), 3 / 5))
    assert attention_received(probs[1:, :, :1, :1]).item() == 3.0  # a per-window mean would give the lone token 3


def test_reduced_attention_received_maps_each_key_back_to_the_tokens_it_pools():
    attention, token_map = reduced_example()
    expected = attention_received(token_map, attention.query_valid)
    torch.testing.assert_close(reduced_attention_received(attention), expected)
    key_received = attention_received(attention.probs, attention.query_valid)  # [B, 4]
    torch.testing.assert_close(reduced_attention_received(attention)[:, 0], key_received[:, 0] / 4)  # cell 0: key 0
    torch.testing.assert_close(reduced_attention_received(attention).sum(1), torch.full((2,), 2.0))  # heads


def test_evovit_on_a_finer_grid_sums_its_scores_onto_the_pruners_grid():
    attention, dense = window_example()
    inputs = stage_input(torch.randn(2, 2, 8), grid=(1, 2), attentions=[attention])  # grid (2, 3) halves to (1, 2)
    scores = EvoViT(keep_ratio=0.5).update_scores(inputs)
    fine = window_attention_received(attention)
    expected = torch.stack([fine[:, [0, 1, 3, 4]].sum(1), fine[:, [2, 5]].sum(1)], dim=1)
    torch.testing.assert_close(scores[:, :2], expected)
    assert inputs.memory["evovit.scores.grid"] == (2, 3)  # the smoothed scores stay on the blocks' grid
