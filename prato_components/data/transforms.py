"""MONAI transforms for the data layouts: safe loading, slice extraction, label checks, 0/255 masks.

Typical ACDC 2D pipeline (items from :func:`prato_components.data.acdc_slice_datalist`)::

    Compose([
        SafeLoadImaged(keys=["image", "label"], ensure_channel_first=True),   # [1, X, Y, Z]
        ExtractSliced(keys=["image", "label"], slice_key="slice"),            # [1, X, Y]
        CheckLabelValuesd(keys="label", allowed=(0, 1, 2, 3)),
        ...
    ])

Typical ISIC pipeline::

    Compose([
        SafeLoadImaged(keys=["image", "label"], ensure_channel_first=True),   # [3, W, H], [1, W, H]
        BinarizeMaskd(keys="label"),                                          # 0/255 -> 0/1
        ...
    ])
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImaged, MapTransform, Transform

from prato_components.errors import InputError
from prato_components.inputs import MissingFileError, UnreadableFileError

__all__ = [
    "BinarizeMaskd",
    "CheckLabelValuesd",
    "ExtractSlice",
    "ExtractSliced",
    "SafeLoadImaged",
    "describe_source",
]


def describe_source(data: Any, default: str = "<unknown file>") -> str:
    """The file a (Meta)Tensor was loaded from, for error messages (``filename_or_obj`` meta)."""
    if isinstance(data, MetaTensor):
        name = data.meta.get("filename_or_obj")
        if name is not None:
            return str(name)
    return default


class SafeLoadImaged(LoadImaged):
    """``LoadImaged`` whose read errors name the file.

    MONAI's readers raise the underlying library's error, which for a truncated ``.nii.gz``
    (``EOFError: Compressed file ended before the end-of-stream marker was reached``) or a truncated
    PNG/JPG (``OSError: image file is truncated``) does not say which file. This subclass re-raises
    ``MissingFileError`` (a ``FileNotFoundError``) for a missing path and ``UnreadableFileError("could not read
    <path>: ...")`` (a ``RuntimeError``; the original error chained) for anything else; both are ``UserError``s,
    which the command line prints without a traceback. Arguments are those of ``monai.transforms.LoadImaged``.
    Inside ``Compose`` MONAI wraps it once more in ``RuntimeError("applying transform ...")``; the
    message naming the file is the ``__cause__``, printed in the traceback.
    """

    def __call__(self, data, reader=None):
        """Load each key of ``data``; errors name the file."""
        try:
            return super().__call__(data, reader)
        except Exception as err:
            raise self._named_error(data, reader, err) from err

    def _named_error(self, data, reader, err: Exception) -> Exception:
        """Find which file failed (re-trying each one, only on this error path) and name it."""
        paths = []
        for key in self.key_iterator(dict(data)):
            value = data[key]
            paths += list(value) if isinstance(value, (list, tuple)) else [value]
        for path in paths:
            if isinstance(path, (str, os.PathLike)) and not os.path.exists(path):
                return MissingFileError(f"could not read {path}: no such file")
        for path in paths:
            try:
                self._loader(path, reader)
            except Exception as one:  # noqa: BLE001 - the culprit, whatever the reader raised
                return UnreadableFileError(f"could not read {path}: {type(one).__name__}: {one}")
        return UnreadableFileError(f"could not read {', '.join(map(str, paths))}: {type(err).__name__}: {err}")


class ExtractSlice(Transform):
    """Take slice ``index`` along spatial ``axis`` of a channel-first image ``[C, *spatial]``.

    ``[C, X, Y, Z]`` with ``axis=-1`` gives ``[C, X, Y]``. For a ``MetaTensor`` the affine stays a valid
    4x4 affine of the slice: the origin moves to the slice (``origin += z * column(axis)``) and, when the
    axis is not the last, the columns are reordered so that the kept axes come first and the sliced axis
    is the third column (so ``to_affine_nd(2, affine)`` is the in-plane part). ``spatial_shape`` and the
    ``slice_index``/``slice_axis`` meta are updated.

    Args:
        axis: spatial axis to slice (``-1`` = last spatial axis; 0-based among spatial axes otherwise).
    """

    def __init__(self, axis: int = -1) -> None:
        self.axis = axis

    def __call__(self, img: torch.Tensor | np.ndarray, index: int) -> torch.Tensor | np.ndarray:
        """Slice ``img`` at ``index``; a negative ``index`` counts from the end."""
        n_spatial = img.ndim - 1
        if n_spatial < 2:
            raise ValueError(
                f"ExtractSlice needs a channel-first image with >= 2 spatial dims, got shape {tuple(img.shape)}."
            )
        axis = self.axis % n_spatial if -n_spatial <= self.axis < n_spatial else None
        if axis is None:
            raise ValueError(f"axis {self.axis} is out of range for {n_spatial} spatial dims.")
        size = img.shape[axis + 1]
        index = int(index)
        if not -size <= index < size:
            raise IndexError(
                f"slice {index} is out of range for axis {axis} of size {size} in {describe_source(img, 'the image')}."
            )
        index %= size
        out = img[(slice(None),) * (axis + 1) + (index,)]
        if isinstance(img, MetaTensor):
            out = self._update_meta(img, out, axis, index)
        return out

    @staticmethod
    def _update_meta(img: MetaTensor, out: torch.Tensor, axis: int, index: int) -> MetaTensor:
        """A MetaTensor for the slice with a 4x4 affine placing it in the volume's world space."""
        affine = img.affine.clone()
        n = affine.shape[0] - 1
        affine[:n, n] = affine[:n, n] + affine[:n, axis] * index
        if axis < n - 1:
            order = [a for a in range(n) if a != axis] + [axis]
            affine[:n, :n] = affine[:n, order]
        meta = dict(img.meta)
        meta["spatial_shape"] = np.asarray(out.shape[1:])
        meta["slice_index"] = index
        meta["slice_axis"] = axis
        meta["affine"] = affine
        out = MetaTensor(out.as_tensor() if isinstance(out, MetaTensor) else out, meta=meta)
        out.applied_operations = list(img.applied_operations)
        return out


class ExtractSliced(MapTransform):
    """Dictionary version of :class:`ExtractSlice`: the index is read from ``data[slice_key]``.

    Use after ``LoadImaged(..., ensure_channel_first=True)`` on slice-level items (``{"image": vol,
    "label": vol_gt, "slice": z}``) to serve volumes as 2D slices. With ``CacheDataset`` put it before the
    first random transform so only the slice is cached; each volume is then read once per slice while
    caching (ACDC: about 10 reads of a ~1 MB ``.nii.gz`` per volume, once).

    Args:
        keys: keys of the images to slice.
        slice_key: key of the slice index in the item.
        axis: spatial axis to slice (default: the last, ACDC's short-axis stack axis).
        allow_missing_keys: don't raise if a key is absent.
    """

    def __init__(
        self, keys: KeysCollection, slice_key: str = "slice", axis: int = -1, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.slice_key = slice_key
        self.extractor = ExtractSlice(axis)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Slice each key at ``data[slice_key]``."""
        d = dict(data)
        if self.slice_key not in d:
            raise KeyError(
                f"ExtractSliced: item has no slice index key {self.slice_key!r} (keys: {sorted(map(str, d))})."
            )
        index = d[self.slice_key]
        index = int(index.item() if isinstance(index, (torch.Tensor, np.ndarray)) else index)
        for key in self.key_iterator(d):
            d[key] = self.extractor(d[key], index)
        return d


class CheckLabelValuesd(MapTransform):
    """Raise ``InputError`` (a ``ValueError``) naming the file when a label holds values outside ``allowed``.

    Run it right after loading (before any interpolating transform). Non-integer values count as
    unexpected too.

    Args:
        keys: label keys.
        allowed: the valid label values (ACDC: ``(0, 1, 2, 3)``; ISIC masks: ``(0, 255)``).
        allow_missing_keys: don't raise if a key is absent.
    """

    def __init__(
        self, keys: KeysCollection = "label", allowed: Sequence[float] = (0, 1, 2, 3), allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.allowed = tuple(float(a) for a in allowed)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Check each key; return the data unchanged."""
        d = dict(data)
        for key in self.key_iterator(d):
            values = torch.unique(torch.as_tensor(d[key]).detach().cpu()).to(torch.float64)
            bad = values[~torch.isin(values, torch.tensor(self.allowed, dtype=torch.float64))]
            if bad.numel():
                shown = ", ".join(f"{v:g}" for v in bad[:10].tolist()) + (", ..." if bad.numel() > 10 else "")
                raise InputError(
                    f"{describe_source(d[key], str(key))}: unexpected label values {{{shown}}}; "
                    f"allowed {{{', '.join(f'{a:g}' for a in self.allowed)}}}."
                )
        return d


class BinarizeMaskd(MapTransform):
    """Turn a 0/``foreground`` mask (ISIC: 0/255) into 0/1, raising ``ValueError`` on any other value.

    Real ISIC task-1 masks hold only 0 and 255 (no anti-aliasing), so any other value means a wrong or
    damaged file; the error names it. The dtype is kept (float after ``LoadImaged``).

    Args:
        keys: mask keys.
        foreground: the foreground value in the file.
        allow_missing_keys: don't raise if a key is absent.
    """

    def __init__(
        self, keys: KeysCollection = "label", foreground: float = 255, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.check = CheckLabelValuesd(keys, allowed=(0, foreground), allow_missing_keys=allow_missing_keys)
        self.foreground = foreground

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Check and binarise each key."""
        d = self.check(data)
        for key in self.key_iterator(d):
            img = d[key]
            d[key] = (
                (img == self.foreground).to(img.dtype)
                if isinstance(img, torch.Tensor)
                else (img == self.foreground).astype(img.dtype)
            )
        return d
