"""N-dimensional RoIAlign on ``grid_sample``.

torchvision's ``roi_align`` is 2D only (and torchvision does not install beside the CPU torch wheel we
use), so this is our own: one batched ``grid_sample`` call for all boxes of all images, in 2D or 3D.
It follows the RoIAlign definition of He et al. (Mask R-CNN) as implemented by torchvision:
every output bin averages ``sampling_ratio ** D`` regularly spaced bilinear samples; a sample more than
one cell outside the map contributes zero, one within that margin is clamped to the border cell.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.utils import ensure_tuple_rep

__all__ = ["roi_align"]


def roi_align(
    features: torch.Tensor,
    boxes: torch.Tensor,
    output_size: int | Sequence[int],
    sampling_ratio: int = 2,
    aligned: bool = True,
) -> torch.Tensor:
    """Pool a fixed-size feature grid from every box.

    Args:
        features: feature map ``[B, C, *G]`` with ``D = len(G)`` in {2, 3}.
        boxes: ``[B, M, 2*D]`` boxes in **feature-grid** coordinates, ``(min_0, .., min_{D-1}, max_0, ..)``
            where coordinate ``i`` indexes spatial axis ``i`` of ``features`` (cell ``v`` covers ``[v, v+1)``).
        output_size: bins per axis (``k`` or one value per axis).
        sampling_ratio: samples per bin along each axis (fixed, so the cost does not depend on the box).
        aligned: half-pixel convention (``aligned=True`` in torchvision): sample at continuous coordinate
            ``c - 0.5`` so that cell centres sit at integer positions.

    Returns:
        ``[B, M, C, *output_size]``; differentiable with respect to ``features`` and ``boxes``.
    """
    spatial_dims = features.ndim - 2
    if spatial_dims not in (2, 3):
        raise ValueError(f"roi_align supports 2D and 3D feature maps, got features of shape {tuple(features.shape)}")
    if boxes.ndim != 3 or boxes.shape[-1] != 2 * spatial_dims or boxes.shape[0] != features.shape[0]:
        raise ValueError(
            f"boxes must have shape [B={features.shape[0]}, M, {2 * spatial_dims}] for a {spatial_dims}D feature map, "
            f"got {tuple(boxes.shape)}"
        )
    if sampling_ratio < 1:
        raise ValueError(f"sampling_ratio must be >= 1, got {sampling_ratio}")
    out_size = ensure_tuple_rep(output_size, spatial_dims)
    batch, num_boxes = boxes.shape[:2]
    grid_shape = features.shape[2:]
    boxes = boxes.to(features.dtype)

    offset = 0.5 if aligned else 0.0
    start = boxes[..., :spatial_dims] - offset
    extent = boxes[..., spatial_dims:] - boxes[..., :spatial_dims]
    if not aligned:  # legacy convention: boxes are at least one cell wide
        extent = extent.clamp(min=1.0)

    # sample coordinates along each axis: start + (i + (j + 0.5) / s) * bin, flattened as i * s + j
    coords, valid = [], []
    for axis in range(spatial_dims):
        steps = (torch.arange(out_size[axis] * sampling_ratio, device=boxes.device, dtype=boxes.dtype) + 0.5)
        steps = steps / sampling_ratio
        c = start[..., axis, None] + steps * (extent[..., axis, None] / out_size[axis])  # [B, M, P_axis]
        size = grid_shape[axis]
        valid.append((c >= -1.0) & (c <= size))
        c = c.clamp(0.0, size - 1)
        coords.append(2.0 * c / max(size - 1, 1) - 1.0)  # align_corners=True normalisation

    # broadcast the per-axis coordinates into a [B, M, P_0, .., P_{D-1}] grid
    shape = [batch, num_boxes] + [c.shape[-1] for c in coords]
    axes_grid, inside = [], None
    for axis, (c, v) in enumerate(zip(coords, valid)):
        view = [batch, num_boxes] + [1] * spatial_dims
        view[2 + axis] = c.shape[-1]
        axes_grid.append(c.view(view).expand(shape))
        v = v.view(view)
        inside = v if inside is None else inside & v
    grid = torch.stack(axes_grid[::-1], dim=-1)  # grid_sample wants (x=last axis, y, z) order
    grid = grid.reshape(batch, num_boxes * shape[2], *shape[3:], spatial_dims)

    samples = F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=True)
    samples = samples.reshape(batch, features.shape[1], *shape[1:])  # [B, C, M, P_0, ..]
    samples = samples * inside.expand(shape).unsqueeze(1).to(samples.dtype)

    # average the s**D samples of every bin
    split = [batch, features.shape[1], num_boxes]
    for axis in range(spatial_dims):
        split += [out_size[axis], sampling_ratio]
    samples = samples.reshape(split)
    pooled = samples.mean(dim=tuple(4 + 2 * a for a in range(spatial_dims)))
    return pooled.transpose(1, 2)
