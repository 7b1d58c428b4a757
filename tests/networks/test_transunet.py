"""TransUNet (R50 hybrid + ViT + cascaded upsampler) with token pruning between its ViT blocks."""

import pytest
import torch
from conftest import TRANSUNET_IMG as IMG
from conftest import image
from conftest import tiny_transunet as make

from prato_components.efficiency import count_flops
from prato_components.networks.transunet import TransUNet
from prato_components.pruners.base import TokenPruner, keep_count, select_topk
from prato_components.pruners.prato import PrATo

BOXES = torch.tensor([[[16.0, 16.0, 64.0, 48.0]], [[40.0, 8.0, 90.0, 70.0]]])



class Recorder(TokenPruner):
    """Keeps the top tokens by feature sum and records what it was shown."""

    def __init__(self, keep_ratio: float = 0.5) -> None:
        super().__init__(keep_ratio)
        self.seen = []

    def forward(self, inputs):
        self.seen.append((inputs.stage, inputs.grid_shape, inputs.stride, inputs.tokens.shape[1]))
        return select_topk(inputs.tokens.sum(-1), self.keep_ratio, inputs.valid)


def test_paper_defaults():
    net = TransUNet()
    assert net.feat_size == (14, 14) and net.patch_size == (16, 16)
    assert net.stage_blocks == {1: 3, 2: 6, 3: 9}
    assert net.cnn.out_channels == 1024 and net.cnn.skip_channels == (512, 256, 64)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(105.3e6, rel=0.01)  # the paper's 105.28M


@pytest.mark.parametrize("pruner", [None, "prato"])
def test_shapes_2d(pruner):
    net = make(pruner=pruner, pruner_kwargs={"proj_dim": 8} if pruner else None).eval()
    with torch.no_grad():
        assert net(image(size=IMG), BOXES).shape == (2, 3, *IMG)
        assert net(image(size=IMG), BOXES[:, 0]).shape == (2, 3, *IMG)  # [B, 4] is one box per image
        assert net(image(size=IMG), None).shape == (2, 3, *IMG)  # no prompt: the whole image is the box


def test_kept_counts_match_keep_count():
    net = make(pruner="prato", prune_stages=(1, 2), pruner_kwargs={"keep_ratio": 0.75, "proj_dim": 8}).eval()
    with torch.no_grad():
        net(image(size=IMG), BOXES)
    first, second = keep_count(36, 0.75), keep_count(keep_count(36, 0.75), 0.75)
    assert [r.stage for r in net.token_report] == [1, 2]
    assert net.token_report[0].tokens_in.tolist() == [36.0, 36.0]
    assert net.token_report[0].tokens_kept.tolist() == [first, first]
    assert net.token_report[1].tokens_kept.tolist() == [second, second]
    # 8 blocks, boundaries after blocks 2 and 4: three run whole, two after stage 1, three after stage 2
    assert [b.tokens.tolist() for b in net.block_report] == [[36.0] * 2] * 3 + [[first] * 2] * 2 + [[second] * 2] * 3
    assert net.kept_fraction() == pytest.approx((3 * 36 + 2 * first + 3 * second) / (8 * 36))


def test_boxes_reach_the_vit_at_the_token_stride():
    recorder = Recorder()
    net = make(pruner=recorder, prune_stages=(1, 3)).eval()
    with torch.no_grad():
        net(image(size=IMG), BOXES)
    seen = [p.seen[0] for p in net.pruners.values()]
    assert [s[0] for s in seen] == [1, 3]
    assert all(s[1] == (6, 6) and s[2] == (16.0, 16.0) for s in seen)
    assert [s[3] for s in seen] == [36, 18]  # stage 3 sees the tokens kept at stage 1

    # naive cropping with a fixed threshold keeps exactly the tokens whose centres lie in the box
    crop = make(pruner=PrATo(32, scoring="naive_crop", threshold="fixed"), prune_stages=(1,), executor="padded").eval()
    with torch.no_grad():
        crop(image(1, IMG), torch.tensor([[16.0, 16.0, 64.0, 48.0]]))
    assert crop.token_report[0].tokens_kept.tolist() == [3 * 2]  # centres 24, 40, 56 along x; 24, 40 along y


