"""Pruned Swin UNETR: window skipping, equivalence with MONAI's SwinUNETR, reports, FLOPs (tiny configurations)."""

import copy
import math
from functools import partial

import pytest
import torch
from conftest import SWIN_TINY as TINY
from conftest import tiny_swin_unetr as tiny
from monai.networks.nets import SwinUNETR
from monai.networks.nets.swin_unetr import compute_mask, get_window_size
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

from prato_components.efficiency import count_flops
from prato_components.networks.swin import block_layout, plan_windows, swin_block_forward, swin_block_forward_masked
from prato_components.networks.swin.blocks import swin_block_run
from prato_components.networks.swin_unetr import PrunedSwinUNETR, patch_swin_unetr
from prato_components.pruners import MultiLayerTokenAssembly, TokenPruner, keep_count, select_topk
from prato_components.tokens import TokenState

TINY_3D = dict(TINY, spatial_dims=3, window_size=4, norm_name="batch")  # batch norm: the 32^3 bottleneck is 1 voxel
BOXES = torch.tensor([[10.0, 10.0, 40.0, 50.0], [0.0, 20.0, 30.0, 64.0]])
BOXES_3D = torch.tensor([[4.0, 4.0, 4.0, 20.0, 20.0, 28.0], [10.0, 0.0, 0.0, 32.0, 16.0, 16.0]])


class CornerPruner(TokenPruner):
    """Keeps the tokens nearest the grid origin: a spatially coherent selection that empties whole windows."""

    def forward(self, inputs):
        return select_topk(-inputs.token_index.float(), self.keep_ratio, inputs.valid)


class RunsViTBlocks(CornerPruner):
    def run_block(self, block, state, return_attention=False):  # a ViT-only fast path: nothing Swin can run
        return super().run_block(block, state, return_attention)



def randomise_pruners(net: PrunedSwinUNETR) -> None:
    torch.manual_seed(1)
    for parameter in net.pruners.parameters():
        torch.nn.init.normal_(parameter)


def test_keep_all_equals_unpruned_equals_monai_and_plain_state_dict_loads():
    torch.manual_seed(0)
    plain = SwinUNETR(**TINY).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        reference = plain(x)
        baseline = tiny()
        baseline.load_unpruned_state_dict(plain.state_dict())
        torch.testing.assert_close(baseline(x, BOXES), reference, atol=1e-5, rtol=1e-5)
        for executor in ("gather", "attention_mask"):
            keep_all = tiny(pruner="prato", pruner_kwargs={"keep_ratio": 1.0}, executor=executor)
            keep_all.load_unpruned_state_dict(plain.state_dict())
            torch.testing.assert_close(keep_all(x, BOXES), reference, atol=1e-5, rtol=1e-5)
            assert [r.stage for r in keep_all.token_report] == [1, 2]
    extra = set(keep_all.state_dict()) - set(plain.state_dict())
    assert extra and all(k.startswith("pruners.") for k in extra)
    with pytest.raises(KeyError, match="not a SwinUNETR state dict"):
        keep_all.load_unpruned_state_dict({"foo": torch.zeros(1)})


def test_shapes_kept_counts_and_reports_2d():
    net = tiny(pruner="prato", pruner_kwargs={"keep_ratio": 0.5})
    with torch.no_grad():
        out = net(torch.randn(2, 1, 64, 64), BOXES)
    assert out.shape == (2, 3, 64, 64)
    first, second = net.token_report
    assert (
        first.stage == 1 and first.tokens_in.tolist() == [256.0, 256.0] and first.tokens_kept.tolist() == [128.0, 128.0]
    )
    # stage 2 sees the parents of the kept stage-1 tokens (at least a quarter, at most the whole 8x8 grid)
    assert second.stage == 2 and all(32 <= n <= 64 for n in second.tokens_in.tolist())
    expected = keep_count(int(second.tokens_in.min()), 0.5)
    assert second.tokens_kept.tolist() == [float(expected)] * 2
    assert net.pruned_grid_tokens == 64
    # every Swin block reports the live tokens it ran on, on its own grid (32x32, then the stages' 16x16, 8x8, 4x4)
    counts = [b.tokens.tolist() for b in net.block_report]
    assert [b.grid_tokens for b in net.block_report] == [1024] * 2 + [256] * 2 + [64] * 2 + [16] * 2
    assert counts[:6] == [[1024.0] * 2] * 2 + [[128.0] * 2] * 2 + [[float(expected)] * 2] * 2
    parents = counts[6]  # layer 4 runs on the alive parents of the stage-2 kept tokens
    assert counts[7] == parents and all(math.ceil(expected / 4) <= n <= min(expected, 16) for n in parents)
    kept = [(2 * 1024 + 2 * 128 + 2 * expected + 2 * n) / (2 * (1024 + 256 + 64 + 16)) for n in parents]
    assert net.kept_fraction() == pytest.approx(sum(kept) / 2)
    # layers 2-4 run pruned; their blocks report the windows they attended
    assert [(w.layer, w.block) for w in net.window_report] == [(layer, b) for layer in (2, 3, 4) for b in (0, 1)]
    assert all(0 < w.windows_kept <= w.windows_total for w in net.window_report)
    assert net.pruners["1"].f1.in_features == 24 and net.pruners["2"].f1.in_features == 48  # per-stage width


