"""MONAI dictionary transforms for box prompts.

Boxes follow the conventions of :mod:`prato_components.prompts.boxes`: ``[M, 2D]`` float32 in voxel
coordinates of the channel-first image, ``StandardMode`` order, padding rows with ``max < min``. Every
transform here writes boxes as float32 torch tensors, so MONAI's collate stacks them to ``[B, M, 2D]``
(use a fixed ``M``, e.g. ``BoxFromLabeld(per_class=True, classes=[...])``, for batches).

Typical use::

    Compose([
        LoadImaged(keys=["image", "label"]), EnsureChannelFirstd(keys=["image", "label"]),
        BoxFromLabeld(keys="label", box_key="box"),            # tight box in the original grid
        BoxToRegionMaskd(box_key="box", image_key="image"),          # carry it through the spatial transforms
        Spacingd(keys=["image", "label", "box_mask"], pixdim=(1.0, 1.0), mode=("bilinear", "nearest", "nearest")),
        Resized(keys=["image", "label", "box_mask"], spatial_size=(224, 224), mode=("bilinear", "nearest", "nearest")),
        RegionMaskToBoxd(mask_key="box_mask", box_key="box"),
        RandJitterBoxd(box_key="box", prob=0.5),               # annotation noise
        ClipBoxd(box_key="box", image_key="image"),
    ])

Spatial transforms of image + box mask must use nearest interpolation for the mask; carrying a box this
way quantises it to voxel centres (a box keeps the voxels whose centres it contains).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from copy import deepcopy
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends, ensure_tuple_rep, look_up_option

from prato_components.prompts.boxes import (
    ON_EMPTY_MODES,
    boxes_from_label,
    boxes_to_mask,
    clip_boxes,
    jitter_boxes,
    mask_to_boxes,
    partial_boxes,
    scale_boxes,
    shift_boxes,
    validate_boxes,
)

__all__ = [
    "BoxFromLabeld",
    "ScaleBoxd",
    "PartialBoxd",
    "ShiftBoxd",
    "RandJitterBoxd",
    "RandPartialBoxd",
    "RandShiftBoxd",
    "ClipBoxd",
    "ValidateBoxd",
    "BoxToRegionMaskd",
    "RegionMaskToBoxd",
    "BoxFromLabelD",
    "BoxFromLabelDict",
    "ScaleBoxD",
    "ScaleBoxDict",
    "PartialBoxD",
    "PartialBoxDict",
    "ShiftBoxD",
    "ShiftBoxDict",
    "RandJitterBoxD",
    "RandJitterBoxDict",
    "RandPartialBoxD",
    "RandPartialBoxDict",
    "RandShiftBoxD",
    "RandShiftBoxDict",
    "ClipBoxD",
    "ClipBoxDict",
    "ValidateBoxD",
    "ValidateBoxDict",
    "BoxToRegionMaskD",
    "BoxToRegionMaskDict",
    "RegionMaskToBoxD",
    "RegionMaskToBoxDict",
]


def _box_tensor(boxes: Any) -> torch.Tensor:
    """Boxes as a plain float32 torch tensor (lists from JSON datalists, numpy, MetaTensor accepted)."""
    if isinstance(boxes, MetaTensor):
        boxes = boxes.as_tensor()
    if isinstance(boxes, torch.Tensor):
        return boxes.to(torch.float32)
    return torch.as_tensor(np.asarray(boxes, dtype=np.float32))


def _sample(rng: np.random.RandomState, value: float | Sequence[float]) -> float:
    """``value`` itself, or a uniform draw from it when it is a ``(low, high)`` range."""
    if isinstance(value, (int, float)):
        return float(value)
    low, high = value
    return float(rng.uniform(low, high))


def _image_filename(data: Mapping, image_key: Hashable | None) -> str | None:
    """``filename_or_obj`` of the image from its MetaTensor meta or ``{key}_meta_dict``, if any."""
    if image_key is None or image_key not in data:
        return None
    img = data[image_key]
    meta = img.meta if isinstance(img, MetaTensor) else data.get(f"{image_key}_meta_dict", {})
    name = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    return str(name) if name else None


class BoxFromLabeld(MapTransform):
    """Write the tight box(es) around the foreground of a label map (see
    :func:`~prato_components.prompts.boxes.boxes_from_label`).

    Args:
        keys: label key(s); each label is an integer map ``[1, *spatial]`` or ``[*spatial]``.
        box_key: where to write the boxes (float32 tensor ``[M, 2D]``), one per label key.
        per_class: one box around all foreground (``[1, 2D]``) or one row per class (absent classes as
            padding rows).
        classes: class values for ``per_class`` (fixes ``M``); default the classes present.
        on_empty: ``"full"``, ``"pad"`` or ``"raise"`` when there is no foreground.
        allow_missing_keys: don't raise if a label key is missing.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        keys: KeysCollection = "label",
        box_key: KeysCollection = "box",
        per_class: bool = False,
        classes: Sequence[int] | None = None,
        on_empty: str = "full",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.box_keys = ensure_tuple_rep(box_key, len(self.keys))
        self.per_class = per_class
        self.classes = None if classes is None else list(classes)
        self.on_empty = look_up_option(on_empty, ON_EMPTY_MODES)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, box_key in self.key_iterator(d, self.box_keys):
            label = d[key]
            if isinstance(label, MetaTensor):
                label = label.as_tensor()
            boxes = boxes_from_label(label, self.per_class, self.classes, self.on_empty)
            d[box_key] = _box_tensor(boxes)
        return d


