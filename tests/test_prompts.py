"""Box prompts: maths on boxes and the MONAI dictionary transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor, list_data_collate
from monai.transforms import Compose, Orientationd, Resized, SpatialPadd

from prato_components.prompts import (
    PADDING_BOX_VALUE,
    BoxFromLabeld,
    BoxToRegionMaskd,
    ClipBoxd,
    PartialBoxd,
    RandJitterBoxd,
    RandPartialBoxd,
    RandShiftBoxd,
    RegionMaskToBoxd,
    ScaleBoxd,
    ShiftBoxd,
    ValidateBoxd,
    box_is_padding,
    boxes_from_label,
    boxes_to_mask,
    clip_boxes,
    jitter_boxes,
    mask_to_boxes,
    padding_boxes,
    partial_boxes,
    scale_boxes,
    shift_boxes,
    validate_boxes,
    whole_image_boxes,
)

PAD2 = [0.0, 0.0, -1.0, -1.0]
PAD3 = [0.0, 0.0, 0.0, -1.0, -1.0, -1.0]


def assert_boxes(actual, expected, atol: float = 1e-5) -> None:
    actual_np = actual.numpy() if isinstance(actual, torch.Tensor) else actual
    assert actual_np.dtype == np.float32
    np.testing.assert_allclose(actual_np, np.asarray(expected, dtype=np.float32), atol=atol)


def label_2d() -> np.ndarray:
    """[1, 8, 10]: class 1 on rows 2..4 x cols 3..6, class 3 on the voxel (6, 1)."""
    lab = np.zeros((1, 8, 10), dtype=np.int64)
    lab[0, 2:5, 3:7] = 1
    lab[0, 6, 1] = 3
    return lab


def label_3d() -> np.ndarray:
    """[1, 6, 7, 8]: class 2 on [1:3, 2:5, 4:8]."""
    lab = np.zeros((1, 6, 7, 8), dtype=np.int64)
    lab[0, 1:3, 2:5, 4:8] = 2
    return lab


# ------------------------------------------------------------------------------------------------
# padding and whole-image boxes
# ------------------------------------------------------------------------------------------------


def test_padding_helpers():
    assert PADDING_BOX_VALUE == (0.0, -1.0)
    pad = padding_boxes(2, 3)
    assert isinstance(pad, torch.Tensor)
    assert_boxes(pad, [PAD3, PAD3])
    assert isinstance(padding_boxes(1, 2, like=np.zeros(1)), np.ndarray)
    boxes = torch.tensor([[[1.0, 1, 3, 3], PAD2, [2, 5, 4, 4]], [[0, 0, 1, 1], [0, 0, 8, 8], [1, 1, 1, 1]]])
    expected = [[False, True, True], [False, False, False]]  # min == max is empty, not padding
    assert box_is_padding(boxes).tolist() == expected
    assert box_is_padding(boxes.numpy()).tolist() == expected
    assert box_is_padding(torch.tensor(PAD3)).item()


def test_whole_image_boxes():
    assert_boxes(whole_image_boxes((8, 10)), [[0, 0, 8, 10]])
    batched = whole_image_boxes((4, 5, 6), batch_size=2)
    assert batched.shape == (2, 1, 6)
    assert_boxes(batched, [[[0, 0, 0, 4, 5, 6]]] * 2)


# ------------------------------------------------------------------------------------------------
# boxes from labels
# ------------------------------------------------------------------------------------------------


def test_boxes_from_label_2d_numpy_and_torch():
    lab = label_2d()
    out = boxes_from_label(lab)
    assert isinstance(out, np.ndarray)
    assert_boxes(out, [[2, 1, 7, 7]])  # all foreground: classes 1 and 3
    out_t = boxes_from_label(torch.as_tensor(lab[0]))  # no channel
    assert isinstance(out_t, torch.Tensor)
    assert_boxes(out_t, [[2, 1, 7, 7]])


def test_boxes_from_label_3d():
    assert_boxes(boxes_from_label(label_3d()), [[1, 2, 4, 3, 5, 8]])
    assert_boxes(boxes_from_label(torch.as_tensor(label_3d()[0])), [[1, 2, 4, 3, 5, 8]])
    # a 3D map with one slice along axis 0 needs spatial_dims to be told apart from [1, H, W]
    one_slice = np.zeros((1, 4, 5), dtype=np.int64)
    one_slice[0, 1, 2] = 1
    assert_boxes(boxes_from_label(one_slice), [[1, 2, 2, 3]])
    assert_boxes(boxes_from_label(one_slice, spatial_dims=3), [[0, 1, 2, 1, 2, 3]])


def test_boxes_from_label_per_class():
    lab = label_2d()
    out = boxes_from_label(lab, per_class=True, classes=[1, 2, 3])
    assert out.shape == (3, 4)
    assert_boxes(out, [[2, 3, 5, 7], PAD2, [6, 1, 7, 2]])
    assert box_is_padding(out).tolist() == [False, True, False]
    assert_boxes(boxes_from_label(lab, per_class=True), [[2, 3, 5, 7], [6, 1, 7, 2]])  # classes present
    out3 = boxes_from_label(torch.as_tensor(label_3d()), per_class=True, classes=[1, 2])
    assert_boxes(out3, [PAD3, [1, 2, 4, 3, 5, 8]])


def test_boxes_from_label_on_empty():
    empty = np.zeros((1, 8, 10), dtype=np.int64)
    assert_boxes(boxes_from_label(empty), [[0, 0, 8, 10]])
    assert_boxes(boxes_from_label(empty, on_empty="pad"), [PAD2])
    assert_boxes(boxes_from_label(empty, per_class=True, classes=[1, 2]), [[0, 0, 8, 10]] * 2)
    assert_boxes(boxes_from_label(empty, per_class=True, classes=[1, 2], on_empty="pad"), [PAD2] * 2)
    assert_boxes(boxes_from_label(empty, per_class=True), [[0, 0, 8, 10]])  # no class known: one row
    assert_boxes(boxes_from_label(np.zeros((3, 4, 5)), on_empty="full"), [[0, 0, 0, 3, 4, 5]])
    with pytest.raises(ValueError, match="label has no foreground"):
        boxes_from_label(empty, on_empty="raise")
    with pytest.raises(ValueError, match=r"label has no foreground \(any of the classes \[5\]\)"):
        boxes_from_label(label_2d(), per_class=True, classes=[5], on_empty="raise")
    # some listed class present: absent ones are padding, on_empty does not apply
    assert_boxes(boxes_from_label(label_2d(), per_class=True, classes=[5, 3], on_empty="raise"), [PAD2, [6, 1, 7, 2]])
    with pytest.raises(ValueError):
        boxes_from_label(empty, on_empty="nothing")


def test_boxes_from_label_bad_shape():
    with pytest.raises(ValueError, match="not one-hot"):
        boxes_from_label(np.zeros((2, 4, 4, 4)))


# ------------------------------------------------------------------------------------------------
# validation and clipping
# ------------------------------------------------------------------------------------------------


def test_validate_boxes_accepts():
    out = validate_boxes([1, 2, 3, 4], spatial_shape=(8, 8))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 4)
    assert_boxes(out, [[1, 2, 3, 4]])
    out_np = validate_boxes(np.array([[-2, 1, 3, 12, 2, 5]], dtype=np.float64), (4, 4, 4))
    assert isinstance(out_np, np.ndarray)
    assert_boxes(out_np, [[-2, 1, 3, 12, 2, 5]])  # partly outside is legal
    assert_boxes(validate_boxes(torch.tensor([PAD2, [0, 0, 8, 8]]), (8, 8), allow_padding=True), [PAD2, [0, 0, 8, 8]])


@pytest.mark.parametrize(
    "boxes, kwargs, message",
    [
        (
            [1, 2, 3, 4],
            {"spatial_shape": (4, 4, 4)},
            r"^box has 4 values but the image has 3 spatial dims \(expected 6\)$",
        ),
        ([1, 2, 3, 4, 5], {}, r"box has 5 values; expected 4 \(2D image\) or 6 \(3D image\)"),
        ([[1, 2, 3]] * 2 + [[1, 2, 3]], {}, "box has 3 values"),
        ([[[1, 2, 3, 4]]], {}, r"must have shape \[M, 2\*D\] or \[2\*D\]"),
        ([[0, 0, 4, 4], [1, 2, float("nan"), 4]], {}, r"box row 1 \(1, 2, nan, 4\) contains NaN or inf"),
        ([1, 2, float("inf"), 4], {}, "NaN or inf"),
        ([3, 2, 1, 4], {}, r"box row 0 \(3, 2, 1, 4\) is an empty/inverted box \(min > max on axis 0\)"),
        (PAD2, {}, "accepted only with allow_padding=True"),
        ([1, 2, 1, 4], {}, r"is an empty box \(min == max on axis 0\)"),
        ([1, 2, 3, 4, 5, 3], {"allow_padding": True}, r"empty box \(min == max on axis 2\)"),
        (
            [1, 10, 3, 12],
            {"spatial_shape": (8, 8)},
            r"box row 0 \(1, 10, 3, 12\) lies outside the image of shape \(8, 8\) \(axis 1\)",
        ),
        ([-3, 1, 0, 4], {"spatial_shape": (8, 8)}, "lies outside the image"),  # touching the border only
    ],
)
def test_validate_boxes_errors(boxes, kwargs, message):
    with pytest.raises(ValueError, match=message):
        validate_boxes(boxes, **kwargs)


def test_validate_boxes_name():
    with pytest.raises(ValueError, match=r"^my prompt has 6 values but the image has 2 spatial dims \(expected 4\)$"):
        validate_boxes(torch.zeros(6), (8, 8), name="my prompt")


def test_clip_boxes():
    boxes = torch.tensor([[-2.0, 1, 20, 5], [9, 1, 12, 4], PAD2, [1.5, 2.5, 3.5, 4.5]])
    assert_boxes(clip_boxes(boxes, (8, 10)), [[0, 1, 8, 5], PAD2, PAD2, [1.5, 2.5, 3.5, 4.5]])
    assert_boxes(
        clip_boxes(boxes.numpy(), (8, 10), empty_to_padding=False),
        [[0, 1, 8, 5], [8, 1, 8, 4], PAD2, [1.5, 2.5, 3.5, 4.5]],
    )
    batched = torch.tensor([[[-1.0, -1, -1, 2, 3, 9]], [PAD3]])  # [B, M, 6]
    assert_boxes(clip_boxes(batched, (4, 4, 4)), [[[0, 0, 0, 2, 3, 4]], [PAD3]])
    with pytest.raises(ValueError, match="spatial dims"):
        clip_boxes(boxes, (8, 8, 8))


# ------------------------------------------------------------------------------------------------
# perturbations
# ------------------------------------------------------------------------------------------------

BOX = [2.0, 4.0, 6.0, 8.0]  # sizes (4, 4), centre (4, 6)


def test_scale_boxes():
    boxes = torch.tensor([BOX, PAD2])
    assert_boxes(scale_boxes(boxes, 2.0), [[0, 2, 8, 10], PAD2])
    assert_boxes(scale_boxes(boxes, (1.0, 0.5)), [[2, 5, 6, 7], PAD2])
    out_np = scale_boxes(np.array([[0, 0, 0, 2, 4, 6]], dtype=np.float32), 1.5)
    assert isinstance(out_np, np.ndarray)
    assert_boxes(out_np, [[-0.5, -1, -1.5, 2.5, 5, 7.5]])
    assert_boxes(scale_boxes(boxes[None], 1.0), [[BOX, PAD2]])  # leading batch dim
    with pytest.raises(ValueError, match="factor must be > 0"):
        scale_boxes(boxes, 0.0)


def test_partial_boxes():
    boxes = torch.tensor([BOX, PAD2, BOX])
    assert_boxes(partial_boxes(boxes, 0.5), [[2, 4, 4, 6], PAD2, [2, 4, 4, 6]])
    assert_boxes(partial_boxes(boxes, (0.25, 1.0)), [[2, 4, 3, 8], PAD2, [2, 4, 3, 8]])
    at_max = np.random.default_rng(7).uniform(0, 1, size=(3, 2)) < 0.5  # the corner draws
    out = partial_boxes(boxes, 0.5, rng=np.random.default_rng(7))
    for row in (0, 2):
        lo0 = 4.0 if at_max[row, 0] else 2.0
        lo1 = 6.0 if at_max[row, 1] else 4.0
        assert_boxes(out[row], [lo0, lo1, lo0 + 2, lo1 + 2])
    assert_boxes(out[1], PAD2)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        partial_boxes(boxes, 1.5)


def test_shift_boxes():
    boxes = torch.tensor([BOX, PAD2])
    shifted = shift_boxes(boxes, 1.0)
    assert_boxes(shifted, [[6, 8, 10, 12], PAD2])
    assert_boxes(shift_boxes(boxes, (0.5, -1.0)), [[4, 0, 8, 4], PAD2])
    signs = np.where(np.random.RandomState(3).uniform(0, 1, size=(2, 2)) < 0.5, -1.0, 1.0)
    out = shift_boxes(boxes, 1.5, rng=np.random.RandomState(3))
    d = 1.5 * 4 * signs[0]
    assert_boxes(out, [[2 + d[0], 4 + d[1], 6 + d[0], 8 + d[1]], PAD2])
    # with offset_fraction >= 1 the shifted box no longer overlaps the original
    for seed in range(5):
        b = shift_boxes(torch.tensor([BOX]), 1.0, rng=np.random.default_rng(seed))[0]
        overlap = torch.minimum(b[2:], torch.tensor(BOX[2:])) - torch.maximum(b[:2], torch.tensor(BOX[:2]))
        assert (overlap <= 0).any()


def test_jitter_boxes():
    boxes = torch.tensor([[0.0, 0.0, 0.0, 10.0, 20.0, 40.0], PAD3])
    rng = np.random.default_rng(11)
    t = rng.uniform(-0.1, 0.1, size=(2, 3))
    ab = rng.uniform(-0.2, 0.2, size=(2, 6))
    size = np.array([10.0, 20.0, 40.0])
    lo = t[0] * size - ab[0, :3] * size / 2
    hi = size + t[0] * size + ab[0, 3:] * size / 2
    out = jitter_boxes(boxes, 0.1, 0.2, np.random.default_rng(11))
    assert_boxes(out, [np.concatenate([lo, hi]), PAD3], atol=1e-4)
    assert_boxes(jitter_boxes(boxes, 0.0, 0.0, np.random.default_rng(0)), boxes.numpy())
    big = jitter_boxes(torch.tensor([BOX] * 100), 0.3, 0.99, np.random.default_rng(0))
    assert not box_is_padding(big).any()  # never inverted
    with pytest.raises(ValueError, match="max_scale_fraction"):
        jitter_boxes(boxes, 0.1, 1.0, rng)


# ------------------------------------------------------------------------------------------------
# boxes <-> masks
# ------------------------------------------------------------------------------------------------


def test_boxes_to_mask_values():
    mask = boxes_to_mask(torch.tensor([[1.0, 2.0, 3.0, 5.0], PAD2]), (4, 6))
    assert mask.dtype == torch.uint8 and mask.shape == (2, 4, 6)
    expected = np.zeros((4, 6), dtype=np.uint8)
    expected[1:3, 2:5] = 1
    np.testing.assert_array_equal(mask[0].numpy(), expected)
    assert mask[1].sum() == 0
    # non-integer corners: voxels whose centres v + 0.5 lie in [min, max)
    frac = boxes_to_mask(np.array([1.2, 2.6, 3.5, 5.5]), (6, 8))
    assert isinstance(frac, np.ndarray) and frac.dtype == np.uint8
    assert_boxes(mask_to_boxes(frac), [[1, 3, 3, 5]])


@pytest.mark.parametrize(
    "boxes, shape",
    [
        ([[0, 0, 4, 6], [1, 2, 3, 5], PAD2, [3, 5, 4, 6]], (4, 6)),
        ([[0, 1, 2, 3, 4, 5], PAD3, [2, 2, 2, 5, 6, 7]], (5, 6, 7)),
    ],
)
def test_box_mask_round_trip(boxes, shape):
    for arr in (torch.tensor(boxes, dtype=torch.float32), np.asarray(boxes, dtype=np.float32)):
        mask = boxes_to_mask(arr, shape)
        back = mask_to_boxes(mask)
        assert type(back) is type(arr)
        assert_boxes(back, boxes)


def test_mask_to_boxes_shape_error():
    with pytest.raises(ValueError, match="mask must be"):
        mask_to_boxes(np.zeros((4, 4)))


# ------------------------------------------------------------------------------------------------
# transforms
# ------------------------------------------------------------------------------------------------


def sample_2d() -> dict:
    image = MetaTensor(torch.rand(1, 8, 10), meta={"filename_or_obj": "/data/case_007.png"})
    return {"image": image, "label": MetaTensor(torch.as_tensor(label_2d()))}


def test_box_from_labeld():
    d = BoxFromLabeld(keys="label", box_key="box")(sample_2d())
    assert type(d["box"]) is torch.Tensor and d["box"].dtype == torch.float32
    assert_boxes(d["box"], [[2, 1, 7, 7]])
    d = BoxFromLabeld(per_class=True, classes=[1, 2, 3], box_key="boxes")(sample_2d())
    assert_boxes(d["boxes"], [[2, 3, 5, 7], PAD2, [6, 1, 7, 2]])
    batch = list_data_collate([d, d])
    assert batch["boxes"].shape == (2, 3, 4)


def test_deterministic_perturbation_transforms():
    d = {"box": [BOX, PAD2]}  # a list, as read from a JSON datalist
    assert_boxes(ScaleBoxd(box_key="box", factor=2.0)(d)["box"], [[0, 2, 8, 10], PAD2])
    assert_boxes(PartialBoxd(box_key="box", fraction=0.5)(d)["box"], [[2, 4, 4, 6], PAD2])
    assert_boxes(ShiftBoxd(box_key="box", offset_fraction=1.0)(d)["box"], [[6, 8, 10, 12], PAD2])
    assert isinstance(ScaleBoxd(factor=1.0)(d)["box"], torch.Tensor)


@pytest.mark.parametrize(
    "make",
    [
        lambda: RandJitterBoxd(box_key="box", prob=1.0, max_shift_fraction=0.2, max_scale_fraction=0.2),
        lambda: RandPartialBoxd(box_key="box", prob=1.0, fraction=(0.3, 0.7)),
        lambda: RandShiftBoxd(box_key="box", prob=1.0, offset_fraction=(0.5, 1.5)),
    ],
)
def test_rand_transforms_reproducible(make):
    d = {"box": torch.tensor([BOX, PAD2, [1.0, 1.0, 5.0, 3.0]])}

    def run(seed: int) -> list[torch.Tensor]:
        pipeline = Compose([make()]).set_random_state(seed)
        return [pipeline(d)["box"] for _ in range(3)]

    a, b, c = run(0), run(0), run(1)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)
    assert any(not torch.equal(x, y) for x, y in zip(a, c, strict=True))
    assert not torch.equal(a[0], a[1])  # a new draw per call
    for x in a:
        assert_boxes(x[1], PAD2)
        assert not torch.equal(x[0], torch.tensor(BOX))


def test_rand_transforms_prob_zero():
    d = {"box": torch.tensor([BOX])}
    for t in (RandJitterBoxd(prob=0.0), RandPartialBoxd(prob=0.0), RandShiftBoxd(prob=0.0)):
        assert_boxes(t(d)["box"], [BOX])


def test_rand_partial_and_shift_values():
    d = {"box": torch.tensor([BOX])}
    out = RandPartialBoxd(prob=1.0, fraction=0.5).set_random_state(0)(d)["box"][0]
    assert torch.allclose(out[2:] - out[:2], torch.tensor([2.0, 2.0]))
    assert ((out[:2] >= torch.tensor(BOX[:2])) & (out[2:] <= torch.tensor(BOX[2:]))).all()
    out = RandShiftBoxd(prob=1.0, offset_fraction=1.0).set_random_state(0)(d)["box"][0]
    assert torch.allclose((out - torch.tensor(BOX)).abs(), torch.full((4,), 4.0))


def test_clip_boxd():
    d = sample_2d()
    d["box"] = torch.tensor([[-1.0, 2.0, 4.0, 30.0], [20.0, 0.0, 22.0, 2.0], PAD2])
    assert_boxes(ClipBoxd(box_key="box", image_key="image")(d)["box"], [[0, 2, 4, 10], PAD2, PAD2])


def test_validate_boxd():
    d = sample_2d()
    d["box"] = [[1, 1, 3, 3], PAD2]
    out = ValidateBoxd(box_key="box", image_key="image")(d)
    assert_boxes(out["box"], [[1, 1, 3, 3], PAD2])
    with pytest.raises(ValueError, match=r"box 'box' of image /data/case_007.png row 1 .* allow_padding=True"):
        ValidateBoxd(box_key="box", image_key="image", allow_padding=False)(d)
    d["box"] = [1, 2, 3, 4, 5, 6]
    with pytest.raises(
        ValueError, match=r"box 'box' of image /data/case_007.png has 6 values but the image has 2 spatial dims"
    ):
        ValidateBoxd(box_key="box", image_key="image")(d)
    d["box"] = [[20, 1, 22, 3]]
    with pytest.raises(ValueError, match=r"lies outside the image of shape \(8, 10\)"):
        ValidateBoxd(box_key="box", image_key="image")(d)
    plain = {"image": torch.rand(1, 8, 10), "box": [float("nan"), 0, 1, 1]}
    with pytest.raises(ValueError, match=r"^box 'box' row 0 .* NaN or inf"):
        ValidateBoxd(box_key="box", image_key="image")(plain)


def test_box_mask_carried_through_resize_2d():
    affine = torch.diag(torch.tensor([2.0, 3.0, 1.0, 1.0]))
    d = {"image": MetaTensor(torch.rand(1, 16, 12), affine=affine), "box": torch.tensor([[4.0, 2.0, 8.0, 6.0], PAD2])}
    d = BoxToRegionMaskd(box_key="box", image_key="image", mask_key="box_mask")(d)
    mask = d["box_mask"]
    assert isinstance(mask, MetaTensor) and mask.shape == (2, 16, 12)
    torch.testing.assert_close(mask.affine, d["image"].affine)
    d = Resized(keys=["image", "box_mask"], spatial_size=(32, 6), mode=("bilinear", "nearest"))(d)
    d = RegionMaskToBoxd(mask_key="box_mask", box_key="box")(d)
    assert "box_mask" not in d
    expected = [[8.0, 1.0, 16.0, 3.0], PAD2]  # axis 0 x2, axis 1 x0.5
    assert_boxes(d["box"], expected, atol=1.0)
    assert box_is_padding(d["box"]).tolist() == [False, True]


def test_box_mask_carried_through_spatial_transforms_3d():
    d = {"image": MetaTensor(torch.rand(1, 8, 8, 8)), "box": torch.tensor([[2.0, 2.0, 2.0, 4.0, 6.0, 8.0]])}
    pipeline = Compose(
        [
            BoxToRegionMaskd(box_key="box", image_key="image"),
            Resized(keys=["image", "box_mask"], spatial_size=(16, 16, 4), mode=("trilinear", "nearest")),
            SpatialPadd(keys=["image", "box_mask"], spatial_size=(20, 16, 4), method="end"),
            Orientationd(keys=["image", "box_mask"], axcodes="RAI", labels=None),  # flips axis 2 only (RAS -> RAI)
            RegionMaskToBoxd(mask_key="box_mask", box_key="box", delete_mask=False),
        ]
    )
    out = pipeline(d)
    assert out["image"].shape == (1, 20, 16, 4)
    # resize: (4, 4, 1, 8, 12, 4); padding at the end keeps it; flipping axis 2 (size 4) maps [1, 4) to [0, 3)
    assert_boxes(out["box"], [[4, 4, 0, 8, 12, 3]], atol=1.0)
    assert out["box_mask"].shape == (1, 20, 16, 4)


@pytest.mark.parametrize("boxes", [[[4, 4, 1e308, 20]], np.array([[4.0, 4.0, -1e308, 20.0]]),
                                   torch.tensor([[4.0, 4.0, 1e308, 20.0]], dtype=torch.float64)])
def test_a_finite_box_beyond_float32_is_not_called_nan(boxes):
    from prato_components.prompts.boxes import validate_boxes

    with pytest.raises(ValueError, match=r"beyond the float32 range of box coordinates") as caught:
        validate_boxes(boxes, (32, 32))
    assert "NaN" not in str(caught.value)
