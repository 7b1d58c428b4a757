"""Comparison pruners on UNETR: Evo-ViT and DToP (tiny configurations)."""

import copy

import pytest
import torch
from monai.losses import DiceCELoss

from prato_components.efficiency import count_flops
from prato_components.engine import PrunedSegLoss
from prato_components.networks import PrunedUNETR, TokenState, transformer_block_forward
from prato_components.pruners import (
    PRUNERS,
    DToP,
    EvoViT,
    attention_received,
    create_pruner,
    keep_count,
    protected_tokens,
    representative_weights,
)

TINY = dict(
    in_channels=1, out_channels=3, img_size=64, spatial_dims=2, hidden_size=32, mlp_dim=64, num_heads=2, feature_size=8
)
GRID = (4, 4)
N = 16


def tiny_unetr(pruner, **kwargs) -> PrunedUNETR:
    torch.manual_seed(0)
    kwargs.setdefault("prune_stages", (1, 2))
    return PrunedUNETR(pruner=pruner, **TINY, **kwargs)


def image(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 1, 64, 64, generator=torch.Generator().manual_seed(seed))


def random_attention(batch: int, heads: int, num: int, seed: int = 0) -> torch.Tensor:
    logits = torch.randn(batch, heads, num, num, generator=torch.Generator().manual_seed(seed))
    return logits.softmax(dim=-1)


def stage_input(state: TokenState, attentions=(), stage: int = 1):
    return state.stage_input(stage, (16.0, 16.0), None, list(attentions))


# ---------------------------------------------------------------------------------------------- common budget
@pytest.mark.parametrize("name", ["evovit", "dtop"])
def test_registered_and_kept_counts_match_budget(name):
    assert name in PRUNERS
    net = tiny_unetr(name, pruner_kwargs={"keep_ratio": 0.75}).eval()
    with torch.no_grad():
        net(image(3))
    first, second = keep_count(N, 0.75), keep_count(keep_count(N, 0.75), 0.75)
    assert [r.tokens_in.tolist() for r in net.token_report] == [[N] * 3, [first] * 3]
    assert [r.tokens_kept.tolist() for r in net.token_report] == [[first] * 3, [second] * 3]
    # twelve ViT blocks: four whole, three after stage 1, five after stage 2 (Evo-ViT's representative not counted)
    assert net.kept_fraction() == pytest.approx((4 * N + 3 * first + 5 * second) / (12 * N))


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="smoothing"):
        EvoViT(smoothing=0.0)
    with pytest.raises(ValueError, match="keep_ratio"):
        EvoViT(keep_ratio=0.0)
    with pytest.raises(ValueError, match="budget"):
        DToP(32, 3, budget="percentile")
    with pytest.raises(ValueError, match="confidence"):
        DToP(32, 3, confidence=0.0)
    with pytest.raises(ValueError, match="num_classes"):
        DToP(32, 1)
    with pytest.raises(ValueError, match="attention maps"):
        EvoViT()(stage_input(TokenState(torch.randn(1, N, 8), GRID)))
    state = TokenState(torch.randn(1, N, 8), GRID)
    with pytest.raises(ValueError, match="attention map over 5 tokens"):
        EvoViT()(stage_input(state, [random_attention(1, 2, 5)]))
    with pytest.raises(ValueError, match="executor mode 'gather'"):
        tiny_unetr(DToP(32, 3, confidence=0.5, budget="threshold")).eval()(image(1))


# ---------------------------------------------------------------------------------------------- Evo-ViT
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
    inputs = stage_input(state, [a1, a2])
    selection = pruner(inputs)
    expected = 0.75 * attention_received(a1) + 0.25 * attention_received(a2)
    torch.testing.assert_close(inputs.memory["evovit.scores"][:, :N], expected)
    assert selection.scores is None  # parameter-free
    assert torch.equal(selection.keep_index, expected.topk(8, dim=1).indices.sort(dim=1).values)

    state.memory = inputs.memory
    state.apply(selection, 1, inputs)
    a3 = random_attention(2, 2, 8, seed=3)  # over the 8 kept tokens
    inputs2 = stage_input(state, [a3], stage=2)
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
    inputs = stage_input(state, [random_attention(2, 2, N)])
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


# ---------------------------------------------------------------------------------------------- DToP
def test_protected_tokens_per_class():
    confidence = torch.tensor([[0.9, 0.8, 0.95, 0.6, 0.99, 0.7]])
    label = torch.tensor([[0, 0, 0, 1, 1, 2]])
    assert protected_tokens(confidence, label, 3, 1).tolist() == [[False, False, True, False, True, True]]
    assert protected_tokens(confidence, label, 3, 2).tolist() == [[True, False, True, True, True, True]]
    assert not protected_tokens(confidence, label, 3, 0).any()
    valid = torch.tensor([[True, True, False, True, True, True]])
    assert protected_tokens(confidence, label, 3, 1, valid).tolist() == [[True, False, False, False, True, True]]


def _head_confidence(pruner: DToP, tokens: torch.Tensor):
    with torch.no_grad():
        return pruner.head(pruner.norm(tokens)).softmax(-1).max(-1)


def test_dtop_topk_keeps_protected_then_least_confident():
    torch.manual_seed(0)
    pruner = DToP(8, 3, keep_ratio=0.5, keep_per_class=1)
    pruner.head.weight.data.mul_(20)  # spread the confidences
    inputs = stage_input(TokenState(torch.randn(4, N, 8), GRID))
    selection = pruner(inputs)
    confidence, label = _head_confidence(pruner, inputs.tokens)
    protected = protected_tokens(confidence, label, 3, 1)
    assert selection.keep_index.shape == (4, 8) and selection.scores is None
    assert (protected <= selection.keep_mask).all()
    for b in range(4):  # every kept unprotected token is less confident than every exited token
        free = selection.keep_mask[b] & ~protected[b]
        if free.any() and (~selection.keep_mask[b]).any():
            assert confidence[b][free].max() <= confidence[b][~selection.keep_mask[b]].min()


