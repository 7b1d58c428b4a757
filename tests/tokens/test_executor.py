"""The token executor TokenState (prato_components/tokens/executor.py): modes, restore, variable counts."""

import pytest
import torch
from conftest import UNETR_TINY as TINY
from monai.data import MetaTensor, list_data_collate
from monai.networks.nets import UNETR

from prato_components.pruners import select_topk
from prato_components.tokens import TokenSelection, TokenState, transformer_block_forward


def test_gather_equals_attention_mask_on_kept_tokens():
    """Correctness anchor: gathered tokens compute what full length with pruned keys masked computes."""
    torch.manual_seed(0)
    blocks = UNETR(**TINY).vit.blocks.eval()
    tokens = torch.randn(2, 16, 32)
    scores = torch.randn(2, 16)
    results = {}
    for mode in ("gather", "attention_mask", "padded"):
        state = TokenState(tokens, (4, 4), mode=mode)
        inputs = state.stage_input(1, (16, 16), None)
        state.apply(select_topk(scores, 0.5), 1, inputs)
        for block in blocks[:3]:
            state.tokens, _ = transformer_block_forward(block, state.tokens, state.key_mask)
        results[mode] = state.restore(fill="zero")
    kept = torch.zeros(2, 16, dtype=torch.bool).scatter_(1, scores.topk(8, 1).indices, True)
    for mode in ("attention_mask", "padded"):
        torch.testing.assert_close(results[mode][kept], results["gather"][kept], atol=1e-5, rtol=1e-5)
    assert torch.all(results["gather"][~kept] == 0)


def test_padded_mode_variable_counts_and_restore():
    tokens = torch.arange(2 * 6 * 1, dtype=torch.float32).view(2, 6, 1)
    state = TokenState(tokens, (2, 3), mode="padded", fill="carry")
    keep = torch.tensor([[True, False, True, False, False, False], [True, True, True, True, False, True]])
    inputs = state.stage_input(1, (1.0, 1.0), None)

    state.apply(TokenSelection(keep_mask=keep), 1, inputs)
    assert state.tokens.shape == (2, 5, 1)
    assert state.key_mask.tolist() == [[True, True, False, False, False], [True] * 5]
    assert state.token_index.tolist() == [[0, 2, 6, 6, 6], [0, 1, 2, 3, 5]]
    state.tokens = state.tokens + 100  # later blocks change the live tokens only
    restored = state.restore()[..., 0]
    assert restored.tolist() == [[100, 1, 102, 3, 4, 5], [106, 107, 108, 109, 10, 111]]
    assert state.restore(fill="zero")[..., 0].tolist() == [[100, 0, 102, 0, 0, 0], [106, 107, 108, 109, 0, 111]]
    assert [r.tokens_kept.tolist() for r in state.reports] == [[2.0, 5.0]]
    assert state.pruned_at().tolist() == [[0, 1, 0, 1, 1, 1], [0, 0, 0, 0, 1, 0]]