class _BoxMapd(MapTransform):
    """Apply ``self.box_fn(boxes [M, 2D]) -> boxes`` to every box key."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, box_key: KeysCollection = "box", allow_missing_keys: bool = False) -> None:
        super().__init__(box_key, allow_missing_keys)

    def box_fn(self, boxes: torch.Tensor) -> NdarrayOrTensor:  # abstract: each subclass defines its box change
        raise NotImplementedError(f"{type(self).__name__} must implement box_fn(boxes) -> boxes")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = _box_tensor(self.box_fn(_box_tensor(d[key])))
        return d


class ScaleBoxd(_BoxMapd):
    """Scale boxes about their centres (``factor > 1``: oversized prompt). Not clipped: follow with
    :class:`ClipBoxd`.

    Args:
        box_key: box key(s).
        factor: size multiplier, one value or one per spatial axis.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self, box_key: KeysCollection = "box", factor: float | Sequence[float] = 1.0, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(box_key, allow_missing_keys)
        self.factor = factor

    def box_fn(self, boxes: torch.Tensor) -> NdarrayOrTensor:
        return scale_boxes(boxes, self.factor)


class PartialBoxd(_BoxMapd):
    """Shrink boxes to ``fraction`` of each side, keeping the min corner (a prompt covering part of the
    target).

    Args:
        box_key: box key(s).
        fraction: kept fraction of each side, in ``(0, 1]``, one value or one per spatial axis.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self, box_key: KeysCollection = "box", fraction: float | Sequence[float] = 0.5, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(box_key, allow_missing_keys)
        self.fraction = fraction

    def box_fn(self, boxes: torch.Tensor) -> NdarrayOrTensor:
        return partial_boxes(boxes, self.fraction)


class ShiftBoxd(_BoxMapd):
    """Move boxes by ``offset_fraction`` times their own size along each axis (a misleading prompt; with
    ``|offset_fraction| >= 1`` it misses the target). Not clipped: follow with :class:`ClipBoxd`.

    Args:
        box_key: box key(s).
        offset_fraction: signed shift in units of the box size, one value or one per spatial axis.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        box_key: KeysCollection = "box",
        offset_fraction: float | Sequence[float] = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(box_key, allow_missing_keys)
        self.offset_fraction = offset_fraction

    def box_fn(self, boxes: torch.Tensor) -> NdarrayOrTensor:
        return shift_boxes(boxes, self.offset_fraction)


