"""Generate and check the bundles: every ``bundles/<backbone>_<pruner>`` from one specification.

The bundles are self-contained folders (MONAI bundle layout) committed to the repository; this tool is the
single place that defines them, so the folders never drift apart::

    python tools/bundles.py generate            # (re)write bundles/*/configs, docs, LICENSE
    python tools/bundles.py check               # fail if a committed bundle differs from the specification
    python tools/bundles.py list

Edit a bundle by editing this file (``BACKBONES``, ``PRUNER_CONFIGS``, the config templates) and regenerating.
The 3D bundles (``BACKBONES_3D``, ``PRUNERS_BY_BACKBONE_3D``, ``BUNDLES_3D``) are built from the same templates with
the changes of the "3D bundles" section (docs/design.md §12).
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys
from collections.abc import Sequence

import fire

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from prato_components import __version__  # noqa: E402
from prato_components.bundle import CT_INTENSITY_RANGE, SETTING_RULES  # noqa: E402
from prato_components.verification import CONFIG_CHAINS, TINY_NETWORKS, split_bundle_name  # noqa: E402

BUNDLE_VERSION = "0.4.2"
CHANGELOG = {
    "0.4.2": "pruner_def (and stp's completion_def) is a factory (_mode_: callable) on every backbone: the network "
    "builds its pruners and completion at each stage's width on a random stream of their own, so at one seed a "
    "pruned bundle starts from its baseline's backbone weights and draws the same data order (a paired comparison); "
    "pruner options are still overridden as --pruner_def#<option>; the executor's restores gather the grid "
    "(prato_components 0.4.2)",
    "0.4.1": "stp's learned completion (MTA) is its own completion_def block next to pruner_def, so network_def is "
    "the same in every pruned bundle of a backbone; every backbone builds its pruners one way (one per stage width; "
    "a pruner given by name or factory gets the network's classes on TransUNet and SegFormer too) and keeps the "
    "reports of a forward pass one way; the bundle verification is part of prato_components "
    "(prato_components.verification; prato_components 0.4.1)",
    "0.4.0": "new bundles: swin_unetr and segformer with stp, evovit and tram (evovit and tram score the attention a "
    "token receives within its Swin windows or through SegFormer's spatial-reduction keys; stp's MTA runs per tap at "
    "its width); 3D bundles unetr3d_baseline, unetr3d_prato, unetr3d_stp, swin_unetr3d_baseline, swin_unetr3d_prato "
    "with MONAI's 3D preprocessing, boxes mapped through it and a prompt-aware sliding window; DToP on swin_unetr "
    "averages its logits canvas onto the coarser stage grid (prato_components 0.4.0); configs read top to bottom "
    "(every key defined before it is used; the data loading written out as MONAI transforms per data set; the pruner "
    "in one pruner_def block above network_def), evaluate.json is an overlay on train.json "
    "(--config_file \"['configs/train.json','configs/evaluate.json']\"), metadata.json gives network_data_format "
    "per data set and names the evaluation metrics",
    "0.3.0": "prompt-restricted decoding: decode_region 'box' (the default in PrATo bundles) runs the decoder and "
    "every convolutional path feeding it only over the prompt boxes plus decode_margin pixels, background outside; "
    "checkpoints from 0.2.0 keep decoding the whole image; new bundles: transunet with all seven pruners, swin_unetr "
    "and segformer with dynamicvit, dtop and random; random masking draws per grid cell (prato_components 0.3.0)",
    "0.2.0": "checkpoints record the network settings they were trained with, and evaluate.json / inference.json "
    "build that network without the training overrides; unknown override keys stop a run with the closest known key, "
    "and settings values are checked at start; num_workers defaults to min(4, CPUs); "
    "token sparsity means the share of the encoder's token-block work removed, for every backbone; the export takes "
    "any number of boxes per image and names inputs it cannot take; share zips carry one set of weights "
    "(prato_components 0.2.0, which declares scipy); "
    "PrATo keeps the tokens inside the prompt box(es) first, so the prompt decides (protect_boxes, default true; "
    "false is the paper's literal ranking); optional "
    "pruning warm-up (warmup_epochs, ramp_epochs); prompt_boxes 'union' (one box, the paper) or 'per_class' (one "
    "padded row per structure); per-class validation Dice per epoch (models/val_per_class.json); the evaluation "
    "report counts the images in which each class is present",
    "0.1.1": "multi-GPU: ranks meet at a barrier before the process group is destroyed; cheaper pruning overhead "
    "(prato_components 0.1.1); measured CPU limits of Swin UNETR and SegFormer in the README",
    "0.1.0": "first release: 2D training, evaluation and box-prompted inference on ACDC, ISIC, MSD",
}

# ----------------------------------------------------------------------------------------------- networks
# Each backbone: the network_def (pruner inserted under "pruner"), its token width for pruners that need it,
# a description and the stages pruned by default.
BACKBONES: dict[str, dict] = {
    "unetr": {
        "title": "UNETR-2D (ViT-B/16)",
        "keys": {"hidden_size": 768, "mlp_dim": 3072, "num_heads": 12, "feature_size": 16},
        "network_def": {
            "_target_": "prato_components.networks.PrunedUNETR",
            "in_channels": "@in_channels",
            "out_channels": "@out_channels",
            "img_size": "@image_size",
            "spatial_dims": 2,
            "feature_size": "@feature_size",
            "hidden_size": "@hidden_size",
            "mlp_dim": "@mlp_dim",
            "num_heads": "@num_heads",
            "norm_name": "instance",
            "prune_stages": "@prune_stages",
            "executor": "@executor",
            "fill": "@fill",
            "decode_region": "@decode_region",
            "decode_margin": "@decode_margin",
        },
        "stages": [1, 2],
        "tiny": TINY_NETWORKS["unetr"],
        "small": {"hidden_size": 192, "mlp_dim": 768, "num_heads": 3, "feature_size": 16},
        "reference": "Hatamizadeh et al., UNETR: Transformers for 3D Medical Image Segmentation, WACV 2022",
    },
    "swin_unetr": {
        "title": "Swin UNETR-2D",
        "keys": {"feature_size": 48, "depths": [2, 2, 2, 2], "num_heads": [3, 6, 12, 24]},
        "network_def": {
            "_target_": "prato_components.networks.PrunedSwinUNETR",
            "in_channels": "@in_channels",
            "out_channels": "@out_channels",
            "spatial_dims": 2,
            "feature_size": "@feature_size",
            "depths": "@depths",
            "num_heads": "@num_heads",
            "norm_name": "instance",
            "use_flash_attention": True,
            "prune_stages": "@prune_stages",
            "executor": "@executor",
            "fill": "@fill",
            "decode_region": "@decode_region",
            "decode_margin": "@decode_margin",
        },
        "stages": [1, 2],
        # STP's MTA attends within Swin's 7 x 7 windows: global attention over the 56 x 56 tokens of the first pruned
        # grid would cost more than pruning saves (docs/pruners/stp.md)
        "completion_window": 7,
        "tiny": TINY_NETWORKS["swin_unetr"],
        "small": {"feature_size": 24, "depths": [2, 2, 2, 2], "num_heads": [3, 6, 12, 24]},
        "reference": "Hatamizadeh et al., Swin UNETR: Swin Transformers for Semantic Segmentation of Brain Tumors "
                     "in MRI Images, BrainLes 2021",
    },
    "transunet": {
        "title": "TransUNet (R50 + ViT-B/16)",
        "keys": {"hidden_size": 768, "mlp_dim": 3072, "num_heads": 12, "num_layers": 12, "cnn_layers": [3, 4, 9],
                 "cnn_width": 64, "head_channels": 512, "decoder_channels": [256, 128, 64, 16]},
        "network_def": {
            "_target_": "prato_components.networks.TransUNet",
            "in_channels": "@in_channels",
            "out_channels": "@out_channels",
            "img_size": "$[@image_size, @image_size]",
            "cnn_layers": "@cnn_layers",
            "cnn_width": "@cnn_width",
            "hidden_size": "@hidden_size",
            "mlp_dim": "@mlp_dim",
            "num_layers": "@num_layers",
            "num_heads": "@num_heads",
            "head_channels": "@head_channels",
            "decoder_channels": "@decoder_channels",
            "prune_stages": "@prune_stages",
            "executor": "@executor",
            "fill": "@fill",
            "decode_region": "@decode_region",
            "decode_margin": "@decode_margin",
        },
        "stages": [1, 2],
        "completion_taps": [4],  # the upsampler reads the final grid only (tap 4 in UNETR's numbering)
        "tiny": TINY_NETWORKS["transunet"],
        "small": {"hidden_size": 192, "mlp_dim": 768, "num_heads": 3, "num_layers": 12, "cnn_layers": [1, 2, 2],
                  "cnn_width": 32, "head_channels": 128, "decoder_channels": [64, 32, 16, 16]},
        "reference": "Chen et al., TransUNet: Transformers Make Strong Encoders for Medical Image Segmentation, 2021",
    },
    "segformer": {
        "title": "SegFormer-B0 (MiT encoder + all-MLP head)",
        "keys": {"variant": "b0"},
        "network_def": {
            "_target_": "prato_components.networks.SegFormer",
            "variant": "@variant",
            "in_channels": "@in_channels",
            "out_channels": "@out_channels",
            "prune_stages": "@prune_stages",
            "executor": "@executor",
            "fill": "@fill",
            "decode_region": "@decode_region",
            "decode_margin": "@decode_margin",
        },
        "stages": [1, 2],
        "tiny": TINY_NETWORKS["segformer"],
        "small": {"variant": "b0"},  # SegFormer-B0 is already small (3.7 M parameters)
        "reference": "Xie et al., SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers, "
                     "NeurIPS 2021",
    },
}

# Each pruner: its pruner_def block (a factory: the network fills in each stage's width), extra top-level keys.
PRUNER_CONFIGS: dict[str, dict] = {
    "baseline": {"pruner": None, "title": "no pruning (baseline)"},
    "prato": {
        "title": "PrATo (prompt-based adaptive token pruning)",
        "pruner": {
            "_target_": "prato_components.pruners.PrATo",
            "keep_ratio": "@keep_ratio",
            "roi_size": 5,
            "proj_dim": 64,
            "threshold": "percentile",
            "tau": 0.5,
            "entropy_weighting": True,
            "scoring": "roi_align",
            "protect_boxes": "@protect_boxes",
        },
        "keys": {"protect_boxes": True, "decode_region": "box"},
    },
    "stp": {
        "title": "STP + MTA (sparse token pruning with multi-layer token assembly)",
        "pruner": {"_target_": "prato_components.pruners.STP", "keep_ratio": "@keep_ratio", "tau": 1.0},
        "network_extra": {"completion": {"_target_": "prato_components.pruners.MultiLayerTokenAssembly",
                                         "spatial_dims": 2, "depth": 1}},
    },
    "dynamicvit": {
        "title": "DynamicViT",
        "pruner": {"_target_": "prato_components.pruners.DynamicViT", "keep_ratio": "@keep_ratio",
                   "ratio_weight": 2.0, "tau": 1.0},
    },
    "evovit": {
        "title": "Evo-ViT (slow-fast token evolution)",
        "pruner": {"_target_": "prato_components.pruners.EvoViT", "keep_ratio": "@keep_ratio", "smoothing": 0.5},
    },
    "dtop": {
        "title": "DToP (dynamic token pruning with auxiliary heads)",
        "pruner": {"_target_": "prato_components.pruners.DToP", "keep_ratio": "@keep_ratio",
                   "num_classes": "@out_channels", "confidence": 0.9, "keep_per_class": 5, "budget": "topk"},
    },
    "tram": {
        "title": "TRAM (attention-graph centrality)",
        "pruner": {"_target_": "prato_components.pruners.TRAM", "keep_ratio": "@keep_ratio"},
    },
    "random": {
        "title": "random token masking",
        "pruner": {"_target_": "prato_components.pruners.RandomPruner", "keep_ratio": "@keep_ratio", "seed": 0},
    },
}

ALL_PRUNERS = ["baseline", "prato", "stp", "dynamicvit", "evovit", "dtop", "tram", "random"]
# the pairings that exist: every pruner on every backbone. On the hierarchical ones (Swin UNETR, SegFormer) one pruner
# is built per stage at its width, the attention-based methods (Evo-ViT, TRAM) read window / spatial-reduction
# attention, and STP's MTA is one assembly per tap at its width (docs/pruners/, "On Swin UNETR and SegFormer")
PRUNERS_BY_BACKBONE = {"unetr": ALL_PRUNERS, "transunet": ALL_PRUNERS, "swin_unetr": ALL_PRUNERS,
                       "segformer": ALL_PRUNERS}
BUNDLES = [f"{backbone}_{pruner}" for backbone, pruners in PRUNERS_BY_BACKBONE.items() for pruner in pruners]

AUTHORS = "PrATo bundles contributors"
COPYRIGHT = "Copyright (c) PrATo bundles contributors"
MONAI_VERSION = "1.6.1"
PYTORCH_VERSION = "2.13.0"
NUMPY_VERSION = "2.4.6"


def backbone_spec(backbone: str) -> dict:
    """The specification of a 2D (``BACKBONES``) or 3D (``BACKBONES_3D``) backbone."""
    return BACKBONES[backbone] if backbone in BACKBONES else BACKBONES_3D[backbone]


# network keys that only a pruned network reads
PRUNING_KEYS = ("prune_stages", "executor", "fill")


def pruner_def(name: str) -> dict | None:
    """The ``pruner_def`` block of bundle ``name``: the pruner ``network_def`` builds (``None`` for the baseline),
    the only block that differs between a backbone's bundles. Every backbone takes the pruner class as a factory
    (``_mode_: callable``) and builds one per pruned stage at that stage's width, on a random stream of its own, so a
    pruned bundle and its baseline start from the same backbone weights at one seed (docs/design.md §5)."""
    backbone, pruner = split_bundle_name(name)
    if pruner not in PRUNER_CONFIGS:
        raise ValueError(f"unknown pruner {pruner!r} in bundle {name!r}; choose from {sorted(PRUNER_CONFIGS)}")
    block = copy.deepcopy(PRUNER_CONFIGS[pruner]["pruner"])
    if block is None:
        return None
    return {"_target_": block.pop("_target_"), "_mode_": "callable", **block}


def _network_block(name: str) -> dict:
    """The network of bundle ``name`` with its completion written in place (``network_def`` moves it out)."""
    backbone, pruner = split_bundle_name(name)
    spec, pruner_spec = backbone_spec(backbone), PRUNER_CONFIGS[pruner]
    net = copy.deepcopy(spec["network_def"])
    if pruner_spec["pruner"] is None:  # the baseline: nothing to prune, so no pruning keys
        for key in PRUNING_KEYS:
            net.pop(key, None)
    net["pruner"] = "@pruner_def"
    net.update(copy.deepcopy(pruner_spec.get("network_extra", {})))
    if "completion" in net:  # a learned fill's position embedding has the network's dimensionality
        net["completion"]["spatial_dims"] = spec["network_def"].get("spatial_dims", 2)
    if "completion" in net:  # a factory: the network builds it at its width (one per tap where widths differ)
        completion = dict(net["completion"])
        if "completion_window" in spec:
            completion["window_size"] = spec["completion_window"]
        if "completion_taps" in spec:  # a learned fill only where this decoder reads the grid
            completion["taps"] = list(spec["completion_taps"])
        net["completion"] = {"_target_": completion.pop("_target_"), "_mode_": "callable", **completion}
    return net


def network_def(name: str) -> dict:
    """The ``network_def`` of bundle ``name``: the backbone, its pruner from ``@pruner_def`` and, where the pruner
    has one, its learned completion from ``@completion_def`` (so ``network_def`` is the same in every pruned bundle
    of a backbone, apart from that reference)."""
    net = _network_block(name)
    if "completion" in net:
        net["completion"] = "@completion_def"
    return net


def completion_def(name: str) -> dict:
    """``{"completion_def": block}`` for a pruner with a learned completion (STP's MTA), written next to
    ``pruner_def``; ``{}`` otherwise."""
    net = _network_block(name)
    return {"completion_def": net["completion"]} if "completion" in net else {}


# ----------------------------------------------------------------------------------------------- configs
# Every config reads top to bottom: a key is defined before any ``@key`` that uses it (``forward_references``, run by
# ``check``). train.json: settings, data set, network (``pruner_def`` then ``network_def``), data loading written out
# as transforms, loss and optimiser, validation, training, initialize / run. evaluate.json: an overlay on train.json
# with what evaluation changes. inference.json: standalone, as in the MONAI Model Zoo.
IMPORTS = ["$import os", "$import torch", "$import monai", "$import prato_components",
           "$import prato_components.bundle", "$import prato_components.engine", "$import prato_components.prompts"]


# pixels around the prompt boxes that box decoding adds (docs/design.md §6.1: chosen from the measured Dice / latency
# trade-off in docs/notes/issue12.md)
DECODE_MARGIN = 16


# first in every "initialize": unknown override keys (``--epoch`` for ``--epochs``) stop the run with a suggestion
CHECK_OVERRIDES = "$prato_components.bundle.check_overrides()"
AMP = "$@device.type == 'cuda'"  # mixed precision (MONAI's trainer / evaluators) wherever the device is a GPU


def check_settings(config: dict) -> str:
    """Second in every "initialize": the values of ``config``'s user settings (types, ranges, names), so that
    ``--image_size [96,96]`` is named at start rather than failing inside a transform."""
    values = ", ".join(f"'{key}': @{key}" for key in SETTING_RULES if key in config)
    return f"$prato_components.bundle.check_settings({{{values}}})"


def network_settings(config: dict) -> dict:
    """``{key: "@key"}`` for the top-level keys ``network_def`` and its ``pruner_def`` read: what every checkpoint
    records."""
    blocks = [config["network_def"], config.get("pruner_def"), config.get("completion_def")]
    read = set(re.findall(r"@(\w+)", json.dumps(blocks)))
    return {key: f"@{key}" for key in config if key in read and key not in ("pruner_def", "completion_def")}


# network settings added after checkpoints were first written: the value such a checkpoint was trained with
LEGACY_SETTINGS = {"decode_region": "full"}
CKPT_PATH = "$os.path.join(@ckpt_dir, 'model.pt')"
TRAINED = "$prato_components.engine.trained_settings(@ckpt_path)"
CHECK_TRAINED = "$prato_components.engine.check_trained_settings(@trained, @network_settings, @ckpt_path)"


def trained_settings(config: dict) -> dict:
    """Each network setting of ``config`` as the checkpoint at ``ckpt_path`` records it (the literal default when it
    records none), for evaluate / inference: they build the network the checkpoint was trained with, and a run whose
    overrides contradict it stops at start naming the keys (``CHECK_TRAINED``; channels and classes follow the data
    set and are checked the same way)."""
    out = {}
    for key in network_settings(config):
        if key in LEGACY_SETTINGS:  # a checkpoint from before the setting existed was trained the old way
            out[key] = f"$@trained.get({key!r}, {LEGACY_SETTINGS[key]!r} if @trained else {config[key]!r})"
        elif key not in ("in_channels", "out_channels"):
            out[key] = f"$@trained.get({key!r}, {config[key]!r})"
    return out


def common(name: str, trained: bool = False) -> dict:
    """Keys shared by train and inference, in dependency order; ``trained``: the network settings follow the
    checkpoint at ``ckpt_path`` (inference)."""
    backbone, pruner = split_bundle_name(name)
    config = {
        "imports": IMPORTS,
        "bundle_root": f"$'bundles/{name}' if os.path.isdir('bundles/{name}/configs') else '.'",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "amp": AMP,
        "ckpt_dir": "$os.path.join(@bundle_root, 'models')",
        "output_dir": "$os.path.join(@bundle_root, 'eval')",
        **({"ckpt_path": CKPT_PATH, "trained": TRAINED} if trained else {}),
        "dataset": "acdc",
        "dataset_dir": "/data/ACDC",
        "datalist_path": "$os.path.join(@ckpt_dir, 'datalist_' + @dataset + '.json')",
        "spec": "$prato_components.bundle.dataset_spec(@dataset, @dataset_dir)",
        "in_channels": "$@spec['in_channels']",
        "out_channels": "$@spec['out_channels']",
        "image_size": 224,
        "seed": 0,
        "num_workers": "$prato_components.bundle.default_num_workers()",
        **({} if pruner == "baseline" else {  # an unpruned network has no budget, stages or executor to set
            "keep_ratio": 0.75,
            "prune_stages": backbone_spec(backbone)["stages"],
            "executor": "gather",
            "fill": "carry",
        }),
        "decode_region": "full",
        "decode_margin": DECODE_MARGIN,
        "prompt_boxes": "union",
        **PRUNER_CONFIGS[pruner].get("keys", {}),
        **backbone_spec(backbone)["keys"],
        "pruner_def": pruner_def(name),
        **completion_def(name),
        "network_def": network_def(name),
        "network": "$@network_def.to(@device)",
    }
    # recorded in every checkpoint (prato_components.engine.checkpoint), so a trained network knows how it was built
    config["network_settings"] = network_settings(config)
    config["prepare_batch"] = {"_target_": "PrepareBatchExtraInput", "extra_keys": {"boxes": "box"}}
    config["inferer"] = {"_target_": "prato_components.engine.PromptedInferer", "spatial_dims": 2}
    if backbone in BACKBONES_3D:
        config = _common_3d(config)
    if trained:
        config.update(trained_settings(config))
    return config


def _load(keys: list[str]) -> dict:
    """MONAI's ``LoadImaged`` (channel first) whose read errors name the file."""
    return {"_target_": "prato_components.data.SafeLoadImaged", "keys": keys, "ensure_channel_first": True,
            "image_only": True}


def _loading_by_dataset() -> dict:
    """Per data set, how a labelled 2D item is read: ACDC and MSD / BTCV volumes served as slices (the item's
    ``slice``), ACDC labels checked against its four values, ISIC masks (0/255) binarised."""
    keys = ["image", "label"]
    load, slice_ = _load(keys), {"_target_": "prato_components.data.ExtractSliced", "keys": keys, "slice_key": "slice"}
    return {
        "acdc": [load, slice_, {"_target_": "prato_components.data.CheckLabelValuesd", "keys": "label",
                                "allowed": [0, 1, 2, 3]}],
        "isic": [load, {"_target_": "prato_components.data.BinarizeMaskd", "keys": "label"}],
        "decathlon": [load, slice_],
        "btcv": [load, slice_],
    }


def _intensity_and_size(keys: list[str], modes: list[str], spatial_size: object) -> list[dict]:
    """Scale to [0, 1] (0.5-99.5 percentiles per channel) and resize to the network input."""
    return [
        {"_target_": "ScaleIntensityRangePercentilesd", "keys": "image", "lower": 0.5, "upper": 99.5,
         "b_min": 0.0, "b_max": 1.0, "clip": True, "channel_wise": True},
        {"_target_": "Resized", "keys": keys, "spatial_size": spatial_size, "mode": modes},
    ]


def _labelled_preprocessing() -> dict:
    """``loading_by_dataset`` and ``preprocessing``: read a labelled slice / image the way its data set needs, scale
    and resize (shared by training, validation and evaluation)."""
    return {
        "loading_by_dataset": _loading_by_dataset(),
        "preprocessing": [
            {"_target_": "Compose", "transforms": "$@loading_by_dataset[@dataset.lower()]"},
            *_intensity_and_size(["image", "label"], ["bilinear", "nearest"], ["@image_size", "@image_size"]),
        ],
    }


def _box_from_label() -> dict:
    # prompt_boxes "union": one box around all structures (the paper); "per_class": one row per foreground class,
    # absent classes as padding rows, so every image has out_channels - 1 rows and batches stack
    return {"_target_": "prato_components.prompts.BoxFromLabeld", "keys": "label", "box_key": "box",
            "per_class": "$prato_components.bundle.per_class_prompt(@prompt_boxes)",
            "classes": "$list(range(1, @out_channels)) if prato_components.bundle.per_class_prompt(@prompt_boxes) "
                       "else None",
            "on_empty": "full"}


TO_TENSOR = {"_target_": "EnsureTyped", "keys": ["image", "label", "box"], "track_meta": False}


def _metric_handlers(prefix: str, details: bool) -> dict:
    out = {
        f"{prefix}_mean_dice": {"_target_": "MeanDice", "include_background": False,
                                "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
                                "save_details": True},  # per-class Dice (validation: val_per_class.json)
    }
    if details:
        out[f"{prefix}_mean_iou"] = {"_target_": "MeanIoUHandler", "include_background": False,
                                     "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
                                     "save_details": True}
        out[f"{prefix}_hd95"] = {"_target_": "HausdorffDistance", "include_background": False, "percentile": 95,
                                 "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
                                 "save_details": True}
    return out


def _postprocessing() -> dict:
    return {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": ["pred", "label"], "argmax": [True, False],
             "to_onehot": "$[@out_channels, @out_channels]"},
        ],
    }