def test_gather_mode_restore_live_rows_and_zero_fill():
    """Restores put the live rows at their grid positions and zero (or the carry) elsewhere; live_rows reads them
    back; the next stage's selection moves the rows; gradients reach the live rows; the carry is never written."""

    tokens = torch.arange(2 * 6 * 2, dtype=torch.float32).view(2, 6, 2)
    state = TokenState(tokens, (2, 3), mode="gather", fill="carry")
    scores = torch.tensor([[5.0, 0, 4, 3, 0, 2], [0, 1, 2, 3, 4, 5]])
    state.apply(select_topk(scores, 4 / 6), 1, state.stage_input(1, (1.0, 1.0), None))
    assert state.token_index.tolist() == [[0, 2, 3, 5], [2, 3, 4, 5]]
    assert [grid.int().tolist() for _, grid in state.kept_grids] == [[[1, 0, 1, 1, 0, 1], [0, 0, 1, 1, 1, 1]]]
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3) + 1
    want = torch.zeros(2, 6, 3).index_put_((torch.arange(2)[:, None], state.token_index), hidden)
    first = state.restore(hidden, fill="zero")
    assert torch.equal(first, want)
    assert torch.equal(state.live_rows(first * 2), hidden * 2)
    assert torch.equal(state.restore(hidden + 1, fill="zero"), want + (want != 0).float())
    carried = state.restore(hidden[..., :2])
    assert torch.equal(carried[0, 1], tokens[0, 1]) and torch.equal(carried[1, 0], tokens[1, 0])  # pruned: carry
    assert torch.equal(carried[0, 2], hidden[0, 1, :2])  # live: the given rows
    # the next stage prunes image 0's cell 0 and image 1's cell 5: zero there now
    state.apply(
        select_topk(torch.tensor([[0.0, 1, 1, 1], [1.0, 1, 1, 0]]), 3 / 4), 2, state.stage_input(2, (1.0, 1.0), None)
    )
    third = state.restore(torch.ones(2, 3, 3), fill="zero")
    assert third[..., 0].tolist() == [[0, 0, 1, 1, 0, 1], [0, 0, 1, 1, 1, 0]]
    grad_hidden = torch.ones(2, 3, 3, requires_grad=True)
    restored = state.restore(grad_hidden * torch.arange(1.0, 4.0), fill="zero")
    restored.sum().backward()
    assert torch.equal(grad_hidden.grad, torch.arange(1.0, 4.0).expand(2, 3, 3))
    # carry fill keeps the carried values at pruned rows and never writes into the carry itself
    carry = state.carry.clone()
    state.restore(torch.zeros(2, 3, 2))
    assert torch.equal(state.carry, carry)
    # a carry transform (a norm) reaches exactly the pruned rows, as if applied to the whole carry
    norm = torch.nn.LayerNorm(2)
    torch.nn.init.uniform_(norm.weight), torch.nn.init.uniform_(norm.bias)
    live = torch.randn(2, 3, 2)
    with torch.no_grad():
        want = torch.where(state.alive_grid().unsqueeze(-1), state.restore(live), norm(state.carry))
        assert torch.allclose(state.restore(live, carry_transform=norm), want)


def test_gather_mode_rejects_variable_counts():
    state = TokenState(torch.randn(1, 4, 2), (2, 2), mode="gather")

    with pytest.raises(ValueError, match="use mode 'padded'"):
        state.apply(
            TokenSelection(keep_mask=torch.tensor([[True, False, True, True]])), 1, state.stage_input(1, (1, 1), None)
        )
    with pytest.raises(ValueError, match="unknown executor mode"):
        TokenState(torch.randn(1, 4, 2), (2, 2), mode="fast")
    with pytest.raises(ValueError, match="unknown fill policy"):
        TokenState(torch.randn(1, 4, 2), (2, 2), fill="mean")


