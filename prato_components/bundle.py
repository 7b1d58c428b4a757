"""What the bundle configs call: data set specs, loading transforms, prompt settings, inference datalists.

What depends on the ``dataset`` key of a bundle (``acdc`` | ``isic`` | ``decathlon`` | ``btcv``) is read from
here (:func:`dataset_spec`), so that changing ``--dataset`` on the command line adjusts channels, classes, loading
and output format together. The bundle configs write their loading out as transforms (``loading_by_dataset``; 3D:
``loading`` and ``intensity_by_modality``); :func:`load_transforms` (2D, volumes as slices) and
:func:`load_transforms_3d` (whole volumes, as MONAI's 3D bundles load them, docs/design.md §12) build the same
chains for code, and tests/test_bundle_configs.py keeps the two equal.
"""

from __future__ import annotations

import ast
import csv
import difflib
import glob
import inspect
import json
import os
import sys
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from typing import Any

import monai.bundle
import numpy as np
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS
from monai.data import Dataset
from monai.transforms import (
    Compose,
    CropForegroundd,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
)
from torch.utils.data import ConcatDataset

from prato_components import command_line
from prato_components.atomic import atomic_write_text
from prato_components.data import (
    DATASETS,
    BinarizeMaskd,
    CheckLabelValuesd,
    ExtractSliced,
    SafeLoadImaged,
    load_or_create_split,
    slice_datalist,
)
from prato_components.data.readers import BTCV_DATALIST
from prato_components.engine.checkpoint import check_trained_settings
from prato_components.errors import InputError, UserError
from prato_components.inputs import MissingFileError, read_image_header
from prato_components.networks.region import DECODE_REGIONS
from prato_components.prompts import (
    BoxToRegionMaskd,
    ClipBoxd,
    PartialBoxd,
    RegionMaskToBoxd,
    ScaleBoxd,
    ShiftBoxd,
    ValidateBoxd,
)
from prato_components.prompts.boxes import padding_boxes, validate_boxes
from prato_components.tokens.executor import EXECUTOR_MODES, FILL_POLICIES

__all__ = [
    "PROMPTS",
    "IMAGE_EXTENSIONS",
    "dataset_spec",
    "BTCV_LABELS",
    "bundle_splits",
    "bundle_splits_3d",
    "load_transforms",
    "load_transforms_3d",
    "intensity_transforms_3d",
    "CT_INTENSITY_RANGE",
    "prompt_transforms",
    "TABLE_VI_PROMPTS",
    "prompt_qualities",
    "prompt_datasets",
    "per_class_prompt",
    "inference_datalist",
    "read_boxes_file",
    "require_file",
    "MissingFileError",
    "SKIPPED_FILE",
    "default_num_workers",
    "unknown_override_keys",
    "check_overrides",
    "override_keys",
    "DATA_SETTINGS",
    "LEGACY_SETTINGS",
    "resolved_settings",
    "command_line_arguments",
    "run",
    "SETTING_RULES",
    "check_settings",
    "trained_bundle_config",
]

command_line.install()  # every bundle config imports this module: known errors print without a traceback

PROMPTS = ("tight", "oversized", "partial", "misleading")
TABLE_VI_PROMPTS = ("tight", "partial", "oversized", "misleading")  # the rows of the paper's Table VI, in its order
PROMPT_BOXES = ("union", "per_class")


def per_class_prompt(prompt_boxes: str) -> bool:
    """The bundles' ``prompt_boxes`` key: ``"union"`` (one box around all structures, the paper) or ``"per_class"``
    (one box per foreground class, absent classes as padding rows). Returns whether it is per class."""
    if prompt_boxes not in PROMPT_BOXES:
        raise InputError(f"prompt_boxes must be one of {PROMPT_BOXES}, got {prompt_boxes!r}")
    return prompt_boxes == "per_class"
IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".png", ".jpg", ".jpeg")
_NOT_IMAGES = ("_gt.nii.gz", "_gt.nii", "_4d.nii.gz", "_4d.nii", "_segmentation.png")


# BTCV's fixed classes and modality (MONAI's tutorials' dataset_0.json): the spec without a data folder
BTCV_LABELS = {"0": "background", "1": "spleen", "2": "right kidney", "3": "left kidney", "4": "gallbladder",
               "5": "esophagus", "6": "liver", "7": "stomach", "8": "aorta", "9": "inferior vena cava",
               "10": "portal and splenic veins", "11": "pancreas", "12": "right adrenal gland",
               "13": "left adrenal gland"}