def test_3d_shapes_and_keep_all_equals_monai():
    torch.manual_seed(0)
    plain = SwinUNETR(**TINY_3D).eval()
    x = torch.randn(2, 1, 32, 32, 32)
    net = PrunedSwinUNETR(pruner="prato", pruner_kwargs={"keep_ratio": 1.0}, **TINY_3D).eval()
    net.load_unpruned_state_dict(plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(net(x, BOXES_3D), plain(x), atol=1e-5, rtol=1e-5)
        pruned = PrunedSwinUNETR(pruner="prato", pruner_kwargs={"keep_ratio": 0.5}, **TINY_3D).eval()
        out = pruned(x, BOXES_3D)
    assert out.shape == (2, 3, 32, 32, 32)
    assert pruned.token_report[0].tokens_in.tolist() == [512.0, 512.0]
    assert pruned.token_report[0].tokens_kept.tolist() == [256.0, 256.0]


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("shifted", [False, True])
def test_window_skipping_equals_masked_full_computation(spatial_dims, shifted):
    torch.manual_seed(0)
    config = TINY if spatial_dims == 2 else dict(TINY_3D, norm_name="instance")
    layer = SwinUNETR(**config).swinViT.layers1[0]
    block = layer.blocks[1 if shifted else 0].eval()
    torch.nn.init.normal_(block.attn.relative_position_bias_table)
    assert any(block.shift_size) == shifted
    grid = (10, 12) if spatial_dims == 2 else (6, 8, 5)  # not multiples of the window: MONAI pads
    batch, channels = 2, 12
    x = torch.randn(batch, *grid, channels)
    band = slice(4, 7) if spatial_dims == 2 else slice(2, 4)  # rows inside one window row, shifted or not
    alive = torch.zeros(batch, *grid, dtype=torch.bool)
    alive[0, band] = torch.rand(alive[0, band].shape) < 0.5  # image 0: scattered survivors in a band
    alive[1, band.start, 0] = True  # image 1: a single survivor
    index = alive.flatten().nonzero().squeeze(1)
    plan = plan_windows(index, grid, batch, block_layout(block, grid))
    assert plan.num_kept < plan.num_windows  # some windows hold no live token and are skipped
    with torch.no_grad():
        sparse = swin_block_forward(block, x.reshape(-1, channels)[index], index, grid, batch, plan)
        masked = swin_block_forward_masked(block, x, alive)
        full = swin_block_forward_masked(block, x, torch.ones_like(alive))
    torch.testing.assert_close(sparse, masked.reshape(-1, channels)[index], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(masked[~alive], x[~alive])  # pruned tokens keep their value
    assert not torch.allclose(masked[alive], full[alive], atol=1e-4)  # pruned keys really are masked out
    window, shift = get_window_size(grid, block.window_size, layer.shift_size)  # as MONAI's BasicLayer does
    shift_mask = compute_mask([-(-g // w) * w for g, w in zip(grid, window)], window, shift, x.device)
    with torch.no_grad():  # everything alive: the reference is MONAI's own block
        torch.testing.assert_close(full, block(x, shift_mask), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "fill, pruner_kwargs",
    [("carry", {"keep_ratio": 0.5}), ("zero", {"keep_ratio": 0.5}), ("carry", {"threshold": "fixed", "tau": 0.5})],
)
def test_gather_equals_attention_mask_executor(fill, pruner_kwargs):
    x = torch.randn(2, 1, 64, 64)
    gather = tiny(pruner="prato", pruner_kwargs=pruner_kwargs, fill=fill)
    randomise_pruners(gather)
    reference = tiny(pruner="prato", pruner_kwargs=pruner_kwargs, fill=fill, executor="attention_mask")
    reference.load_state_dict(gather.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(gather(x, BOXES), reference(x, BOXES), atol=1e-5, rtol=1e-5)
    kept = [r.tokens_kept.tolist() for r in gather.token_report]
    assert kept == [r.tokens_kept.tolist() for r in reference.token_report]
    if "threshold" in pruner_kwargs:  # a fixed threshold keeps a different number per image: no padding needed
        assert kept[0][0] != kept[0][1]


def test_fill_policies_differ_and_prompt_is_optional():
    x = torch.randn(2, 1, 64, 64)
    carry = tiny(pruner="prato", pruner_kwargs={"keep_ratio": 0.5})
    zero = tiny(pruner="prato", pruner_kwargs={"keep_ratio": 0.5}, fill="zero")
    zero.load_state_dict(carry.state_dict())
    with torch.no_grad():
        assert not torch.allclose(carry(x, BOXES), zero(x, BOXES))
        no_prompt = carry(x)  # no prompt: PrATo scores against the whole image
        one_box_each = carry(x, BOXES[:, None])  # [B, M, 4] form
    assert no_prompt.shape == one_box_each.shape == (2, 3, 64, 64)
    assert carry.token_report[0].tokens_kept.tolist() == [128.0, 128.0]


def test_pruning_saves_flops_and_skips_windows():
    x = torch.randn(1, 1, 64, 64)
    baseline = tiny()
    prato = tiny(pruner="prato", pruner_kwargs={"keep_ratio": 0.5})
    corner = tiny(pruner=CornerPruner(keep_ratio=0.25), prune_stages=(1,))
    base_flops = count_flops(baseline, x, BOXES[:1])
    prato_flops = count_flops(prato, x, BOXES[:1])
    corner_flops = count_flops(corner, x, BOXES[:1])
    assert prato_flops < base_flops
    assert corner_flops < prato_flops
    layer2 = [w for w in corner.window_report if w.layer == 2]
    assert all(w.windows_kept < w.windows_total for w in layer2)


def test_gradients_reach_pruners_and_blocks_in_training():
    net = tiny(pruner="prato", pruner_kwargs={"keep_ratio": 0.5}).train()
    net(torch.randn(2, 1, 64, 64), BOXES).mean().backward()
    for stage in ("1", "2"):
        assert net.pruners[stage].f1.weight.grad.abs().sum() > 0
        assert net.pruners[stage].f2.weight.grad.abs().sum() > 0
    assert net.swinViT.layers3[0].blocks[1].attn.relative_position_bias_table.grad.abs().sum() > 0
    assert net.swinViT.layers2[0].blocks[0].mlp.linear1.weight.grad.abs().sum() > 0


def test_pruner_forms_and_patch():
    net = tiny(pruner={1: CornerPruner(0.5), "2": CornerPruner(0.75)})
    assert net.pruners["1"].keep_ratio == 0.5 and net.pruners["2"].keep_ratio == 0.75
    torch.manual_seed(0)
    plain = SwinUNETR(**TINY).eval()
    weight = plain.swinViT.layers2[0].blocks[0].attn.qkv.weight.clone()
    patched = patch_swin_unetr(plain, CornerPruner(0.5), prune_stages=(2,))
    assert isinstance(patched, PrunedSwinUNETR) and isinstance(patched, SwinUNETR)
    torch.testing.assert_close(patched.swinViT.layers2[0].blocks[0].attn.qkv.weight, weight)
    with torch.no_grad():
        patched(torch.randn(1, 1, 64, 64))
    assert [r.stage for r in patched.token_report] == [2]
    assert copy.deepcopy(patched).prune_stages == (2,)


def test_patch_swin_unetr_keeps_the_users_subclass():
    class MySwinUNETR(SwinUNETR):
        pass

    torch.manual_seed(0)
    patched = patch_swin_unetr(MySwinUNETR(**TINY).eval(), CornerPruner(0.5), prune_stages=(2,), fill="zero")
    assert isinstance(patched, MySwinUNETR) and isinstance(patched, PrunedSwinUNETR) and patched.fill == "zero"
    with torch.no_grad():
        patched(torch.randn(1, 1, 64, 64))
    assert [r.stage for r in patched.token_report] == [2]
    assert copy.deepcopy(patched).prune_stages == (2,)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(pruner="prato", prune_stages=(4,)), "prune_stages must be a subset"),
        (dict(pruner="prato", executor="mask"), "unknown executor"),
        (dict(pruner="prato", fill="nearest"), "unknown fill policy"),
        (dict(pruner=RunsViTBlocks(0.5)), "runs ViT blocks itself"),
        (dict(pruner={1: CornerPruner(0.5)}), r"no pruner for stage\(s\) \[2\]"),
    ],
)
def test_bad_configuration_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kwargs)


@pytest.mark.parametrize(
    "image, boxes, message",
    [
        (torch.randn(1, 2, 64, 64), None, "expects 1 input channel"),
        (torch.randn(1, 1, 64), None, "expected an image of shape"),
        (torch.randn(1, 1, 48, 64), None, "must be divisible by"),
        (torch.randn(1, 1, 64, 64), torch.zeros(1, 1, 6), "spatial dims"),
    ],
)
def test_bad_inputs_raise_clear_errors(image, boxes, message):
    net = tiny(pruner="prato")
    with pytest.raises(ValueError, match=message):
        net(image, boxes)


def test_torch_export_keeps_window_skipping_and_matches_eager():
    net = tiny(pruner="prato", pruner_kwargs={"keep_ratio": 0.5})
    randomise_pruners(net)
    x = torch.randn(2, 1, 64, 64)
    batch = torch.export.Dim("batch", min=1, max=64)
    with torch.no_grad():
        program = torch.export.export(net, (x, BOXES), dynamic_shapes=({0: batch}, {0: batch}))
    # the pruned blocks (layers 2-4) attend a data-dependent number of windows, as in eager: no full-grid fallback
    sdpa = torch.ops.aten.scaled_dot_product_attention.default
    windows = [node.meta["val"].shape[0] for node in program.graph.nodes if node.target == sdpa]
    assert len(windows) == 6 and all(free_unbacked_symbols(w) for w in windows)
    exported = program.module()
    for images, boxes in ((torch.randn(1, 1, 64, 64), BOXES[:1]), (torch.randn(3, 1, 64, 64), BOXES[[0, 1, 0]])):
        with torch.no_grad():
            torch.testing.assert_close(exported(images, boxes), net(images, boxes), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- STP, Evo-ViT, TRAM
def record_inputs(net) -> list:
    """The StageInput of every pruner call."""
    seen = []
    for pruner in net.pruners.values():
        pruner.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    return seen


class Recorder(torch.nn.Module):
    """A completion that records what it is given and shifts the grid (so that its effect shows)."""

    def __init__(self, seen: list) -> None:
        super().__init__()
        self.seen = seen

    def forward(self, grid, state, tap):
        self.seen.append((tap, tuple(grid.shape), state.grid_shape, state.pruned_at().clone()))
        return grid + 1.0


def mta_factory():
    return partial(MultiLayerTokenAssembly, spatial_dims=2, depth=1, window_size=7)  # as the bundle


@pytest.mark.parametrize("name", ["evovit", "tram"])
def test_attention_pruners_get_window_attention_and_keep_the_budget(name):
    net = tiny(pruner=name, pruner_kwargs={"keep_ratio": 0.5})
    seen = record_inputs(net)
    with torch.no_grad():
        assert net(torch.randn(2, 1, 64, 64), BOXES).shape == (2, 3, 64, 64)
    first, second = seen
    # stage 1: the two blocks of layer 1 on the 32 x 32 grid, 5 x 5 windows of 7 x 7 per image (MONAI pads to 35)
    assert [type(a).__name__ for a in first.attentions] == ["WindowAttention"] * 2
    assert all(a.grid_shape == (32, 32) and a.probs.shape == (50, 3, 49, 49) for a in first.attentions)
    assert all(int(a.live.sum()) == 2 * 1024 for a in first.attentions)
    # stage 2: layer 2 on the 16 x 16 grid, only the windows that hold a kept token (of 2 x 3 x 3)
    assert len(second.attentions) == 2
    assert all(a.grid_shape == (16, 16) and a.probs.shape[1:] == (3, 49, 49) for a in second.attentions)
    assert all(0 < a.probs.shape[0] <= 18 and int(a.live.sum()) == 2 * 128 for a in second.attentions)
    one, two = net.token_report
    assert one.tokens_kept.tolist() == [128.0, 128.0]
    assert two.tokens_kept.tolist() == [float(keep_count(int(two.tokens_in.min()), 0.5))] * 2


@pytest.mark.parametrize("name", ["evovit", "tram", "stp"])
def test_new_pairings_gather_equals_attention_mask(name):
    extra = {"completion": mta_factory()} if name == "stp" else {}
    x = torch.randn(2, 1, 64, 64)
    gather = tiny(pruner=name, pruner_kwargs={"keep_ratio": 0.5}, **extra)
    randomise_pruners(gather)
    reference = tiny(pruner=name, pruner_kwargs={"keep_ratio": 0.5}, executor="attention_mask", **extra)
    reference.load_state_dict(gather.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(gather(x, BOXES), reference(x, BOXES), atol=1e-5, rtol=1e-5)
    kept = [r.tokens_kept.tolist() for r in gather.token_report]
    assert kept == [r.tokens_kept.tolist() for r in reference.token_report]


def test_representative_attends_to_its_images_live_tokens_and_itself():
    torch.manual_seed(0)
    block = SwinUNETR(**TINY).swinViT.layers2[0].blocks[1].eval()
    grid, batch, channels = (16, 16), 2, 24
    index = torch.tensor([3, 40, 41, 200, 256 + 7, 256 + 100])  # 4 live tokens in image 0, 2 in image 1
    tokens, rep = torch.randn(6, channels), torch.randn(batch, channels)
    with torch.no_grad():
        out = swin_block_run(block, tokens, index, grid, batch, representative=rep)
        torch.testing.assert_close(out.tokens, swin_block_forward(block, tokens, index, grid, batch))
        attn, heads = block.attn, block.attn.num_heads
        for b, rows in ((0, [0, 1, 2, 3]), (1, [4, 5])):
            qkv = attn.qkv(block.norm1(torch.cat([tokens[rows], rep[b : b + 1]])))  # its tokens, then itself
            q, k, v = qkv.view(-1, 3, heads, channels // heads).unbind(1)
            probs = ((q[-1:].transpose(0, 1) * attn.scale) @ k.permute(1, 2, 0)).softmax(-1)  # [heads, 1, n + 1]
            mixed = (probs @ v.transpose(0, 1)).transpose(0, 1).reshape(1, channels)
            expected = rep[b : b + 1] + attn.proj(mixed)
            expected = expected + block.mlp(block.norm2(expected))
            torch.testing.assert_close(out.representative[b : b + 1], expected, atol=1e-5, rtol=1e-5)


def test_evovit_placeholders_evolve_through_the_representative():
    x = torch.randn(2, 1, 64, 64)
    fast = tiny(pruner="evovit", pruner_kwargs={"keep_ratio": 0.5})
    frozen = tiny(pruner="evovit", pruner_kwargs={"keep_ratio": 0.5, "representative": False})
    merged = []
    for net in (fast, frozen):  # what the patch merging of layer 2 reads: kept tokens and placeholders
        net.swinViT.layers2[0].downsample.register_forward_hook(lambda module, args, out: merged.append(args[0]))
    with torch.no_grad():
        fast_out, frozen_out = fast(x, BOXES), frozen(x, BOXES)
    kept = [r.tokens_kept.tolist() for r in fast.token_report]
    assert kept == [r.tokens_kept.tolist() for r in frozen.token_report]  # the fast path does not change the ranking
    moved = (merged[0] - merged[1]).abs().sum(-1) > 1e-6  # [B, 16, 16]: where the grids differ
    assert moved.sum(dim=(1, 2)).tolist() == [256.0 - 128.0] * 2  # every placeholder, and no kept token
    assert not torch.allclose(fast_out, frozen_out)


def test_gradients_reach_stp_and_its_mta_in_training():
    net = tiny(pruner="stp", pruner_kwargs={"keep_ratio": 0.5}, completion=mta_factory()).train()
    assert sorted(net.completion) == ["2", "3", "4"]
    assert [net.completion[t].dim for t in ("2", "3", "4")] == [24, 48, 96]  # grids 1, 2, 3 feed taps 2, 3, 4
    for mta in net.completion.values():
        torch.nn.init.normal_(mta.assemblers[next(iter(mta.assemblers))].proj_out.weight, std=0.02)
    net(torch.randn(2, 1, 64, 64), BOXES).mean().backward()
    for stage in ("1", "2"):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.pruners[stage].parameters())
    for tap, mta in net.completion.items():
        assert mta.stage_tokens.grad[:2].abs().sum() > 0 and mta.stage_tokens.grad[2].abs().sum() == 0, tap
    assert [r.tokens_kept.tolist() for r in net.token_report][0] == [128.0, 128.0]


def test_completion_sees_where_each_cell_was_pruned_and_feeds_only_the_taps():
    seen = []
    x = torch.randn(1, 1, 64, 64)
    net = tiny(pruner=CornerPruner(keep_ratio=0.25), completion={t: Recorder(seen) for t in (2, 3, 4)})
    plain = tiny(pruner=CornerPruner(keep_ratio=0.25))
    inputs, plain_inputs = record_inputs(net), record_inputs(plain)
    with torch.no_grad():
        completed, carried = net(x), plain(x)
    assert [(tap, shape, grid) for tap, shape, grid, _ in seen] == [
        (2, (1, 256, 24), (16, 16)),
        (3, (1, 64, 48), (8, 8)),
        (4, (1, 16, 96), (4, 4)),
    ]
    g1, g2, g3 = (stage_of.view(grid) for _, _, grid, stage_of in seen)
    assert g1[:4].eq(0).all() and g1[4:].eq(1).all()  # stage 1 keeps the first 64 of 16 x 16 cells
    assert g2[0, :4].eq(0).all() and g2[:2].flatten()[4:].eq(2).all() and g2[2:].eq(1).all()  # 4 of 16 kept
    assert g3.tolist() == [[0, 0, 2, 2], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]]  # a parent dies with its last child
    assert [r.tokens_kept.tolist() for r in net.token_report] == [r.tokens_kept.tolist() for r in plain.token_report]
    torch.testing.assert_close(inputs[1].tokens, plain_inputs[1].tokens)  # the encoder still merges the carried grid
    assert not torch.allclose(completed, carried)
    with pytest.raises(TypeError, match="one completion per tap width"):
        tiny(pruner="stp", completion=mta_factory()(dim=24))


# ---------------------------------------------------------------------------------------------- the shared executor
@pytest.mark.parametrize(
    "executor, mode", [("gather", "padded"), ("padded", "padded"), ("attention_mask", "attention_mask")]
)
def test_pruning_goes_through_the_shared_token_state(monkeypatch, executor, mode):
    """Swin UNETR has no executor of its own (docs/design.md §5): every stage input a pruner sees is made by
    TokenState.stage_input, every selection is applied by TokenState.apply, and the reports are the state's."""
    made, applied, states = [], [], []
    stage_input, apply, next_grid = TokenState.stage_input, TokenState.apply, TokenState.next_grid

    def spy_stage_input(self, *args, **kwargs):
        made.append(stage_input(self, *args, **kwargs))
        return made[-1]

    def spy_apply(self, selection, stage, inputs):
        applied.append((self.mode, stage, inputs))
        return apply(self, selection, stage, inputs)

    def spy_next_grid(self, *args, **kwargs):
        states.append(next_grid(self, *args, **kwargs))
        return states[-1]

    monkeypatch.setattr(TokenState, "stage_input", spy_stage_input)
    monkeypatch.setattr(TokenState, "apply", spy_apply)
    monkeypatch.setattr(TokenState, "next_grid", spy_next_grid)
    net = tiny(pruner="prato", pruner_kwargs={"threshold": "fixed", "tau": 0.5}, executor=executor)
    randomise_pruners(net)
    seen = record_inputs(net)
    with torch.no_grad():
        net(torch.randn(2, 1, 64, 64), BOXES)
    assert net.executor_mode() == mode
    assert len(seen) == 2 and all(a is b for a, b in zip(seen, made))  # the pruners got the state's stage inputs
    assert [(m, stage) for m, stage, _ in applied] == [(mode, 1), (mode, 2)]
    assert all(inputs is m for (_, _, inputs), m in zip(applied, made))
    assert [s.grid_shape for s in states] == [(16, 16), (8, 8), (4, 4)]  # one state per grid, continued
    for kept, recorded in ((net.token_report, states[-1].reports), (net.block_report, states[-1].block_reports)):
        assert len(kept) == len(recorded) and all(a is b for a, b in zip(kept, recorded))  # the state's own reports
    assert [r.stage for r in net.token_report] == [1, 2]
    # stage 2 prunes among the alive parents, a different number per image: the state's padded view
    assert made[1].valid is not None and made[1].valid.sum(1).tolist() == net.token_report[1].tokens_in.tolist()
