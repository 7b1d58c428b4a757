"""PrATo: prompt-aware token relevance (prato_components/pruners/prato.py)."""

import pytest
import torch
from conftest import UNETR_BOXES as BOXES
from conftest import stage_input, tiny_unetr

from prato_components.pruners import PrATo, entropy_rank_weights, roi_align


def test_entropy_rank_weights():
    entropy = torch.tensor([[0.3, 0.1, 0.2, 9.0]])
    valid = torch.tensor([[True, True, True, False]])
    omega = entropy_rank_weights(entropy, valid)
    torch.testing.assert_close(omega, torch.tensor([[0.0, 1.0, 0.5, 0.0]]))
    torch.testing.assert_close(
        entropy_rank_weights(torch.tensor([[2.0]]), torch.tensor([[True]])), torch.tensor([[1.0]])
    )


def test_prato_relevance_matches_step_by_step_formula():
    torch.manual_seed(0)
    pruner = PrATo(dim=8, roi_size=2, proj_dim=4)
    tokens = torch.randn(1, 16, 8)
    boxes = torch.tensor([[[8.0, 8.0, 40.0, 56.0]]])
    relevance = pruner.relevance(stage_input(tokens, boxes=boxes))
    fmap = tokens.transpose(1, 2).reshape(1, 8, 4, 4)
    feats = roi_align(fmap, boxes / 16.0, 2)[0, 0].flatten(1).T  # [4, C]
    sim = pruner.f1(feats) @ pruner.f2(tokens[0]).T / 2.0  # [4, 16]
    rho = sim.softmax(-1)
    entropy = -(rho * rho.log()).sum(-1)
    ranks = entropy.argsort().argsort().float()
    omega = 1 - ranks / 3
    expected = (omega[:, None] * sim).mean(0)
    torch.testing.assert_close(relevance[0], expected, atol=1e-5, rtol=1e-5)
    flat = PrATo(dim=8, roi_size=2, proj_dim=4, entropy_weighting=False)
    flat.load_state_dict(pruner.state_dict())
    torch.testing.assert_close(flat.relevance(stage_input(tokens, boxes=boxes))[0], sim.mean(0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_features", [4, 40])
def test_prato_similarity_orders_agree(num_features):
    """Few RoI features take the folded order ``(V1 W2) Y^T + V1 b2``, many the projected one; both are S."""
    torch.manual_seed(0)
    pruner = PrATo(dim=8, proj_dim=4)
    features, tokens = torch.randn(2, num_features, 8, requires_grad=True), torch.randn(2, 16, 8)
    got = pruner.similarity(features, tokens)
    want = pruner.f1(features) @ pruner.f2(tokens).transpose(1, 2) / 2.0
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    got.sum().backward()
    assert pruner.f2.weight.grad.abs().sum() > 0 and features.grad.abs().sum() > 0


def test_prato_without_prompt_uses_whole_image():
    torch.manual_seed(0)
    pruner = PrATo(dim=8, roi_size=3)
    tokens = torch.randn(2, 16, 8)
    whole = torch.tensor([[0.0, 0.0, 64.0, 64.0]]).expand(2, 1, 4)
    padding_only = torch.tensor([[0.0, 0.0, -1.0, -1.0]]).expand(2, 1, 4)
    r_none = pruner.relevance(stage_input(tokens, boxes=None))
    torch.testing.assert_close(r_none, pruner.relevance(stage_input(tokens, boxes=whole)))
    torch.testing.assert_close(r_none, pruner.relevance(stage_input(tokens, boxes=padding_only)))
    net = tiny_unetr(pruner="prato").eval()
    with torch.no_grad():
        assert net(torch.randn(2, 1, 64, 64)).shape == (2, 3, 64, 64)
    assert net.token_report[0].tokens_kept.tolist() == [12.0, 12.0]


def test_prato_padding_rows_are_ignored():
    torch.manual_seed(0)
    pruner = PrATo(dim=8, roi_size=3)
    tokens = torch.randn(1, 16, 8)
    box = torch.tensor([[[8.0, 8.0, 40.0, 56.0]]])
    padded = torch.tensor([[[8.0, 8.0, 40.0, 56.0], [0.0, 0.0, -1.0, -1.0]]])
    torch.testing.assert_close(
        pruner.relevance(stage_input(tokens, boxes=box)), pruner.relevance(stage_input(tokens, boxes=padded))
    )


def test_naive_crop_keeps_tokens_inside_the_box():
    pruner = PrATo(dim=8, scoring="naive_crop", threshold="fixed")
    tokens = torch.randn(1, 16, 8)
    box = torch.tensor([[[16.0, 0.0, 48.0, 32.0]]])  # cells (1..2, 0..1) of the 4x4 grid
    selection = pruner(stage_input(tokens, boxes=box))
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[1:3, 0:2] = True
    assert torch.equal(selection.keep_mask[0].view(4, 4), expected)
    topk = PrATo(dim=8, scoring="naive_crop", keep_ratio=0.5)(stage_input(tokens, boxes=box))
    assert topk.keep_mask[0].view(4, 4)[1:3, 0:2].all() and topk.num_kept.item() == 8


def test_gradients_reach_prato_projections_in_training():
    net = tiny_unetr(pruner="prato").train()
    out = net(torch.randn(2, 1, 64, 64), BOXES)
    out.square().mean().backward()
    for stage in ("1", "2"):
        for proj in (net.pruners[stage].f1, net.pruners[stage].f2):
            assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0


def test_eval_is_deterministic():
    net = tiny_unetr(pruner="prato").eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        first = net(x, BOXES)
        index_first = [r.tokens_kept for r in net.token_report]
        second = net(x, BOXES)
    assert torch.equal(first, second)
    assert all(torch.equal(a, r.tokens_kept) for a, r in zip(index_first, net.token_report))


def test_box_changes_the_selection():
    net = tiny_unetr(pruner="prato", prune_stages=(1,)).eval()
    inputs = stage_input(torch.randn(1, 16, 32), boxes=torch.tensor([[[0.0, 0.0, 16.0, 16.0]]]))
    other = stage_input(inputs.tokens, boxes=torch.tensor([[[48.0, 48.0, 64.0, 64.0]]]))
    pruner = net.pruners["1"]
    assert not torch.equal(pruner(inputs).keep_mask, pruner(other).keep_mask)
