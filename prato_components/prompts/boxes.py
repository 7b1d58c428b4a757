"""Box prompts: pure functions on boxes.

Conventions (shared by the whole package, see docs/design.md §3):

- A box for a ``D``-dimensional image (``D`` = 2 or 3) holds ``2 * D`` floats in MONAI ``StandardMode``
  order, ``(x1, y1, x2, y2)`` / ``(x1, y1, z1, x2, y2, z2)``, where coordinate ``i`` indexes spatial axis
  ``i`` of the channel-first array ``[C, *spatial]`` (axis 0 of the spatial dims first, not the screen
  x/y convention).
- Coordinates are continuous voxel coordinates: voxel ``v`` covers ``[v, v + 1)`` and its centre is at
  ``v + 0.5``. A box tightly around foreground voxels ``a..b`` (inclusive) along an axis is ``(a, b + 1)``.
- Several boxes per image form an array ``[M, 2 * D]`` (``[B, M, 2 * D]`` once batched).
- A **padding row** (a missing box, e.g. a class absent from the label) is any row with ``max < min`` on
  at least one axis (:func:`box_is_padding`). The canonical padding row, written by every function
  here, has all mins ``PADDING_BOX_MIN = 0`` and all maxes ``PADDING_BOX_MAX = -1``
  (:func:`padding_boxes`). Every function passes padding rows through unchanged.

All functions accept torch tensors and numpy arrays and return the same kind (numpy in, numpy out;
tensor in, plain tensor out, on the same device) as float32. Randomness only comes from an explicitly
passed ``numpy.random.Generator`` or ``numpy.random.RandomState``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data.box_utils import CenterSizeMode, StandardMode, clip_boxes_to_image, convert_box_mode
from monai.transforms.utils import generate_spatial_bounding_box
from monai.utils import convert_data_type, look_up_option

__all__ = [
    "PADDING_BOX_MIN",
    "PADDING_BOX_MAX",
    "PADDING_BOX_VALUE",
    "ON_EMPTY_MODES",
    "padding_boxes",
    "box_is_padding",
    "whole_image_boxes",
    "boxes_from_label",
    "validate_boxes",
    "clip_boxes",
    "scale_boxes",
    "partial_boxes",
    "shift_boxes",
    "jitter_boxes",
    "boxes_to_mask",
    "mask_to_boxes",
]

PADDING_BOX_MIN: float = 0.0
"""Value of the min corner coordinates of the canonical padding row."""
PADDING_BOX_MAX: float = -1.0
"""Value of the max corner coordinates of the canonical padding row."""
PADDING_BOX_VALUE: tuple[float, float] = (PADDING_BOX_MIN, PADDING_BOX_MAX)
"""``(min value, max value)`` of the canonical padding row ``(0, .., 0, -1, .., -1)``."""
ON_EMPTY_MODES = ("full", "pad", "raise")
"""Choices of ``on_empty`` in :func:`boxes_from_label`."""

RandomGenerator = np.random.Generator | np.random.RandomState


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------


def _as_float_tensor(boxes: NdarrayOrTensor | Sequence) -> torch.Tensor:
    """Plain float32 tensor view/copy of ``boxes`` (numpy, tensor, MetaTensor or nested sequence)."""
    if not isinstance(boxes, (np.ndarray, torch.Tensor)):
        boxes = np.asarray(boxes, dtype=np.float32)
    return convert_data_type(boxes, torch.Tensor, dtype=torch.float32)[0]


def _check_float32_range(boxes: NdarrayOrTensor | Sequence, name: str) -> None:
    """``ValueError`` for finite values too large for float32 (``1e308`` would silently become ``inf``)."""
    if isinstance(boxes, torch.Tensor):
        wide = boxes.detach().cpu().double() if boxes.dtype == torch.float64 else None
    else:
        array = np.asarray(boxes) if isinstance(boxes, np.ndarray) else np.asarray(boxes, dtype=object)
        wide = torch.as_tensor(array.astype(np.float64)) if array.dtype.kind in "fO" and array.size else None
    if wide is None:
        return
    big = torch.isfinite(wide) & (wide.abs() > torch.finfo(torch.float32).max)
    if big.any():
        value = float(wide[big][0])
        raise ValueError(f"{name} holds {value:g}, beyond the float32 range of box coordinates (|v| <= 3.4e+38)")


def _like(out: torch.Tensor, ref: NdarrayOrTensor | Sequence | None) -> NdarrayOrTensor:
    """``out`` as numpy when ``ref`` is numpy, else as a plain tensor on ``ref``'s device; float32 values."""
    if isinstance(ref, np.ndarray):
        return out.detach().cpu().numpy().astype(np.float32, copy=False)
    device = ref.device if isinstance(ref, torch.Tensor) else None
    return convert_data_type(out, torch.Tensor, device=device, dtype=out.dtype)[0]


