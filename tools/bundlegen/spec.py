"""The bundles' specification: versions and changelog, the backbones (2D and 3D), the pruners and their pairings,
and the ``network_def`` / ``pruner_def`` / ``completion_def`` blocks built from them."""

from __future__ import annotations

import copy
import os

from prato_components.verification import TINY_NETWORKS, split_bundle_name

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BUNDLE_VERSION = "0.6.4"
CHANGELOG = {
    "0.6.4": "click_training#focus (default 0.3; 0: none): the click training adds that weight times a "
    "cross-entropy around the training forward's simulated clicks (each voxel weighted by the clicks' Gaussian "
    "guidance, 1 at a click), so that a network learns to answer its clicks; the interactive evaluation also reports "
    "clicks_followed, the share of clicks whose voxel takes the click's label",
    "0.6.3": "click training boxes the clicked structure (click_training#box \"structure\", the default): a batch "
    "with clicks gets the tight box of the clicked structure's label, jittered and clipped, as the interactive "
    "evaluation and an annotator box one structure (\"batch\" keeps the batch's boxes)",
    "0.6.2": "clicks name their structure: network(..., prompt_class=[B]) (VISTA3D's name; the class each image's "
    "clicks are about) sends the clicks to that class's guidance maps (a foreground and a background map per class, "
    "as DeepEdit keeps its guidance per label); click training and the interactive evaluation pass the clicked "
    "structure's class; the MONAI Label app takes prompt_class (a class name or index); a network with one "
    "structure needs none, and checkpoints with the earlier three guidance maps load (the class maps start at zero)",
    "0.6.1": "the click encoder's outputs are scaled by a gain of 10, so a click training makes clicks act sooner; the "
    "interactive evaluation (clicks) reuses work between the clicks on a structure as an annotator's session does "
    "(prato_components.networks.SessionNetwork: the image-only work once, and in 3D the windows a click does not "
    "touch keep their answer); the MONAI Label app warns when it serves a checkpoint trained without clicks; "
    "click_training stays off (measured in docs/accuracy.md, Corrective clicks)",
    "0.6.0": "click prompts: every network takes network(image, boxes, points, point_labels) (VISTA3D's labels: 1 "
    "foreground, 0 background, -1 padding; voxels of the network input) and, in an interactive session, the previous "
    "mask; every bundle builds the click encoder (click_prompts, default true, the same in PrATo, the baseline and "
    "the other methods, so they compare on one footing: click maps turned into a token embedding at stage boundary "
    "1 and a full-resolution guidance, both zero at the start, so a checkpoint without them loads and answers as "
    "before); a foreground click keeps its token (protect_boxes) and widens the "
    "decoded window; prato_components.networks.ClickSession reuses the image-only encoder work between the clicks "
    "on one image"
    "; coarse_threshold (default 0.4): guided decoding widens the decoded window only where the coarse "
    "head's foreground probability reaches it (0.2 before), so a correct box decodes as box decoding does, and the "
    "coarse head learns where any structure is in each cell (its majority class before), so it finds small ones; "
    "measured in docs/accuracy.md",
    "0.5.0": "bundle_root is \".\" (the bundle's folder, as in the MONAI Model Zoo: run from it or pass "
    "--bundle_root); a BTCV bundle's network builds from its configs alone (BTCV's 14 classes unless "
    "dataset_0.json says otherwise), so MONAI's verify_net_in_out checks every bundle with fresh weights; MSD and "
    "BTCV volumes share one loading entry; unknown override keys are found from MONAI's command line (or "
    "prato_components.bundle.run), not its call stack; the README is one template for 2D and 3D and links only to "
    "what the bundle holds; the network settings are written once (network_settings resolves override, then "
    "checkpoint, then default; network_def reads it); checkpoints keep the weights under one key, model, and "
    "last.pt every random state (an exact resume); a new run moves the previous run's outputs to "
    "models/previous-<time>/; box files follow the server's box rules; folder inference checks every input first "
    "(skip_bad_inputs); errors print as one or two lines (debug for the traceback); amp (mixed precision, on with "
    "CUDA); PrATo bundles decode guided (a coarse head finds the structure outside a wrong box; coarse_head); "
    "evaluate.json takes prompt: all (the four box qualities in one run); compile (torch.compile of the evaluation and "
    "inference network, one graph, reused; \"trt\" on a GPU)",
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


# Each backbone: the network_def (pruner inserted under "pruner"), its token width for pruners that need it,
# a description and the stages pruned by default.
# the last arguments of every backbone's network_def: pruning (``PRUNING_KEYS``, dropped in a baseline) and decoding
PRUNING_AND_DECODING = {key: f"@{key}" for key in ("prune_stages", "executor", "fill", "decode_region",
                                                   "decode_margin", "coarse_head", "coarse_threshold",
                                                   "click_prompts")}
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
            **PRUNING_AND_DECODING,
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
            **PRUNING_AND_DECODING,
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
            "img_size": "$[@image_size] * 2",
            "cnn_layers": "@cnn_layers",
            "cnn_width": "@cnn_width",
            "hidden_size": "@hidden_size",
            "mlp_dim": "@mlp_dim",
            "num_layers": "@num_layers",
            "num_heads": "@num_heads",
            "head_channels": "@head_channels",
            "decoder_channels": "@decoder_channels",
            **PRUNING_AND_DECODING,
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
            **PRUNING_AND_DECODING,
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
        "keys": {"protect_boxes": True, "decode_region": "guided", "coarse_head": True},
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


# 3D bundles: volumetric, with the same files and keys as the 2D ones. ``configs.common`` adds the 3D keys
# (``_common_3d``); ``configs_3d`` changes what differs from the 2D templates: MONAI's 3D preprocessing written out as
# transforms, training on label-balanced crops of the window size, and the prompt-aware sliding window
# (``engine.PromptedSlidingWindowInferer``) for validation, evaluation and inference.
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
