"""``metadata.json`` of a 2D and a 3D bundle: versions, the data formats per data set, what evaluation measures."""

from __future__ import annotations

from prato_components import __version__
from prato_components.bundle import BTCV_LABELS
from prato_components.verification import split_bundle_name

from .spec import (
    AUTHORS,
    BUNDLE_VERSION,
    CHANGELOG,
    COPYRIGHT,
    MONAI_VERSION,
    NUMPY_VERSION,
    PRUNER_CONFIGS,
    PYTORCH_VERSION,
    backbone_spec,
)

# what evaluate.json measures (eval/metrics.json). No weights are shipped, so no value has been measured for a release:
# each entry says what the metric is and where a run writes it, rather than a number
EVAL_METRICS = {
    "mean_dice": "Dice over the foreground classes (mean and per class, include_background false) on the test split "
                 "with the tight box prompt (--prompt for others); not measured for this release (no weights are "
                 "shipped): evaluate.json writes it to eval/metrics.json (metrics.mean_dice)",
    "mean_iou": "IoU over the foreground classes (mean and per class), as mean_dice (metrics.mean_iou)",
    "hd95": "95th-percentile Hausdorff distance in voxels of the network input (mean and per class), as mean_dice "
            "(metrics.hd95)",
    "token_sparsity": "share of the encoder's token-block work removed by pruning over the test split, 0 for a "
                      "baseline (tokens.token_sparsity, with tokens.kept_fraction/stageN)",
    "gflops": "GFLOPs of one network input with a central box (gflops; latency_ms on the evaluating machine)",
    "interactive": "with --clicks N: per structure its box, then N corrective clicks at the centre of the largest "
                   "error (SEGFM3D): Dice per step, Dice AUC, final Dice, NoC@85/90, later / first interaction time "
                   "(interactive; eval/dice_vs_clicks.png)",
}


def _tensor(kind: str, fmt: str, channel_def: dict, shape: list, value_range: list, **extra) -> dict:
    """One ``network_data_format`` entry (the MONAI bundle tensor description)."""
    return {"type": kind, "format": fmt, **extra, "num_channels": len(channel_def), "spatial_shape": shape,
            "dtype": "float32", "value_range": value_range, "is_patch_data": False, "channel_def": channel_def}


ACDC_LABELS = {"0": "background", "1": "right ventricle", "2": "myocardium", "3": "left ventricle"}
ISIC_LABELS = {"0": "skin", "1": "lesion"}


def _data_formats_2d(size: int) -> dict:
    """``network_data_format`` per data set of a 2D bundle (``dataset_spec``: ACDC 1 MR channel and 4 classes, ISIC 3
    RGB channels and 2 classes); MSD tasks read theirs from their dataset.json."""
    def io(image: dict, labels: dict) -> dict:
        return {"inputs": {"image": image, "boxes": _boxes_2d(size)},
                "outputs": {"pred": _tensor("image", "segmentation", labels, [size, size], [])}}

    return {
        "acdc": io(_tensor("image", "magnitude", {"0": "image"}, [size, size], [0, 1], modality="MR"), ACDC_LABELS),
        "isic": io(_tensor("image", "RGB", {"0": "R", "1": "G", "2": "B"}, [size, size], [0, 1], modality="dermoscopy"),
                   ISIC_LABELS),
        "decathlon": "the channels (dataset.json modality) and classes (dataset.json labels) of the MSD task in "
                     "dataset_dir, served as 2D slices scaled to [0, 1]",
    }


def _boxes_2d(size: int) -> dict:
    return _tensor("boxes", "StandardMode xyxy, voxel coordinates of the network input; [B, M, 4], max < min = padding",
                   {"0": "x1", "1": "y1", "2": "x2", "3": "y2"}, ["*"], [0, size])