def _box_spatial_dims(boxes: torch.Tensor | np.ndarray) -> int:
    """Spatial dims from the last axis of ``boxes`` (4 values -> 2D, 6 values -> 3D)."""
    n = boxes.shape[-1] if boxes.ndim > 0 else 0
    if n not in (4, 6):
        raise ValueError(f"a box has 4 (2D) or 6 (3D) values, got boxes of shape {tuple(boxes.shape)}")
    return n // 2


def _per_axis(value: float | Sequence[float], spatial_dims: int, name: str) -> torch.Tensor:
    """``value`` (a scalar or one value per spatial axis) as a float32 tensor ``[spatial_dims]``."""
    t = torch.as_tensor(value, dtype=torch.float32).flatten()
    if t.numel() == 1:
        t = t.repeat(spatial_dims)
    if t.numel() != spatial_dims:
        raise ValueError(f"{name} needs 1 or {spatial_dims} values, got {t.numel()}")
    return t


def _uniform(rng: RandomGenerator, low: float, high: float, size: tuple[int, ...]) -> torch.Tensor:
    """Uniform samples from ``rng`` (Generator or RandomState) as a float32 tensor."""
    return torch.as_tensor(np.asarray(rng.uniform(low, high, size=size)), dtype=torch.float32)


def _map_rows(boxes: NdarrayOrTensor, fn: Callable[[torch.Tensor, int], torch.Tensor]) -> NdarrayOrTensor:
    """Apply ``fn(rows [N, 2D], spatial_dims) -> [N, 2D]`` to every box of ``[..., 2D]``; padding rows kept."""
    t = _as_float_tensor(boxes)
    spatial_dims = _box_spatial_dims(t)
    flat = t.reshape(-1, 2 * spatial_dims)
    pad = box_is_padding(flat)
    # padding rows go through ``fn`` as a unit box (MONAI's box utils warn on inverted boxes), then are restored
    unit = torch.tensor([0.0] * spatial_dims + [1.0] * spatial_dims, device=flat.device)
    out = fn(torch.where(pad[:, None], unit, flat), spatial_dims).to(torch.float32)
    out = torch.where(pad[:, None], flat, out)
    return _like(out.reshape(t.shape), boxes)


def _fmt_box(row: torch.Tensor) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in row) + ")"


# ----------------------------------------------------------------------------------------------------
# padding and whole-image boxes
# ----------------------------------------------------------------------------------------------------


def padding_boxes(m: int, spatial_dims: int, like: NdarrayOrTensor | None = None) -> NdarrayOrTensor:
    """``m`` canonical padding rows ``(0, .., 0, -1, .., -1)``.

    Args:
        m: number of rows.
        spatial_dims: 2 or 3.
        like: optional array/tensor whose kind (numpy/torch) and device the result takes; default torch.

    Returns:
        float32 ``[m, 2 * spatial_dims]``.
    """
    look_up_option(spatial_dims, (2, 3))
    row = torch.tensor([PADDING_BOX_MIN] * spatial_dims + [PADDING_BOX_MAX] * spatial_dims, dtype=torch.float32)
    return _like(row.repeat(m, 1), like)