def _volume_spec(info: Mapping[str, Any], default_labels: Mapping[str, str],
                 default_modality: Mapping[str, str]) -> dict[str, Any]:
    """The spec of a volumetric data set described by an MSD-style dict (``labels``, ``modality``)."""
    labels = {int(k): str(v) for k, v in info.get("labels", default_labels).items()}
    modalities = [str(v).upper() for v in info.get("modality", default_modality).values()]
    return {"in_channels": len(modalities), "out_channels": len(labels),
            "class_names": [labels[k].replace(" ", "_") for k in sorted(labels) if k > 0],
            "label_values": sorted(labels), "volumetric": True, "output_ext": ".nii.gz", "output_scale": 1,
            "modality": "CT" if all(m == "CT" for m in modalities) else "MR"}


def _read_description(path: str) -> dict[str, Any]:
    with open(require_file(path, "dataset description")) as f:
        return json.load(f)


def dataset_spec(dataset: str, dataset_dir: str | None = None) -> dict[str, Any]:
    """Channels, classes and file conventions of a data set.

    Returns a dict with ``in_channels``, ``out_channels`` (classes incl. background), ``class_names``
    (foreground, label order), ``label_values``, ``volumetric`` (images are volumes: served as 2D slices by the 2D
    bundles), ``output_ext``, ``output_scale`` (label value multiplier when saving: ISIC masks are 0/255) and
    ``modality`` (``"CT"``, ``"MR"`` or ``"RGB"``: the 3D intensity normalisation, :func:`intensity_transforms_3d`).
    For ``decathlon`` the channels and classes are read from ``dataset_dir/dataset.json``; for ``btcv`` from
    ``dataset_dir/dataset_0.json`` when there is one, else they are BTCV's (1 CT channel, the 14 classes of
    :data:`BTCV_LABELS`), so a BTCV bundle's network builds without its data folder.
    """
    name = str(dataset).lower()
    if name == "acdc":
        return {"in_channels": 1, "out_channels": 4, "class_names": ["right_ventricle", "myocardium", "left_ventricle"],
                "label_values": [0, 1, 2, 3], "volumetric": True, "output_ext": ".nii.gz", "output_scale": 1,
                "modality": "MR"}
    if name == "isic":
        return {"in_channels": 3, "out_channels": 2, "class_names": ["lesion"], "label_values": [0, 1],
                "volumetric": False, "output_ext": ".png", "output_scale": 255, "modality": "RGB"}
    if name == "btcv":
        path = os.path.join(dataset_dir, BTCV_DATALIST) if dataset_dir is not None else None
        info = _read_description(path) if path is not None and os.path.isfile(path) else {}
        return _volume_spec(info, BTCV_LABELS, {"0": "CT"})
    if name == "decathlon":
        if dataset_dir is None:
            raise InputError("the decathlon spec is read from its dataset description in dataset_dir: give dataset_dir")
        return _volume_spec(_read_description(os.path.join(dataset_dir, "dataset.json")),
                            {"0": "background", "1": "foreground"}, {"0": "image"})
    raise InputError(f"unknown dataset {dataset!r}; valid names: {', '.join(DATASETS)}")


def bundle_splits(dataset: str, dataset_dir: str, datalist_path: str | None, seed: int = 0) -> dict[str, list[dict]]:
    """Training/validation/test items for the 2D bundles: ACDC, decathlon and BTCV volumes as slices (the 3D
    bundles: :func:`bundle_splits_3d`)."""
    splits = load_or_create_split(dataset, dataset_dir, datalist_path, seed=seed)
    if str(dataset).lower() in ("decathlon", "btcv"):
        splits = {k: slice_datalist(v) for k, v in splits.items()}
    empty = [k for k, v in splits.items() if not v]
    if empty:
        raise InputError(f"the {dataset} data in {dataset_dir} leave the split(s) {empty} empty; add more cases")
    return splits


def load_transforms(dataset: str, keys: Sequence[str] = ("image", "label"), slices: bool = True) -> Compose:
    """Read ``keys`` (errors name the file), take the item's slice of a volume, and check the label values.

    Args:
        dataset: data set name (see :func:`dataset_spec`).
        keys: ``("image", "label")`` for training/evaluation, ``("image",)`` for inference.
        slices: take the ``"slice"`` of volumes (training/evaluation items are slices; inference reads volumes).
    """
    spec = dataset_spec(dataset) if str(dataset).lower() not in ("decathlon", "btcv") else {"volumetric": True}
    keys = list(keys)
    transforms: list[MapTransform] = [SafeLoadImaged(keys=keys, ensure_channel_first=True, image_only=True)]
    if spec["volumetric"] and slices:
        transforms.append(ExtractSliced(keys=keys, slice_key="slice"))
    if "label" in keys:
        if str(dataset).lower() == "isic":
            transforms.append(BinarizeMaskd(keys="label"))
        elif str(dataset).lower() == "acdc":
            transforms.append(CheckLabelValuesd(keys="label", allowed=spec["label_values"]))
    return Compose(transforms)


