"""Comparison pruners on UNETR: random masking, TRAM, STP + MTA, DynamicViT (tiny configurations)."""

import pytest
import torch
from monai.losses import DiceCELoss
from monai.networks.nets import UNETR

from prato_components.efficiency import count_flops
from prato_components.engine import DistillationLoss, PrunedSegLoss
from prato_components.networks import PrunedUNETR, TokenState, transformer_block_forward
from prato_components.pruners import (
    PRUNERS,
    STP,
    TRAM,
    DynamicViT,
    MultiLayerTokenAssembly,
    RandomPruner,
    TokenSelection,
    attention_graph_centrality,
    create_pruner,
    keep_count,
)

TINY = dict(in_channels=1, out_channels=3, img_size=64, spatial_dims=2, hidden_size=32, mlp_dim=64, num_heads=2, feature_size=8)
NAMES = ("random", "tram", "stp", "dynamicvit")


def tiny_unetr(pruner, completion=None, **kwargs) -> PrunedUNETR:
    torch.manual_seed(0)
    kwargs.setdefault("prune_stages", (1, 2))
    return PrunedUNETR(pruner=pruner, completion=completion, **TINY, **kwargs)


def tiny_mta(**kwargs) -> MultiLayerTokenAssembly:
    return MultiLayerTokenAssembly(32, num_heads=2, **kwargs)


def image(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 1, 64, 64, generator=torch.Generator().manual_seed(seed))


def record_selections(net: PrunedUNETR) -> list:
    """(StageInput, TokenSelection) of every pruner call."""
    calls = []
    for pruner in net.pruners.values():
        pruner.register_forward_hook(lambda module, args, out: calls.append((args[0], out)))
    return calls


def kept_grid(inputs, selection) -> torch.Tensor:
    """``[B, N]`` bool: grid positions kept by ``selection``."""
    grid = torch.zeros(inputs.token_index.shape[0], 17, dtype=torch.bool)
    return grid.scatter_(1, inputs.token_index, selection.keep_mask)[:, :16]


def tokens_after_stage1(net: PrunedUNETR) -> list:
    """Shapes of the tokens block 4 (after the first stage) runs on."""
    shapes = []
    net.vit.blocks[4].attn.qkv.register_forward_hook(lambda module, args, out: shapes.append(tuple(args[0].shape)))
    return shapes


def stage_input(tokens: torch.Tensor, grid=(8, 8), stage: int = 1):
    state = TokenState(tokens, grid)
    return state.stage_input(stage, (16.0, 16.0), None)


# ---------------------------------------------------------------------------------------------- common interface
def test_registered_by_name_with_the_common_budget():
    assert set(NAMES) <= set(PRUNERS)
    for name in NAMES:
        kwargs = {} if name in ("random", "tram") else {"dim": 32}
        pruner = create_pruner(name, keep_ratio=0.5, **kwargs)
        assert pruner.keep_ratio == 0.5
        with pytest.raises(ValueError, match="keep_ratio must be in"):
            create_pruner(name, keep_ratio=1.5, **kwargs)
    assert TRAM.needs_attention and not any(cls.needs_attention for cls in (RandomPruner, STP, DynamicViT))
    assert DynamicViT.train_executor == "attention_mask"
    assert all(cls.train_executor is None for cls in (RandomPruner, TRAM, STP))


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


# ---------------------------------------------------------------------------------------------- random
def test_random_is_reproducible_in_eval_and_fresh_in_training():
    inputs = stage_input(torch.randn(2, 64, 32))
    pruner = RandomPruner(keep_ratio=0.5, seed=3).eval()
    first = pruner(inputs).keep_mask
    assert torch.equal(first, pruner(inputs).keep_mask)
    assert torch.equal(first, RandomPruner(keep_ratio=0.5, seed=3).eval()(inputs).keep_mask)
    assert not torch.equal(first, RandomPruner(keep_ratio=0.5, seed=4).eval()(inputs).keep_mask)
    assert not torch.equal(first, pruner(stage_input(torch.randn(2, 64, 32), stage=2)).keep_mask)
    assert not torch.equal(first[0], first[1])  # images get their own draws

    pruner.train()
    draws = [pruner(inputs).keep_mask for _ in range(3)]
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    again = RandomPruner(keep_ratio=0.5, seed=3).train()
    assert all(torch.equal(draw, again(inputs).keep_mask) for draw in draws)  # seeded
    unseeded = RandomPruner(keep_ratio=0.5, seed=None).train()
    torch.manual_seed(7)
    one = unseeded(inputs).keep_mask
    torch.manual_seed(7)
    assert torch.equal(one, unseeded(inputs).keep_mask)  # the global generator's seed
    with pytest.raises(ValueError, match="seed must be"):
        RandomPruner(seed=-1)


