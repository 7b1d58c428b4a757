"""Behaviour every pruner shares (prato_components/pruners/base.py): the top-k budget, kept counts on UNETR,
deterministic eval, padding rows never kept, fewer FLOPs than unpruned."""

import pytest
import torch
from conftest import COMMON_PRUNERS as NAMES
from conftest import image, record_selections, tiny_mta, tiny_unetr, tokens_after_stage1

from prato_components.efficiency import count_flops
from prato_components.pruners import create_pruner, keep_count, select_topk
from prato_components.tokens import TokenSelection, TokenState


def test_percentile_keeps_exact_fraction_per_image():
    for n, ratio in [(196, 0.75), (147, 0.75), (196, 0.5), (10, 0.33), (5, 0.01)]:
        scores = torch.randn(3, n)
        selection = select_topk(scores, ratio)
        assert selection.num_kept.tolist() == [keep_count(n, ratio)] * 3
        assert torch.equal(selection.keep_index, selection.keep_index.sort(1).values)
        best = scores.topk(keep_count(n, ratio), 1).indices.sort(1).values
        assert torch.equal(selection.keep_index, best)
    assert keep_count(196, 0.75) == 147 and keep_count(147, 0.75) == 110
    with pytest.raises(ValueError, match="keep_ratio must be in"):
        keep_count(10, 0.0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("keep_ratio", [0.75, 0.5])
def test_kept_counts_match_the_budget_in_eval(name, keep_ratio):
    completion = tiny_mta() if name == "stp" else None
    net = tiny_unetr(name, completion, pruner_kwargs={"keep_ratio": keep_ratio}).eval()
    with torch.no_grad():
        out = net(image())
    assert out.shape == (2, 3, 64, 64)
    first, second = keep_count(16, keep_ratio), keep_count(keep_count(16, keep_ratio), keep_ratio)
    assert [r.tokens_kept.tolist() for r in net.token_report] == [[first] * 2, [second] * 2]


@pytest.mark.parametrize("name", ["random", "tram", "stp"])
def test_gathering_pruners_remove_tokens_in_training_too(name):
    net = tiny_unetr(name).train()
    shapes = tokens_after_stage1(net)
    net(image())
    assert shapes == [(2, 12, 32)]
    assert [r.tokens_kept.tolist() for r in net.token_report] == [[12.0, 12.0], [9.0, 9.0]]


@pytest.mark.parametrize("name", NAMES)
def test_eval_is_deterministic(name):
    completion = tiny_mta() if name == "stp" else None
    net = tiny_unetr(name, completion).eval()
    calls = record_selections(net)
    with torch.no_grad():
        first, second = net(image()), net(image())
    assert torch.equal(first, second)
    assert torch.equal(calls[0][1].keep_mask, calls[2][1].keep_mask)
    assert torch.equal(calls[1][1].keep_mask, calls[3][1].keep_mask)


@pytest.mark.parametrize("name", NAMES)
def test_pruned_eval_costs_fewer_flops(name):
    completion = tiny_mta() if name == "stp" else None
    x = image(1)
    base = count_flops(tiny_unetr(None).eval(), x)
    assert count_flops(tiny_unetr(name, completion).eval(), x) < base


@pytest.mark.parametrize("name", ["random", "stp", "dynamicvit"])
def test_padding_rows_are_never_kept(name):
    tokens = torch.randn(2, 64, 32)
    state = TokenState(tokens, (8, 8), mode="padded")
    inputs = state.stage_input(1, (16.0, 16.0), None)
    keep = torch.ones(2, 64, dtype=torch.bool)
    keep[0, 40:] = False  # image 0 keeps 40 tokens, image 1 all 64: 24 padding rows for image 0
    state.apply(TokenSelection(keep_mask=keep), 1, inputs)
    inputs = state.stage_input(2, (16.0, 16.0), None)
    pruner = create_pruner(name, keep_ratio=0.5, **({} if name == "random" else {"dim": 32})).eval()
    selection = pruner(inputs)
    assert not (selection.keep_mask & ~inputs.valid).any()
    assert selection.num_kept.tolist() == [keep_count(40, 0.5)] * 2


@pytest.mark.parametrize("name", ["evovit", "dtop"])
def test_pruned_unetr_flops_below_unpruned(name):
    x = image(1)
    pruned = tiny_unetr(create_pruner(name, **({"dim": 32, "num_classes": 3} if name == "dtop" else {})))
    baseline = tiny_unetr(None)
    assert count_flops(pruned.eval(), x) < count_flops(baseline.eval(), x)
