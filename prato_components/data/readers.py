"""Datalists for the real data set layouts (ACDC, ISIC 2017/2018 task 1, MSD/decathlon, BTCV).

Every function reads the layout as it is shipped; there is no conversion step. Items are MONAI-style
dicts of absolute paths (plus a few metadata keys), ready for ``LoadImaged``:

- ACDC volumes (:func:`acdc_datalist`): ``{"image", "label", "patient", "frame", "phase"}``.
- ACDC slices (:func:`slice_datalist`): the volume keys plus ``"slice"`` (index along the last axis) and
  ``"num_slices"``; serve with ``LoadImaged`` + :class:`~prato_components.data.ExtractSliced`.
- ISIC (:func:`isic_datalist`): ``{"image", "label"}`` (``.jpg`` and ``_segmentation.png``).
- MSD/decathlon (:func:`decathlon_datalist`): ``{"image", "label"}`` (``{"image"}`` for ``"test"``). Multi-channel
  tasks (Task01 BrainTumour) ship channel-last 4D NIfTI ``[X, Y, Z, C]``, which ``LoadImaged(ensure_channel_first=
  True)`` turns into ``[C, X, Y, Z]``.
- BTCV (:func:`btcv_datalist`): ``{"image", "label"}`` from ``dataset_0.json`` as MONAI's tutorials lay it out.

The saved training/validation/test split of these datalists is in :mod:`prato_components.data.splits`.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np
from monai.config import PathLike
from monai.data import load_decathlon_datalist

from prato_components.errors import InputError
from prato_components.inputs import MissingFileError, UnreadableFileError

__all__ = [
    "ACDC_LABELS",
    "DATASETS",
    "ISIC_LAYOUTS",
    "SPLITS",
    "acdc_datalist",
    "acdc_slice_datalist",
    "btcv_datalist",
    "decathlon_datalist",
    "isic_datalist",
    "parse_acdc_info",
    "slice_datalist",
]

DATASETS = ("acdc", "isic", "decathlon", "btcv")
"""Names accepted by :func:`load_or_create_split`."""

SPLITS = ("training", "validation", "test")
"""Keys of a split datalist."""

ACDC_LABELS = {0: "background", 1: "right ventricle", 2: "myocardium", 3: "left ventricle"}
"""ACDC label values."""

ISIC_LAYOUTS = {
    2018: {
        "training": ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
        "validation": ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
        "test": ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"),
    },
    2017: {
        "training": ("ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth"),
        "validation": ("ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth"),
        "test": ("ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth"),
    },
}
"""(image folder, mask folder) of the ISIC task 1 releases, by year and split."""

_ACDC_PATIENT = re.compile(r"^patient\d{3}$")
_ACDC_FRAME = re.compile(r"^(patient\d{3})_frame(\d{2})(\.nii(?:\.gz)?)$")
_ACDC_EXPECTED = "expected {split}/patientNNN/patientNNN_frameMM.nii.gz with patientNNN_frameMM_gt.nii.gz"
_ISIC_MASK_SUFFIX = "_segmentation.png"
_IMAGE_EXTS = (".jpg", ".jpeg")


def _require_dir(path: str, what: str) -> None:
    """``FileNotFoundError`` naming ``path`` when it is not a directory."""
    if not os.path.isdir(path):
        raise MissingFileError(f"{what} directory {path} does not exist.")


# ---------------------------------------------------------------------------------------------------
# ACDC
# ---------------------------------------------------------------------------------------------------


def parse_acdc_info(path: str) -> dict[str, str]:
    """Read an ACDC ``Info.cfg`` (``key: value`` lines: ED, ES, Group, Height, NbFrame, Weight).

    Args:
        path: the ``Info.cfg`` file.

    Returns:
        the entries as strings (empty when the file is absent).
    """
    if not os.path.isfile(path):
        return {}
    info = {}
    with open(path) as f:
        for line in f:
            key, sep, value = line.partition(":")
            if sep:
                info[key.strip()] = value.strip()
    return info


def _acdc_split_dir(dataset_dir: PathLike, split: str) -> str:
    """The folder holding the ``patientNNN`` folders of ``split``."""
    _require_dir(dataset_dir, "ACDC dataset")
    for cand in (os.path.join(dataset_dir, split), os.path.join(dataset_dir, "database", split)):
        if os.path.isdir(cand):
            return cand
    if any(_ACDC_PATIENT.match(n) for n in os.listdir(dataset_dir)):
        return dataset_dir  # pointed at the split folder itself
    raise InputError(f"{dataset_dir} does not look like an ACDC dataset: {_ACDC_EXPECTED.format(split=split)}.")


def _acdc_phase(frame: int, info: dict[str, str]) -> str:
    """``"ED"``, ``"ES"`` or ``""`` for a frame number, from ``Info.cfg``."""
    for phase in ("ED", "ES"):
        if info.get(phase, "").isdigit() and int(info[phase]) == frame:
            return phase
    return ""


def _acdc_patient_items(pdir: str) -> list[dict[str, Any]]:
    """Items of the labelled frames in one ``patientNNN`` folder."""
    info = parse_acdc_info(os.path.join(pdir, "Info.cfg"))
    items = []
    for name in sorted(os.listdir(pdir)):
        m = _ACDC_FRAME.match(name)
        if not m:  # skips _gt, _4d, Info.cfg
            continue
        image = os.path.join(pdir, name)
        label = os.path.join(pdir, f"{m.group(1)}_frame{m.group(2)}_gt{m.group(3)}")
        if not os.path.isfile(label):
            raise MissingFileError(f"ACDC image {image} has no ground truth: {label} is missing.")
        frame = int(m.group(2))
        patient = os.path.basename(pdir)
        items.append(
            {"image": image, "label": label, "patient": patient, "frame": frame, "phase": _acdc_phase(frame, info)}
        )
    return items


def acdc_datalist(dataset_dir: PathLike, split: str = "training") -> list[dict[str, Any]]:
    """Volume-level datalist of an ACDC release: one item per labelled frame.

    Reads ``dataset_dir/<split>/patientNNN/patientNNN_frameMM.nii.gz`` with its ``_gt`` file (also
    ``dataset_dir/database/<split>/...`` as in the current release, or ``dataset_dir`` itself when it
    holds ``patientNNN`` folders). ``_4d`` and ``_gt`` files are not images.

    Args:
        dataset_dir: the ACDC root.
        split: ``"training"`` or ``"testing"``.

    Returns:
        ``[{"image", "label", "patient": "patient001", "frame": 1, "phase": "ED" | "ES" | ""}]`` sorted
        by patient and frame (``phase`` from ``Info.cfg``).

    Raises:
        FileNotFoundError: ``dataset_dir`` is missing, or an image has no ``_gt``.
        ValueError: no ACDC frames found.
    """
    folder = _acdc_split_dir(os.path.abspath(dataset_dir), split)
    items = []
    for name in sorted(os.listdir(folder)):
        pdir = os.path.join(folder, name)
        if _ACDC_PATIENT.match(name) and os.path.isdir(pdir):
            items += _acdc_patient_items(pdir)
    if not items:
        raise InputError(f"{dataset_dir} does not look like an ACDC dataset: {_ACDC_EXPECTED.format(split=split)}.")
    return items


def _nifti_shape(path: str) -> tuple[int, ...]:
    """Shape from the NIfTI header only (cheap); errors name the file."""
    try:
        return tuple(int(s) for s in nib.load(path).shape)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise UnreadableFileError(f"could not read {path}: {type(err).__name__}: {err}") from err


def _nonempty_slices(path: str, axis: int) -> np.ndarray:
    """Boolean per index along ``axis``: does the label volume have foreground there."""
    try:
        data = np.asarray(nib.load(path).dataobj)
    except Exception as err:
        raise UnreadableFileError(f"could not read {path}: {type(err).__name__}: {err}") from err
    other = tuple(a for a in range(data.ndim) if a != axis % data.ndim)
    return np.any(data != 0, axis=other)


def slice_datalist(
    items: Sequence[dict[str, Any]], axis: int = -1, slice_key: str = "slice", skip_empty: bool = False
) -> list[dict[str, Any]]:
    """Expand volume items into one item per slice along spatial ``axis`` (for 2D models).

    Only NIfTI headers are read (``skip_empty`` also reads the labels). Each new item is a copy of its
    volume item plus ``slice_key`` (the index) and ``"num_slices"``. Serve them with
    ``LoadImaged(keys, ensure_channel_first=True)`` followed by
    :class:`~prato_components.data.ExtractSliced` ``(keys, slice_key=slice_key, axis=axis)``: the volume
    is read once per slice (cache with ``CacheDataset`` placing ``ExtractSliced`` before any random
    transform, so that only slices are kept in memory).

    Args:
        items: volume items with ``"image"`` (and optionally ``"label"``) NIfTI paths.
        axis: spatial axis to slice along (ACDC short-axis stacks: the last).
        slice_key: name of the index key.
        skip_empty: drop slices whose label has no foreground.

    Returns:
        slice items, in volume order then slice order.
    """
    out = []
    for item in items:
        shape = _nifti_shape(item["image"])
        if "label" in item:
            lshape = _nifti_shape(item["label"])
            if lshape[:3] != shape[:3]:
                raise ValueError(f"{item['image']} has shape {shape} but its label {item['label']} has shape {lshape}.")
        if len(shape) < 2 or not -len(shape) <= axis < len(shape):
            raise ValueError(f"cannot slice {item['image']} of shape {shape} along axis {axis}.")
        n = shape[axis]
        keep = _nonempty_slices(item["label"], axis) if skip_empty and "label" in item else np.ones(n, bool)
        out += [{**item, slice_key: z, "num_slices": n} for z in range(n) if keep[z]]
    return out


acdc_slice_datalist = slice_datalist
"""Alias of :func:`slice_datalist` for ACDC volume items."""


# ---------------------------------------------------------------------------------------------------
# ISIC
# ---------------------------------------------------------------------------------------------------


def _isic_known_layout(dataset_dir: PathLike, split: str, year: int | None) -> tuple[str, str] | None:
    """(image dir, mask dir) of the first known ISIC release found for ``split``, or None."""
    years = [year] if year is not None else sorted(ISIC_LAYOUTS, reverse=True)
    for y in years:
        if y not in ISIC_LAYOUTS:
            raise ValueError(f"year must be one of {sorted(ISIC_LAYOUTS)} or None, got {y}.")
        img_dir, gt_dir = (os.path.join(dataset_dir, d) for d in ISIC_LAYOUTS[y][split])
        if os.path.isdir(img_dir):
            _require_dir(gt_dir, f"ISIC {y} {split} ground-truth")
            return img_dir, gt_dir
    return None


def _isic_pairs_in(img_dir: str, gt_dir: str) -> list[dict[str, str]]:
    """Pairs of a known layout; every image must have its mask."""
    items = []
    for name in sorted(os.listdir(img_dir)):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in _IMAGE_EXTS:
            continue  # LICENSE.txt, metadata CSV, 2017 superpixel PNGs
        mask = os.path.join(gt_dir, stem + _ISIC_MASK_SUFFIX)
        if not os.path.isfile(mask):
            raise MissingFileError(f"ISIC image {os.path.join(img_dir, name)} has no mask: {mask} is missing.")
        items.append({"image": os.path.join(img_dir, name), "label": mask})
    return items


def _isic_pairs_recursive(dataset_dir: PathLike) -> list[dict[str, str]]:
    """Pairs ``X.jpg`` / ``X_segmentation.png`` found anywhere under ``dataset_dir``."""
    images: dict[str, str] = {}
    masks: dict[str, str] = {}
    for folder, dirs, files in os.walk(dataset_dir):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            stem, ext = os.path.splitext(name)
            if name.endswith(_ISIC_MASK_SUFFIX):
                table, stem = masks, name[: -len(_ISIC_MASK_SUFFIX)]
            elif ext.lower() in _IMAGE_EXTS:
                table = images
            else:
                continue
            if stem in table:
                raise ValueError(
                    f"ambiguous ISIC layout under {dataset_dir}: {table[stem]} and {path} share the name {stem}."
                )
            table[stem] = path
    unpaired = sorted(set(images) - set(masks))
    if unpaired and len(unpaired) < len(images):
        warnings.warn(
            f"{len(unpaired)} images under {dataset_dir} have no *_segmentation.png and are skipped "
            f"(e.g. {images[unpaired[0]]})."
        )
    return [{"image": images[s], "label": masks[s]} for s in sorted(images) if s in masks]


def isic_datalist(dataset_dir: PathLike, split: str = "training", year: int | None = None) -> list[dict[str, str]]:
    """Datalist of an ISIC task 1 (lesion segmentation) release.

    Looks for the official folders of ``split`` (2018 first, then 2017, see :data:`ISIC_LAYOUTS`); for
    ``split="training"`` it falls back to pairing every ``X.jpg`` with an ``X_segmentation.png``
    anywhere under ``dataset_dir`` (images without a mask are skipped with a warning).

    Args:
        dataset_dir: the folder holding the unzipped ISIC folders.
        split: ``"training"``, ``"validation"`` or ``"test"``.
        year: 2017 or 2018 to force one release; None detects.

    Returns:
        ``[{"image": ".../ISIC_0000000.jpg", "label": ".../ISIC_0000000_segmentation.png"}]`` sorted.

    Raises:
        FileNotFoundError: ``dataset_dir`` or the mask folder is missing, or an image has no mask.
        ValueError: no image/mask pairs found.
    """
    dataset_dir = os.path.abspath(dataset_dir)
    _require_dir(dataset_dir, "ISIC dataset")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    known = _isic_known_layout(dataset_dir, split, year)
    if known is not None:
        items = _isic_pairs_in(*known)
    elif split == "training":
        items = _isic_pairs_recursive(dataset_dir)
    else:
        items = []
    if not items:
        img_dir, gt_dir = ISIC_LAYOUTS[year or 2018][split]
        raise ValueError(
            f"{dataset_dir} does not look like an ISIC dataset: expected {img_dir}/ISIC_NNNNNNN.jpg with "
            f"{gt_dir}/ISIC_NNNNNNN{_ISIC_MASK_SUFFIX} (or the 2017 folder names, or X.jpg with X{_ISIC_MASK_SUFFIX})."
        )
    return items


# ---------------------------------------------------------------------------------------------------
# MSD / decathlon
# ---------------------------------------------------------------------------------------------------


def _missing_files(items: Sequence[dict[str, Any]], keys: Sequence[str] = ("image", "label")) -> list[str]:
    """Paths under ``keys`` of ``items`` that do not exist (each checked once)."""
    paths: dict[str, None] = {}
    for item in items:
        for key in keys:
            value = item.get(key)
            for p in value if isinstance(value, list) else [value]:
                if isinstance(p, str):
                    paths.setdefault(p)
    return [p for p in paths if not os.path.exists(p)]


def _datalist_section(path: str, section: str, dataset_dir: PathLike) -> list[dict[str, Any]]:
    """The ``section`` list of a decathlon-style datalist JSON (MSD ``dataset.json``, BTCV ``dataset_0.json``), paths
    made absolute under ``dataset_dir``; errors name an unparsable file, a missing section or missing files."""
    with open(path) as f:
        try:
            sections = [k for k, v in json.load(f).items() if isinstance(v, list)]
        except json.JSONDecodeError as err:
            raise ValueError(f"could not parse {path}: {err}") from err
    if section not in sections:
        raise ValueError(f"{path} has no {section!r} list; it has {sections}.")
    items = load_decathlon_datalist(path, is_segmentation=True, data_list_key=section, base_dir=dataset_dir)
    missing = _missing_files(items)
    if missing:
        raise MissingFileError(f"{path} lists {len(missing)} missing files, e.g. {missing[0]}.")
    return items


def decathlon_datalist(dataset_dir: PathLike, section: str = "training") -> list[dict[str, Any]]:
    """Datalist of an MSD/decathlon task folder, through ``monai.data.load_decathlon_datalist``.

    Args:
        dataset_dir: the task folder holding ``dataset.json``.
        section: the list to read (``"training"``; ``"test"`` gives image-only items).

    Returns:
        items with absolute ``"image"`` (and ``"label"``) paths.

    Raises:
        FileNotFoundError: ``dataset_dir`` is missing or ``dataset.json`` lists missing files.
        ValueError: no ``dataset.json`` or no such section.
    """
    dataset_dir = os.path.abspath(dataset_dir)
    _require_dir(dataset_dir, "decathlon dataset")
    path = os.path.join(dataset_dir, "dataset.json")
    if not os.path.isfile(path):
        raise InputError(f"{dataset_dir} does not look like an MSD/decathlon dataset: expected dataset.json.")
    return _datalist_section(path, section, dataset_dir)


# ---------------------------------------------------------------------------------------------------
# BTCV (MONAI tutorial layout)
# ---------------------------------------------------------------------------------------------------

BTCV_DATALIST = "dataset_0.json"
"""The datalist file of BTCV as MONAI's UNETR / Swin UNETR tutorials ship it."""