def box_is_padding(boxes: NdarrayOrTensor) -> NdarrayOrTensor:
    """Which rows of ``boxes`` are padding (``max < min`` on at least one axis).

    Args:
        boxes: ``[..., M, 2 * D]`` (any leading batch dims), numpy or torch.

    Returns:
        bool ``[..., M]``, numpy or torch like ``boxes``.
    """
    spatial_dims = _box_spatial_dims(boxes)
    return (boxes[..., spatial_dims:] < boxes[..., :spatial_dims]).any(-1)


def whole_image_boxes(
    spatial_shape: Sequence[int], batch_size: int | None = None, like: NdarrayOrTensor | None = None
) -> NdarrayOrTensor:
    """The box covering the whole image ``(0, .., 0, *spatial_shape)``.

    Args:
        spatial_shape: spatial size of the image (2 or 3 values).
        batch_size: if given, the result is ``[batch_size, 1, 2D]`` (the network's ``boxes`` argument).
        like: optional array/tensor whose kind (numpy/torch) and device the result takes; default torch.

    Returns:
        float32 ``[1, 2D]`` or ``[batch_size, 1, 2D]``.
    """
    look_up_option(len(spatial_shape), (2, 3))
    row = torch.tensor([0.0] * len(spatial_shape) + [float(s) for s in spatial_shape], dtype=torch.float32)
    out = row[None] if batch_size is None else row[None, None].repeat(batch_size, 1, 1)
    return _like(out, like)


# ----------------------------------------------------------------------------------------------------
# boxes from labels
# ----------------------------------------------------------------------------------------------------


def _label_spatial(label: NdarrayOrTensor, spatial_dims: int | None) -> NdarrayOrTensor:
    """``label`` without its leading singleton channel (if any), i.e. ``[*spatial]``."""
    ndim = label.ndim
    if spatial_dims is None:
        if ndim == 4 or (ndim == 3 and label.shape[0] == 1):
            spatial_dims = ndim - 1
        else:
            spatial_dims = ndim
    look_up_option(spatial_dims, (2, 3))
    if ndim == spatial_dims + 1:
        if label.shape[0] != 1:
            raise ValueError(
                f"label must be [1, *spatial] or [*spatial] (an integer class map, not one-hot), "
                f"got shape {tuple(label.shape)}"
            )
        return label[0]
    if ndim != spatial_dims:
        raise ValueError(f"label of shape {tuple(label.shape)} does not have {spatial_dims} spatial dims")
    return label


def _tight_box(mask: NdarrayOrTensor) -> list[float] | None:
    """Tight box ``[a_0, .., b_0 + 1, ..]`` around the nonzero voxels of ``mask [*spatial]``, None if empty."""
    start, end = generate_spatial_bounding_box(mask[None])  # end is exclusive, [0]*D, [0]*D when empty
    if end[0] <= start[0]:
        return None
    return [float(v) for v in start] + [float(v) for v in end]