def bundle_splits_3d(dataset: str, dataset_dir: str, datalist_path: str | None, seed: int = 0) -> dict[str, list[dict]]:
    """Training/validation/test items for the 3D bundles: whole volumes (ACDC, decathlon, BTCV)."""
    if str(dataset).lower() == "isic":
        raise InputError("dataset isic holds 2D images; the 3D bundles need volumes (acdc, decathlon, btcv)")
    splits = load_or_create_split(dataset, dataset_dir, datalist_path, seed=seed, slice_level=False)
    empty = [k for k, v in splits.items() if not v]
    if empty:
        raise InputError(f"the {dataset} data in {dataset_dir} leave the split(s) {empty} empty; add more cases")
    return splits


CT_INTENSITY_RANGE = (-175.0, 250.0)
"""CT window (HU) mapped to [0, 1] by the 3D bundles, as in MONAI's BTCV (UNETR / Swin UNETR) tutorials."""


def intensity_transforms_3d(modality: str, ct_range: Sequence[float] = CT_INTENSITY_RANGE) -> list[MapTransform]:
    """The intensity normalisation of MONAI's 3D bundles: CT ``ScaleIntensityRanged`` of ``ct_range`` to [0, 1]
    (clipped); MR (any other modality) ``NormalizeIntensityd(nonzero=True, channel_wise=True)``."""
    if str(modality).upper() == "CT":
        return [ScaleIntensityRanged(keys="image", a_min=float(ct_range[0]), a_max=float(ct_range[1]), b_min=0.0,
                                     b_max=1.0, clip=True)]
    return [NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True)]


def load_transforms_3d(
    dataset: str,
    dataset_dir: str | None = None,
    keys: Sequence[str] = ("image", "label"),
    pixdim: Sequence[float] = (1.5, 1.5, 2.0),
    box_key: str | None = None,
    crop_foreground: bool = True,
    ct_range: Sequence[float] = CT_INTENSITY_RANGE,
) -> Compose:
    """Load volumes as MONAI's 3D bundles (spleen_ct_segmentation, the BTCV tutorials) do: ``LoadImaged`` with
    channel first (errors name the file), ``Orientationd("RAS")``, ``Spacingd(pixdim)`` (bilinear image, nearest
    label), the modality's intensity normalisation (:func:`intensity_transforms_3d`) and ``CropForegroundd`` on the
    image (CT: after the window, so air is cropped; MR: before the normalisation, on the nonzero voxels).

    With ``box_key``, the user's boxes ``[M, 6]`` in voxels of the file as loaded (``[x0, y0, z0, x1, y1, z1]``,
    docs/design.md §3) are validated, drawn as a box mask that shares the image's affine (``BoxToRegionMaskd``),
    moved by the same orientation, resampling (nearest) and crop, and read back (``RegionMaskToBoxd``): they arrive in
    voxels of the network input, on the same anatomy (docs/design.md §12.1).

    Args:
        dataset: data set name (:func:`dataset_spec`); it sets the modality.
        dataset_dir: the data set folder (decathlon and btcv read their description from it).
        keys: ``("image", "label")`` for training/evaluation, ``("image",)`` for inference.
        pixdim: target voxel spacing in mm.
        box_key: the key of user boxes to carry through (inference), or ``None``.
        crop_foreground: crop to the image's foreground.
        ct_range: the CT window (HU) scaled to [0, 1].
    """
    keys = list(keys)
    modality = dataset_spec(dataset, dataset_dir)["modality"]
    spatial = keys + (["box_mask"] if box_key else [])
    modes = ["bilinear" if key == "image" else "nearest" for key in spatial]
    transforms: list[MapTransform] = [SafeLoadImaged(keys=keys, ensure_channel_first=True, image_only=True)]
    if box_key:
        transforms += [ValidateBoxd(box_key=box_key, image_key="image"),
                       BoxToRegionMaskd(box_key=box_key, image_key="image", mask_key="box_mask")]
    transforms += [Orientationd(keys=spatial, axcodes="RAS", labels=None),
                   Spacingd(keys=spatial, pixdim=list(pixdim), mode=modes)]
    crop = [CropForegroundd(keys=spatial, source_key="image", allow_smaller=True)] if crop_foreground else []
    intensity = intensity_transforms_3d(modality, ct_range)
    transforms += intensity + crop if str(modality).upper() == "CT" else crop + intensity
    if box_key:
        transforms.append(RegionMaskToBoxd(mask_key="box_mask", box_key=box_key))
    return Compose(transforms)


