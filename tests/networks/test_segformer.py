"""SegFormer (MiT encoder + all-MLP head) with token pruning at its stage boundaries."""

import math
from functools import partial

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import SEGFORMER_TINY as TINY
from conftest import image
from conftest import tiny_segformer as make
from monai.networks.blocks import Convolution

from prato_components.efficiency import count_flops
from prato_components.networks.segformer import (
    AllMLPHead,
    EfficientSelfAttention,
    MixTransformerBlock,
    SegFormer,
    upsample_bilinear,
)
from prato_components.pruners import MultiLayerTokenAssembly
from prato_components.pruners.base import TokenPruner, keep_count, select_topk
from prato_components.tokens import TokenSelection, TokenState

IMG = (64, 64)  # stage grids 16x16, 8x8, 4x4, 2x2
BOXES = torch.tensor([[[8.0, 8.0, 40.0, 40.0]], [[20.0, 0.0, 64.0, 30.0]]])



def prato(keep_ratio: float = 0.75, **kwargs) -> dict:
    return dict(pruner="prato", pruner_kwargs={"keep_ratio": keep_ratio, "proj_dim": 8}, **kwargs)


class Recorder(TokenPruner):
    def __init__(self, keep_ratio: float = 0.5) -> None:
        super().__init__(keep_ratio)
        self.seen = []

    def forward(self, inputs):
        self.seen.append((inputs.stage, inputs.grid_shape, inputs.stride, tuple(inputs.tokens.shape)))
        return select_topk(inputs.tokens.sum(-1), self.keep_ratio, inputs.valid)


def test_variants_match_the_paper():
    b0 = SegFormer("b0", in_channels=3, out_channels=150)
    assert b0.embed_dims == (32, 64, 160, 256)
    assert sum(p.numel() for p in b0.parameters()) == pytest.approx(3.75e6, rel=0.03)  # the paper's 3.8M
    assert [s.blocks[0].attn.sr_ratio for s in b0.stages] == [8, 4, 2, 1]
    assert b0.stages[0].patch_embed.proj.kernel_size == (7, 7) and b0.stages[0].patch_embed.proj.stride == (4, 4)
    assert b0.stages[1].patch_embed.proj.kernel_size == (3, 3) and b0.stages[1].patch_embed.proj.stride == (2, 2)


@pytest.mark.parametrize("pruner", [None, "prato"])
@pytest.mark.parametrize("size", [IMG, (72, 56)])
def test_shapes_2d(pruner, size):
    net = make(**(prato() if pruner else {})).eval()
    boxes = torch.tensor([[[8.0, 8.0, 40.0, 40.0]], [[20.0, 0.0, 50.0, 30.0]]])
    with torch.no_grad():
        logits = net(image(2, size), boxes)
        assert logits.shape == (2, 3, *size) and logits.is_contiguous()
        assert net(image(2, size), None).shape == (2, 3, *size)  # no prompt: the whole image is the box


def test_kept_counts_and_strides_per_stage():
    net = make(**prato(0.75)).eval()
    with torch.no_grad():
        net(image(), BOXES)
    assert net.grid_shapes == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert [r.stage for r in net.token_report] == [1, 2]
    # boundary s prunes the tokens entering stage s + 1, on that stage's grid; the ratio does not compound
    assert net.token_report[0].tokens_in.tolist() == [64.0, 64.0]
    assert net.token_report[0].tokens_kept.tolist() == [keep_count(64, 0.75)] * 2
    assert net.token_report[1].tokens_in.tolist() == [16.0, 16.0]
    assert net.token_report[1].tokens_kept.tolist() == [keep_count(16, 0.75)] * 2
    assert net.pruned_grid_tokens == 16
    # token sparsity counts every MiT block on its own grid (depths 1, 2, 1, 1): stage 1 and 4 run whole
    first, second = keep_count(64, 0.75), keep_count(16, 0.75)
    assert [(b.tokens.tolist(), b.grid_tokens) for b in net.block_report] == [
        ([256.0] * 2, 256), ([first] * 2, 64), ([first] * 2, 64), ([second] * 2, 16), ([4.0] * 2, 4)
    ]
    assert net.kept_fraction() == pytest.approx((256 + 2 * first + second + 4) / (256 + 2 * 64 + 16 + 4))

    recorder = Recorder()
    net = make(pruner=recorder, prune_stages=(1, 2, 3)).eval()
    with torch.no_grad():
        net(image(), BOXES)
    seen = [p.seen[0] for p in net.pruners.values()]
    assert [(s[0], s[1], s[2]) for s in seen] == [
        (1, (8, 8), (8.0, 8.0)),
        (2, (4, 4), (16.0, 16.0)),
        (3, (2, 2), (32.0, 32.0)),
    ]
    assert [s[3] for s in seen] == [(2, 64, 16), (2, 16, 24), (2, 4, 32)]  # every stage's own grid and width


