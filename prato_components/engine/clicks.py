"""Corrective clicks simulated against the error of a prediction (docs/design.md §9, "Corrective clicks").

A click is a voxel of the network input and a label with VISTA3D's meaning: 1 (foreground) on a miss, 0
(background) on a leak; -1 marks a padding row in the batched ``point_labels``. :func:`next_click` is the SEGFM3D
protocol's deterministic click (the centre of the largest error component); :func:`sample_click` is the training
sampler (any error voxel, weighted toward the centres of the error components); :func:`clicked_error` is the error
component a click was placed in (what a perfect click would fix); :func:`append_clicks` adds one
click per image to the ``points`` ``[B, N, D]`` / ``point_labels`` ``[B, N]`` of the call convention
``network(image, boxes=..., points=..., point_labels=...)``, as the voxel's centre in the boxes' continuous
coordinates (voxel ``v`` covers ``[v, v + 1)``, its centre is ``v + 0.5``; docs/design.md §3).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
from monai.transforms.utils import distance_transform_edt
from scipy import ndimage

from prato_components.engine.distributed import unwrap

__all__ = [
    "BACKGROUND", "FOREGROUND", "PADDING", "Click", "append_clicks", "check_takes_clicks", "clicked_error",
    "error_masks", "next_click", "sample_click",
]

FOREGROUND, BACKGROUND, PADDING = 1, 0, -1


class Click(NamedTuple):
    """One corrective click: the voxel index per spatial axis (the axis order of boxes) and its label."""

    point: tuple[int, ...]
    label: int


def _binary(mask: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if array.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2D or 3D mask [*spatial], got shape {tuple(array.shape)}")
    return array.astype(bool)


def error_masks(prediction: torch.Tensor | np.ndarray, label: torch.Tensor | np.ndarray,
                region: torch.Tensor | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(missed, leaked)``: the false negatives and false positives of the binary ``prediction`` against the binary
    ``label`` (both ``[*spatial]``, 2D or 3D), counted only inside ``region`` when one is given."""
    pred, lab = _binary(prediction, "prediction"), _binary(label, "label")
    if pred.shape != lab.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(lab.shape)} must have the same shape")
    missed, leaked = lab & ~pred, pred & ~lab
    if region is not None:
        inside = _binary(region, "region")
        if inside.shape != pred.shape:
            raise ValueError(f"region {tuple(inside.shape)} must have the prediction's shape {tuple(pred.shape)}")
        missed, leaked = missed & inside, leaked & inside
    return missed, leaked


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """``scipy.ndimage.label`` of ``mask`` with full connectivity (8 in 2D, 26 in 3D): the components numbered from
    1 (0 outside them) and their count."""
    return ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, mask.ndim))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of ``mask`` (:func:`_components`); of equal ones, the first in scan order."""
    components, count = _components(mask)
    if count <= 1:
        return components > 0
    return components == int(np.argmax(np.bincount(components.ravel())[1:])) + 1


def clicked_error(prediction: torch.Tensor | np.ndarray, label: torch.Tensor | np.ndarray, click: Click
                  ) -> np.ndarray:
    """The error component ``click`` was placed in: the connected component (full connectivity, as
    :func:`next_click`) of the misses (a :data:`FOREGROUND` click) or of the leaks (a :data:`BACKGROUND` click) of
    ``prediction`` against ``label`` that holds the clicked voxel; all ``False`` when that voxel is no such error."""
    missed, leaked = error_masks(prediction, label)
    errors = missed if click.label == FOREGROUND else leaked
    components, _ = _components(errors)
    number = components[click.point]
    return components == number if number else np.zeros_like(errors)


def _depth(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of every voxel of ``mask`` to the nearest voxel outside it, the image's edge counting as
    outside: MONAI's ``distance_transform_edt`` on the mask's bounding box padded by one background voxel (the
    nearest outside voxel is never farther than that ring, so the crop changes nothing but the cost)."""
    depth = np.zeros(mask.shape, dtype=np.float32)
    found = ndimage.find_objects(mask.astype(np.uint8))
    if not found:
        return depth
    box = found[0]
    padded = np.pad(mask[box], 1)
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    depth[box] = np.asarray(distance_transform_edt(padded[None].astype(np.float32)))[0][inner]
    return depth