def _validate() -> dict:
    """The ``validate`` block: the tight box from the label, the validation split, the best model by mean Dice."""
    return {
        "prompt": [_box_from_label()],
        "to_tensor": [TO_TENSOR],
        "preprocessing": {"_target_": "Compose",
                          "transforms": "$@preprocessing + @validate#prompt + @validate#to_tensor"},
        "dataset": {"_target_": "CacheDataset", "data": "$@splits['validation']",
                    "transform": "@validate#preprocessing", "cache_rate": "@cache_rate", "num_workers": "@num_workers"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@validate#dataset", "batch_size": "@batch_size",
                       "shuffle": False, "num_workers": "@num_workers"},
        "inferer": "@inferer",
        "postprocessing": _postprocessing(),
        "key_metric": _metric_handlers("val", details=False),
        "handlers": [
            {"_target_": "prato_components.engine.TokenSparsityHandler", "network": "@network", "prefix": "val_"},
            {"_target_": "StatsHandler", "iteration_log": False},
            {"_target_": "prato_components.engine.PerClassHistory",
             "path": "$os.path.join(@ckpt_dir, 'val_per_class.json')", "class_names": "$@spec['class_names']",
             "metric_name": "val_mean_dice"},
            {"_target_": "prato_components.engine.BestModelSaver", "save_dir": "@ckpt_dir",
             "network": "@network", "metric_name": "val_mean_dice", "settings": "@network_settings"},
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "amp": "@amp",
            "val_data_loader": "@validate#dataloader",
            "network": "@network",
            "inferer": "@validate#inferer",
            "prepare_batch": "@prepare_batch",
            "postprocessing": "@validate#postprocessing",
            "key_val_metric": "@validate#key_metric",
            "val_handlers": "@validate#handlers",
        },
    }