def test_named_pruner_is_built_at_each_stage_width():
    net = make(**prato(prune_stages=(1, 2, 3)))
    assert [net.pruners[s].f1.in_features for s in ("1", "2", "3")] == [16, 24, 32]


def test_keep_all_equals_unpruned():
    base = make().eval()
    pruned = make(**prato(1.0, prune_stages=(1, 2, 3))).eval()
    pruned.load_unpruned_state_dict(base.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(pruned(image(), BOXES), base(image(), BOXES), rtol=1e-5, atol=1e-5)
    assert [r.tokens_kept.tolist() for r in pruned.token_report] == [[64.0] * 2, [16.0] * 2, [4.0] * 2]


@pytest.mark.parametrize("sr_ratio", [1, 2, 4])
def test_pruned_attention_equals_full_attention_at_kept_positions(sr_ratio):
    """The correctness anchor: queries on kept tokens only, keys/values from the restored grid, give what the
    full-length efficient attention gives at the kept positions when pruned positions hold their carried values."""
    torch.manual_seed(0)
    grid, dim = (8, 8), 16
    block = MixTransformerBlock(dim, num_heads=2, sr_ratio=sr_ratio).eval()
    x = torch.randn(2, 64, dim)
    state = TokenState(x, grid, mode="gather", fill="carry")
    inputs = state.stage_input(1, (8.0, 8.0), None)
    state.apply(select_topk(torch.randn(2, 64), 0.6), 1, inputs)
    state.tokens = state.tokens + torch.randn_like(state.tokens)  # kept tokens moved on, pruned ones are carried
    reference = state.restore()  # full length: kept tokens updated, pruned positions hold the carried values
    kept = state.token_index
    with torch.no_grad():
        h = block.norm1(state.tokens)
        pruned = block.attn(h, state.restore(h, carry_transform=block.norm1), grid)
        full = block.attn(block.norm1(reference), block.norm1(reference), grid)
    assert pruned.shape == (2, keep_count(64, 0.6), dim)
    torch.testing.assert_close(pruned, full.gather(1, kept[..., None].expand(-1, -1, dim)), rtol=1e-5, atol=1e-5)


def test_efficient_attention_reduces_keys():
    attention = EfficientSelfAttention(8, num_heads=1, sr_ratio=4)
    context = torch.randn(1, 64, 8)
    reduced = attention.norm(attention.sr(context.transpose(1, 2).reshape(1, 8, 8, 8)).flatten(2).transpose(1, 2))
    assert reduced.shape == (1, 4, 8)  # 8x8 grid, ratio 4 -> 2x2 keys
    assert attention(context[:, :10], context, (8, 8)).shape == (1, 10, 8)


@pytest.mark.parametrize("executor", ["padded", "mask"])
def test_executors_agree_with_gather(executor):
    """Gathered execution equals the full-length literal mask and the padded variable-count path."""
    gather = make(**prato(0.6)).eval()
    other = make(**prato(0.6), executor=executor).eval()
    other.load_state_dict(gather.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(other(image(), BOXES), gather(image(), BOXES), rtol=1e-5, atol=1e-5)


def test_fill_policy_changes_the_restored_maps():
    carry = make(**prato(0.5)).eval()
    zero = make(**prato(0.5), fill="zero").eval()
    zero.load_state_dict(carry.state_dict())
    with torch.no_grad():
        maps_carry, maps_zero = carry.encode(image(), BOXES), zero.encode(image(), BOXES)
    torch.testing.assert_close(maps_zero[0], maps_carry[0])  # stage 1 is never pruned
    assert (maps_zero[1] == 0).all(dim=1).sum() == 2 * (64 - 32)  # pruned stage-2 positions hold zero
    assert not (maps_carry[1] == 0).all(dim=1).any()


def test_gradients_reach_prato_projections():
    net = make(**prato(0.5)).train()
    net(image(), BOXES).square().mean().backward()
    for stage in ("1", "2"):
        for proj in (net.pruners[stage].f1, net.pruners[stage].f2):
            assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0


def test_pruning_lowers_flops():
    base = make().eval()
    pruned = make(**prato(0.5)).eval()
    pruned.load_unpruned_state_dict(base.state_dict())
    full, per_full = count_flops(base, image(1), by_module=True)
    fewer, per_pruned = count_flops(pruned, image(1), BOXES[:1], by_module=True)
    assert fewer < full
    for name in (
        "SegFormer.stages.1.blocks.0.attn.q",
        "SegFormer.stages.1.blocks.0.mlp.fc1",
        "SegFormer.stages.2.blocks.0.mlp.fc2",
    ):
        assert per_pruned[name] == per_full[name] // 2  # kept tokens only
    for name in ("SegFormer.stages.1.blocks.0.attn.sr", "SegFormer.stages.1.blocks.0.mlp.dwconv", "SegFormer.head"):
        assert per_pruned[name] == per_full[name]  # on the restored grid


def test_pruners_that_run_vit_blocks_are_refused():
    class RunsViTBlocks(TokenPruner):
        def forward(self, inputs):
            return TokenSelection(keep_mask=torch.ones_like(inputs.valid))

        def run_block(self, block, state, return_attention=False):  # a ViT-only fast path: nothing MiT can run
            return super().run_block(block, state, return_attention)

    with pytest.raises(ValueError, match="runs ViT blocks itself"):
        make(pruner=RunsViTBlocks())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(variant="b7"), "unknown SegFormer variant"),
        (dict(depths=(1, 1, 1)), "depths must give 4 stages"),
        (dict(sr_ratios=(8, 4, 2, 0)), "sr_ratios"),
        (dict(pruner="prato", prune_stages=(0,)), "subset of"),
        (dict(pruner="prato", executor="attention_mask"), "unknown executor mode .attention_mask."),
        (dict(pruner="prato", fill="mean"), "unknown fill policy"),
    ],
)
def test_bad_configuration(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(**kwargs)


def test_bad_inputs():
    net = make().eval()
    with pytest.raises(ValueError, match="2D"):
        net(torch.zeros(1, 1, 16, 16, 16))
    with pytest.raises(ValueError, match="input channel"):
        net(torch.zeros(1, 3, *IMG))
    with pytest.raises(ValueError, match="spatial dims"):
        net(image(1), torch.zeros(1, 1, 6))


class UnfoldedHead(nn.Module):
    """The all-MLP head in the paper's order (per-stage Linear, upsample, concatenate, 1x1 fuse conv): the reference
    for :class:`AllMLPHead`, which computes the same map in a cheaper order from the same parameters."""

    def __init__(self, in_dims, decoder_dim, out_channels, dropout=0.1):
        super().__init__()
        self.linear_c = nn.ModuleList(nn.Linear(d, decoder_dim) for d in in_dims)
        self.fuse = Convolution(
            2, decoder_dim * len(in_dims), decoder_dim, kernel_size=1, norm="batch", act="relu", bias=False
        )
        self.dropout = nn.Dropout2d(dropout)
        self.pred = nn.Conv2d(decoder_dim, out_channels, kernel_size=1)

    def forward(self, maps):
        size = maps[0].shape[2:]
        upsampled = []
        for feature_map, linear in zip(maps, self.linear_c):
            x = linear(feature_map.movedim(1, -1)).movedim(-1, 1)
            if x.shape[2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            upsampled.append(x)
        return self.pred(self.dropout(self.fuse(torch.cat(upsampled[::-1], dim=1))))


HEAD_DIMS, HEAD_WIDTH = TINY["embed_dims"], TINY["decoder_dim"]
# stage grids of a 64x64 and a 72x56 image; with these widths the first stages fold Linear and fuse block into one
# matrix (more tokens than channels) and the last ones apply them in turn, so both orders are compared
HEAD_GRIDS = {"64x64": ((16, 16), (8, 8), (4, 4), (2, 2)), "72x56": ((18, 14), (9, 7), (5, 4), (3, 2))}


def head_pair(seed: int = 0) -> tuple[AllMLPHead, UnfoldedHead]:
    """The head with non-trivial biases and BN statistics, and the reference loaded from its state dict."""
    torch.manual_seed(seed)
    head = AllMLPHead(HEAD_DIMS, HEAD_WIDTH, out_channels=3)
    with torch.no_grad():
        norm = head.fuse.adn.N
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.normal_()
        norm.bias.normal_()
        head.pred.bias.normal_()
    reference = UnfoldedHead(HEAD_DIMS, HEAD_WIDTH, out_channels=3)
    reference.load_state_dict(head.state_dict())  # strict: same keys and shapes, an unfolded checkpoint loads
    return head, reference


def head_maps(batch: int, grids, channels_last: bool, requires_grad: bool = False) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    maps = []
    for dim, (h, w) in zip(HEAD_DIMS, grids):
        x = torch.randn(batch, h, w, dim, generator=generator)  # channels-last views, as the encoder hands them
        x = x.permute(0, 3, 1, 2) if channels_last else x.permute(0, 3, 1, 2).contiguous()
        maps.append(x.requires_grad_(requires_grad) if requires_grad else x)
    return maps


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("grids", list(HEAD_GRIDS.values()), ids=list(HEAD_GRIDS))
@pytest.mark.parametrize("channels_last", [True, False])
def test_head_equals_unfolded_reference(batch, grids, channels_last):
    head, reference = head_pair()
    maps = head_maps(batch, grids, channels_last)
    with torch.no_grad():
        out = head.eval()(maps)
        expected = reference.eval()(maps)
    assert out.shape == (batch, 3, *grids[0])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("grids", list(HEAD_GRIDS.values()), ids=list(HEAD_GRIDS))
def test_head_gradients_equal_unfolded_reference(grids):
    """In training (batch statistics, dropout) the folded head gives the reference's values and gradients, to the
    stage maps and to every parameter, and updates the BN running statistics alike."""
    head, reference = head_pair()
    weight = torch.randn(2, 3, *grids[0], generator=torch.Generator().manual_seed(3))
    results = []
    for module in (head.train(), reference.train()):
        maps = head_maps(2, grids, channels_last=True, requires_grad=True)
        torch.manual_seed(4)  # the same dropout channels in both
        out = module(maps)
        (out * weight).sum().backward()
        grads = {name: p.grad for name, p in module.named_parameters()}
        assert all(g is not None for g in grads.values())
        results.append((out, [m.grad for m in maps], grads, module.fuse.adn.N.running_mean.clone()))
    (out, map_grads, grads, mean), (ref_out, ref_map_grads, ref_grads, ref_mean) = results
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    for got, want in zip(map_grads, ref_map_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name in grads:  # weight gradients sum over every pixel (values up to ~65): float32 summation order varies
        # with the thread count, so the absolute tolerance scales with the gradient's size
        scale = float(ref_grads[name].abs().max())
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-5 * max(1.0, scale), msg=name)
    torch.testing.assert_close(mean, ref_mean, rtol=1e-5, atol=1e-5)


def test_network_equals_unfolded_head():
    net = make(**prato(0.75)).eval()
    reference = UnfoldedHead(TINY["embed_dims"], TINY["decoder_dim"], out_channels=3).eval()
    with torch.no_grad():
        net.head.fuse.adn.N.running_mean.normal_()  # BN statistics of a trained network, in both heads
        reference.load_state_dict(net.head.state_dict())
        logits = net(image(), BOXES)
        expected = F.interpolate(reference(net.encode(image(), BOXES)), size=IMG, mode="bilinear", align_corners=False)
    assert logits.is_contiguous()
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_head_flops_drop_the_fuse_conv():
    """Each stage goes straight to the decoder width on its own grid: the fuse conv over the concatenated 1/4
    resolution maps is gone. Folding costs ``D * D * C_i`` once; it is used where a stage has more tokens than
    channels."""
    head, reference = head_pair()
    grids, width, batch = HEAD_GRIDS["64x64"], HEAD_WIDTH, 1
    maps = head_maps(batch, grids, channels_last=True)
    expected = 2 * batch * math.prod(grids[0]) * width * 3  # the prediction conv
    for dim, grid in zip(HEAD_DIMS, grids):
        tokens = batch * math.prod(grid)
        expected += 2 * width * dim * (width + tokens) if tokens > dim else 2 * tokens * width * (dim + width)
    flops = count_flops(head.eval(), maps)
    assert expected <= flops <= expected + 2 * width * len(HEAD_DIMS) * width  # + the bias fold (a matrix-vector)
    assert flops < count_flops(reference.eval(), maps) / 4


def test_head_needs_every_stage():
    head, _ = head_pair()
    with pytest.raises(ValueError, match="expects 4 stage maps, got 3"):
        head(head_maps(1, HEAD_GRIDS["64x64"], channels_last=True)[:3])


# ---------------------------------------------------------------------------------------------- STP, Evo-ViT, TRAM
def record_inputs(net) -> list:
    seen = []
    for pruner in net.pruners.values():
        pruner.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    return seen


def mta_factory():
    return partial(MultiLayerTokenAssembly, spatial_dims=2, depth=1)


@pytest.mark.parametrize("name", ["evovit", "tram"])
def test_attention_pruners_get_reduced_attention_and_keep_the_budget(name):
    net = make(pruner=name, pruner_kwargs={"keep_ratio": 0.5}).eval()
    seen = record_inputs(net)
    with torch.no_grad():
        assert net(image(), BOXES).shape == (2, 3, *IMG)
    first, second = seen
    # boundary 1: the stage-1 block on 16 x 16 tokens, attending to 2 x 2 keys (ratio 8), one head
    assert [type(a).__name__ for a in first.attentions] == ["ReducedAttention"]
    assert first.attentions[0].probs.shape == (2, 1, 256, 4) and first.attentions[0].grid_shape == (16, 16)
    # boundary 2: the two stage-2 blocks on the 32 kept of 8 x 8 tokens, 2 x 2 keys (ratio 4), two heads
    assert [a.probs.shape for a in second.attentions] == [(2, 2, 32, 4)] * 2
    assert all(a.grid_shape == (8, 8) and a.query_cells.shape == (2, 32) for a in second.attentions)
    assert [r.tokens_kept.tolist() for r in net.token_report] == [[32.0] * 2, [8.0] * 2]


@pytest.mark.parametrize("name", ["evovit", "tram", "stp"])
@pytest.mark.parametrize("executor", ["padded", "mask"])
def test_new_pairings_executors_agree_with_gather(name, executor):
    extra = {"completion": mta_factory()} if name == "stp" else {}
    gather = make(pruner=name, pruner_kwargs={"keep_ratio": 0.6}, **extra).eval()
    other = make(pruner=name, pruner_kwargs={"keep_ratio": 0.6}, executor=executor, **extra).eval()
    other.load_state_dict(gather.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(other(image(), BOXES), gather(image(), BOXES), rtol=1e-5, atol=1e-5)


def test_representative_attends_to_the_reduced_keys_without_a_position():
    torch.manual_seed(0)
    grid, dim = (8, 8), 16
    block = MixTransformerBlock(dim, num_heads=2, sr_ratio=4).eval()
    state = TokenState(torch.randn(2, 64, dim), grid)
    inputs = state.stage_input(1, (8.0, 8.0), None)
    state.apply(select_topk(torch.randn(2, 64), 0.5), 1, inputs)
    rep = torch.randn(2, 1, dim)
    with torch.no_grad():
        out = block.run(state.tokens, grid, state, representative=rep)
        torch.testing.assert_close(out.tokens, block(state.tokens, grid, state))
        context = state.restore(block.norm1(state.tokens), carry_transform=block.norm1)
        expected = rep + block.attn(block.norm1(rep), context, grid)  # one more query on the same keys
        expected = expected + block.mlp(block.norm2(expected), (1, 1))  # the Mix-FFN on a lone 1 x 1 map
    torch.testing.assert_close(out.representative, expected, rtol=1e-5, atol=1e-5)


def test_evovit_placeholders_evolve_and_reach_the_keys_and_the_head():
    fast = make(pruner="evovit", pruner_kwargs={"keep_ratio": 0.5}).eval()
    frozen = make(pruner="evovit", pruner_kwargs={"keep_ratio": 0.5, "representative": False}).eval()
    with torch.no_grad():
        maps_fast, maps_frozen = fast.encode(image(), BOXES), frozen.encode(image(), BOXES)
    torch.testing.assert_close(maps_fast[0], maps_frozen[0])  # stage 1 is never pruned
    changed = (maps_fast[1] - maps_frozen[1]).abs().amax(dim=1) > 1e-6  # [B, 8, 8]
    assert changed.sum().item() == 2 * 64  # the placeholders moved, and so did the kept tokens that attend to them
    assert [r.tokens_kept.tolist() for r in fast.token_report] == [r.tokens_kept.tolist() for r in frozen.token_report]


def test_stp_mta_per_pruned_stage_feeds_only_the_head_and_learns():
    net = make(pruner="stp", pruner_kwargs={"keep_ratio": 0.5}, completion=mta_factory()).train()
    assert sorted(net.completion) == ["1", "2"] and [net.completion[s].dim for s in ("1", "2")] == [16, 24]
    for mta in net.completion.values():
        torch.nn.init.normal_(mta.assemblers[next(iter(mta.assemblers))].proj_out.weight, std=0.02)
    net(image(), BOXES).square().mean().backward()
    for stage in ("1", "2"):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.pruners[stage].parameters())
    for stage, mta in net.completion.items():  # each grid holds only the tokens its own boundary pruned
        used = int(stage) - 1
        assert mta.stage_tokens.grad[used].abs().sum() > 0 and mta.stage_tokens.grad.abs().sum(1).count_nonzero() == 1
    plain = make(pruner="stp", pruner_kwargs={"keep_ratio": 0.5}).eval()
    net.eval()
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("completion.")})
    inputs, plain_inputs = record_inputs(net), record_inputs(plain)
    with torch.no_grad():
        completed, carried = net.encode(image(), BOXES), plain.encode(image(), BOXES)
    torch.testing.assert_close(inputs[1].tokens, plain_inputs[1].tokens)  # the next stage embeds the carried map
    assert not torch.allclose(completed[1], carried[1]) and torch.equal(completed[3], carried[3])