def boxes_from_label(
    label: NdarrayOrTensor,
    per_class: bool = False,
    classes: Sequence[int] | None = None,
    on_empty: str = "full",
    spatial_dims: int | None = None,
) -> NdarrayOrTensor:
    """Tight box(es) around the foreground of an integer label map.

    Foreground is ``label > 0``. The box around voxels ``a..b`` (inclusive) is ``(a, b + 1)``.

    Args:
        label: integer class map ``[1, *spatial]`` or ``[*spatial]``; a leading singleton channel is
            dropped (pass ``spatial_dims`` when a 3D map has a single slice along axis 0).
        per_class: ``False``: one box around all foreground, ``[1, 2D]``. ``True``: one row per class of
            ``classes``, ``[len(classes), 2D]``, absent classes as padding rows (so the shape is fixed
            and batchable when ``classes`` is given).
        classes: class values for ``per_class=True``; default the sorted unique values ``> 0`` present.
        on_empty: what to return when there is no foreground at all (``per_class=True``: none of the
            listed classes is present):

            - ``"full"``: box(es) covering the whole image (every row, or one row if no class is known),
            - ``"pad"``: padding row(s) (every row, or one row if no class is known),
            - ``"raise"``: raise ``ValueError("label has no foreground ...")``.
        spatial_dims: 2 or 3; inferred from ``label`` when None.

    Returns:
        float32 boxes, numpy if ``label`` is numpy, else a torch tensor on ``label``'s device.
    """
    on_empty = look_up_option(on_empty, ON_EMPTY_MODES)
    lab = convert_data_type(label, output_type=torch.Tensor if isinstance(label, torch.Tensor) else np.ndarray)[0]
    lab = _label_spatial(lab, spatial_dims)
    dims = lab.ndim
    if not per_class:
        rows: list[list[float] | None] = [_tight_box(lab > 0)]
    else:
        if classes is None:
            present = np.unique(convert_data_type(lab, np.ndarray)[0])
            classes = [c.item() for c in present if c > 0]
        rows = [_tight_box(lab == c) for c in classes] or [None]
    if all(r is None for r in rows):
        if on_empty == "raise":
            what = "any of the classes " + str(list(classes)) if per_class and classes else "voxels > 0"
            raise ValueError(f"label has no foreground ({what}) in a label of shape {tuple(label.shape)}")
        fill = whole_image_boxes(lab.shape)[0] if on_empty == "full" else padding_boxes(1, dims)[0]
        out = fill.repeat(len(rows), 1)
    else:
        pad = padding_boxes(1, dims)[0]
        out = torch.stack([pad if r is None else torch.tensor(r, dtype=torch.float32) for r in rows])
    return _like(out, label)


# ----------------------------------------------------------------------------------------------------
# validation and clipping
# ----------------------------------------------------------------------------------------------------


def validate_boxes(
    boxes: NdarrayOrTensor | Sequence,
    spatial_shape: Sequence[int] | None = None,
    allow_padding: bool = False,
    name: str = "box",
) -> NdarrayOrTensor:
    """Check box prompts and return them as float32 ``[M, 2D]``.

    A box partially outside the image is legal (use :func:`clip_boxes`); the errors are:

    - NaN or inf values, and finite values beyond the float32 range (they would become inf);
    - a wrong number of values for the image dimensionality (``spatial_shape`` given), or other than
      4 / 6 values otherwise;
    - an empty/inverted box (``max < min`` on an axis): a padding row, legal only with ``allow_padding``;
    - an empty box (``min == max`` on an axis);
    - a box lying entirely outside the image (``spatial_shape`` given).

    Args:
        boxes: ``[M, 2D]`` or a single box ``[2D]`` (numpy, torch or a nested sequence).
        spatial_shape: spatial size of the image the boxes belong to, if known.
        allow_padding: accept padding rows (``max < min`` on an axis).
        name: how the boxes are called in error messages (e.g. the data key and file name).

    Returns:
        float32 ``[M, 2D]``; numpy for numpy input, else a torch tensor.

    Raises:
        ValueError: with a message naming ``name``, the row, its values and the problem.
    """
    _check_float32_range(boxes, name)
    t = _as_float_tensor(boxes)
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2:
        raise ValueError(f"{name} must have shape [M, 2*D] or [2*D], got shape {tuple(t.shape)}")
    n = t.shape[-1]
    if spatial_shape is not None:
        dims = len(spatial_shape)
        if n != 2 * dims:
            raise ValueError(f"{name} has {n} values but the image has {dims} spatial dims (expected {2 * dims})")
    elif n not in (4, 6):
        raise ValueError(f"{name} has {n} values; expected 4 (2D image) or 6 (3D image)")
    dims = n // 2
    lo, hi = t[:, :dims], t[:, dims:]

    def first(bad: torch.Tensor) -> tuple[int, int] | None:
        rows = bad.any(-1).nonzero()
        if len(rows) == 0:
            return None
        i = int(rows[0])
        return i, int(bad[i].nonzero()[0])

    bad = first(~torch.isfinite(t))
    if bad is not None:
        raise ValueError(f"{name} row {bad[0]} {_fmt_box(t[bad[0]])} contains NaN or inf")
    padding = (hi < lo).any(-1)
    if not allow_padding and (bad := first(hi < lo)) is not None:
        raise ValueError(
            f"{name} row {bad[0]} {_fmt_box(t[bad[0]])} is an empty/inverted box (min > max on axis {bad[1]}); "
            "such rows are padding, accepted only with allow_padding=True"
        )
    if (bad := first((hi == lo) & ~padding[:, None])) is not None:
        raise ValueError(f"{name} row {bad[0]} {_fmt_box(t[bad[0]])} is an empty box (min == max on axis {bad[1]})")
    if spatial_shape is not None:
        size = torch.tensor([float(s) for s in spatial_shape], device=t.device)
        if (bad := first(((hi <= 0) | (lo >= size)) & ~padding[:, None])) is not None:
            raise ValueError(
                f"{name} row {bad[0]} {_fmt_box(t[bad[0]])} lies outside the image of shape "
                f"{tuple(int(s) for s in spatial_shape)} (axis {bad[1]})"
            )
    return _like(t, boxes)