def _train(pruned: bool) -> dict:
    """The ``train`` block: augmentation, a jittered box from the augmented label, the trainer and its handlers."""
    return {
        "augmentation": [
            {"_target_": "RandFlipd", "keys": ["image", "label"], "prob": 0.5, "spatial_axis": 0},
            {"_target_": "RandFlipd", "keys": ["image", "label"], "prob": 0.5, "spatial_axis": 1},
            {"_target_": "RandAffined", "keys": ["image", "label"], "prob": 0.5, "rotate_range": 0.26,
             "scale_range": 0.1, "mode": ["bilinear", "nearest"], "padding_mode": "zeros"},
            {"_target_": "RandScaleIntensityd", "keys": "image", "factors": 0.1, "prob": 0.3},
            {"_target_": "RandShiftIntensityd", "keys": "image", "offsets": 0.1, "prob": 0.3},
            {"_target_": "RandGaussianNoised", "keys": "image", "prob": 0.15, "std": 0.03},
        ],
        "prompt": [
            _box_from_label(),
            {"_target_": "prato_components.prompts.RandJitterBoxd", "box_key": "box", "prob": 0.8,
             "max_shift_fraction": 0.1, "max_scale_fraction": 0.1},
            {"_target_": "prato_components.prompts.ClipBoxd", "box_key": "box", "image_key": "image"},
            TO_TENSOR,
        ],
        "preprocessing": {"_target_": "Compose",
                          "transforms": "$@preprocessing + @train#augmentation + @train#prompt"},
        "dataset": {"_target_": "CacheDataset", "data": "$@splits['training']", "transform": "@train#preprocessing",
                    "cache_rate": "@cache_rate", "num_workers": "@num_workers"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@train#dataset", "batch_size": "@batch_size",
                       "shuffle": True, "num_workers": "@num_workers"},
        "inferer": "@inferer",
        "handlers": [
            *([{"_target_": "prato_components.engine.PruningWarmup", "network": "@network",
                "warmup_epochs": "@warmup_epochs", "ramp_epochs": "@ramp_epochs"}] if pruned else []),
            {"_target_": "LrScheduleHandler", "lr_scheduler": "@lr_scheduler", "print_lr": True},
            {"_target_": "ValidationHandler", "validator": "@validate#evaluator", "epoch_level": True,
             "interval": "@val_interval"},
            {"_target_": "StatsHandler", "tag_name": "train_loss",
             "output_transform": "$monai.handlers.from_engine(['loss'], first=True)"},
            {"_target_": "prato_components.engine.TrainingCheckpoint", "save_dir": "@ckpt_dir",
             "save_dict": {"network": "@network", "optimizer": "@optimizer", "lr_scheduler": "@lr_scheduler"},
             "resume": "@resume", "settings": "@network_settings"},
        ],
        "trainer": {
            "_target_": "SupervisedTrainer",
            "max_epochs": "@epochs",
            "device": "@device",
            "amp": "@amp",
            "train_data_loader": "@train#dataloader",
            "network": "@network",
            "optimizer": "@optimizer",
            "loss_function": "@loss",
            "inferer": "@train#inferer",
            "prepare_batch": "@prepare_batch",
            "train_handlers": "@train#handlers",
        },
    }


