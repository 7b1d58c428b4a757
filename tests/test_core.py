"""The pruning core: executor modes, PrATo, pruned UNETR (tiny configurations)."""

import pytest
import torch
from monai.networks.nets import UNETR

from prato_components.efficiency import count_flops
from prato_components.engine import PrunedSegLoss, label_on_grid, summarise_token_reports
from prato_components.networks import PrunedUNETR, TokenState, patch_unetr, transformer_block_forward
from prato_components.pruners import (
    PrATo,
    create_pruner,
    entropy_rank_weights,
    keep_count,
    select_topk,
)

TINY = dict(in_channels=1, out_channels=3, img_size=64, spatial_dims=2, hidden_size=32, mlp_dim=64, num_heads=2, feature_size=8)
BOXES = torch.tensor([[16.0, 16.0, 48.0, 40.0], [0.0, 8.0, 30.0, 64.0]])


def tiny_unetr(**kwargs) -> PrunedUNETR:
    torch.manual_seed(0)
    return PrunedUNETR(**{**TINY, **kwargs})


def test_unpruned_equals_monai_unetr_and_loads_plain_state_dict():
    torch.manual_seed(0)
    plain = UNETR(**TINY).eval()
    net = tiny_unetr(pruner="prato").eval()
    net.load_unpruned_state_dict(plain.state_dict())
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net.vit.blocks[0].attn.qkv.weight, plain.vit.blocks[0].attn.qkv.weight)
        baseline = tiny_unetr(pruner=None).eval()
        baseline.load_unpruned_state_dict(plain.state_dict())
        torch.testing.assert_close(baseline(x, BOXES), plain(x), atol=1e-5, rtol=1e-5)
        keep_all = tiny_unetr(pruner="prato", pruner_kwargs={"keep_ratio": 1.0}).eval()
        keep_all.load_unpruned_state_dict(plain.state_dict())
        torch.testing.assert_close(keep_all(x, BOXES), plain(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(KeyError, match="not a UNETR state dict"):
        net.load_unpruned_state_dict({"foo": torch.zeros(1)})


def test_patch_unetr_keeps_weights():
    torch.manual_seed(0)
    plain = UNETR(**TINY).eval()
    reference = plain.vit.patch_embedding.position_embeddings.clone()
    pruned = patch_unetr(plain, "prato", prune_stages=(1,))
    assert isinstance(pruned, PrunedUNETR) and isinstance(pruned, UNETR)
    torch.testing.assert_close(pruned.vit.patch_embedding.position_embeddings, reference)
    with torch.no_grad():
        pruned(torch.randn(1, 1, 64, 64), BOXES[:1])
    assert [r.stage for r in pruned.token_report] == [1]


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
    from prato_components.pruners import TokenSelection

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


def test_gather_mode_restore_live_rows_and_scratch_grids():
    """Restores write the live rows; live_rows reads them back; scratch zero grids are reused between restores
    without autograd, stay zero at pruned rows, and are dropped when the next stage prunes."""
    from prato_components.pruners import select_topk

    tokens = torch.arange(2 * 6 * 2, dtype=torch.float32).view(2, 6, 2)
    state = TokenState(tokens, (2, 3), mode="gather", fill="carry")
    scores = torch.tensor([[5.0, 0, 4, 3, 0, 2], [0, 1, 2, 3, 4, 5]])
    state.apply(select_topk(scores, 4 / 6), 1, state.stage_input(1, (1.0, 1.0), None))
    assert state.token_index.tolist() == [[0, 2, 3, 5], [2, 3, 4, 5]]
    assert [grid.int().tolist() for _, grid in state.kept_grids] == [[[1, 0, 1, 1, 0, 1], [0, 0, 1, 1, 1, 1]]]
    hidden = torch.full((2, 4, 3), 7.0)
    with torch.no_grad():
        first = state.restore(hidden, fill="zero", scratch=True)
        want = torch.zeros(2, 6, 3).index_put_((torch.arange(2)[:, None], state.token_index), hidden)
        assert torch.equal(first, want)
        assert torch.equal(state.live_rows(first * 2), hidden * 2)
        again = state.restore(hidden + 1, fill="zero", scratch=True)
        assert again.data_ptr() == first.data_ptr()  # the same scratch grid
        assert torch.equal(again, want + (want != 0).float())
        # the next stage prunes image 0's cell 0: a fresh scratch grid, zero there
        state.apply(select_topk(torch.tensor([[0.0, 1, 1, 1], [1.0, 1, 1, 0]]), 3 / 4), 2, state.stage_input(2, (1.0, 1.0), None))
        third = state.restore(torch.ones(2, 3, 3), fill="zero", scratch=True)
        assert third[..., 0].tolist() == [[0, 0, 1, 1, 0, 1], [0, 0, 1, 1, 1, 0]]
    grad_hidden = hidden.clone().requires_grad_(True)
    restored = state.restore(grad_hidden[:, :3], fill="zero", scratch=True)  # with autograd: a fresh grid
    assert restored.data_ptr() != third.data_ptr() and restored.requires_grad
    # carry fill keeps the carried values at pruned rows and never writes into the carry itself
    carry = state.carry.clone()
    state.restore(torch.zeros(2, 3, 2))
    assert torch.equal(state.carry, carry)


def test_gather_mode_rejects_variable_counts():
    state = TokenState(torch.randn(1, 4, 2), (2, 2), mode="gather")
    from prato_components.pruners import TokenSelection

    with pytest.raises(ValueError, match="use mode 'padded'"):
        state.apply(TokenSelection(keep_mask=torch.tensor([[True, False, True, True]])), 1, state.stage_input(1, (1, 1), None))
    with pytest.raises(ValueError, match="unknown executor mode"):
        TokenState(torch.randn(1, 4, 2), (2, 2), mode="fast")
    with pytest.raises(ValueError, match="unknown fill policy"):
        TokenState(torch.randn(1, 4, 2), (2, 2), fill="mean")


@pytest.mark.parametrize("mode", ["gather", "padded", "mask", "attention_mask"])
def test_pruned_unetr_modes_forward_and_report(mode):
    threshold = "percentile" if mode == "gather" else "fixed"
    net = tiny_unetr(pruner="prato", executor=mode, pruner_kwargs={"threshold": threshold}).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 1, 64, 64), BOXES)
    assert out.shape == (2, 3, 64, 64)
    assert [r.stage for r in net.token_report] == [1, 2]
    first, second = net.token_report
    assert first.tokens_in.tolist() == [16.0, 16.0]
    assert torch.equal(second.tokens_in, first.tokens_kept)
    # every ViT block reports the tokens the decisions leave alive, whatever the executor computes: blocks 0-3 run
    # whole, 4-6 after stage 1, 7-11 after stage 2
    counts = [b.tokens.tolist() for b in net.block_report]
    assert counts == [[16.0, 16.0]] * 4 + [first.tokens_kept.tolist()] * 3 + [second.tokens_kept.tolist()] * 5
    assert {b.grid_tokens for b in net.block_report} == {16}
    if mode == "gather":
        assert first.tokens_kept.tolist() == [12.0, 12.0] and second.tokens_kept.tolist() == [9.0, 9.0]
        assert net.kept_fraction() == pytest.approx((4 * 16 + 3 * 12 + 5 * 9) / (12 * 16))


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


