"""Prompt-restricted decoding (``decode_region="box"``): the window, the pasted output and each backbone."""

import math

import pytest
import torch
from conftest import image

from prato_components.efficiency import count_flops
from prato_components.networks import PrunedSwinUNETR, PrunedUNETR, SegFormer, TransUNet
from prato_components.networks.region import BACKGROUND_LOGIT_GAP, decode_window

SIZE = (128, 128)
NET_SIZE = (192, 192)  # the backbones: large enough that a 32-voxel margin leaves part of the image undecoded
# image 0: a box in the upper left; image 1: a box and a padding row (max < min)
BOXES = torch.tensor(
    [[[20.0, 24.0, 50.0, 60.0], [0.0, 0.0, -1.0, -1.0]], [[70.0, 60.0, 100.0, 90.0], [1.0, 1.0, 0.0, 0.0]]]
)


def test_window_is_the_boxes_union_plus_margin_snapped_and_common_to_the_batch():
    boxes = torch.tensor(
        [[[20.0, 24.0, 50.0, 60.0], [40.0, 10.0, 60.0, 30.0]], [[70.0, 60.0, 100.0, 90.0], [1, 1, 0, 0]]]
    )
    window = decode_window(boxes, SIZE, 16, 8)
    # image 0: union (20, 10)-(60, 60), +8 -> (12, 2)-(68, 68) -> snapped (0, 0)-(80, 80); image 1: (62, 52)-(108, 98)
    # -> (48, 48)-(112, 112): 64 x 64. Common size 80 x 80; image 1's window starts at (48, 48) and still fits.
    assert window.size == (80, 80)
    assert window.images == (0, 1) and window.whole == ()
    assert window.starts == ((0, 0), (48, 48))
    assert window.fraction == pytest.approx(80 * 80 / 128**2)


def test_an_image_without_a_real_box_or_with_a_covering_window_is_decoded_whole():
    boxes = torch.tensor([[[10.0, 10.0, 20.0, 20.0]], [[1.0, 1.0, 0.0, 0.0]], [[0.0, 0.0, 128.0, 120.0]]])
    window = decode_window(boxes, SIZE, 16, 0)
    assert window.images == (0,) and window.whole == (1, 2)
    assert window.size == (32, 32) and window.starts == ((0, 0),)
    assert window.fraction == pytest.approx((32 * 32 + 2 * 128 * 128) / (3 * 128 * 128))


def test_window_shifts_back_inside_the_image_and_keeps_alignment():
    boxes = torch.tensor([[[100.0, 100.0, 128.0, 128.0]], [[0.0, 0.0, 60.0, 20.0]]])
    window = decode_window(boxes, SIZE, 32, 0)
    assert window.size == (64, 32)
    assert window.starts == ((64, 96), (0, 0))
    assert all(s % 32 == 0 for start in window.starts for s in start)


@pytest.mark.parametrize(
    "boxes",
    [None, torch.tensor([[[1.0, 1.0, 0.0, 0.0]]] * 2), torch.tensor([[[0.0, 0.0, 128, 120]]] * 2)],
    ids=["no boxes", "only padding", "boxes fill the image"],
)
def test_window_is_none_when_the_whole_image_must_be_decoded(boxes):
    assert decode_window(boxes, SIZE, 16, 16) is None


def test_window_rejects_an_image_size_off_the_alignment():
    with pytest.raises(ValueError, match="multiple of the decoder alignment"):
        decode_window(BOXES, (120, 128), 16, 0)


def test_paste_says_background_outside_and_keeps_the_window():
    window = decode_window(BOXES, SIZE, 16, 0)
    logits = torch.randn(2, 3, *window.size)
    out = window.paste(logits, 2)
    assert out.shape == (2, 3, *SIZE)
    for index, (r, c) in zip(window.images, window.starts):
        torch.testing.assert_close(out[index, :, r : r + window.size[0], c : c + window.size[1]], logits[index])
        outside = torch.ones(SIZE, dtype=torch.bool)
        outside[r : r + window.size[0], c : c + window.size[1]] = False
        assert bool((out[index].argmax(0)[outside] == 0).all())
        assert float(out[index, 1:, outside].max()) == -BACKGROUND_LOGIT_GAP


def _unetr(**kwargs):
    torch.manual_seed(0)
    return PrunedUNETR(
        in_channels=1,
        out_channels=3,
        img_size=NET_SIZE,
        spatial_dims=2,
        hidden_size=32,
        mlp_dim=64,
        num_heads=2,
        feature_size=8,
        norm_name="batch",
        pruner="prato",
        **kwargs,
    )


def _swin(spatial_dims: int = 2, out_channels: int = 3, **kwargs):
    torch.manual_seed(0)
    return PrunedSwinUNETR(in_channels=1, out_channels=out_channels, spatial_dims=spatial_dims, feature_size=12,
                           depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), norm_name="batch", pruner="prato", **kwargs)


def _transunet(**kwargs):
    torch.manual_seed(0)
    return TransUNet(
        in_channels=1,
        out_channels=3,
        img_size=NET_SIZE,
        cnn_layers=(1, 1, 1),
        cnn_width=8,
        cnn_norm=("group", {"num_groups": 4}),
        hidden_size=32,
        mlp_dim=64,
        num_layers=4,
        num_heads=2,
        head_channels=16,
        decoder_channels=(16, 8, 8, 4),
        pruner="prato",
        **kwargs,
    )


def _segformer(**kwargs):
    torch.manual_seed(0)
    return SegFormer(
        in_channels=1,
        out_channels=3,
        embed_dims=(8, 16, 24, 32),
        depths=(1, 1, 1, 1),
        num_heads=(1, 1, 1, 1),
        decoder_dim=16,
        pruner="prato",
        **kwargs,
    )