SPLITS = "$prato_components.bundle.bundle_splits(@dataset, @dataset_dir, @datalist_path, @seed)"


def train_config(name: str) -> dict:
    """``train.json``: the settings and network (``common``), the training settings, data loading, loss and optimiser,
    ``validate`` (used by training's ``ValidationHandler``), then ``train``."""
    config = common(name)
    pruned = split_bundle_name(name)[1] != "baseline"
    config.update({
        "epochs": 100,
        "batch_size": 8,
        "learning_rate": 1e-4,
        "val_interval": 1,
        **({"warmup_epochs": 0, "ramp_epochs": 0} if pruned else {}),
        "cache_rate": 1.0,
        "resume": True,
        "splits": SPLITS,
        **_labelled_preprocessing(),  # loading and normalisation, shared by train, validate and evaluate.json
        "loss": {"_target_": "prato_components.engine.PrunedSegLoss",
                 "loss": {"_target_": "DiceCELoss", "to_onehot_y": True, "softmax": True},
                 "network": "@network"},
        "optimizer": {"_target_": "torch.optim.AdamW", "params": "$@network.parameters()", "lr": "@learning_rate",
                      "weight_decay": 1e-5},
        "lr_scheduler": {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "optimizer": "@optimizer",
                         "T_max": "@epochs"},
        "validate": _validate(),
        "train": _train(pruned),
        "initialize": [CHECK_OVERRIDES, "$monai.utils.set_determinism(seed=@seed)",
                       "$os.makedirs(@ckpt_dir, exist_ok=True)"],
        "run": ["$@train#trainer.run()"],
    })
    config["initialize"].insert(1, check_settings(config))
    return config