def test_entropy_rank_weights():
    entropy = torch.tensor([[0.3, 0.1, 0.2, 9.0]])
    valid = torch.tensor([[True, True, True, False]])
    omega = entropy_rank_weights(entropy, valid)
    torch.testing.assert_close(omega, torch.tensor([[0.0, 1.0, 0.5, 0.0]]))
    torch.testing.assert_close(entropy_rank_weights(torch.tensor([[2.0]]), torch.tensor([[True]])), torch.tensor([[1.0]]))


def _stage_input(tokens, boxes, grid=(4, 4), stride=(16.0, 16.0)):
    state = TokenState(tokens, grid)
    return state.stage_input(1, stride, boxes)


def test_prato_relevance_matches_step_by_step_formula():
    torch.manual_seed(0)
    pruner = PrATo(dim=8, roi_size=2, proj_dim=4)
    tokens = torch.randn(1, 16, 8)
    boxes = torch.tensor([[[8.0, 8.0, 40.0, 56.0]]])
    relevance = pruner.relevance(_stage_input(tokens, boxes))
    from prato_components.pruners import roi_align

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
    torch.testing.assert_close(flat.relevance(_stage_input(tokens, boxes))[0], sim.mean(0), atol=1e-5, rtol=1e-5)


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
    r_none = pruner.relevance(_stage_input(tokens, None))
    torch.testing.assert_close(r_none, pruner.relevance(_stage_input(tokens, whole)))
    torch.testing.assert_close(r_none, pruner.relevance(_stage_input(tokens, padding_only)))
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
    torch.testing.assert_close(pruner.relevance(_stage_input(tokens, box)), pruner.relevance(_stage_input(tokens, padded)))


