"""Point prompts (clicks): checks and the boxes around foreground clicks.

Conventions (docs/design.md §3), those of VISTA3D's ``points`` / ``point_labels`` in the coordinates of the boxes:

- ``points`` ``[B, N, D]`` float, continuous voxel coordinates of the network input in the boxes' axis order
  (coordinate ``i`` indexes spatial axis ``i`` of ``[C, *spatial]``; voxel ``v`` covers ``[v, v + 1)``, its centre is
  ``v + 0.5``).
- ``point_labels`` ``[B, N]`` integers: :data:`FOREGROUND` (1), :data:`BACKGROUND` (0) or :data:`PADDING` (-1, no
  click: pads images to a common ``N``). A padding row is ignored whatever its coordinates.
- ``prompt_class`` ``[B]`` (or VISTA3D's ``[B, 1]``) integers, optional: the class (``1 .. num_classes - 1``) of
  the structure each image's clicks are about (DeepEdit keeps its clicks per label for the same reason).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from prato_components.prompts.boxes import padding_boxes

__all__ = [
    "FOREGROUND", "BACKGROUND", "PADDING", "POINT_LABELS", "validate_points", "validate_prompt_class", "point_boxes",
]

FOREGROUND, BACKGROUND, PADDING = 1, 0, -1
POINT_LABELS = (FOREGROUND, BACKGROUND, PADDING)


def _fmt_point(row: torch.Tensor) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in row) + ")"


def validate_points(
    points: torch.Tensor | Sequence | None,
    point_labels: torch.Tensor | Sequence | None,
    spatial_shape: Sequence[int],
    batch: int | None = None,
    check_values: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Check click prompts and return them as float32 points ``[B, N, D]`` and int64 labels ``[B, N]`` (padding
    rows' coordinates set to 0), or ``(None, None)`` without clicks.

    Raises ``ValueError``, naming the problem, for: labels without points or points without labels; a wrong shape
    (``points`` not ``[B, N, D]`` with ``D = len(spatial_shape)``, labels not ``[B, N]``); a batch size other than
    ``batch``; a different ``N`` in points and labels; a label not in {1, 0, -1}; and, for the real (non-padding)
    clicks, NaN/inf or a point outside the image extent ``[0, size]`` on some axis. ``check_values=False`` (a
    compiler traces) checks the shapes only.
    """
    if points is None and point_labels is None:
        return None, None
    if point_labels is None:
        raise ValueError("points were given without point_labels (1 foreground, 0 background, -1 padding)")
    if points is None:
        raise ValueError("point_labels were given without points")
    points, labels = torch.as_tensor(points), torch.as_tensor(point_labels)
    dims = len(spatial_shape)
    if points.ndim != 3 or points.shape[-1] != dims:
        raise ValueError(f"points must have shape [B, N, {dims}] (one coordinate per spatial axis of the {dims}D "
                         f"image), got shape {tuple(points.shape)}")
    if labels.ndim != 2:
        raise ValueError(f"point_labels must have shape [B, N], got shape {tuple(labels.shape)}")
    if batch is not None and points.shape[0] != batch:
        raise ValueError(f"points are given for {points.shape[0]} image(s) but the batch holds {batch}")
    if tuple(labels.shape) != tuple(points.shape[:2]):
        raise ValueError(f"points hold {points.shape[1]} click(s) per image but point_labels "
                         f"{labels.shape[1] if labels.shape[0] == points.shape[0] else tuple(labels.shape)}; "
                         f"expected point_labels of shape {tuple(points.shape[:2])}")
    points = points.float()
    if labels.is_floating_point() and check_values and not bool((labels == labels.round()).all()):
        raise ValueError("point_labels must be integers: 1 foreground, 0 background, -1 padding")
    labels = labels.long()
    if not check_values:
        return points, labels
    wrong = ~((labels == FOREGROUND) | (labels == BACKGROUND) | (labels == PADDING))
    if bool(wrong.any()):
        b, n = (int(i) for i in wrong.nonzero()[0])
        raise ValueError(f"point_labels [{b}, {n}] is {int(labels[b, n])}; a label is 1 (foreground), "
                         "0 (background) or -1 (padding)")
    real = labels != PADDING
    finite = torch.isfinite(points).all(-1)
    if bool((real & ~finite).any()):
        b, n = (int(i) for i in (real & ~finite).nonzero()[0])
        raise ValueError(f"points [{b}, {n}] {_fmt_point(points[b, n])} contains NaN or inf")
    points = torch.where(real[..., None], points, torch.zeros((), dtype=points.dtype, device=points.device))
    size = torch.tensor([float(s) for s in spatial_shape], device=points.device)
    outside = real & ((points < 0) | (points > size)).any(-1)
    if bool(outside.any()):
        b, n = (int(i) for i in outside.nonzero()[0])
        raise ValueError(f"points [{b}, {n}] {_fmt_point(points[b, n])} lies outside the image of spatial shape "
                         f"{tuple(int(s) for s in spatial_shape)} (a point is in [0, size] on every axis)")
    return points, labels


def validate_prompt_class(prompt_class: torch.Tensor | Sequence | int | None, batch: int, num_classes: int,
                          check_values: bool = True) -> torch.Tensor | None:
    """Check ``prompt_class`` (``[B]``, ``[B, 1]`` or one number for the whole batch) and return it as int64 ``[B]``,
    or ``None`` without one. Raises ``ValueError``, naming the problem, for a wrong shape or batch size, a value
    that is not an integer, or a class outside ``1 .. num_classes - 1`` (0 is the background)."""
    if prompt_class is None:
        return None
    classes = torch.as_tensor(prompt_class)
    if classes.ndim == 0:
        classes = classes.expand(batch)
    if classes.ndim == 2 and classes.shape[1] == 1:
        classes = classes[:, 0]
    if classes.ndim != 1 or classes.shape[0] != batch:
        raise ValueError(f"prompt_class must have shape [B] or [B, 1] with B = {batch} (one class per image), got "
                         f"shape {tuple(classes.shape)}")
    if classes.is_floating_point() and check_values and not bool((classes == classes.round()).all()):
        raise ValueError("prompt_class must hold integers (class indices)")
    classes = classes.long()
    if check_values:
        wrong = (classes < 1) | (classes >= num_classes)
        if bool(wrong.any()):
            b = int(wrong.nonzero()[0, 0])
            raise ValueError(f"prompt_class [{b}] is {int(classes[b])}; a class is in 1 .. {num_classes - 1} "
                             f"(the network has {num_classes} output channels, 0 is the background)")
    return classes


def point_boxes(points: torch.Tensor, point_labels: torch.Tensor, spatial_shape: Sequence[int],
                label: int = FOREGROUND) -> torch.Tensor:
    """One box ``[B, N, 2D]`` per click of ``label``: the voxel under the click (``floor(p) .. floor(p) + 1``,
    inside the image); a padding row for every other click. Checked clicks (:func:`validate_points`)."""
    dims = len(spatial_shape)
    size = torch.tensor([float(s) for s in spatial_shape], device=points.device)
    lo = torch.minimum(points.floor(), size - 1).clamp(min=0)
    boxes = torch.cat([lo, lo + 1], -1)
    pad = padding_boxes(1, dims, like=boxes).to(boxes)
    return torch.where((point_labels == label)[..., None], boxes, pad)