def test_dtop_threshold_exits_confident_unprotected_tokens():
    torch.manual_seed(0)
    pruner = DToP(8, 3, confidence=0.8, keep_per_class=2, budget="threshold")
    pruner.head.weight.data.mul_(20)
    inputs = stage_input(TokenState(torch.randn(4, N, 8), GRID))
    selection = pruner(inputs)
    confidence, label = _head_confidence(pruner, inputs.tokens)
    expected = (confidence <= 0.8) | protected_tokens(confidence, label, 3, 2)
    assert selection.keep_index is None
    assert torch.equal(selection.keep_mask, expected)
    assert len(set(selection.num_kept.tolist())) > 1  # data dependent


def test_dtop_aux_logits_are_a_canvas_over_the_grid():
    net = tiny_unetr("dtop", pruner_kwargs={"keep_per_class": 1}).eval()
    assert net.pruners["1"].num_classes == 3  # filled in from out_channels
    x = image(2)
    with torch.no_grad():
        taps, _, state = net._encode(x, None)
        stage1, stage2 = state.aux_logits
        head1, head2 = net.pruners["1"], net.pruners["2"]
        assert stage1.shape == stage2.shape == (2, 3, *GRID)
        torch.testing.assert_close(stage1.flatten(2).transpose(1, 2), head1.head(head1.norm(taps[1])))
        alive1 = state.kept_grids[0][1]
        expected2 = torch.where(alive1[..., None], head2.head(head2.norm(taps[2])), stage1.flatten(2).transpose(1, 2))
        torch.testing.assert_close(stage2.flatten(2).transpose(1, 2), expected2)


def test_dtop_heads_learn_only_through_aux_logits():
    net = tiny_unetr("dtop").train()
    x, label = image(2), torch.randint(0, 3, (2, 1, 64, 64), generator=torch.Generator().manual_seed(0))
    DiceCELoss(to_onehot_y=True, softmax=True)(net(x), label).backward()
    assert all(p.grad is None for p in net.pruners.parameters())  # the exit decision carries no gradient
    net.zero_grad(set_to_none=True)
    loss = PrunedSegLoss(DiceCELoss(to_onehot_y=True, softmax=True), net)
    loss(net(x), label).backward()
    for stage in ("1", "2"):
        assert net.pruners[stage].head.weight.grad.abs().sum() > 0
        assert net.pruners[stage].norm.weight.grad.abs().sum() > 0


def test_dtop_train_and_eval_prune_alike_and_eval_is_deterministic():
    net = tiny_unetr("dtop")
    x = image(2)
    with torch.no_grad():
        net.train()
        trained, trained_kept = net(x), [r.tokens_kept for r in net.token_report]
        assert len(net.aux_logits) == 2
        net.eval()
        first, second = net(x), net(x)
    assert torch.equal(first, second)
    torch.testing.assert_close(trained, first)  # DToP prunes in training too (the public code does)
    assert all(torch.equal(a, r.tokens_kept) for a, r in zip(trained_kept, net.token_report))


def test_dtop_exited_tokens_feed_the_decoder_with_their_exit_features():
    net = tiny_unetr("dtop").eval()
    x = image(2)
    with torch.no_grad():
        taps, final, state = net._encode(x, None)
        exited = ~state.kept_grids[0][1]
        torch.testing.assert_close(final[exited], net.vit.norm(taps[1])[exited])
        zero = copy.deepcopy(net)
        zero.fill = "zero"
        assert not torch.allclose(net(x), zero(x))


def test_dtop_threshold_padded_handles_different_counts_per_image():
    kwargs = {"budget": "threshold", "keep_per_class": 0, "confidence": 1.0}
    net = tiny_unetr("dtop", executor="padded", pruner_kwargs=kwargs)
    net.eval()
    for pruner in net.pruners.values():
        pruner.head.weight.data.mul_(10)
    x = image(2, seed=3)
    with torch.no_grad():
        net(x)
    confidence = net.aux_logits[0].softmax(1).amax(1).flatten(1)  # stage-1 confidences, independent of the threshold
    candidates = confidence.flatten().sort().values
    threshold = next(
        float(t)
        for t in (candidates[:-1] + candidates[1:]) / 2
        if len(set((confidence <= t).sum(1).tolist())) > 1 and bool(((confidence <= t).sum(1) >= 1).all())
    )
    for pruner in net.pruners.values():
        pruner.confidence = threshold
    reference = copy.deepcopy(net)
    reference.executor = "attention_mask"
    with torch.no_grad():
        out = net(x)
        kept = net.token_report[0].tokens_kept
        assert kept.tolist() == (confidence <= threshold).sum(1).float().tolist()
        assert kept[0] != kept[1]
        torch.testing.assert_close(out, reference(x), atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- FLOPs
@pytest.mark.parametrize("name", ["evovit", "dtop"])
def test_pruned_unetr_flops_below_unpruned(name):
    x = image(1)
    pruned = tiny_unetr(create_pruner(name, **({"dim": 32, "num_classes": 3} if name == "dtop" else {})))
    baseline = tiny_unetr(None)
    assert count_flops(pruned.eval(), x) < count_flops(baseline.eval(), x)