def test_random_keeps_every_position_equally_often():
    inputs = stage_input(torch.zeros(4000, 16, 4), grid=(4, 4))
    selection = RandomPruner(keep_ratio=0.75, seed=0).eval()(inputs)
    assert selection.scores is None and selection.num_kept.eq(12).all()
    frequency = selection.keep_mask.float().mean(0)
    torch.testing.assert_close(frequency, torch.full((16,), 0.75), atol=0.03, rtol=0)


# ---------------------------------------------------------------------------------------------- TRAM
def test_attention_graph_centrality_matches_the_formula():
    attention = torch.rand(2, 3, 5, 5).softmax(-1)
    scores = attention_graph_centrality(attention)
    for b in range(2):
        graph = attention[b].max(dim=0).values
        indegree = [sum(graph[i, j] for i in range(5)) for j in range(5)]
        expected = [sum(graph[i, j] * indegree[i] for i in range(5)) for j in range(5)]
        torch.testing.assert_close(scores[b], torch.stack(expected))
    valid = torch.tensor([[True, True, True, False, False], [True] * 5])
    masked = attention_graph_centrality(attention, valid)
    graph = attention[0].max(dim=0).values * valid[0, :, None]
    torch.testing.assert_close(masked[0], graph.T @ graph.sum(0))


def test_tram_accumulates_scores_over_all_blocks_since_the_start():
    """Reference: run the blocks by hand, sum the per-block centrality on the grid, top-k per stage."""
    net = tiny_unetr("tram").eval()
    calls = record_selections(net)
    x = image()
    with torch.no_grad():
        net(x)
        tokens = net.vit.patch_embedding(x)
        total = torch.zeros(2, 16)
        index = torch.arange(16).expand(2, -1)
        expected = []
        for block_index, block in enumerate(net.vit.blocks[:7]):
            tokens, attention = transformer_block_forward(block, tokens, return_attention=True)
            total = total.scatter_add(1, index, attention_graph_centrality(attention))
            if block_index in (3, 6):
                keep = total.gather(1, index).topk(keep_count(index.shape[1], 0.75), dim=1).indices.sort(1).values
                index = index.gather(1, keep)
                tokens = tokens.gather(1, keep[..., None].expand(-1, -1, 32))
                expected.append(torch.zeros(2, 17, dtype=torch.bool).scatter_(1, index, True)[:, :16])
    assert [len(inputs.attentions) for inputs, _ in calls] == [4, 3]
    for (inputs, selection), reference in zip(calls, expected):
        assert torch.equal(kept_grid(inputs, selection), reference)


@pytest.mark.parametrize("executor", ["attention_mask", "padded"])
def test_tram_maps_attention_to_the_grid_in_every_executor_mode(executor):
    x = image()
    with torch.no_grad():
        reference = tiny_unetr("tram").eval()(x)
        torch.testing.assert_close(tiny_unetr("tram", executor=executor).eval()(x), reference, atol=1e-5, rtol=1e-5)


def test_tram_training_path_equals_eval_and_only_tram_gets_attention():
    net = tiny_unetr("tram")
    calls = record_selections(net)
    x = image()
    with torch.no_grad():
        net.train()(x)
        net.eval()(x)
    assert torch.equal(calls[0][1].keep_mask, calls[2][1].keep_mask)  # parameter-free: no training-only path
    assert calls[0][1].scores is None
    other = tiny_unetr("random").eval()
    other_calls = record_selections(other)
    with torch.no_grad():
        other(x)
    assert all(not inputs.attentions for inputs, _ in other_calls)
    with pytest.raises(ValueError, match="TRAM needs the attention maps"):
        TRAM()(stage_input(torch.randn(1, 64, 32)))


# ---------------------------------------------------------------------------------------------- STP + MTA
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