def evaluate_config(name: str) -> dict:
    """``evaluate.json``, an overlay on ``train.json`` (``--config_file "['train.json','evaluate.json']"``): the
    network the checkpoint was trained with, the test split with the chosen box prompt, Dice / IoU / HD95 and the
    evaluation report."""
    train = train_config(name)
    config = {
        "ckpt_path": CKPT_PATH,
        "trained": TRAINED,
        **trained_settings(train),
        "prompt": "tight",
        "prompt_factor": None,
        "split": "test",
        "latency_repeats": 5,
        "test": {
            "prompt": "$@validate#prompt + prato_components.bundle.prompt_transforms(@prompt, @prompt_factor)",
            "preprocessing": {"_target_": "Compose",
                              "transforms": "$@preprocessing + @test#prompt + @validate#to_tensor"},
            "dataset": {"_target_": "Dataset", "data": "$@splits[@split]", "transform": "@test#preprocessing"},
            "dataloader": {"_target_": "DataLoader", "dataset": "@test#dataset", "batch_size": "@batch_size",
                           "shuffle": False, "num_workers": "@num_workers"},
        },
        "metrics": {k.removeprefix("eval_"): v for k, v in _metric_handlers("eval", details=True).items()},
        "handlers": [
            {"_target_": "CheckpointLoader",
             "load_path": "$prato_components.bundle.require_file(@ckpt_path, 'checkpoint')",
             "load_dict": {"model": "@network"}, "map_location": "@device"},
            {"_target_": "prato_components.engine.TokenSparsityHandler", "network": "@network"},
            {"_target_": "StatsHandler", "iteration_log": False},
            {"_target_": "prato_components.engine.EvaluationReport", "output_dir": "@output_dir",
             "class_names": "$@spec['class_names']", "metric_names": ["mean_dice", "mean_iou", "hd95"],
             "network": "@network", "input_shape": "$[@in_channels, @image_size, @image_size]",
             "latency_repeats": "@latency_repeats"},
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "amp": "@amp",
            "val_data_loader": "@test#dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "prepare_batch": "@prepare_batch",
            "postprocessing": "@validate#postprocessing",
            "key_val_metric": "$@metrics",
            "val_handlers": "@handlers",
        },
        "initialize": [CHECK_OVERRIDES, "$monai.utils.set_determinism(seed=@seed)"],
        "run": ["$@evaluator.run()"],
    }
    config["initialize"][1:1] = [check_settings({**train, **config}), CHECK_TRAINED]
    return config


def inference_config(name: str) -> dict:
    """``inference.json`` (standalone): images and their user boxes, the box carried through the resize as a mask,
    the prediction inverted to the image's grid and saved."""
    config = common(name, trained=True)
    config["imports"] = IMPORTS + ["$import numpy"]
    config.update({
        "input_dir": "$os.path.join(@bundle_root, 'sample_data')",
        "boxes_file": None,
        "allow_missing_boxes": False,
        "spatial_size": "$[@image_size, @image_size] + ([-1] if @spec['volumetric'] else [])",
        "datalist": "$prato_components.bundle.inference_datalist(@input_dir, @boxes_file, @allow_missing_boxes)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                _load(["image"]),
                {"_target_": "prato_components.prompts.ValidateBoxd", "box_key": "box", "image_key": "image"},
                {"_target_": "prato_components.prompts.BoxToMaskd", "box_key": "box", "image_key": "image",
                 "mask_key": "box_mask"},
                *_intensity_and_size(["image", "box_mask"], ["bilinear", "nearest"], "@spatial_size"),
                {"_target_": "prato_components.prompts.MaskToBoxd", "mask_key": "box_mask", "box_key": "box"},
                {"_target_": "EnsureTyped", "keys": "image"},
                {"_target_": "EnsureTyped", "keys": "box", "track_meta": False},
            ],
        },
        "infer": {
            "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
            "dataloader": {"_target_": "DataLoader", "dataset": "@infer#dataset", "batch_size": 1, "shuffle": False,
                           "num_workers": "@num_workers"},
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
                 "nearest_interp": False, "to_tensor": True},
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {"_target_": "Lambdad", "keys": "pred", "func": "$lambda x: x * @spec['output_scale']"},
                {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
                 "output_ext": "$@spec['output_ext']", "output_dtype": "$numpy.uint8", "resample": False,
                 "separate_folder": False, "print_log": True},
            ],
        },
        "handlers": [
            {"_target_": "CheckpointLoader",
             "load_path": "$prato_components.bundle.require_file(@ckpt_path, 'checkpoint')",
             "load_dict": {"model": "@network"}, "map_location": "@device"},
            {"_target_": "StatsHandler", "iteration_log": False},
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "amp": "@amp",
            "val_data_loader": "@infer#dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "prepare_batch": "@prepare_batch",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
        },
        "initialize": [CHECK_OVERRIDES, "$monai.utils.set_determinism(seed=@seed)"],
        "run": ["$@evaluator.run()"],
    })
    config["initialize"][1:1] = [check_settings(config), CHECK_TRAINED]
    return config


# ----------------------------------------------------------------------------------------------- reading order
REFERENCE = re.compile(r"@(\w+(?:#\w+)*)")


def _reading_events(node: object, node_id: str, events: list[tuple[str, str, str | None]]) -> None:
    """What a reader meets in ``node`` (id ``node_id``) in file order: ``("use", id, ref)`` for each ``@ref`` in a
    value or ``$`` expression, and ``("define", id, None)`` once the node and everything under it has been read."""
    if isinstance(node, str):
        events.extend(("use", node_id, ref) for ref in REFERENCE.findall(node))
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in children:
        _reading_events(value, f"{node_id}#{key}", events)
    events.append(("define", node_id, None))