# (builder, margin covering the decoder's receptive field, tolerance inside the box). TransUNet's bilinear
# upsampling uses align_corners=True, whose sample positions depend on the map size: close, never bit-equal.
BACKBONES = {
    "unetr": (_unetr, 32, 1e-5),
    "swin_unetr": (_swin, 32, 1e-4),
    "transunet": (_transunet, 32, 5e-3),
    "segformer": (_segformer, 32, 1e-5),
}
ONE_BOX = torch.tensor([[[60.0, 64.0, 84.0, 90.0]], [[90.0, 80.0, 120.0, 110.0]]])


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_box_decoding_equals_the_full_network_inside_the_box_and_is_background_outside(name):
    build, margin, tolerance = BACKBONES[name]
    full_net, box_net = build().eval(), build(decode_region="box", decode_margin=margin).eval()
    x = image(2, NET_SIZE)
    with torch.no_grad():
        full, boxed = full_net(x, ONE_BOX), box_net(x, ONE_BOX)
    window = box_net.last_decode_window
    assert window is not None and window.fraction < 1
    assert boxed.shape == full.shape
    for index, box in enumerate(ONE_BOX[:, 0].long().tolist()):
        inside = (slice(None), slice(box[0], box[2]), slice(box[1], box[3]))
        assert float((boxed[index][inside] - full[index][inside]).abs().max()) < tolerance
        (r, c), (h, w) = window.starts[window.images.index(index)], window.size
        assert bool((boxed[index, :, :r].argmax(0) == 0).all()) and bool(
            (boxed[index, :, r + h :].argmax(0) == 0).all()
        )
        assert bool((boxed[index, :, :, :c].argmax(0) == 0).all()) and bool(
            (boxed[index, :, :, c + w :].argmax(0) == 0).all()
        )


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_box_decoding_counts_fewer_flops(name):
    build = BACKBONES[name][0]
    x = image(1, NET_SIZE)
    full = count_flops(build().eval(), x, ONE_BOX[:1])
    boxed = count_flops(build(decode_region="box", decode_margin=0).eval(), x, ONE_BOX[:1])
    assert boxed < full


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_box_decoding_trains(name):
    net = BACKBONES[name][0](decode_region="box", decode_margin=0).train()
    x = image(2, NET_SIZE)
    out = net(x, ONE_BOX)
    out.logsumexp(1).mean().backward()
    assert net.last_decode_window is not None
    grads = [p.grad for p in net.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)


def _unetr_3d(**kwargs):
    torch.manual_seed(0)
    return PrunedUNETR(
        in_channels=1,
        out_channels=2,
        img_size=(64, 64, 64),
        spatial_dims=3,
        hidden_size=32,
        mlp_dim=64,
        num_heads=2,
        feature_size=4,
        norm_name="batch",
        pruner="prato",
        **kwargs,
    ).eval()


def _swin_3d(**kwargs):  # the window aligns to 32 voxels: a 96^3 volume leaves room outside it
    return _swin(spatial_dims=3, out_channels=2, **kwargs).eval()


@pytest.mark.parametrize("build, side", [(_unetr_3d, 64), (_swin_3d, 96)], ids=["unetr", "swin_unetr"])
def test_3d_box_decoding_matches_inside_the_box(build, side):
    boxes = torch.tensor([[[8.0, 10.0, 12.0, 24.0, 26.0, 28.0]]])
    x = torch.randn(1, 1, side, side, side, generator=torch.Generator().manual_seed(0))
    box_net = build(decode_region="box", decode_margin=16)
    with torch.no_grad():
        full, boxed = build()(x, boxes), box_net(x, boxes)
    window = box_net.last_decode_window
    assert window.starts == ((0, 0, 0),) and math.prod(window.size) < side**3
    inside = (0, slice(None), slice(8, 24), slice(10, 26), slice(12, 28))
    assert float((boxed[inside] - full[inside]).abs().max()) < 1e-3
    assert bool((boxed[0, :, window.size[0] :].argmax(0) == 0).all())


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_an_image_without_a_prompt_is_decoded_whole_beside_windowed_ones(name):
    build, margin, tolerance = BACKBONES[name]
    full_net, box_net = build().eval(), build(decode_region="box", decode_margin=margin).eval()
    boxes = torch.cat([ONE_BOX, torch.tensor([[[0.0, 0.0, -1.0, -1.0]]])])  # image 2: padding only
    x = image(3, NET_SIZE)
    with torch.no_grad():
        full, boxed = full_net(x, boxes), box_net(x, boxes)
    assert box_net.last_decode_window.images == (0, 1) and box_net.last_decode_window.whole == (2,)
    torch.testing.assert_close(boxed[2], full[2], atol=1e-5, rtol=1e-5)
    box = ONE_BOX[0, 0].long().tolist()
    inside = (slice(None), slice(box[0], box[2]), slice(box[1], box[3]))
    assert float((boxed[0][inside] - full[0][inside]).abs().max()) < tolerance


def test_box_decoding_without_boxes_decodes_everything():
    full, box_net = _unetr().eval(), _unetr(decode_region="box").eval()
    x = image(1, NET_SIZE)
    with torch.no_grad():
        torch.testing.assert_close(box_net(x), full(x))
    assert box_net.last_decode_window is None


def test_unknown_decode_region_is_refused():
    with pytest.raises(ValueError, match="unknown decode_region 'crop'"):
        _unetr(decode_region="crop")
    with pytest.raises(ValueError, match="decode_margin must be >= 0"):
        _unetr(decode_region="box", decode_margin=-1)