def test_naive_crop_keeps_tokens_inside_the_box():
    pruner = PrATo(dim=8, scoring="naive_crop", threshold="fixed")
    tokens = torch.randn(1, 16, 8)
    box = torch.tensor([[[16.0, 0.0, 48.0, 32.0]]])  # cells (1..2, 0..1) of the 4x4 grid
    selection = pruner(_stage_input(tokens, box))
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[1:3, 0:2] = True
    assert torch.equal(selection.keep_mask[0].view(4, 4), expected)
    topk = PrATo(dim=8, scoring="naive_crop", keep_ratio=0.5)(_stage_input(tokens, box))
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
    inputs = _stage_input(torch.randn(1, 16, 32), torch.tensor([[[0.0, 0.0, 16.0, 16.0]]]))
    other = _stage_input(inputs.tokens, torch.tensor([[[48.0, 48.0, 64.0, 64.0]]]))
    pruner = net.pruners["1"]
    assert not torch.equal(pruner(inputs).keep_mask, pruner(other).keep_mask)


def test_3d_forward():
    torch.manual_seed(0)
    net = PrunedUNETR(pruner="prato", in_channels=1, out_channels=2, img_size=32, spatial_dims=3, hidden_size=32,
                      mlp_dim=64, num_heads=2, feature_size=8).eval()
    boxes = torch.tensor([[4.0, 4.0, 4.0, 20.0, 24.0, 28.0]])
    with torch.no_grad():
        out = net(torch.randn(1, 1, 32, 32, 32), boxes)
    assert out.shape == (1, 2, 32, 32, 32)
    assert net.token_report[0].tokens_in.item() == 8 and net.token_report[0].tokens_kept.item() == 6


def test_pruning_reduces_flops():
    base = tiny_unetr(pruner=None).eval()
    pruned = tiny_unetr(pruner="prato").eval()
    mask = tiny_unetr(pruner="prato", executor="mask").eval()
    x = torch.randn(1, 1, 64, 64)
    base_flops = count_flops(base, x, BOXES[:1])
    assert count_flops(pruned, x, BOXES[:1]) < base_flops
    assert count_flops(mask, x, BOXES[:1]) >= base_flops  # the reference saves nothing


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image=torch.randn(1, 2, 64, 64)), "expects 1 input channel"),
        (dict(image=torch.randn(1, 1, 32, 32)), "built for images of spatial shape"),
        (dict(image=torch.randn(1, 1, 64)), "expected an image of shape"),
        (dict(image=torch.full((1, 1, 64, 64), float("nan"))), "NaN or infinite"),
        (dict(boxes=torch.tensor([[70.0, 70.0, 90.0, 90.0]])), "lies outside the image"),
        (dict(boxes=torch.tensor([[10.0, 10.0, 10.0, 20.0]])), "empty box"),
        (dict(boxes=torch.tensor([[10.0, 10.0, 20.0, float("nan")]])), "NaN or inf"),
        (dict(boxes=torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])), "has 6 values but the image has 2"),
        (dict(boxes=torch.zeros(2, 1, 4)), r"boxes must have shape \[B=1"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, message):
    net = tiny_unetr(pruner="prato").eval()
    image = kwargs.get("image", torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match=message):
        net(image, kwargs.get("boxes", torch.tensor([[10.0, 10.0, 40.0, 40.0]])))


def test_bad_configuration_errors():
    with pytest.raises(ValueError, match="unknown pruner name 'prune_me'"):
        create_pruner("prune_me")
    with pytest.raises(ValueError, match="prune_stages must be a subset"):
        tiny_unetr(pruner="prato", prune_stages=(0, 4))
    with pytest.raises(ValueError, match="threshold must be"):
        PrATo(dim=8, threshold="median")
    with pytest.raises(ValueError, match="scoring must be"):
        PrATo(dim=8, scoring="crop")


def test_loss_and_sparsity_summary_use_the_network_report():
    net = tiny_unetr(pruner="prato").train()
    from monai.losses import DiceCELoss

    loss = PrunedSegLoss(DiceCELoss(to_onehot_y=True, softmax=True), net)
    x, label = torch.randn(2, 1, 64, 64), torch.randint(0, 3, (2, 1, 64, 64))
    value = loss(net(x, BOXES), label)
    assert value.ndim == 0 and torch.isfinite(value)
    base = DiceCELoss(to_onehot_y=True, softmax=True)
    pred = net(x, BOXES)
    assert value.item() == pytest.approx(base(pred, label).item(), abs=1e-5)  # PrATo has no side terms

    class WithSideTerms(torch.nn.Module):
        aux_loss = torch.tensor(2.0)
        aux_logits = [torch.zeros(2, 3, 4, 4)]

    side = PrunedSegLoss(base, WithSideTerms(), aux_weight=0.5, logits_weight=0.4)
    grid_label = label_on_grid(label, (4, 4), 3)
    expected = base(pred, label) + 1.0 + 0.4 * base(torch.zeros(2, 3, 4, 4), grid_label)
    torch.testing.assert_close(side(pred, label), expected)
    majority = label_on_grid(torch.tensor([[[[0, 2], [2, 1]]]]), (1, 1), 3)
    assert majority.tolist() == [[[[2]]]]
    summary = summarise_token_reports([net.token_report] * 2, [net.block_report] * 2)
    assert summary["kept_fraction/stage1"] == pytest.approx(0.75)
    assert summary["kept_fraction/stage2"] == pytest.approx(9 / 12)
    assert summary["kept_fraction"] == pytest.approx((4 * 16 + 3 * 12 + 5 * 9) / (12 * 16))
    assert summary["token_sparsity"] == pytest.approx(47 / 192)