def forward_references(configs: Sequence[dict], names: Sequence[str] | None = None) -> list[str]:
    """One message per ``@`` reference of ``configs`` that a reader meets before the key it names is defined.

    ``configs`` are read in order, as MONAI merges an overlay chain (``['train.json', 'evaluate.json']``), so a key of
    an earlier config counts as defined. A key counts as defined once it has been read to its end (a reference from
    inside the node it names is a cycle); ``@a#b`` is defined once ``a#b`` or ``a`` is."""
    names = list(names) if names is not None else [f"config {i}" for i in range(len(configs))]
    defined: set[str] = set()
    problems = []
    for name, config in zip(names, configs):
        events: list[tuple[str, str, str | None]] = []
        for key, value in config.items():
            _reading_events(value, key, events)
        for kind, node_id, ref in events:
            if kind == "define":
                defined.add(node_id)
                continue
            parts = ref.split("#")
            if not any("#".join(parts[:n]) in defined for n in range(1, len(parts) + 1)):
                problems.append(f"{name}: {node_id} uses @{ref} before it is defined")
    return problems


def multi_gpu_config(name: str) -> dict:
    """Overlay on ``train.json`` for ``torchrun`` (NCCL on GPUs, gloo on CPU)."""
    return {
        "device": "$torch.device('cuda:' + os.environ.get('LOCAL_RANK', '0') if torch.cuda.is_available() else 'cpu')",
        "backend": "$'nccl' if torch.cuda.is_available() else 'gloo'",
        "network": {
            "_target_": "torch.nn.parallel.DistributedDataParallel",
            "module": "$@network_def.to(@device)",
            "device_ids": "$[@device] if torch.cuda.is_available() else None",
            "find_unused_parameters": True,
        },
        "train#sampler": {"_target_": "DistributedSampler", "dataset": "@train#dataset", "even_divisible": True,
                          "shuffle": True},
        "train#dataloader#sampler": "@train#sampler",
        "train#dataloader#shuffle": False,
        # every rank keeps TrainingCheckpoint (it resumes all ranks from last.pt; only rank 0 writes), LR schedule
        # and validation (metrics are gathered across ranks); ranks > 0 drop the console logging
        "train#trainer#train_handlers": "$@train#handlers if torch.distributed.get_rank() == 0 else "
                                        "[h for h in @train#handlers if not isinstance(h, monai.handlers.StatsHandler)]",
        "validate#sampler": {"_target_": "DistributedSampler", "dataset": "@validate#dataset",
                             "even_divisible": False, "shuffle": False},
        "validate#dataloader#sampler": "@validate#sampler",
        "validate#evaluator#val_handlers": "$@validate#handlers if torch.distributed.get_rank() == 0 else None",
        "initialize": [
            CHECK_OVERRIDES,
            check_settings(train_config(name)),
            "$import torch.distributed as dist",
            "$dist.is_initialized() or dist.init_process_group(backend=@backend)",
            "$torch.cuda.set_device(@device) if torch.cuda.is_available() else None",
            "$monai.utils.set_determinism(seed=@seed)",
            "$os.makedirs(@ckpt_dir, exist_ok=True)",
        ],
        "run": ["$@train#trainer.run()"],
        # every rank finishes (rank 0 writes the checkpoints last) before the process group is torn down; without
        # the barrier a CI run saw rank 1 abort in teardown ("terminate called without an active exception")
        # while rank 0 was still writing
        "finalize": ["$dist.is_initialized() and dist.barrier()", "$dist.is_initialized() and dist.destroy_process_group()"],
    }


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
        "label_classes": "ACDC: 0 background, 1 right ventricle, 2 myocardium, 3 left ventricle; ISIC: 0 skin, 1 lesion",
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


LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""


def readme(name: str) -> str:
    backbone, pruner = split_bundle_name(name)
    title = f"{BACKBONES[backbone]['title']} with {PRUNER_CONFIGS[pruner]['title']}"
    notes = []
    for path in (os.path.join(ROOT, "docs", "backbones", f"{backbone}.md"), os.path.join(ROOT, "docs", "pruners", f"{pruner}.md")):
        if os.path.exists(path):
            with open(path) as f:
                notes.append(f.read().strip())
    notes = "\n\n".join(notes)
    pruning_keys = "" if pruner == "baseline" else (
        "`keep_ratio`, `prune_stages`, `executor` (`gather` | `padded` | `mask` |\n`attention_mask`), `fill` "
        "(`carry` | `zero`), `warmup_epochs`, `ramp_epochs`, ")
    return BUNDLE_README.format(name=name, title=title, notes=notes, pruning_keys=pruning_keys).rstrip() + "\n"


BUNDLE_README = """# {name}: {title}

A MONAI bundle of the PrATo bundles collection: 2D segmentation with a box prompt, called as
`network(image, boxes)`. It needs the `prato_components` package (`pip install -e .` in the repository).

## Commands (from the repository root)

Train (writes `models/last.pt` every epoch, resumes from it, keeps the best as `models/model.pt`):

    python -m monai.bundle run --config_file bundles/{name}/configs/train.json \\
        --dataset acdc --dataset_dir /data/ACDC --epochs 100

Evaluate on the test split (per-class Dice, IoU, HD95, token sparsity, GFLOPs, CPU latency to
`eval/metrics.json` and `eval/metrics.csv`); `evaluate.json` is an overlay on `train.json`, as in the MONAI Model
Zoo, so both are given, in that order:

    python -m monai.bundle run \\
        --config_file "['bundles/{name}/configs/train.json','bundles/{name}/configs/evaluate.json']" \\
        --dataset acdc --dataset_dir /data/ACDC

Segment new images with box prompts (see "Box prompts" below); writes `<image>_seg.nii.gz` / `.png` to `eval/`:

    python -m monai.bundle run --config_file bundles/{name}/configs/inference.json --dataset acdc --input_dir /my/images

Multi-GPU (or several CPU processes with gloo):

    torchrun --nproc_per_node=2 -m monai.bundle run \\
        --config_file "['bundles/{name}/configs/train.json','bundles/{name}/configs/multi_gpu_train.json']" ...

## Keys to override

`dataset` (`acdc` | `isic` | `decathlon`; sets channels, classes, loading and output format), `dataset_dir`,
`image_size`, `epochs`, `batch_size`, `learning_rate`, `val_interval`, `num_workers`, `device`, `bundle_root`,
`output_dir`, `ckpt_dir`, {pruning_keys}`decode_region` (`full` | `box`: run the decoder only over the prompt
boxes plus `decode_margin` pixels, background outside; default `box` in PrATo bundles, `full` elsewhere),
`decode_margin`, `resume`, `amp` (mixed precision; default: on with CUDA); in `evaluate.json` also `prompt` (`tight` |
`oversized` | `partial` | `misleading`), `prompt_factor`, `split`; in `inference.json` `input_dir`, `boxes_file`,
`allow_missing_boxes`, `ckpt_path`. `bundle_root` defaults to `bundles/{name}` when run from the repository
root and to `.` otherwise. An unknown key stops the run at start and names the closest known one (`--epoch` ->
`epochs`). The defaults are the paper's network at 224 x 224 (a GPU job); on a CPU train a smaller one (the
repository README's `SMALL`). Checkpoints record the network settings, so `evaluate.json` and `inference.json` build
the trained network without repeating them (a contradicting override stops the run and names the keys).

## Configs

`configs/train.json` reads top to bottom, every key defined before it is used: the settings, the data set
(`spec`: channels, classes), the network widths, `pruner_def` (the pruner, the only block that differs between
this backbone's bundles; `null` in a baseline) and `network_def`, the training settings, the data loading written
out as MONAI transforms (`loading_by_dataset`: how each data set is read; `preprocessing`: that, scaled and
resized), loss and optimiser, `validate`, `train`, `initialize` and `run`. `configs/evaluate.json` holds only what
evaluation changes (the checkpoint's network settings, the test split and box prompt, the metrics and report);
`configs/inference.json` stands alone. Pruner options are overridden as `--pruner_def#<option> <value>`.

## Data

ACDC as shipped (`training/patientNNN/patientNNN_frameMM.nii.gz` + `_gt`), served as 2D short-axis slices and
split 80/10/10 by patient (saved as `models/datalist_acdc.json`, reused); ISIC 2017/2018 task 1 (`*.jpg` +
`*_segmentation.png`); MSD (`dataset.json`), served as slices. Images are scaled to [0, 1] (0.5-99.5
percentiles) and resized to `image_size` x `image_size`. Evaluation runs on the test split at the network's
resolution (per slice for volumes).

## Box prompts

Training derives one box around all foreground of the (augmented) label and jitters it; evaluation uses the
tight box (or a perturbed one, `prompt`). At inference each image needs a box in **voxel coordinates of the
image as loaded by MONAI** (axis i of the array; for PNG/JPG `(x, y)` = (column, row)), min corner then max
corner: `[x1, y1, x2, y2]` for 2D images, `[x1, y1, z1, x2, y2, z2]` for volumes (a 2D network then segments
every slice; slices outside the box's z-range get no prompt). Give them in a sidecar next to the image,
`<stem>.box.json` (`{{"boxes": [[x1, y1, x2, y2]]}}`) or `<stem>.box.csv` (`image,x1,y1,x2,y2` rows), or in one
file `--boxes_file boxes.json` (`{{"<image file name>": [[...]]}}`) or CSV. The preprocessing moves the box with
the image (it is carried as a mask through the resize), so it lands on the same anatomy.

{notes}
"""

