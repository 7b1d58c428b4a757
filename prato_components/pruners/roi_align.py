"""N-dimensional RoIAlign as separable bilinear-weight contractions.

torchvision's ``roi_align`` is 2D only (and torchvision does not install beside the CPU torch wheel we
use), so this is our own: for all boxes of all images at once, in 2D or 3D.
It follows the RoIAlign definition of He et al. (Mask R-CNN) as implemented by torchvision:
every output bin averages ``sampling_ratio ** D`` regularly spaced bilinear samples; a sample more than
one cell outside the map contributes zero, one within that margin is clamped to the border cell.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
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

    # Bilinear sampling on a regular grid is separable: for every box and axis, a [k, size] matrix holds the
    # bilinear weights of its samples (the tent ``max(0, 1 - |c - g|)`` at the clamped coordinate ``c``),
    # zeroed for samples outside the map and averaged over the ``s`` samples of each bin. The pooled grid is
    # the feature map contracted with one such matrix per axis (exact; far cheaper than grid_sample here).
    weights = []
    for axis in range(spatial_dims):
        size, bins = grid_shape[axis], out_size[axis]
        steps = (torch.arange(bins * sampling_ratio, device=boxes.device, dtype=boxes.dtype) + 0.5) / sampling_ratio
        c = start[..., axis, None] + steps * (extent[..., axis, None] / bins)  # [B, M, P], flattened as i * s + j
        inside = ((c >= -1.0) & (c <= size)).to(c.dtype)
        cells = torch.arange(size, device=boxes.device, dtype=boxes.dtype)
        tent = (1.0 - (c.clamp(0.0, size - 1).unsqueeze(-1) - cells).abs()).clamp(min=0.0)  # [B, M, P, size]
        weights.append((tent * inside.unsqueeze(-1)).view(batch, num_boxes, bins, sampling_ratio, size).mean(dim=3))
    if spatial_dims == 2:
        return torch.einsum("bcyx,bmjx,bmiy->bmcij", features, weights[1], weights[0])
    return torch.einsum("bczyx,bmkx,bmjy,bmiz->bmcijk", features, weights[2], weights[1], weights[0])