def prompt_transforms(prompt: str = "tight", factor: float | None = None, box_key: str = "box") -> list[MapTransform]:
    """Box prompt quality for robustness studies (applied after the tight box is derived from the label).

    ``tight``: the box as derived; ``oversized``: scaled by ``factor`` (default 1.5) about its centre;
    ``partial``: each side shrunk to ``factor`` (default 0.5) of its length; ``misleading``: moved by ``factor``
    (default 1.0) times its size. The result is clipped to the image.
    """
    if prompt not in PROMPTS:
        raise InputError(f"unknown prompt {prompt!r}; choose one of {PROMPTS}")
    chosen = {
        "tight": [],
        "oversized": [ScaleBoxd(box_key=box_key, factor=1.5 if factor is None else factor)],
        "partial": [PartialBoxd(box_key=box_key, fraction=0.5 if factor is None else factor)],
        "misleading": [ShiftBoxd(box_key=box_key, offset_fraction=1.0 if factor is None else factor)],
    }[prompt]
    return chosen + [ClipBoxd(box_key=box_key, image_key="image")]


def prompt_qualities(prompt: str | Sequence[str]) -> list[str]:
    """The box qualities an evaluation runs: one name, a list of names, or ``"all"`` (the paper's Table VI rows,
    :data:`TABLE_VI_PROMPTS`)."""
    chosen = list(TABLE_VI_PROMPTS) if prompt == "all" else [prompt] if isinstance(prompt, str) else list(prompt)
    unknown = [p for p in chosen if p not in PROMPTS]
    if not chosen or unknown or len(set(chosen)) != len(chosen):
        raise ValueError(f"prompt must be one of {PROMPTS}, 'all' or a list of distinct ones, got {prompt!r}")
    return chosen


def prompt_datasets(data: Sequence[dict], before: Sequence, after: Sequence, prompts: Sequence[str],
                    factor: float | None = None) -> Dataset:
    """The evaluation data once per box quality in ``prompts``, in that order (one MONAI ``Dataset`` for one
    quality): ``before`` (loading, the tight box), the quality's :func:`prompt_transforms`, then ``after``."""
    sets = [Dataset(list(data), Compose([*before, *prompt_transforms(p, factor), *after])) for p in prompts]
    return sets[0] if len(sets) == 1 else ConcatDataset(sets)


def _stem(path: str) -> str:
    name = os.path.basename(path)
    for ext in IMAGE_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


BOX_ORDER_FIX = "write each box as its min corner then its max corner: [x1, y1, x2, y2] or [x1, y1, z1, x2, y2, z2]"
SKIPPED_FILE = "skipped.json"
"""Written to the output folder by folder inference with ``skip_bad_inputs``: the images left out and why."""


def _box_value(value: Any) -> float:
    """A box coordinate: a real number (a JSON ``true`` is not 1), finite and within the float32 range."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(value)
    number = float(value)
    if not np.isfinite(number) or abs(number) > np.finfo(np.float32).max:
        raise ValueError(value)
    return number


def _check_file_box(values: Sequence[Any], where: str) -> list[float]:
    """One box of a box file: 4 or 6 finite numbers, min corner then max corner, not empty on any axis. Box files
    hold no padding rows (those exist only in the Python API), so an inverted box is an error, not "no prompt"."""
    try:
        box = [_box_value(v) for v in values]
    except (TypeError, ValueError):
        raise InputError(f"{where}: box values must be finite numbers, got {list(values)!r}", BOX_ORDER_FIX) from None
    if len(box) not in (4, 6):
        raise InputError(f"{where}: a box has 4 values (2D) or 6 (3D), got {len(box)}: {box}", BOX_ORDER_FIX)
    dims = len(box) // 2
    for axis in range(dims):
        if box[dims + axis] <= box[axis]:
            kind = "empty" if box[dims + axis] == box[axis] else "inverted"
            raise InputError(f"{where}: box {box} is {kind} (max <= min on axis {axis})", BOX_ORDER_FIX)
    return box


def _parse_boxes(value: Any, source: str) -> list[list[float]]:
    """The boxes of one image in a JSON box file: one box, a list of boxes, or ``{"boxes": [...]}``."""
    if isinstance(value, dict):
        value = value.get("boxes", value.get("box"))
    if not isinstance(value, list) or not value:
        raise InputError(f"{source}: expected a box [v1, ..] or a list of boxes, got {value!r}", BOX_ORDER_FIX)
    rows = value if all(isinstance(row, list) for row in value) else [value]
    return [_check_file_box(row, f"{source}, row {i + 1}") for i, row in enumerate(rows)]


def _read_json(path: str) -> Any:
    """A JSON file's content; ``InputError`` naming the file and the place of a syntax error."""
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise InputError(f"{path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}",
                             'write {"boxes": [[x1, y1, x2, y2], ...]} (or a list of boxes)') from None