LICENSE = """Apache License, Version 2.0

Copyright (c) PrATo bundles contributors

Licensed under the Apache License, Version 2.0 (the "License"); you may not use the files in this bundle except in
compliance with the License. You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software distributed under the License is distributed
on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the License for
the specific language governing permissions and limitations under the License.
"""


def bundle_files(name: str) -> dict[str, str]:
    """Relative path -> content of every generated file of bundle ``name``."""

    def dump(obj) -> str:
        return json.dumps(obj, indent=4) + "\n"

    three_d = name in BUNDLES_3D
    return {
        "configs/metadata.json": dump(metadata_3d(name) if three_d else metadata(name)),
        "configs/train.json": dump(train_config_3d(name) if three_d else train_config(name)),
        "configs/evaluate.json": dump(evaluate_config_3d(name) if three_d else evaluate_config(name)),
        "configs/inference.json": dump(inference_config_3d(name) if three_d else inference_config(name)),
        "configs/multi_gpu_train.json": dump(multi_gpu_config(name)),
        "configs/logging.conf": LOGGING_CONF,
        "docs/README.md": readme_3d(name) if three_d else readme(name),
        "LICENSE": LICENSE,
    }


# ----------------------------------------------------------------------------------------------- 3D bundles
# Issue 15: volumetric bundles with the same files and keys as the 2D ones. ``common`` adds the 3D keys
# (``_common_3d``); the ``*_3d`` functions below change what differs from the 2D templates: MONAI's 3D preprocessing
# written out as transforms (``_labelled_preprocessing_3d``), training on label-balanced crops of the window size,
# and the prompt-aware sliding window (``engine.PromptedSlidingWindowInferer``) for validation, evaluation and
# inference.
BACKBONES_3D: dict[str, dict] = {
    "unetr3d": {
        **BACKBONES["unetr"],
        "title": "UNETR-3D (ViT-B/16)",
        "network_def": {**BACKBONES["unetr"]["network_def"], "spatial_dims": 3},
        "tiny": TINY_NETWORKS["unetr3d"],
        "docs": "unetr",
    },
    "swin_unetr3d": {
        **BACKBONES["swin_unetr"],
        "title": "Swin UNETR-3D",
        "network_def": {**BACKBONES["swin_unetr"]["network_def"], "spatial_dims": 3},
        "tiny": TINY_NETWORKS["swin_unetr3d"],
        "docs": "swin_unetr",
    },
}
PRUNERS_BY_BACKBONE_3D = {"unetr3d": ["baseline", "prato", "stp"], "swin_unetr3d": ["baseline", "prato"]}
BUNDLES_3D = [f"{backbone}_{pruner}" for backbone, pruners in PRUNERS_BY_BACKBONE_3D.items() for pruner in pruners]
ALL_BUNDLES = BUNDLES + BUNDLES_3D

BTCV_LABELS = {"0": "background", "1": "spleen", "2": "right kidney", "3": "left kidney", "4": "gallbladder",
               "5": "esophagus", "6": "liver", "7": "stomach", "8": "aorta", "9": "inferior vena cava",
               "10": "portal and splenic veins", "11": "pancreas", "12": "right adrenal gland",
               "13": "left adrenal gland"}
WINDOW = "$[@image_size] * 3"  # the cubic network input: training crops and sliding windows


def _with_keys_after(config: dict, after: str, keys: dict) -> dict:
    """``config`` with ``keys`` inserted right after ``after`` (the generated JSON keeps a readable order)."""
    out = {}
    for key, value in config.items():
        out[key] = value
        if key == after:
            out.update(keys)
    return out


def _common_3d(config: dict) -> dict:
    """The 3D keys of ``common``: BTCV by default, a 96^3 window, the target spacing, and the sliding window."""
    config.update({"dataset": "btcv", "dataset_dir": "/data/BTCV", "image_size": 96})
    config = _with_keys_after(config, "image_size", {"pixdim": [1.5, 1.5, 2.0], "sw_batch_size": 4,
                                                     "sw_overlap": 0.25, "sw_mode": "constant"})
    config["inferer"] = {"_target_": "prato_components.engine.PromptedInferer", "spatial_dims": 3}
    return _with_keys_after(config, "inferer", {"sw_inferer": {
        "_target_": "prato_components.engine.PromptedSlidingWindowInferer", "roi_size": WINDOW,
        "sw_batch_size": "@sw_batch_size", "overlap": "@sw_overlap", "mode": "@sw_mode", "margin": "@decode_margin"}})


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
    """Token metrics over every computed window, windows computed / skipped, GFLOPs of one window."""
    for handler in handlers:
        if handler["_target_"] == "prato_components.engine.TokenSparsityHandler":
            handler["inferer"] = "@sw_inferer"
        if handler["_target_"] == "prato_components.engine.EvaluationReport":
            handler["input_shape"] = "$[@in_channels] + [@image_size] * 3"


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
    return config


def evaluate_config_3d(name: str) -> dict:
    """``evaluate.json`` of a 3D bundle (an overlay on its ``train.json``): whole test volumes, one at a time, the
    prompt-aware sliding window."""
    config = _with_keys_after(evaluate_config(name), "latency_repeats", {"batch_size": 1})
    config["evaluator"]["inferer"] = "@sw_inferer"
    _sliding_window_handlers(config["handlers"])
    return config


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
        {"_target_": "prato_components.prompts.BoxToMaskd", "box_key": "box", "image_key": "image",
         "mask_key": "box_mask"},
        *_orient_and_resample(keys),
        {"_target_": "Compose", "transforms": f"$@intensity_by_modality[{MODALITY}]"},
        {"_target_": "prato_components.prompts.MaskToBoxd", "mask_key": "box_mask", "box_key": "box"},
        {"_target_": "EnsureTyped", "keys": "image"},
        {"_target_": "EnsureTyped", "keys": "box", "track_meta": False},
    ]
    config["evaluator"]["inferer"] = "@sw_inferer"
    return config


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