def test_token_sparsity_means_the_same_for_every_backbone():
    """One definition: 1 - tokens the encoder's transformer blocks ran on / tokens they run on unpruned, per image.
    The bundles' default budget (keep 0.75 at stages 1 and 2) at 224 x 224, real grids, tiny widths."""
    from prato_components.networks import SegFormer

    x, box = torch.randn(1, 1, 224, 224), torch.tensor([[[40.0, 60.0, 180.0, 150.0]]])
    unetr = dict(TINY, img_size=224)

    def sparsity(net) -> float:
        with torch.no_grad():
            net.eval()(x, box)
        summary = summarise_token_reports([net.token_report], [net.block_report])
        assert summary["token_sparsity"] == pytest.approx(1 - net.kept_fraction())
        return summary["token_sparsity"]

    # UNETR: 14 x 14 = 196 tokens; blocks 0-3 run whole, 4-6 on 147 (stage 1), 7-11 on 110 (stage 2)
    torch.manual_seed(0)
    net = PrunedUNETR(**unetr, pruner="prato", pruner_kwargs={"keep_ratio": 0.75})
    assert sparsity(net) == pytest.approx(1 - (4 * 196 + 3 * 147 + 5 * 110) / (12 * 196))  # 0.2453
    # (the last pruned stage keeps 110 / 196 = 0.561 of the grid: the old, last-stage reading said 0.439)
    assert summarise_token_reports([net.token_report], [net.block_report])["kept_fraction/stage2"] == 110 / 147

    # SegFormer-B0 (depths 2, 2, 2, 2): grids 56^2, 28^2, 14^2, 7^2; stages 2 and 3 run on 588 and 147 tokens
    tiny_mit = dict(embed_dims=(8, 16, 32, 64), num_heads=(1, 1, 2, 2), decoder_dim=16)
    torch.manual_seed(0)
    net = SegFormer("b0", in_channels=1, pruner="prato", pruner_kwargs={"keep_ratio": 0.75}, **tiny_mit)
    full = 2 * (3136 + 784 + 196 + 49)
    assert sparsity(net) == pytest.approx(1 - (2 * 3136 + 2 * 588 + 2 * 147 + 2 * 49) / full)  # 0.0588

    # unpruned networks and keep_ratio 1.0 remove nothing
    for unpruned in (
        PrunedUNETR(**unetr),
        PrunedUNETR(**unetr, pruner="prato", pruner_kwargs={"keep_ratio": 1.0}),
        SegFormer("b0", in_channels=1, **tiny_mit),
        SegFormer("b0", in_channels=1, pruner="prato", pruner_kwargs={"keep_ratio": 1.0}, **tiny_mit),
    ):
        assert sparsity(unpruned) == 0.0 and unpruned.kept_fraction() == 1.0


def test_token_sparsity_summary_averages_per_image():
    from prato_components.networks import BlockReport

    stages = [[], []]
    blocks = [
        [BlockReport(torch.tensor([4.0, 2.0]), 4), BlockReport(torch.tensor([4.0, 2.0]), 4)],  # images: 1, 0.5
        [BlockReport(torch.tensor([8.0]), 8), BlockReport(torch.tensor([0.0]), 8)],  # a larger image: 0.5
    ]
    summary = summarise_token_reports(stages, blocks)
    assert summary["kept_fraction"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert summary["token_sparsity"] == pytest.approx(1 / 3)
    assert summarise_token_reports([], []) == {"kept_fraction": 1.0, "token_sparsity": 0.0}


def test_image_size_not_a_multiple_of_the_patch_is_named():
    with pytest.raises(ValueError, match=r"img_size \(40, 40\) must be a multiple of the ViT patch size \(16, 16\)"):
        PrunedUNETR(**dict(TINY, img_size=40))