def test_keep_all_equals_unpruned():
    base = make().eval()
    pruned = make(pruner="prato", prune_stages=(1, 2, 3), pruner_kwargs={"keep_ratio": 1.0, "proj_dim": 8}).eval()
    pruned.load_unpruned_state_dict(base.state_dict())
    with torch.no_grad():
        expected = base(image(size=IMG), BOXES)
        torch.testing.assert_close(pruned(image(size=IMG), BOXES), expected, rtol=1e-5, atol=1e-5)
    assert [r.tokens_kept.tolist() for r in pruned.token_report] == [[36.0, 36.0]] * 3


def test_vit_matches_monai_transformer_blocks():
    net = make().eval()
    x = image(size=IMG)
    with torch.no_grad():
        grid, skips = net.encode(x)
        features, reference_skips = net.cnn(x)
        tokens = net.patch_embedding(features)
        for block in net.blocks:
            tokens = block(tokens)  # MONAI TransformerBlock.forward
        reference = net.norm(tokens)
    assert grid.shape == (2, 36, 32)
    torch.testing.assert_close(grid, reference, rtol=1e-5, atol=1e-5)
    assert [s.shape[1:] for s in skips] == [(64, 12, 12), (32, 24, 24), (8, 48, 48)]  # 1/8, 1/4, 1/2
    for skip, expected in zip(skips, reference_skips):
        torch.testing.assert_close(skip, expected)


def test_gather_matches_attention_mask_reference():
    """Kept tokens compute the same whether pruned ones are gathered away or masked out of attention."""
    gather = make(pruner="prato", pruner_kwargs={"keep_ratio": 0.6, "proj_dim": 8}).eval()
    masked = make(pruner="prato", pruner_kwargs={"keep_ratio": 0.6, "proj_dim": 8}, executor="attention_mask").eval()
    masked.load_state_dict(gather.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(masked(image(size=IMG), BOXES), gather(image(size=IMG), BOXES), rtol=1e-5, atol=1e-5)


def test_gradients_reach_prato_projections():
    net = make(pruner="prato", pruner_kwargs={"keep_ratio": 0.5, "proj_dim": 8}).train()
    net(image(size=IMG), BOXES).square().mean().backward()
    for stage in ("1", "2"):
        pruner = net.pruners[stage]
        for proj in (pruner.f1, pruner.f2):
            assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0


def test_pruning_lowers_flops():
    base = make().eval()
    pruned = make(pruner="prato", pruner_kwargs={"keep_ratio": 0.5, "proj_dim": 8}).eval()
    pruned.load_unpruned_state_dict(base.state_dict())
    full, fewer = count_flops(base, image(1, IMG)), count_flops(pruned, image(1, IMG), BOXES[:1])
    assert fewer < full
    # only the ViT blocks after the boundaries get cheaper: the CNN and the decoder cost the same
    _, per_module = count_flops(pruned, image(1, IMG), BOXES[:1], by_module=True)
    _, per_module_full = count_flops(base, image(1, IMG), by_module=True)
    for name in ("TransUNet.cnn", "TransUNet.decoder", "TransUNet.blocks.2.mlp"):  # block 2 runs before stage 1
        assert per_module[name] == per_module_full[name]
    for name in ("TransUNet.blocks.3.mlp", "TransUNet.blocks.7.mlp", "TransUNet.blocks.7.attn.qkv"):
        assert per_module[name] < per_module_full[name]


def test_completion_sees_the_pruned_grid():
    calls = []

    class Completion(torch.nn.Module):
        def forward(self, grid, state, tap):
            calls.append((tuple(grid.shape), tap, state.pruned))
            return grid

    net = make(pruner="prato", pruner_kwargs={"proj_dim": 8}, completion=Completion()).eval()
    with torch.no_grad():
        net(image(size=IMG), BOXES)
    assert calls == [((2, 36, 32), 4, True)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(img_size=(100, 96)), "divisible by 16"),
        (dict(img_size=(96, 96, 96)), "TransUNet is 2D"),
        (dict(num_layers=3), "num_layers must be at least 4"),
        (dict(pruner="prato", prune_stages=(4,)), "subset of"),
        (dict(pruner="prato", executor="fast"), "unknown executor mode"),
        (dict(pruner="nope"), "unknown pruner name"),
        (dict(cnn_layers=(1, 1)), "3 stages"),
    ],
)
def test_bad_configuration(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(**kwargs)


def test_bad_inputs():
    net = make().eval()
    with pytest.raises(ValueError, match="spatial shape"):
        net(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="input channel"):
        net(torch.zeros(1, 3, *IMG))
    with pytest.raises(ValueError, match="spatial dims"):
        net(image(1, IMG), torch.zeros(1, 1, 6))
