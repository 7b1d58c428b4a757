"""The 3D bundles' configs: the 2D templates (``configs``) with what differs for volumes."""

from __future__ import annotations

from prato_components.bundle import CT_INTENSITY_RANGE

from .configs import (
    WINDOW,
    _load,
    _with_keys_after,
    evaluate_config,
    inference_config,
    settings_read_once,
    train_config,
)

SPLITS_3D = "$prato_components.bundle.bundle_splits_3d(@dataset, @dataset_dir, @datalist_path, @seed)"
# the intensity normalisation of the data set's modality (prato_components.bundle.intensity_transforms_3d)
MODALITY = "'CT' if @spec['modality'] == 'CT' else 'MR'"


def _replace_key(config: dict, key: str, keys: dict) -> dict:
    """``config`` with ``key`` replaced, in place in the order, by ``keys``."""
    out = {}
    for name, value in config.items():
        out.update(keys if name == key else {name: value})
    return out


def _orient_and_resample(keys: list[str]) -> list[dict]:
    """RAS orientation and the ``pixdim`` spacing (bilinear image, nearest label / box mask)."""
    return [
        {"_target_": "Orientationd", "keys": keys, "axcodes": "RAS", "labels": None},
        {"_target_": "Spacingd", "keys": keys, "pixdim": "@pixdim",
         "mode": ["bilinear" if key == "image" else "nearest" for key in keys]},
    ]


def _intensity_by_modality(keys: list[str]) -> dict:
    """The intensity normalisation and foreground crop of MONAI's 3D bundles: CT windowed to [0, 1] then cropped (so
    air is cropped), MR cropped to its nonzero voxels then z-scored per channel."""
    crop = {"_target_": "CropForegroundd", "keys": keys, "source_key": "image", "allow_smaller": True}
    low, high = (float(v) for v in CT_INTENSITY_RANGE)
    return {
        "CT": [{"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": low, "a_max": high, "b_min": 0.0,
                "b_max": 1.0, "clip": True}, crop],
        "MR": [crop, {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True}],
    }


def _labelled_preprocessing_3d() -> dict:
    """``loading``, ``intensity_by_modality`` and ``preprocessing`` of a labelled volume: load, orient, resample,
    normalise and crop to the foreground (training, validation, evaluation)."""
    keys = ["image", "label"]
    return {
        "loading": [_load(keys), *_orient_and_resample(keys)],
        "intensity_by_modality": _intensity_by_modality(keys),
        "preprocessing": [{"_target_": "Compose",
                           "transforms": f"$@loading + @intensity_by_modality[{MODALITY}]"}],
    }


def _sliding_window_handlers(handlers: list) -> None:
    """Token metrics over every computed window, windows computed / skipped, GFLOPs of one window, the interactive
    protocol through the sliding window."""
    for handler in handlers:
        if handler["_target_"] == "prato_components.engine.TokenSparsityHandler":
            handler["inferer"] = "@sw_inferer"
        if handler["_target_"] == "prato_components.engine.EvaluationReport":
            handler["input_shape"] = "$[@in_channels] + [@image_size] * 3"
            handler["inferer"] = "@sw_inferer"


def train_config_3d(name: str) -> dict:
    """``train.json`` of a 3D bundle: ``batch_size`` volumes, ``num_samples`` label-balanced crops of the window size
    from each (``RandCropByPosNegLabeld``), the prompt box recomputed from every crop's label; validation on whole
    volumes with the prompt-aware sliding window."""
    config = train_config(name)
    config["batch_size"] = 2
    config = _with_keys_after(config, "batch_size", {"num_samples": 2})
    config["splits"] = SPLITS_3D
    del config["preprocessing"]
    config = _replace_key(config, "loading_by_dataset", _labelled_preprocessing_3d())
    config["train"]["augmentation"] = [
        {"_target_": "SpatialPadd", "keys": ["image", "label"], "spatial_size": WINDOW},
        {"_target_": "RandCropByPosNegLabeld", "keys": ["image", "label"], "label_key": "label",
         "spatial_size": WINDOW, "pos": 1, "neg": 1, "num_samples": "@num_samples", "image_key": "image",
         "image_threshold": 0},
        *[{"_target_": "RandFlipd", "keys": ["image", "label"], "prob": 0.1, "spatial_axis": axis}
          for axis in range(3)],
        {"_target_": "RandRotate90d", "keys": ["image", "label"], "prob": 0.1, "max_k": 3},
        {"_target_": "RandShiftIntensityd", "keys": "image", "offsets": 0.1, "prob": 0.5},
    ]
    config["validate"]["dataloader"]["batch_size"] = 1  # whole volumes differ in size
    config["validate"]["inferer"] = "@sw_inferer"
    _sliding_window_handlers(config["validate"]["handlers"])
    return settings_read_once(config, name)


def evaluate_config_3d(name: str) -> dict:
    """``evaluate.json`` of a 3D bundle (an overlay on its ``train.json``): whole test volumes, one at a time, the
    prompt-aware sliding window."""
    config = _with_keys_after(evaluate_config(name), "latency_repeats", {"batch_size": 1})
    config["evaluator"]["inferer"] = "@sw_inferer"
    _sliding_window_handlers(config["handlers"])
    return settings_read_once(config, name)


def inference_config_3d(name: str) -> dict:
    """``inference.json`` of a 3D bundle: the user's boxes (voxels of the file as loaded) carried through MONAI's 3D
    preprocessing as a box mask, the prompt-aware sliding window, the prediction inverted to the file's grid."""
    config = inference_config(name)
    del config["spatial_size"]
    keys = ["image", "box_mask"]
    config = _with_keys_after(config, "datalist", {"intensity_by_modality": _intensity_by_modality(keys)})
    config["preprocessing"]["transforms"] = [
        _load(["image"]),
        {"_target_": "prato_components.prompts.ValidateBoxd", "box_key": "box", "image_key": "image"},
        {"_target_": "prato_components.prompts.BoxToRegionMaskd", "box_key": "box", "image_key": "image",
         "mask_key": "box_mask"},
        *_orient_and_resample(keys),
        {"_target_": "Compose", "transforms": f"$@intensity_by_modality[{MODALITY}]"},
        {"_target_": "prato_components.prompts.RegionMaskToBoxd", "mask_key": "box_mask", "box_key": "box"},
        {"_target_": "EnsureTyped", "keys": "image"},
        {"_target_": "EnsureTyped", "keys": "box", "track_meta": False},
    ]
    config["evaluator"]["inferer"] = "@sw_inferer"
    return settings_read_once(config, name)