class _RandBoxMapd(RandomizableTransform, _BoxMapd):
    """Random twin of :class:`_BoxMapd`: with probability ``prob`` apply ``box_fn`` drawing from ``self.R``."""

    def __init__(self, box_key: KeysCollection = "box", prob: float = 0.1, allow_missing_keys: bool = False) -> None:
        _BoxMapd.__init__(self, box_key, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize(None)
        d = dict(data)
        for key in self.key_iterator(d):
            boxes = _box_tensor(d[key])
            d[key] = _box_tensor(self.box_fn(boxes)) if self._do_transform else boxes
        return d


class RandJitterBoxd(_RandBoxMapd):
    """Randomly translate and resize boxes a little (annotation noise), see
    :func:`~prato_components.prompts.boxes.jitter_boxes`.

    Args:
        box_key: box key(s).
        prob: probability of jittering a sample.
        max_shift_fraction: largest translation, in units of the box size.
        max_scale_fraction: largest per-side change, in units of half the box size, in ``[0, 1)``.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        box_key: KeysCollection = "box",
        prob: float = 0.1,
        max_shift_fraction: float = 0.1,
        max_scale_fraction: float = 0.1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(box_key, prob, allow_missing_keys)
        self.max_shift_fraction = max_shift_fraction
        self.max_scale_fraction = max_scale_fraction

    def box_fn(self, boxes: torch.Tensor) -> NdarrayOrTensor:
        return jitter_boxes(boxes, self.max_shift_fraction, self.max_scale_fraction, self.R)


class RandPartialBoxd(_RandBoxMapd):
    """Randomly shrink boxes to part of the target, keeping a random corner per box and axis.

    Args:
        box_key: box key(s).
        prob: probability of applying it to a sample.
        fraction: kept fraction of each side in ``(0, 1]``, or a ``(low, high)`` range to draw it from
            (once per sample).
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        box_key: KeysCollection = "box",
        prob: float = 0.1,
        fraction: float | tuple[float, float] = (0.3, 0.7),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(box_key, prob, allow_missing_keys)
        self.fraction = fraction

    def box_fn(self, boxes: torch.Tensor) -> NdarrayOrTensor:
        return partial_boxes(boxes, _sample(self.R, self.fraction), rng=self.R)


class RandShiftBoxd(_RandBoxMapd):
    """Randomly move boxes by ``offset_fraction`` times their size, random sign per box and axis (a
    misleading prompt when ``offset_fraction >= 1``). Not clipped: follow with :class:`ClipBoxd`.

    Args:
        box_key: box key(s).
        prob: probability of applying it to a sample.
        offset_fraction: shift in units of the box size, or a ``(low, high)`` range to draw it from
            (once per sample).
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        box_key: KeysCollection = "box",
        prob: float = 0.1,
        offset_fraction: float | tuple[float, float] = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(box_key, prob, allow_missing_keys)
        self.offset_fraction = offset_fraction

    def box_fn(self, boxes: torch.Tensor) -> NdarrayOrTensor:
        return shift_boxes(boxes, _sample(self.R, self.offset_fraction), rng=self.R)


class ClipBoxd(MapTransform):
    """Clip boxes to the spatial extent of a channel-first image; boxes left with no extent inside it
    become padding rows (see :func:`~prato_components.prompts.boxes.clip_boxes`).

    Args:
        box_key: box key(s).
        image_key: the reference image ``[C, *spatial]``.
        empty_to_padding: turn boxes lying outside the image into padding rows.
        allow_missing_keys: don't raise if a key is missing.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        box_key: KeysCollection = "box",
        image_key: str = "image",
        empty_to_padding: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(box_key, allow_missing_keys)
        self.image_key = image_key
        self.empty_to_padding = empty_to_padding

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        spatial_shape = tuple(d[self.image_key].shape[1:])
        for key in self.key_iterator(d):
            d[key] = _box_tensor(clip_boxes(_box_tensor(d[key]), spatial_shape, self.empty_to_padding))
        return d


class ValidateBoxd(MapTransform):
    """Check box prompts (NaN/inf, dimensionality, empty or inverted boxes, boxes outside the image) and
    write them back as float32 ``[M, 2D]`` tensors; errors name the key and the image file.

    Args:
        box_key: box key(s).
        image_key: the reference image ``[C, *spatial]``; ``None`` skips the checks that need its shape.
        allow_padding: accept padding rows (``max < min`` on an axis).
        allow_missing_keys: don't raise if a key is missing.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        box_key: KeysCollection = "box",
        image_key: str | None = "image",
        allow_padding: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(box_key, allow_missing_keys)
        self.image_key = image_key
        self.allow_padding = allow_padding

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        spatial_shape = None
        if self.image_key is not None and self.image_key in d:
            spatial_shape = tuple(d[self.image_key].shape[1:])
        filename = _image_filename(d, self.image_key)
        for key in self.key_iterator(d):
            name = f"box {key!r}" + (f" of image {filename}" if filename else "")
            d[key] = _box_tensor(validate_boxes(_box_tensor(d[key]), spatial_shape, self.allow_padding, name))
        return d


class BoxToRegionMaskd(MapTransform):
    """Turn boxes into a box mask ``[M, *spatial]`` (one channel per box, the voxels whose centres lie in
    it) that shares the image's affine and meta data, so MONAI spatial dictionary transforms can move it
    together with the image (``keys=["image", "box_mask"]``, ``mode=("bilinear", "nearest")``).
    :class:`RegionMaskToBoxd` reads the boxes back.

    Args:
        box_key: the boxes ``[M, 2D]``.
        image_key: the reference image ``[C, *spatial]``.
        mask_key: where to write the mask (a uint8 MetaTensor).
        allow_missing_keys: don't raise if the box key is missing.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        box_key: str = "box",
        image_key: str = "image",
        mask_key: str = "box_mask",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(box_key, allow_missing_keys)
        self.image_key = image_key
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[self.image_key]
            mask = boxes_to_mask(_box_tensor(d[key]), tuple(img.shape[1:]))
            if isinstance(img, MetaTensor):
                mask = MetaTensor(mask.to(img.device), meta=deepcopy(img.meta))
            else:
                mask = MetaTensor(mask)
            d[self.mask_key] = mask
        return d


class RegionMaskToBoxd(MapTransform):
    """Read boxes back from a box mask written by :class:`BoxToRegionMaskd` (tight box per channel, empty
    channel -> padding row).

    Args:
        mask_key: the box mask ``[M, *spatial]``.
        box_key: where to write the boxes (float32 tensor ``[M, 2D]``).
        delete_mask: remove the mask (and its ``{mask_key}_meta_dict``, if any) from the data.
        threshold: voxels above it are inside (0.5 also suits masks interpolated to floats).
        allow_missing_keys: don't raise if the mask key is missing.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        mask_key: str = "box_mask",
        box_key: str = "box",
        delete_mask: bool = True,
        threshold: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(mask_key, allow_missing_keys)
        self.box_key = box_key
        self.delete_mask = delete_mask
        self.threshold = threshold

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = d[key]
            if isinstance(mask, MetaTensor):
                mask = mask.as_tensor()
            d[self.box_key] = _box_tensor(mask_to_boxes(mask > self.threshold))
            if self.delete_mask:
                del d[key]
                d.pop(f"{key}_meta_dict", None)
        return d


BoxFromLabelD = BoxFromLabelDict = BoxFromLabeld
ScaleBoxD = ScaleBoxDict = ScaleBoxd
PartialBoxD = PartialBoxDict = PartialBoxd
ShiftBoxD = ShiftBoxDict = ShiftBoxd
RandJitterBoxD = RandJitterBoxDict = RandJitterBoxd
RandPartialBoxD = RandPartialBoxDict = RandPartialBoxd
RandShiftBoxD = RandShiftBoxDict = RandShiftBoxd
ClipBoxD = ClipBoxDict = ClipBoxd
ValidateBoxD = ValidateBoxDict = ValidateBoxd
BoxToRegionMaskD = BoxToRegionMaskDict = BoxToRegionMaskd
RegionMaskToBoxD = RegionMaskToBoxDict = RegionMaskToBoxd