@pytest.mark.parametrize("mode", ["padded", "attention_mask"])
def test_next_grid_starts_with_the_alive_tokens_and_continues_the_pass(mode):
    """A coarser grid of a hierarchical encoder (docs/design.md §5): the pruner sees only the tokens still alive
    there, the others carry their value, pruned_at goes on from where they were pruned, and the reports, side terms
    and memory belong to the whole pass."""

    first = TokenState(torch.randn(2, 16, 1), (4, 4), mode=mode)
    first.apply(select_topk(torch.randn(2, 16), 0.5), 1, first.stage_input(1, (1.0, 1.0), None))
    first.memory["scores"] = 1
    tokens = torch.arange(2 * 4, dtype=torch.float32).view(2, 4, 1)
    alive = torch.tensor([[True, False, True, True], [False, True, False, False]])
    before = torch.tensor([[0, 1, 0, 0], [1, 0, 1, 1]])
    state = first.next_grid(tokens, (2, 2), alive, before)
    assert state.mode == mode and state.pruned and state.memory is first.memory
    inputs = state.stage_input(2, (2.0, 2.0), None)
    assert inputs.token_index.tolist() == [[0, 2, 3], [1, 4, 4]]  # padding rows hold N
    assert inputs.valid.tolist() == [[True, True, True], [True, False, False]]
    assert inputs.tokens[0, :, 0].tolist() == [0.0, 2.0, 3.0] and inputs.tokens[1, 0, 0] == 5.0
    assert torch.equal(state.restore(), tokens)  # nothing changed yet: the grid as it started
    assert torch.equal(state.alive_grid(), alive)
    state.apply(TokenSelection(keep_mask=torch.tensor([[True, False, True], [True, False, False]])), 2, inputs)
    assert [r.stage for r in first.reports] == [1, 2] and state.pruned_stages == (1, 2)
    assert state.reports[1].tokens_in.tolist() == [3.0, 1.0] and state.reports[1].tokens_kept.tolist() == [2.0, 1.0]
    assert state.pruned_at().tolist() == [[0, 1, 2, 0], [1, 0, 1, 1]]
    state.tokens = state.tokens + 100  # the blocks change the live tokens only
    assert state.restore(fill="carry")[..., 0].tolist() == [[100, 1, 2, 103], [4, 105, 6, 7]]
    assert state.restore(fill="zero")[..., 0].tolist() == [[100, 0, 0, 103], [0, 105, 0, 0]]
    with pytest.raises(ValueError, match="without pruned_before"):
        first.next_grid(tokens, (2, 2), alive).pruned_at()


def test_gather_mode_restores_monai_metatensors():
    """Bundle runs feed collated MONAI MetaTensors (per-image metadata): the restore's index arithmetic stays plain
    tensors, so slicing never meets the batch's metadata."""

    items = [{"x": MetaTensor(torch.zeros(6, 2), meta={"filename_or_obj": f"{i}.png"})} for i in range(2)]
    tokens = list_data_collate(items)["x"] + torch.arange(2 * 6 * 2, dtype=torch.float32).view(2, 6, 2)
    state = TokenState(tokens, (2, 3), mode="gather", fill="carry")
    scores = tokens[..., 0] * 0 + torch.tensor([[5.0, 0, 4, 3, 0, 2], [0, 1, 2, 3, 4, 5]])  # a collated MetaTensor
    state.apply(select_topk(scores, 4 / 6), 1, state.stage_input(1, (1.0, 1.0), None))
    grid = torch.as_tensor(state.restore(state.tokens * 0 - 1, fill="zero"))
    assert grid[..., 0].tolist() == [[-1, 0, -1, -1, 0, -1], [0, 0, -1, -1, -1, -1]]
    carried = torch.as_tensor(state.restore(state.tokens * 0 - 1))
    assert carried[..., 0].tolist() == [[-1, 2, -1, -1, 8, -1], [12, 14, -1, -1, -1, -1]]


def test_representative_and_evolving_placeholders():
    """Evo-ViT's fast path on the state: the representative is the weighted sum of the carried values, and only the
    pruned cells move, each by the representative's residual."""
    tokens = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(0))
    state = TokenState(tokens, (2, 2))
    state.prune(lambda inputs: select_topk(inputs.tokens[..., 0], 0.5), 1, (16.0, 16.0), None)
    placeholders = ~state.alive_grid()
    weights = placeholders.float() / 2
    rep = state.representative(weights)
    torch.testing.assert_close(rep[:, 0], (tokens * weights.unsqueeze(-1)).sum(1))
    before = state.carry.clone()
    state.evolve_placeholders(placeholders, rep, rep + 1.0)
    torch.testing.assert_close(state.carry, before + placeholders.unsqueeze(-1).float())
    assert [r.stage for r in state.reports] == [1] and state.reports[0].tokens_kept.tolist() == [2.0, 2.0]