def readme_3d(name: str) -> str:
    backbone, pruner = split_bundle_name(name)
    title = f"{backbone_spec(backbone)['title']} with {PRUNER_CONFIGS[pruner]['title']}"
    notes = []
    for path in (os.path.join(ROOT, "docs", "backbones", f"{backbone_spec(backbone)['docs']}.md"),
                 os.path.join(ROOT, "docs", "pruners", f"{pruner}.md")):
        if os.path.exists(path):
            with open(path) as f:
                notes.append(f.read().strip())
    pruning_keys = "" if pruner == "baseline" else (
        "`keep_ratio`, `prune_stages`, `executor`, `fill`, `warmup_epochs`, `ramp_epochs`, ")
    return BUNDLE_README_3D.format(name=name, title=title, notes="\n\n".join(notes),
                                   pruning_keys=pruning_keys).rstrip() + "\n"


BUNDLE_README_3D = """# {name}: {title}

A MONAI bundle of the PrATo bundles collection: 3D segmentation with a box prompt, called as
`network(image, boxes)` on 96^3 windows. It needs the `prato_components` package (`pip install -e .` in the
repository). The 2D notes of the backbone and pruner are at the end; what is 3D is described here.

## Commands (from the repository root)

Train (label-balanced crops, validation on whole volumes with the sliding window; `models/last.pt` every epoch,
resumed from; the best as `models/model.pt`):

    python -m monai.bundle run --config_file bundles/{name}/configs/train.json \\
        --dataset btcv --dataset_dir /data/BTCV --epochs 100

Evaluate on the test split (per-class Dice, IoU, HD95, token sparsity, windows computed, GFLOPs and CPU latency of
one window to `eval/metrics.json`); `evaluate.json` is an overlay on `train.json`:

    python -m monai.bundle run \\
        --config_file "['bundles/{name}/configs/train.json','bundles/{name}/configs/evaluate.json']" \\
        --dataset btcv --dataset_dir /data/BTCV

Segment new volumes with box prompts; writes `<image>_seg.nii.gz` on the grid of the file to `eval/`:

    python -m monai.bundle run --config_file bundles/{name}/configs/inference.json --dataset btcv \\
        --dataset_dir /data/BTCV --input_dir /my/volumes

Multi-GPU: as the 2D bundles, with `configs/multi_gpu_train.json` as an overlay. The configs read top to bottom
as the 2D bundles' do; the 3D loading is `loading` (`LoadImaged`, `Orientationd`, `Spacingd`) followed by the
modality's entry of `intensity_by_modality`.

## Keys to override

`dataset` (`btcv` | `decathlon` | `acdc`; sets channels, classes and the CT / MR normalisation), `dataset_dir`,
`image_size` (the side of the cubic window, default 96), `pixdim` (target spacing, mm), `sw_batch_size`,
`sw_overlap`, `sw_mode` (`constant` | `gaussian`), `num_samples` (crops per volume), `epochs`, `batch_size` (volumes
per step), `learning_rate`, `val_interval`, `num_workers`, `device`, `bundle_root`, `output_dir`, `ckpt_dir`,
{pruning_keys}`decode_region`, `decode_margin` (voxels around the boxes that the decoder runs on, and that decide
which windows are computed), `resume`, `amp` (mixed precision; default: on with CUDA); in `evaluate.json` also
`prompt`, `prompt_factor`, `split`; in
`inference.json` `input_dir`, `boxes_file`, `allow_missing_boxes`, `ckpt_path`. An unknown key stops the run at
start and names the closest known one.

## Data and preprocessing

BTCV as MONAI's tutorials lay it out (`imagesTr/img0001.nii.gz`, `labelsTr/label0001.nii.gz`, `dataset_0.json`
with `training` and `validation` lists: the validation list is kept, the training list is split 8:1 into training
and test, saved as `models/datalist_btcv.json`); an MSD task (`dataset.json`, channel-last 4D images for
multi-channel tasks). Every volume goes through the config's `preprocessing`: `LoadImaged`,
`EnsureChannelFirstd`, `Orientationd("RAS")`, `Spacingd(pixdim)`, `ScaleIntensityRanged(-175, 250 HU)` (CT) or
`NormalizeIntensityd(nonzero, channel_wise)` (MR), `CropForegroundd`. Training pads to the window and draws
`num_samples` crops per volume with `RandCropByPosNegLabeld` (1:1 foreground/background centres), then flips,
90-degree rotations and an intensity shift.

## Box prompts and the sliding window

Training derives the box from each crop's own label (one box around all structures, or one per structure with
`prompt_boxes per_class`) and jitters it; evaluation uses the tight box of the whole volume (or a perturbed one,
`prompt`). At inference each volume needs a box `[x1, y1, z1, x2, y2, z2]` in **voxel coordinates of the file as
loaded by MONAI** (array axes before any reorientation; min corner then max corner, voxel v covering [v, v+1)), in
a sidecar `<stem>.box.json` / `.box.csv` or in `--boxes_file`. The box is drawn as a mask, moved by the same
orientation, resampling and crop as the image, and read back, so it lands on the same anatomy.

The volume is segmented with `prato_components.engine.PromptedSlidingWindowInferer`: MONAI's windows and blending,
but a window that does not touch a box (plus `decode_margin` voxels) is not computed and says background, and each
computed window gets the boxes in its own coordinates, clipped to it. Without a box every window is computed.

{notes}
"""


# each config file of a bundle and the files MONAI reads for it: prato_components.verification.CONFIG_CHAINS


def reading_order_problems(name: str) -> list[str]:
    """:func:`forward_references` of every config chain of bundle ``name`` (as generated)."""
    files = bundle_files(name)
    problems = []
    for chain in CONFIG_CHAINS.values():
        configs = [json.loads(files[f"configs/{file}"]) for file in chain]
        problems += forward_references(configs, [f"{name}/configs/{file}" for file in chain])
    return sorted(set(problems))


class Bundles:
    """Generate / check the bundles (fire CLI)."""

    def list(self) -> list[str]:
        return list(ALL_BUNDLES)

    def generate(self, out: str = os.path.join(ROOT, "bundles"), names: str | None = None) -> str:
        chosen = ALL_BUNDLES if names is None else names.split(",")
        for name in chosen:
            for rel, content in bundle_files(name).items():
                path = os.path.join(out, name, rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(content)
        return f"wrote {len(chosen)} bundles to {out}"

    def check(self, out: str = os.path.join(ROOT, "bundles")) -> str:
        unordered = [problem for name in ALL_BUNDLES for problem in reading_order_problems(name)]
        if unordered:
            raise SystemExit("configs that use a key before defining it (reorder the templates in tools/bundles.py): "
                             + "; ".join(unordered))
        stale = []
        for name in ALL_BUNDLES:
            for rel, content in bundle_files(name).items():
                path = os.path.join(out, name, rel)
                if not os.path.exists(path) or open(path).read() != content:
                    stale.append(os.path.join(name, rel))
        if stale:
            raise SystemExit(f"bundles differ from tools/bundles.py (run `python tools/bundles.py generate`): {stale}")
        return f"{len(ALL_BUNDLES)} bundles match the specification"


if __name__ == "__main__":
    fire.Fire(Bundles)