def clip_boxes(boxes: NdarrayOrTensor, spatial_shape: Sequence[int], empty_to_padding: bool = True) -> NdarrayOrTensor:
    """Clip boxes to the image, ``[0, size]`` along every axis (MONAI ``clip_boxes_to_image``).

    Args:
        boxes: ``[..., M, 2D]``.
        spatial_shape: spatial size of the image.
        empty_to_padding: turn boxes left with no extent inside the image (they lay outside it) into
            padding rows, so that they read as "no box" rather than a zero-size box.

    Returns:
        float32 boxes of the same shape; padding rows stay padding.
    """
    t = _as_float_tensor(boxes)
    dims = _box_spatial_dims(t)
    if len(spatial_shape) != dims:
        raise ValueError(f"boxes have {2 * dims} values but the image has {len(spatial_shape)} spatial dims")
    flat = t.reshape(-1, 2 * dims)
    out = clip_boxes_to_image(flat, [int(s) for s in spatial_shape], remove_empty=False)[0]
    pad = box_is_padding(flat)
    out = torch.where(pad[:, None], flat, out)
    if empty_to_padding:
        empty = (out[:, dims:] <= out[:, :dims]).any(-1) & ~pad
        out = torch.where(empty[:, None], padding_boxes(1, dims, like=out), out)
    return _like(out.reshape(t.shape), boxes)


# ----------------------------------------------------------------------------------------------------
# perturbations (prompt-quality studies and augmentation)
# ----------------------------------------------------------------------------------------------------


def scale_boxes(boxes: NdarrayOrTensor, factor: float | Sequence[float]) -> NdarrayOrTensor:
    """Scale boxes about their centres (``factor > 1``: oversized box, ``< 1``: shrunk box).

    Args:
        boxes: ``[..., M, 2D]``.
        factor: size multiplier, one value or one per spatial axis; must be > 0.

    Returns:
        float32 boxes of the same shape (not clipped to the image); padding rows unchanged.
    """

    def fn(rows: torch.Tensor, dims: int) -> torch.Tensor:
        f = _per_axis(factor, dims, "factor")
        if (f <= 0).any():
            raise ValueError(f"factor must be > 0, got {factor}")
        cs = convert_box_mode(rows, src_mode=StandardMode, dst_mode=CenterSizeMode)
        cs = torch.cat([cs[:, :dims], cs[:, dims:] * f], dim=1)
        return convert_box_mode(cs, src_mode=CenterSizeMode, dst_mode=StandardMode)

    return _map_rows(boxes, fn)


