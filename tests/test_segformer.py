"""SegFormer (MiT encoder + all-MLP head) with token pruning at its stage boundaries."""

import pytest
import torch

from prato_components.efficiency import count_flops
from prato_components.engine.handlers import TokenSparsityHandler
from prato_components.networks.segformer import EfficientSelfAttention, MixTransformerBlock, SegFormer
from prato_components.networks.tokens import TokenState
from prato_components.pruners.base import TokenPruner, TokenSelection, keep_count, select_topk

IMG = (64, 64)  # stage grids 16x16, 8x8, 4x4, 2x2
BOXES = torch.tensor([[[8.0, 8.0, 40.0, 40.0]], [[20.0, 0.0, 64.0, 30.0]]])
TINY = dict(embed_dims=(8, 16, 24, 32), depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4), decoder_dim=16)


def make(**kwargs) -> SegFormer:
    config = dict(variant="b0", in_channels=1, out_channels=3, **TINY)
    config.update(kwargs)
    torch.manual_seed(0)
    return SegFormer(**config)


def prato(keep_ratio: float = 0.75, **kwargs) -> dict:
    return dict(pruner="prato", pruner_kwargs={"keep_ratio": keep_ratio, "proj_dim": 8}, **kwargs)


def image(batch: int = 2, size=IMG) -> torch.Tensor:
    return torch.randn(batch, 1, *size, generator=torch.Generator().manual_seed(1))


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
    assert net.num_tokens == 16 and net.kept_fraction() == pytest.approx(0.75)
    assert TokenSparsityHandler(net).num_tokens() == 16

    recorder = Recorder()
    net = make(pruner=recorder, prune_stages=(1, 2, 3)).eval()
    with torch.no_grad():
        net(image(), BOXES)
    seen = [p.seen[0] for p in net.pruners.values()]
    assert [(s[0], s[1], s[2]) for s in seen] == [(1, (8, 8), (8.0, 8.0)), (2, (4, 4), (16.0, 16.0)), (3, (2, 2), (32.0, 32.0))]
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
    for name in ("SegFormer.stages.1.blocks.0.attn.q", "SegFormer.stages.1.blocks.0.mlp.fc1", "SegFormer.stages.2.blocks.0.mlp.fc2"):
        assert per_pruned[name] == per_full[name] // 2  # kept tokens only
    for name in ("SegFormer.stages.1.blocks.0.attn.sr", "SegFormer.stages.1.blocks.0.mlp.dwconv", "SegFormer.head"):
        assert per_pruned[name] == per_full[name]  # on the restored grid


def test_attention_map_pruners_are_refused():
    class NeedsAttention(TokenPruner):
        needs_attention = True

        def forward(self, inputs):
            return TokenSelection(keep_mask=torch.ones_like(inputs.valid))

    with pytest.raises(ValueError, match="attention maps"):
        make(pruner=NeedsAttention())


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
