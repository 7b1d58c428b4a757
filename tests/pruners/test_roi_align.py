"""RoIAlign against a direct, loop-based implementation of the RoIAlign definition."""

import itertools

import pytest
import torch

from prato_components.pruners.roi_align import roi_align


def _interpolate(feature: torch.Tensor, point: list[float]) -> torch.Tensor:
    """Multilinear interpolation at ``point`` following torchvision's bilinear_interpolate rules."""
    size = feature.shape[1:]
    if any(p < -1.0 or p > s for p, s in zip(point, size)):
        return torch.zeros(feature.shape[0], dtype=feature.dtype)
    low, high, frac = [], [], []
    for p, s in zip(point, size):
        p = max(p, 0.0)
        lo = int(p)
        if lo >= s - 1:
            lo = hi = s - 1
            p = float(lo)
        else:
            hi = lo + 1
        low.append(lo)
        high.append(hi)
        frac.append(p - lo)
    value = torch.zeros(feature.shape[0], dtype=feature.dtype)
    for corner in itertools.product((0, 1), repeat=len(size)):
        weight = 1.0
        index = []
        for axis, c in enumerate(corner):
            weight *= frac[axis] if c else 1.0 - frac[axis]
            index.append(high[axis] if c else low[axis])
        value = value + weight * feature[(slice(None), *index)]
    return value


def reference_roi_align(features, boxes, k, sampling_ratio, aligned):
    batch, channels, *size = features.shape
    dims = len(size)
    ks = [k] * dims if isinstance(k, int) else list(k)
    out = torch.zeros(batch, boxes.shape[1], channels, *ks, dtype=features.dtype)
    offset = 0.5 if aligned else 0.0
    for b in range(batch):
        for m in range(boxes.shape[1]):
            start = [boxes[b, m, a].item() - offset for a in range(dims)]
            extent = [boxes[b, m, dims + a].item() - boxes[b, m, a].item() for a in range(dims)]
            if not aligned:
                extent = [max(e, 1.0) for e in extent]
            bins = [e / n for e, n in zip(extent, ks)]
            for cell in itertools.product(*(range(n) for n in ks)):
                acc = torch.zeros(channels, dtype=features.dtype)
                for sample in itertools.product(range(sampling_ratio), repeat=dims):
                    point = [
                        start[a] + cell[a] * bins[a] + (sample[a] + 0.5) * bins[a] / sampling_ratio for a in range(dims)
                    ]
                    acc = acc + _interpolate(features[b], point)
                out[(b, m, slice(None), *cell)] = acc / sampling_ratio**dims
    return out


BOXES_2D = [
    [1.0, 2.0, 9.5, 7.0],  # inside
    [-0.7, -0.3, 3.2, 4.4],  # across the low border
    [8.1, 6.3, 12.0, 10.0],  # across the high border (grid is 10 x 8)
    [4.2, 3.1, 4.6, 3.3],  # sub-cell box
    [-3.0, -3.0, -1.5, -1.2],  # outside: samples beyond one cell contribute zero
]


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("k,sampling_ratio", [(5, 2), (3, 1), (2, 3)])
def test_roi_align_2d_matches_definition(aligned, k, sampling_ratio):
    torch.manual_seed(0)
    features = torch.randn(2, 3, 10, 8, dtype=torch.float64)
    boxes = torch.tensor([BOXES_2D, BOXES_2D[::-1]], dtype=torch.float64)
    got = roi_align(features, boxes, k, sampling_ratio=sampling_ratio, aligned=aligned)
    want = reference_roi_align(features, boxes, k, sampling_ratio, aligned)
    assert got.shape == (2, 5, 3, k, k)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("size,k", [((9, 9), 4), ((9, 9), (3, 5)), ((10, 8), (2, 4))])
def test_roi_align_square_grids_and_per_axis_bins(size, k):
    """Equal axis sizes take the scalar-clamp path; bins that differ per axis take one pass per axis."""
    torch.manual_seed(2)
    features = torch.randn(1, 2, *size, dtype=torch.float64)
    boxes = torch.tensor([BOXES_2D], dtype=torch.float64)
    got = roi_align(features, boxes, k, sampling_ratio=2)
    want = reference_roi_align(features, boxes, k, 2, True)
    assert got.shape == (1, 5, 2, *((k, k) if isinstance(k, int) else k))
    torch.testing.assert_close(got, want)


def test_roi_align_3d_matches_definition():
    torch.manual_seed(1)
    features = torch.randn(1, 2, 6, 5, 4, dtype=torch.float64)
    boxes = torch.tensor(
        [[[0.5, 1.0, 0.0, 5.5, 4.0, 3.5], [-0.5, 3.9, 2.2, 1.1, 5.5, 4.0], [2.1, 2.2, 1.4, 2.3, 2.5, 1.6]]],
        dtype=torch.float64,
    )
    got = roi_align(features, boxes, 3, sampling_ratio=2)
    want = reference_roi_align(features, boxes, 3, 2, True)
    assert got.shape == (1, 3, 2, 3, 3, 3)
    torch.testing.assert_close(got, want)


def test_roi_align_constant_map_and_gradients():
    features = torch.full((1, 1, 7, 7), 3.0, requires_grad=True)
    boxes = torch.tensor([[[1.0, 1.0, 6.0, 6.0]]], requires_grad=True)
    pooled = roi_align(features, boxes, 5)
    torch.testing.assert_close(pooled, torch.full_like(pooled, 3.0))
    ramp = torch.arange(7.0).view(1, 1, 7, 1).expand(1, 1, 7, 7).clone().requires_grad_(True)
    out = roi_align(ramp, boxes, 5)
    out.sum().backward()
    assert ramp.grad is not None and ramp.grad.abs().sum() > 0
    assert boxes.grad is not None and boxes.grad.abs().sum() > 0


def test_roi_align_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"boxes must have shape \[B=1, M, 4\]"):
        roi_align(torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 6), 2)
    with pytest.raises(ValueError, match="2D and 3D"):
        roi_align(torch.zeros(1, 1, 4), torch.zeros(1, 2, 2), 2)