_BTCV_IMAGE = re.compile(r"^img(\d+)(\.nii(?:\.gz)?)$")


def _btcv_pairs(dataset_dir: str) -> list[dict[str, str]]:
    """``imagesTr/imgNNNN.nii.gz`` paired with ``labelsTr/labelNNNN.nii.gz`` (when there is no datalist file)."""
    folder = os.path.join(dataset_dir, "imagesTr")
    items = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        m = _BTCV_IMAGE.match(name)
        if not m:
            continue
        label = os.path.join(dataset_dir, "labelsTr", f"label{m.group(1)}{m.group(2)}")
        if not os.path.isfile(label):
            raise MissingFileError(f"BTCV image {os.path.join(folder, name)} has no label: {label} is missing.")
        items.append({"image": os.path.join(folder, name), "label": label})
    return items


def btcv_datalist(
    dataset_dir: PathLike, section: str = "training", datalist: str = BTCV_DATALIST
) -> list[dict[str, Any]]:
    """Datalist of BTCV as MONAI's tutorials lay it out: ``imagesTr/img0001.nii.gz``, ``labelsTr/label0001.nii.gz``
    and ``dataset_0.json`` with ``"training"`` and ``"validation"`` lists (read by ``load_decathlon_datalist``).

    Without the datalist file, ``section="training"`` pairs every ``imagesTr/imgNNNN`` with its
    ``labelsTr/labelNNNN`` (the other sections are then empty, and asking for one is an error).

    Args:
        dataset_dir: the folder holding ``imagesTr``, ``labelsTr`` and the datalist.
        section: ``"training"``, ``"validation"`` or ``"test"`` (image-only items).
        datalist: the datalist file name inside ``dataset_dir``.

    Returns:
        items with absolute ``"image"`` (and ``"label"``) paths.

    Raises:
        FileNotFoundError: ``dataset_dir`` is missing, the datalist lists missing files, or an image has no label.
        ValueError: no such section, or no BTCV images found.
    """
    dataset_dir = os.path.abspath(dataset_dir)
    _require_dir(dataset_dir, "BTCV dataset")
    path = os.path.join(dataset_dir, datalist)
    if not os.path.isfile(path):
        items = _btcv_pairs(dataset_dir) if section == "training" else []
        if not items:
            raise InputError(f"{dataset_dir} does not look like a BTCV dataset: expected {datalist} or "
                             "imagesTr/imgNNNN.nii.gz with labelsTr/labelNNNN.nii.gz.")
        return items
    return _datalist_section(path, section, dataset_dir)