def _encoder_convs(net: SegFormer) -> list[nn.Conv2d]:
    """The convolutions whose inputs are channels-last maps: all of the encoder's but the first patch embedding's."""
    first = net.stages[0].patch_embed.proj
    return [m for m in net.stages.modules() if isinstance(m, nn.Conv2d) and m is not first]


def test_encoder_convolutions_stay_channels_last_for_a_batch_of_one():
    """A compiled program hands a convolution the restored map of a batch of one with the batch stride 0, which
    PyTorch's layout rule does not read as channels-last; the channels-last weights keep every encoder convolution
    (the depth-wise ones of the pruned stages included) channels-last there, with the same values."""
    net = make(pruner="prato").eval()
    convs = _encoder_convs(net)
    assert {m.groups > 1 for m in convs} == {True, False}
    for conv in convs:
        x = torch.randn(1, 8, 8, conv.in_channels).permute(0, 3, 1, 2)  # a channels-last view, as _to_map gives
        stride_zero = x.as_strided(x.shape, (0, *x.stride()[1:]))
        with torch.no_grad():
            out = conv(stride_zero)
            assert out.stride(1) == 1, (conv, out.stride())  # channels innermost: no copy to channels-first
            assert torch.equal(out, conv(x))


def test_channels_last_weights_change_no_value_and_survive_loading():
    """The stored layout changes no eager value (logits of a pruned network bit-identical with contiguous weights),
    and a checkpoint with contiguous weights loads into channels-last storage."""
    net = make(pruner="prato").eval()
    plain = make(pruner="prato").eval()
    for conv in _encoder_convs(plain):
        conv.weight.data = torch.empty_like(conv.weight, memory_format=torch.contiguous_format).copy_(conv.weight)
    assert all(conv.weight.stride(1) != 1 for conv in _encoder_convs(plain) if conv.groups > 1)
    x, boxes = image(), torch.tensor([[8.0, 8.0, 40.0, 40.0]] * 2)
    with torch.no_grad():
        assert torch.equal(net(x, boxes=boxes), plain(x, boxes=boxes))
    loaded = make(pruner="prato")
    loaded.load_state_dict(plain.state_dict())
    for conv in _encoder_convs(loaded):
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) and conv.weight.stride(1) == 1


def test_compiled_upsampling_is_aten_bilinear():
    """The final upsampling of a compiled program (one opaque operation) gives ``F.interpolate``'s values, and its
    registration passes torch's operator checks (schema, fake tensor, autograd registration)."""
    logits = torch.randn(2, 3, 5, 7)
    expected = F.interpolate(logits, size=(20, 28), mode="bilinear", align_corners=False)
    assert torch.equal(upsample_bilinear(logits, 20, 28), expected)
    torch.library.opcheck(upsample_bilinear, (logits, 20, 28))