def read_boxes_file(path: str) -> dict[str, list[list[float]]]:
    """Boxes per image from one file: JSON ``{"image name or stem": [[...], ...]}`` or CSV rows
    ``image,v1,..,v2D`` (several rows per image for several boxes; a header row is skipped). Every box follows the
    rules of the server and the network (finite numbers, min corner then max corner, not empty); ``InputError``
    names the file and the row of the first that does not."""
    require_file(path, "boxes file")
    boxes: dict[str, list[list[float]]] = {}
    if path.lower().endswith(".json"):
        content = _read_json(path)
        if not isinstance(content, dict):
            raise InputError(f"{path}: expected a JSON object mapping image names to boxes",
                             'write {"image.nii.gz": [[x1, y1, z1, x2, y2, z2], ...], ...}')
        return {_stem(k): _parse_boxes(v, f"{path} [{k!r}]") for k, v in content.items()}
    with open(path, newline="") as f:
        for row_number, row in enumerate(csv.reader(f)):
            if not row or row[0].strip().startswith("#"):
                continue
            if row_number == 0 and not _numeric(row[1:]):
                continue  # header
            box = _check_file_box(row[1:], f"{path}, row {row_number + 1}")
            boxes.setdefault(_stem(row[0].strip()), []).append(box)
    return boxes


def _numeric(values: Sequence[str]) -> bool:
    try:
        [float(v) for v in values]
    except ValueError:
        return False
    return True


def _sidecar_boxes(image: str) -> list[list[float]] | None:
    base = os.path.join(os.path.dirname(image), _stem(image))
    if os.path.isfile(base + ".box.json"):
        return _parse_boxes(_read_json(base + ".box.json"), base + ".box.json")
    if os.path.isfile(base + ".box.csv"):
        rows = read_boxes_file(base + ".box.csv")
        return [box for boxes in rows.values() for box in boxes] or None
    return None


def _inference_item(image: str, listed: Mapping[str, list[list[float]]], allow_missing_boxes: bool,
                    in_channels: int | None) -> dict:
    """``{"image", "box"}`` for one input after checking it: readable, the network's channels, a box prompt (or
    ``allow_missing_boxes``: a padding row) of the image's dimensionality that overlaps the image."""
    shape, channels = read_image_header(image, image)
    if in_channels is not None and channels != in_channels:
        raise InputError(f"image {image} has {channels} channel(s); the network takes {in_channels}")
    boxes = listed.get(_stem(image)) or listed.get(os.path.basename(image)) or _sidecar_boxes(image)
    if boxes is None:
        if not allow_missing_boxes:
            stem = os.path.join(os.path.dirname(image), _stem(image))
            raise InputError(f"image {image} has no box prompt: add {stem}.box.json (or .box.csv), list it in a "
                             "boxes file, or set --allow_missing_boxes True to segment it without a prompt")
        return {"image": image, "box": padding_boxes(1, len(shape), like=np.zeros(0)).tolist()}
    try:
        validate_boxes(np.asarray(boxes, dtype=np.float64), shape, name=f"the box prompt of image {image}")
    except ValueError as err:
        raise InputError(str(err), BOX_ORDER_FIX) from None
    return {"image": image, "box": boxes}


def inference_datalist(input_dir: str, boxes_file: str | None = None, allow_missing_boxes: bool = False,
                       skip_bad_inputs: bool = False, output_dir: str | None = None,
                       in_channels: int | None = None) -> list[dict]:
    """Images under ``input_dir`` with their box prompts, for ``inference.json``, after checking every one.

    Boxes are in **voxel coordinates of the original image as loaded by MONAI** (axis ``i`` of the array;
    for PNG/JPG that is ``(x, y)`` = (column, row), MONAI's PIL convention), min corner then max corner, voxel
    ``v`` covering ``[v, v+1)``: ``[x1, y1, x2, y2]`` for 2D images, ``[x1, y1, z1, x2, y2, z2]`` for volumes.
    They come from a sidecar next to the image, ``<stem>.box.json`` (``{"boxes": [[...], ...]}``, a list of
    boxes or one box) or ``<stem>.box.csv`` (``image,v1,..`` rows), or from ``boxes_file`` (see
    :func:`read_boxes_file`), which takes precedence. An image without boxes is an error unless
    ``allow_missing_boxes``: then it gets a padding row (no prompt: PrATo uses the whole image).

    Every image is checked before anything is segmented (readable, ``in_channels`` channels, a box prompt that
    overlaps it); one ``InputError`` lists every problem. With ``skip_bad_inputs`` the bad images are left out
    instead and listed, with the reason, in ``output_dir/skipped.json`` (written atomically).
    """
    if not os.path.isdir(input_dir):
        raise InputError(f"input directory {input_dir} does not exist", "set --input_dir to a folder of images")
    images = sorted(
        p for p in glob.glob(os.path.join(input_dir, "*"))
        if p.lower().endswith(IMAGE_EXTENSIONS) and not p.lower().endswith(_NOT_IMAGES)
    )
    if not images:
        raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {input_dir}",
                         "set --input_dir to a folder of images")
    listed = read_boxes_file(boxes_file) if boxes_file else {}
    items, problems = [], {}
    for image in images:
        try:
            items.append(_inference_item(image, listed, allow_missing_boxes, in_channels))
        except UserError as err:
            problems[os.path.basename(image)] = err.message
    if skip_bad_inputs and output_dir is not None:
        skipped = [{"image": name, "reason": reason} for name, reason in problems.items()]
        atomic_write_text(json.dumps({"input_dir": input_dir, "skipped": skipped}, indent=2) + "\n",
                          os.path.join(output_dir, SKIPPED_FILE))
    if problems and (not skip_bad_inputs or not items):
        listing = "".join(f"\n  {name}: {reason}" for name, reason in problems.items())
        raise InputError(f"{len(problems)} of {len(images)} images in {input_dir} cannot be segmented (nothing was "
                         f"segmented):{listing}",
                         "fix them, or pass --skip_bad_inputs True to segment the others (the skipped images are "
                         f"listed in {SKIPPED_FILE} in the output folder)" if not skip_bad_inputs else None)
    return items