def next_click(prediction: torch.Tensor | np.ndarray, label: torch.Tensor | np.ndarray,
               region: torch.Tensor | np.ndarray | None = None) -> Click | None:
    """The SEGFM3D corrective click for one structure: the centre of the largest remaining error region.

    The false negatives and the false positives (:func:`error_masks`) are split into connected components; the
    largest of all wins (a miss before a leak of the same size). The click is that component's voxel farthest from
    its border (the maximum of its Euclidean distance transform; the first in scan order on a tie), labelled
    :data:`FOREGROUND` on a miss and :data:`BACKGROUND` on a leak. ``None`` when there is no error. Deterministic.

    Args:
        prediction: binary prediction ``[*spatial]`` (2D or 3D).
        label: binary ground truth of the same shape.
        region: optional mask; errors outside it do not count.
    """
    best: tuple[int, int, np.ndarray] | None = None
    for kind, errors in zip((FOREGROUND, BACKGROUND), error_masks(prediction, label, region)):
        if errors.any():
            component = _largest_component(errors)
            size = int(component.sum())
            if best is None or size > best[0]:
                best = (size, kind, component)
    if best is None:
        return None
    _, kind, component = best
    index = np.unravel_index(int(np.argmax(_depth(component))), component.shape)
    return Click(tuple(int(i) for i in index), kind)


def sample_click(prediction: torch.Tensor | np.ndarray, label: torch.Tensor | np.ndarray,
                 region: torch.Tensor | np.ndarray | None = None,
                 generator: torch.Generator | None = None) -> Click | None:
    """A random corrective click for training: any error voxel, drawn with a probability proportional to its
    distance from the border of its error component (so toward the components' centres, and more often in the
    large ones), labelled as in :func:`next_click`. ``None`` when there is no error.

    The draw uses ``generator`` (default torch's global CPU generator, which the training checkpoint records).
    """
    missed, leaked = error_masks(prediction, label, region)
    if not (missed.any() or leaked.any()):
        return None
    weights = np.concatenate([_depth(missed).ravel(), _depth(leaked).ravel()])
    chosen = int(torch.multinomial(torch.from_numpy(weights).double(), 1, generator=generator))
    kind = FOREGROUND if chosen < missed.size else BACKGROUND
    index = np.unravel_index(chosen % missed.size, missed.shape)
    return Click(tuple(int(i) for i in index), kind)


def append_clicks(points: torch.Tensor | None, point_labels: torch.Tensor | None, clicks: Sequence[Click | None],
                  spatial_dims: int | None = None, device: torch.device | str | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``points`` ``[B, N, D]`` and ``point_labels`` ``[B, N]`` with one more click per image: ``[B, N + 1, D]``
    (float32: the clicked voxel's centre, ``index + 0.5``) and ``[B, N + 1]`` (int64). An image whose click is
    ``None`` gets a padding row (coordinates 0, label :data:`PADDING`). ``points`` / ``point_labels`` ``None``
    start from no clicks (``spatial_dims`` is then taken from the first click when not given)."""
    if (points is None) != (point_labels is None):
        raise ValueError("points and point_labels must be given together")
    if points is not None and (points.ndim != 3 or point_labels.shape != points.shape[:2]
                               or points.shape[0] != len(clicks)):
        raise ValueError(f"points [B, N, D] {tuple(points.shape)} and point_labels [B, N] "
                         f"{tuple(point_labels.shape)} must match the {len(clicks)} clicks (one per image)")
    dims = points.shape[-1] if points is not None else spatial_dims
    if dims is None:
        dims = next((len(c.point) for c in clicks if c is not None), None)
    if dims is None:
        raise ValueError("spatial_dims is needed when no image has a click yet")
    if any(c is not None and len(c.point) != dims for c in clicks):
        raise ValueError(f"every click must have {dims} coordinates, got {[c.point for c in clicks if c]}")
    device = points.device if points is not None else device
    new_points = torch.tensor([[i + 0.5 for i in c.point] if c is not None else [0.0] * dims for c in clicks],
                              dtype=torch.float32, device=device).view(len(clicks), 1, dims)
    new_labels = torch.tensor([c.label if c is not None else PADDING for c in clicks],
                              dtype=torch.long, device=device).view(len(clicks), 1)
    if points is None:
        return new_points, new_labels
    return torch.cat([points.float(), new_points], 1), torch.cat([point_labels.long(), new_labels], 1)


def check_takes_clicks(network: nn.Module, what: str, previous_mask: bool = False) -> None:
    """``ValueError`` unless ``network`` (DDP-wrapped is fine) is called with ``points`` and ``point_labels`` (and
    ``previous_mask`` if asked)."""
    parameters = inspect.signature(unwrap(network).forward).parameters
    needed = {"points", "point_labels"} | ({"previous_mask"} if previous_mask else set())
    if not (needed <= set(parameters) or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())):
        extra = ", previous_mask=..." if previous_mask else ""
        raise ValueError(f"{what} needs a network called as network(image, boxes=..., points=..., point_labels=..."
                         f"{extra}); {type(unwrap(network)).__name__} is not (a network built with click_prompts is)")