def metadata(name: str) -> dict:
    backbone, pruner = split_bundle_name(name)
    title = f"{backbone_spec(backbone)['title']} with {PRUNER_CONFIGS[pruner]['title']}"
    formats = _data_formats_2d(224)
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
        "version": BUNDLE_VERSION,
        "changelog": CHANGELOG,
        "monai_version": MONAI_VERSION,
        "pytorch_version": PYTORCH_VERSION,
        "numpy_version": NUMPY_VERSION,
        "required_packages_version": {"prato_components": __version__, "nibabel": "5.4.2", "pillow": "13.0.0",
                                      "pytorch-ignite": "0.5.5", "einops": "0.8.2"},
        "supported_apps": {},
        "name": name,
        "task": f"Box-prompted 2D segmentation: {title}",
        "description": f"{title}, called as network(image, boxes). Trains and evaluates on ACDC slices (cardiac MRI), "
                       "ISIC task 1 (dermoscopy) or an MSD task (slices); the box prompt is derived from the label in "
                       "training and evaluation and given by the user at inference. network_data_format describes the "
                       "default data set (dataset acdc: 1 channel, 4 classes); network_data_format_by_dataset gives "
                       "each data set's (isic: 3 channels, 2 classes; decathlon: those of its dataset.json). "
                       "eval_metrics names what evaluate.json measures; no weights are shipped, so no value is given.",
        "authors": AUTHORS,
        "copyright": COPYRIGHT,
        "data_source": "ACDC (https://www.creatis.insa-lyon.fr/Challenge/acdc/), ISIC 2017/2018 task 1, MSD",
        "data_type": "nibabel / png / jpg",
        "image_classes": "ACDC: 1 channel MRI slice; ISIC: 3 channel RGB, both scaled to [0, 1]",
        "label_classes": "ACDC: 0 background, 1 right ventricle, 2 myocardium, 3 left ventricle; "
                         "ISIC: 0 skin, 1 lesion",
        "pred_classes": "as label_classes (argmax of the logits)",
        "eval_metrics": EVAL_METRICS,
        "intended_use": "Research on token-pruned ViT segmentation; not for clinical use.",
        "references": [
            "Prompt-based Dynamic Token Pruning for Efficient Segmentation of Medical Images (PrATo)",
            backbone_spec(backbone)["reference"],
        ],
        "network_data_format": formats["acdc"],
        "network_data_format_by_dataset": formats,
    }



def _data_formats_3d(size: int) -> dict:
    """``network_data_format`` per data set of a 3D bundle, on ``size``^3 windows: BTCV (1 CT channel, 14 classes, as
    MONAI's BTCV lays it out; its dataset_0.json labels decide), ACDC volumes (1 MR channel, 4 classes); MSD tasks read
    theirs from their dataset.json."""
    shape = [size] * 3
    boxes = _tensor("boxes", "StandardMode xyzxyz, voxel coordinates of the network input (the window); [B, M, 6], "
                    "max < min = padding", {str(i): c for i, c in enumerate(["x1", "y1", "z1", "x2", "y2", "z2"])},
                    ["*"], [0, size])

    def io(image: dict, labels: dict) -> dict:
        return {"inputs": {"image": image, "boxes": boxes},
                "outputs": {"pred": _tensor("image", "segmentation", labels, shape, [])}}

    return {
        "btcv": io(_tensor("image", "hounsfield", {"0": "image"}, shape, [0, 1], modality="CT"), BTCV_LABELS),
        "acdc": io(_tensor("image", "magnitude", {"0": "image"}, shape, [], modality="MR"), ACDC_LABELS),
        "decathlon": "the channels (dataset.json modality) and classes (dataset.json labels) of the MSD task in "
                     "dataset_dir; CT windowed to [0, 1], MR z-scored per channel",
    }


def metadata_3d(name: str) -> dict:
    """``metadata.json`` of a 3D bundle (the default data set: BTCV, 1 CT channel, 14 classes)."""
    meta = metadata(name)
    backbone, pruner = split_bundle_name(name)
    title = f"{backbone_spec(backbone)['title']} with {PRUNER_CONFIGS[pruner]['title']}"
    formats = _data_formats_3d(96)
    meta.update({
        "task": f"Box-prompted 3D segmentation: {title}",
        "description": f"{title}, called as network(image, boxes) on 96^3 windows. Trains on label-balanced crops "
                       "and evaluates and infers on whole volumes with a prompt-aware sliding window that computes "
                       "only the windows the box prompt (plus decode_margin) touches. The box is derived from the "
                       "label in training and evaluation and given by the user at inference, in voxels of the file "
                       "as loaded. network_data_format describes the default data set (dataset btcv: 1 CT channel, "
                       "14 classes); network_data_format_by_dataset gives each data set's (acdc: 1 MR channel, 4 "
                       "classes; decathlon: those of its dataset.json). eval_metrics names what evaluate.json "
                       "measures; no weights are shipped, so no value is given.",
        "data_source": "BTCV (https://www.synapse.org/#!Synapse:syn3193805) as MONAI's tutorials lay it out; MSD",
        "data_type": "nibabel",
        "image_classes": "1 channel CT, window [-175, 250] HU scaled to [0, 1], RAS, 1.5 x 1.5 x 2.0 mm; MR "
                         "(decathlon, acdc): z-scored per channel over the nonzero voxels",
        "label_classes": "BTCV: " + ", ".join(f"{k} {v}" for k, v in BTCV_LABELS.items()),
        "eval_metrics": {**EVAL_METRICS, "gflops": "GFLOPs of one 96^3 window with a central box (gflops; "
                         "latency_ms on the evaluating machine); windows.* counts the windows computed and skipped"},
        "network_data_format": formats["btcv"],
        "network_data_format_by_dataset": formats,
    })
    return meta