def partial_boxes(
    boxes: NdarrayOrTensor, fraction: float | Sequence[float], rng: RandomGenerator | None = None
) -> NdarrayOrTensor:
    """Shrink every box to ``fraction`` of its length along each axis, keeping one corner (a box that
    covers only part of the target).

    Args:
        boxes: ``[..., M, 2D]``.
        fraction: kept fraction of each side, one value or one per spatial axis, in ``(0, 1]``.
        rng: picks the kept corner per box and axis (min or max side, probability 1/2 each);
            ``None`` keeps the min corner.

    Returns:
        float32 boxes of the same shape; padding rows unchanged.
    """

    def fn(rows: torch.Tensor, dims: int) -> torch.Tensor:
        f = _per_axis(fraction, dims, "fraction")
        if ((f <= 0) | (f > 1)).any():
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        lo, hi = rows[:, :dims], rows[:, dims:]
        length = (hi - lo) * f
        at_max = torch.zeros_like(lo, dtype=torch.bool)
        if rng is not None:
            at_max = _uniform(rng, 0.0, 1.0, tuple(lo.shape)) < 0.5
        new_lo = torch.where(at_max, hi - length, lo)
        return torch.cat([new_lo, new_lo + length], dim=1)

    return _map_rows(boxes, fn)


def shift_boxes(
    boxes: NdarrayOrTensor, offset_fraction: float | Sequence[float], rng: RandomGenerator | None = None
) -> NdarrayOrTensor:
    """Move every box by ``offset_fraction`` times its own size along each axis (a misleading box:
    with ``|offset_fraction| >= 1`` it no longer overlaps the original).

    Args:
        boxes: ``[..., M, 2D]``.
        offset_fraction: shift in units of the box size, one value or one (signed) value per spatial axis.
        rng: draws a random sign per box and axis (probability 1/2 each); ``None`` keeps the given signs.

    Returns:
        float32 boxes of the same shape (not clipped to the image); padding rows unchanged.
    """

    def fn(rows: torch.Tensor, dims: int) -> torch.Tensor:
        off = _per_axis(offset_fraction, dims, "offset_fraction").expand(rows.shape[0], dims)
        if rng is not None:
            off = torch.where(_uniform(rng, 0.0, 1.0, tuple(off.shape)) < 0.5, -off, off)
        lo, hi = rows[:, :dims], rows[:, dims:]
        shift = off * (hi - lo)
        return torch.cat([lo + shift, hi + shift], dim=1)

    return _map_rows(boxes, fn)