# ---------------------------------------------------------------------------------------------- DynamicViT
def test_dynamicvit_masks_attention_in_training_and_gathers_in_eval():
    net = tiny_unetr("dynamicvit", pruner_kwargs={"keep_ratio": 0.5})
    shapes = tokens_after_stage1(net)
    calls = record_selections(net)
    net.train()(image())
    assert shapes == [(2, 16, 32)]  # all tokens stay in training
    _, selection = calls[0]
    assert selection.keep_index is None and selection.keep_mask.dtype == torch.bool
    assert ((selection.scores > 0) & (selection.scores < 1)).all()
    first, second = net.token_report
    assert torch.equal(second.tokens_in, first.tokens_kept)  # a dropped token stays dropped
    assert net.aux_loss is not None and net.aux_loss.requires_grad
    net.eval()
    with torch.no_grad():
        net(image())
    assert shapes[1] == (2, 8, 32)  # gathered at inference
    assert net.aux_loss is None
    assert [r.tokens_kept.tolist() for r in net.token_report] == [[8.0, 8.0], [4.0, 4.0]]


def test_dynamicvit_ratio_loss_targets_the_cumulative_ratio():
    torch.manual_seed(0)
    pruner = DynamicViT(dim=32, keep_ratio=0.75, ratio_weight=2.0).train()
    inputs = stage_input(torch.randn(2, 64, 32))
    first = pruner(inputs)
    kept = first.keep_mask.float().sum(1) / 64
    torch.testing.assert_close(first.aux_loss, 2.0 * ((kept - 0.75) ** 2).mean())
    second = pruner(inputs)  # the same forward pass's second pruned stage (shared memory): target 0.75 ** 2
    kept = second.keep_mask.float().sum(1) / 64
    torch.testing.assert_close(second.aux_loss, 2.0 * ((kept - 0.5625) ** 2).mean())
    assert inputs.memory["dynamicvit.stage_number"] == 2
    # the decision follows the Gumbel sample: keep where the noisy keep probability wins
    assert torch.equal(first.keep_mask, first.scores > 0.5)
    pruner.eval()
    with torch.no_grad():
        plain = pruner(inputs)
        probabilities = pruner.keep_log_probs(inputs)[..., 0].exp()
    assert torch.equal(plain.keep_index, probabilities.topk(48, dim=1).indices.sort(1).values)


def test_dynamicvit_gradients_reach_the_predictor():
    net = tiny_unetr("dynamicvit").train()
    torch.manual_seed(0)
    net(image()).square().mean().backward()  # through the float attention policy only
    grads = [p.grad for p in net.pruners["1"].predictor.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    net.zero_grad()
    net(image())
    net.aux_loss.backward()  # through the ratio loss only
    for stage in ("1", "2"):
        assert net.pruners[stage].predictor.head[-1].weight.grad.abs().sum() > 0


def test_distillation_from_an_unpruned_teacher(tmp_path):
    torch.manual_seed(0)
    plain = UNETR(**TINY)
    torch.save({"network": plain.state_dict()}, tmp_path / "teacher.pt")
    student = tiny_unetr("dynamicvit").train()
    teacher = PrunedUNETR(pruner=None, **TINY)
    seg = PrunedSegLoss(DiceCELoss(to_onehot_y=True, softmax=True), student)
    loss = DistillationLoss(seg, student, teacher, teacher_checkpoint=str(tmp_path / "teacher.pt"), weight=0.5, temperature=2.0)
    torch.testing.assert_close(teacher.vit.blocks[0].attn.qkv.weight, plain.vit.blocks[0].attn.qkv.weight)
    x, label = image(), torch.randint(0, 3, (2, 1, 64, 64))
    pred = student(x, boxes=None)
    value = loss(pred, label)
    with torch.no_grad():
        target = plain.eval()(x)
    expected_kl = torch.nn.functional.kl_div(
        (pred / 2).log_softmax(1), (target / 2).log_softmax(1), reduction="none", log_target=True
    ).sum(1).mean() * 4
    torch.testing.assert_close(value, seg(pred, label) + 0.5 * expected_kl)
    value.backward()
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training
    assert student.pruners["1"].predictor.head[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="call the student network before the loss"):
        loss(pred, label)  # the recorded input is used once
    mse = DistillationLoss(torch.nn.MSELoss(), student, teacher, kind="mse")
    pred = student(x)
    torch.testing.assert_close(mse(pred, target), 2 * torch.nn.functional.mse_loss(pred, target))
    with pytest.raises(ValueError, match="kind must be"):
        DistillationLoss(seg, student, teacher, kind="l1")