def require_file(path: str, what: str = "file") -> str:
    """``path`` if it is a file, else ``MissingFileError`` (a ``FileNotFoundError``) naming what is missing."""
    if not os.path.isfile(path):
        raise MissingFileError(f"{what} {path} does not exist")
    return path


def default_num_workers(limit: int = 4) -> int:
    """DataLoader workers by default: ``limit``, but no more than the CPUs this process may use (PyTorch warns
    when a loader asks for more workers than that)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(int(limit), cpus))


def _lookup(config: Any, parts: Sequence[str]) -> tuple[int, Any]:
    """How many leading parts of a config id exist in ``config``, and the node the lookup reached."""
    node = config
    for depth, part in enumerate(parts):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            return depth, node
    return len(parts), node


def unknown_override_keys(config: Mapping, overrides: Sequence[str]) -> list[str]:
    """One message per override id that ``config`` does not define, with the closest known key suggested.

    An id is known when it exists in ``config`` or, for a nested id (``network_def#embed_dims``), when its parent
    is a dict (adding a keyword argument to a component). A new top-level key is unknown: MONAI's runner would
    add it silently, so ``--epoch 1`` would train the default number of ``epochs``. ``_meta_`` ids are MONAI's.
    """
    messages = []
    for key in overrides:
        parts = str(key).split("#")
        depth, node = _lookup(config, parts)
        new_argument = depth == len(parts) - 1 and depth > 0 and isinstance(node, Mapping)
        if parts[0] == "_meta_" or depth == len(parts) or new_argument:
            continue
        known = [str(k) for k in node] if isinstance(node, Mapping) else [str(i) for i in range(len(node))] if \
            isinstance(node, list) else []
        close = ["#".join([*parts[:depth], c]) for c in difflib.get_close_matches(parts[depth], known, n=3)]
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        messages.append(f"unknown override key {key!r}{hint}")
    return messages


# the arguments of ``monai.bundle.run`` / ``create_workflow`` that configure the workflow, not the config
_WORKFLOW_CALLS = (monai.bundle.run, monai.bundle.create_workflow, ConfigWorkflow.__init__)
WORKFLOW_ARGUMENTS = frozenset().union(*(inspect.signature(f).parameters for f in _WORKFLOW_CALLS)) - {
    "override", "kwargs", "self"}


def _command_line_value(text: str) -> Any:
    """A command-line value as Python Fire (MONAI's command line) reads it: a Python literal, else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def command_line_arguments(argv: Sequence[str]) -> dict[str, Any]:
    """The ``--key value`` / ``--key=value`` arguments of a ``python -m monai.bundle <command> ...`` command line
    (``argv`` without the program and the command), as ``{key: value}``; a key without a value is ``True``."""
    arguments: dict[str, Any] = {}
    index = 0
    while index < len(argv):
        item = str(argv[index])
        index += 1
        if not item.startswith("--") or item == "--":
            continue
        key, equals, value = item[2:].partition("=")
        if not equals:
            if index < len(argv) and not str(argv[index]).startswith("--"):
                value, index = str(argv[index]), index + 1
            else:
                value = "True"
        arguments[key.replace("-", "_")] = _command_line_value(value)  # Fire reads --a-b as a_b
    return arguments


def _monai_command_line() -> dict[str, Any] | None:
    """The arguments of this process when it is MONAI's command line running a workflow (``python -m monai.bundle
    run ...``, also under ``torchrun``), with those of its ``--args_file``; ``None`` otherwise."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is None or spec.name not in ("monai.bundle.__main__", "monai.bundle") or len(sys.argv) < 2:
        return None
    if sys.argv[1] not in ("run", "run_workflow"):
        return None
    arguments = command_line_arguments(sys.argv[2:])
    if arguments.get("args_file"):  # MONAI reads defaults for every argument from it; the command line wins
        arguments = {**ConfigParser.load_config_file(arguments["args_file"]), **arguments}
    return arguments


def check_overrides(config_file: str | Sequence[str] | None = None, overrides: Mapping[str, Any] | None = None,
                    tracking: str | dict | None = None) -> None:
    """Reject override keys the bundle's config files do not define.

    ``python -m monai.bundle run --config_file train.json --epoch 1`` would otherwise add a new key ``epoch`` and
    train the default ``epochs``. Called with no arguments (first in every bundle's ``initialize``), it checks the
    command line of this process when that is MONAI's (``python -m monai.bundle run ...``); in-process runs are
    checked by :func:`run`, which passes ``config_file`` and the ``overrides``. The workflow's own arguments
    (``meta_file``, ``logging_file``, ``tracking``, ...; :data:`WORKFLOW_ARGUMENTS`) are not overrides, and
    ``tracking`` adds the keys of its settings. Raises ``InputError`` (a ``ValueError``) naming every unknown key with
    the closest known one.
    """
    if config_file is None:
        arguments = _monai_command_line()
        if arguments is None or arguments.get("config_file") is None:
            return
        config_file, tracking = arguments["config_file"], arguments.get("tracking")
        overrides = arguments
    keys = [key for key in (overrides or {}) if key not in WORKFLOW_ARGUMENTS]
    config = ConfigParser.load_config_files(config_file)
    if tracking is not None:  # MONAI adds the tracking settings' keys (tracking_uri, experiment_name, ...)
        settings = DEFAULT_EXP_MGMT_SETTINGS.get(tracking) if isinstance(tracking, str) else None
        settings = settings if settings is not None else ConfigParser.load_config_files(tracking)
        config = {**settings.get("configs", {}), **config}
    messages = unknown_override_keys(config, keys)
    if messages:
        raise InputError(f"{'; '.join(messages)} (config: {config_file})",
                         fix="override only keys the config defines (python -m monai.bundle run ... --key value)")


# the arguments of the :func:`run` in progress (``None``: no such run; MONAI's command line is read instead)
_RUN_ARGUMENTS: ContextVar[dict[str, Any] | None] = ContextVar("_RUN_ARGUMENTS", default=None)


def override_keys() -> list[str]:
    """The config ids this run overrides: the arguments of the :func:`run` in progress, else those of MONAI's command
    line (``python -m monai.bundle run ...``, as :func:`check_overrides` reads it), without the workflow's own
    (:data:`WORKFLOW_ARGUMENTS`); ``[]`` in any other process."""
    arguments = _RUN_ARGUMENTS.get()
    if arguments is None:
        arguments = _monai_command_line() or {}
    return [key for key in arguments if key not in WORKFLOW_ARGUMENTS]


DATA_SETTINGS = ("in_channels", "out_channels")
"""Network settings that follow the data set (``dataset_spec``): never taken from a checkpoint, only checked
against it (``engine.check_trained_settings``), so a checkpoint trained on other data is named, not misused."""

LEGACY_SETTINGS = {"decode_region": "full", "coarse_head": False, "click_prompts": True}
"""Network settings added after checkpoints were first written: the value a checkpoint that records settings but
not this one was trained with (box decoding did not exist before ``decode_region``). A checkpoint from before
``click_prompts`` builds the click encoder: its weights are missing and stay zero, which answers as a network
without one (docs/design.md §6.2), and the network takes clicks."""


def resolved_settings(settings: Mapping[str, Any], trained: Mapping[str, Any] | None = None,
                      overridden: Sequence[str] = ()) -> dict[str, Any]:
    """The network settings a run builds its network with: each of ``settings`` (the bundle's top-level keys: default
    or override) unless ``trained`` (the settings a checkpoint records, ``engine.trained_settings``) holds it and the
    run does not override it (``overridden``: :func:`override_keys`). Data settings (:data:`DATA_SETTINGS`) always
    follow the data set; a setting the checkpoint predates is its :data:`LEGACY_SETTINGS` value. Without ``trained``
    settings (training, or no checkpoint yet) it is ``settings``."""
    if not trained:
        return dict(settings)
    keep = set(overridden) | set(DATA_SETTINGS)
    return {key: value if key in keep else trained.get(key, LEGACY_SETTINGS.get(key, value))
            for key, value in settings.items()}


def run(config_file: str | Sequence[str], **arguments: Any) -> None:
    """``monai.bundle.run`` with the override keys checked first (:func:`check_overrides`): the in-process
    counterpart of ``python -m monai.bundle run``, e.g. ``run("configs/train.json", bundle_root=".", epochs=1)``."""
    check_overrides(config_file, arguments, arguments.get("tracking"))
    token = _RUN_ARGUMENTS.set(dict(arguments))
    try:
        monai.bundle.run(config_file=config_file, **arguments)
    finally:
        _RUN_ARGUMENTS.reset(token)


def _integer(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _number(value: Any, low: float, high: float) -> bool:
    """``value`` is a real number in ``(low, high]`` (not a bool, not NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low < value <= high


# bundle key -> (valid?, what it must be); checked by ``check_settings`` when a run starts
SETTING_RULES: dict[str, tuple[Any, str]] = {
    "image_size": (lambda v: _integer(v, 16), "one integer >= 16, the side of the square network input"),
    "epochs": (lambda v: _integer(v, 1), "an integer >= 1"),
    "batch_size": (lambda v: _integer(v, 1), "an integer >= 1"),
    "val_interval": (lambda v: _integer(v, 1), "an integer >= 1 (epochs between validations)"),
    "num_workers": (lambda v: _integer(v, 0), "an integer >= 0"),
    "learning_rate": (lambda v: _number(v, 0.0, 1.0), "a number in (0, 1]"),
    "keep_ratio": (lambda v: _number(v, 0.0, 1.0), "a number in (0, 1], the fraction of tokens kept per stage"),
    "prune_stages": (lambda v: isinstance(v, (list, tuple)) and all(_integer(s, 1) for s in v)
                     and len(set(v)) == len(v), "a list of distinct stage numbers >= 1, e.g. [1, 2]"),
    "executor": (lambda v: v in EXECUTOR_MODES, f"one of {list(EXECUTOR_MODES)}"),
    "fill": (lambda v: v in FILL_POLICIES, f"one of {list(FILL_POLICIES)}"),
    "decode_region": (lambda v: v in DECODE_REGIONS, f"one of {list(DECODE_REGIONS)} (decode the whole image, only "
                      "the prompt boxes plus decode_margin, or also where the coarse head finds foreground)"),
    "coarse_head": (lambda v: isinstance(v, bool), "true or false (the coarse head that decode_region 'guided' reads)"),
    "coarse_threshold": (lambda v: _number(v, 0.0, 1.0) and v < 1.0,
                         "a probability strictly between 0 and 1 (where guided decoding looks outside the box)"),
    "click_prompts": (lambda v: isinstance(v, bool), "true or false (the click encoder: the network takes points)"),
    "decode_margin": (lambda v: _integer(v, 0), "an integer >= 0, pixels around the prompt boxes"),
    "dataset": (lambda v: isinstance(v, str) and v.lower() in DATASETS, f"one of {list(DATASETS)}"),
    "dataset_dir": (lambda v: isinstance(v, str) and bool(v), "a folder path"),
    "clicks": (lambda v: _integer(v, 0), "an integer >= 0, the corrective clicks per structure of the interactive "
               "evaluation (0: the box only)"),
    "allow_missing_boxes": (lambda v: isinstance(v, bool), "true or false"),
    "skip_bad_inputs": (lambda v: isinstance(v, bool), "true or false"),
    "debug": (lambda v: isinstance(v, bool), "true or false (print the full traceback of an error)"),
}


def check_settings(settings: Mapping[str, Any]) -> None:
    """``InputError`` naming every bundle setting of the wrong type or out of range (see :data:`SETTING_RULES`),
    at the start of a run rather than deep inside a transform or the network. Keys without a rule pass."""
    wrong = [f"{key} must be {SETTING_RULES[key][1]}, got {value!r}" for key, value in settings.items()
             if key in SETTING_RULES and not SETTING_RULES[key][0](value)]
    if wrong:
        raise InputError("; ".join(wrong))


def trained_bundle_config(bundle_dir: str, checkpoint: str | None = None, overrides: Mapping[str, Any] | None = None,
                          config: str = "inference.json"):
    """A ``ConfigParser`` of ``bundle_dir/configs/<config>`` (with ``metadata.json``) that builds the network
    ``checkpoint`` was trained with: ``ckpt_path`` points to it, so each network setting (``network_settings``)
    defaults to the one it records, ``overrides`` win over it (``network_settings#overridden``, as the command line's
    do in a bundle run) and those that contradict it raise ``ValueError`` naming the keys (as the bundle's own
    ``initialize`` does). Used where a bundle network is built outside ``monai.bundle run`` (export, MONAI Label)."""
    parser = ConfigParser()
    parser.read_meta(os.path.join(bundle_dir, "configs", "metadata.json"))
    parser.read_config(os.path.join(bundle_dir, "configs", config))
    parser["bundle_root"] = bundle_dir
    if checkpoint is not None:
        parser["ckpt_path"] = checkpoint
    for key, value in (overrides or {}).items():
        parser[key] = value
    parser["network_settings#overridden"] = list(overrides or {})  # these win over the checkpoint's settings
    if checkpoint is not None:
        check_trained_settings(parser.get_parsed_content("trained"), parser.get_parsed_content("network_settings"),
                               checkpoint)
    return parser