def jitter_boxes(
    boxes: NdarrayOrTensor, max_shift_fraction: float, max_scale_fraction: float, rng: RandomGenerator
) -> NdarrayOrTensor:
    """Small random translation and per-side resizing of every box (annotation noise).

    Along axis ``i`` with size ``L``, a box ``(lo, hi)`` becomes
    ``(lo + t * L - a * L / 2, hi + t * L + b * L / 2)`` with ``t ~ U(-max_shift_fraction, max_shift_fraction)``
    and ``a, b ~ U(-max_scale_fraction, max_scale_fraction)`` drawn independently per box and axis
    (``a = b = s`` is a scale by ``1 + s`` about the centre). Draw order: all ``t`` ``[N, D]``, then all
    ``(a, b)`` ``[N, 2D]`` over the flattened rows, padding rows included (so the stream does not
    depend on which rows are padding).

    Args:
        boxes: ``[..., M, 2D]``.
        max_shift_fraction: largest translation, in units of the box size, >= 0.
        max_scale_fraction: largest per-side change, in units of half the box size, in ``[0, 1)`` so
            that boxes never invert.
        rng: ``numpy.random.Generator`` or ``RandomState``.

    Returns:
        float32 boxes of the same shape (not clipped); padding rows unchanged.
    """
    if max_shift_fraction < 0:
        raise ValueError(f"max_shift_fraction must be >= 0, got {max_shift_fraction}")
    if not 0 <= max_scale_fraction < 1:
        raise ValueError(f"max_scale_fraction must be in [0, 1), got {max_scale_fraction}")

    def fn(rows: torch.Tensor, dims: int) -> torch.Tensor:
        n = rows.shape[0]
        t = _uniform(rng, -max_shift_fraction, max_shift_fraction, (n, dims))
        ab = _uniform(rng, -max_scale_fraction, max_scale_fraction, (n, 2 * dims))
        lo, hi = rows[:, :dims], rows[:, dims:]
        length = hi - lo
        shift = t * length
        return torch.cat([lo + shift - ab[:, :dims] * length / 2, hi + shift + ab[:, dims:] * length / 2], dim=1)

    return _map_rows(boxes, fn)


# ----------------------------------------------------------------------------------------------------
# boxes <-> masks (carry boxes through any MONAI spatial transform)
# ----------------------------------------------------------------------------------------------------


def boxes_to_mask(boxes: NdarrayOrTensor, spatial_shape: Sequence[int]) -> NdarrayOrTensor:
    """One binary channel per box: the voxels whose centres lie in the box (``min <= v + 0.5 < max``).

    Args:
        boxes: ``[M, 2D]`` or a single box ``[2D]``.
        spatial_shape: spatial size of the mask (``D`` values).

    Returns:
        uint8 ``[M, *spatial_shape]``, numpy or torch like ``boxes``; padding rows give empty channels.
    """
    t = _as_float_tensor(boxes)
    if t.ndim == 1:
        t = t[None]
    dims = len(spatial_shape)
    if t.ndim != 2 or t.shape[-1] != 2 * dims:
        raise ValueError(f"boxes must be [M, {2 * dims}] for a {dims}D mask, got shape {tuple(t.shape)}")
    m = t.shape[0]
    mask = torch.ones((m,) + (1,) * dims, dtype=torch.bool, device=t.device)
    for axis, size in enumerate(spatial_shape):
        centres = torch.arange(int(size), dtype=torch.float32, device=t.device) + 0.5
        inside = (centres >= t[:, axis : axis + 1]) & (centres < t[:, dims + axis : dims + axis + 1])
        view = [m] + [1] * dims
        view[axis + 1] = int(size)
        mask = mask & inside.reshape(view)
    mask = mask.to(torch.uint8)
    return mask.cpu().numpy() if isinstance(boxes, np.ndarray) else mask


def mask_to_boxes(mask: NdarrayOrTensor) -> NdarrayOrTensor:
    """Tight box around the nonzero voxels of every channel (inverse of :func:`boxes_to_mask`).

    Args:
        mask: ``[M, *spatial]`` (2D or 3D spatial), any dtype; voxels > 0 are inside.

    Returns:
        float32 ``[M, 2D]``, numpy or torch like ``mask``; an empty channel gives a padding row.
    """
    if mask.ndim not in (3, 4):
        raise ValueError(f"mask must be [M, *spatial] with 2 or 3 spatial dims, got shape {tuple(mask.shape)}")
    m = convert_data_type(mask, output_type=torch.Tensor if isinstance(mask, torch.Tensor) else np.ndarray)[0]
    dims = m.ndim - 1
    pad = padding_boxes(1, dims)[0]
    rows = [_tight_box(m[c] > 0) for c in range(m.shape[0])]
    out = torch.stack([pad if r is None else torch.tensor(r) for r in rows]) if rows else padding_boxes(0, dims)
    return _like(out.to(torch.float32), mask)
