"""Pruned UNETR (prato_components/networks/unetr.py): equivalence with MONAI's UNETR, executor modes, reports,
3D, FLOPs, input checks."""

import pytest
import torch
from conftest import UNETR_BOXES as BOXES
from conftest import UNETR_TINY as TINY
from conftest import tiny_unetr
from monai.networks.nets import UNETR

from prato_components.efficiency import count_flops
from prato_components.networks import PrunedUNETR, patch_unetr


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


class LabelledUNETR(UNETR):
    """A user's subclass: a method of its own and a forward the pruned network replaces."""

    def describe(self) -> str:
        return f"UNETR with {len(self.vit.blocks)} blocks"


def test_patch_unetr_keeps_the_users_subclass():
    torch.manual_seed(0)
    plain = LabelledUNETR(**TINY).eval()
    pruned = patch_unetr(plain, "prato", prune_stages=(1,), executor="padded")
    assert isinstance(pruned, LabelledUNETR) and isinstance(pruned, PrunedUNETR)
    assert type(pruned).__name__ == "PrunedLabelledUNETR" and pruned.describe() == "UNETR with 12 blocks"
    assert pruned.executor == "padded" and pruned.prune_stages == (1,)
    with torch.no_grad():
        pruned(torch.randn(1, 1, 64, 64), BOXES[:1])
    assert [r.stage for r in pruned.token_report] == [1]
    assert type(patch_unetr(LabelledUNETR(**TINY), "prato")) is type(pruned)  # one class per user class
    assert type(patch_unetr(UNETR(**TINY), "prato")) is PrunedUNETR
    with pytest.raises(TypeError, match="keep_ratio"):
        patch_unetr(UNETR(**TINY), "prato", keep_ratio=0.5)


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


def test_image_size_not_a_multiple_of_the_patch_is_named():
    with pytest.raises(ValueError, match=r"img_size \(40, 40\) must be a multiple of the ViT patch size \(16, 16\)"):
        PrunedUNETR(**dict(TINY, img_size=40))
