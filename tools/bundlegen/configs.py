"""The config templates: ``train.json``, ``evaluate.json`` (an overlay on ``train.json``), ``inference.json`` and
``multi_gpu_train.json`` of a bundle, with the keys every config shares (``common``)."""

from __future__ import annotations

import json
import re

from prato_components.bundle import DATA_SETTINGS, SETTING_RULES
from prato_components.verification import split_bundle_name

from .spec import BACKBONES_3D, PRUNER_CONFIGS, backbone_spec, completion_def, network_def, pruner_def

# Every config reads top to bottom: a key is defined before any ``@key`` that uses it (``forward_references``, run by
# ``check``). train.json: settings, data set, network (``pruner_def`` then ``network_def``), data loading written out
# as transforms, loss and optimiser, validation, training, initialize / run. evaluate.json: an overlay on train.json
# with what evaluation changes. inference.json: standalone, as in the MONAI Model Zoo.
IMPORTS = ["$import os", "$import torch", "$import monai", "$import prato_components",
           "$import prato_components.bundle", "$import prato_components.engine", "$import prato_components.export",
           "$import prato_components.prompts"]
# evaluation and inference: the bundle key ``compile`` (false, true = torch.compile, "trt" = TensorRT on a GPU) wraps
# the evaluator's network (prato_components.export.compiled_network); handlers keep the eager network
COMPILED_NETWORK = "$prato_components.export.compiled_network(@network, @compile)"


# pixels around the prompt boxes that box decoding adds (docs/design.md §6.1: chosen from the measured Dice / latency
# trade-off in docs/benchmarks.md and docs/accuracy.md)
DECODE_MARGIN = 16


# first in every "initialize": unknown override keys (``--epoch`` for ``--epochs``) stop the run with a suggestion
CHECK_OVERRIDES = "$prato_components.bundle.check_overrides()"

# mixed precision through MONAI's trainer and evaluators: on with CUDA, off on a CPU
AMP = "$@device.type == 'cuda'"


def check_settings(config: dict) -> str:
    """Second in every "initialize": the values of ``config``'s user settings (types, ranges, names), so that
    ``--image_size [96,96]`` is named at start rather than failing inside a transform."""
    values = ", ".join(f"'{key}': @{key}" for key in SETTING_RULES if key in config)
    return f"$prato_components.bundle.check_settings({{{values}}})"


SETTINGS = "network_settings"
# what evaluate.json and inference.json add to ``network_settings``: the settings the checkpoint at ``ckpt_path``
# records, and the keys this run overrides (they win over the checkpoint's)
FROM_CHECKPOINT = {"trained": "@trained", "overridden": "$prato_components.bundle.override_keys()"}
CKPT_PATH = "$os.path.join(@ckpt_dir, 'model.pt')"
TRAINED = "$prato_components.engine.trained_settings(@ckpt_path)"
CHECK_TRAINED = "$prato_components.engine.check_trained_settings(@trained, @network_settings, @ckpt_path)"


def network_settings(config: dict, blocks: dict, trained: bool = False) -> dict:
    """The ``network_settings`` block: the top-level keys of ``config`` that the network ``blocks`` (``pruner_def``,
    ``completion_def``, ``network_def``) read, listed once, as ``prato_components.bundle.resolved_settings`` returns
    them. Every checkpoint records them; ``trained`` (evaluation, inference): each follows the checkpoint at
    ``ckpt_path`` unless this run overrides it, and ``CHECK_TRAINED`` names overrides that contradict it."""
    read = set(re.findall(r"@(\w+)", json.dumps(blocks)))
    settings = {key: f"@{key}" for key in config if key in read}
    return {"_target_": "prato_components.bundle.resolved_settings", "settings": settings,
            **(FROM_CHECKPOINT if trained else {})}


def read_from_settings(node: object, keys: set[str]) -> object:
    """``node`` with every ``@key`` of a network setting in ``keys`` read from ``network_settings`` instead
    (``"$@network_settings['key']"``): the network is built from the resolved settings, never the top-level keys."""
    if isinstance(node, dict):
        return {key: read_from_settings(value, keys) for key, value in node.items()}
    if isinstance(node, list):
        return [read_from_settings(value, keys) for value in node]
    if not isinstance(node, str) or "@" not in node:
        return node
    expression = node if node.startswith("$") else f"${node}"
    replaced = re.sub(r"@(\w+)(?![\w#])", lambda m: f"@{SETTINGS}[{m[1]!r}]" if m[1] in keys else m[0], expression)
    return replaced if replaced != expression else node


NETWORK_BLOCKS = ("pruner_def", "completion_def", "network_def")


def settings_read_once(config: dict, name: str) -> dict:
    """``config`` (a config of bundle ``name``) with every use of a network setting read from ``network_settings``
    (:func:`read_from_settings`): all of them in the network blocks, the sizes elsewhere (the data's channels and
    classes, ``DATA_SETTINGS``, are the same either way). Left as written: the settings' own top-level keys (the
    values as given, defaults or overrides), ``network_settings`` itself and ``initialize`` (``check_settings``
    checks the values as given)."""
    keys = set(common(name)[SETTINGS]["settings"])
    kept = keys | {"initialize"}
    return {key: value if key in kept or key.split("#")[0] == SETTINGS else
            read_from_settings(value, keys if key in NETWORK_BLOCKS else keys - set(DATA_SETTINGS))
            for key, value in config.items()}


def common(name: str, trained: bool = False) -> dict:
    """Keys shared by train and inference, in dependency order; ``trained``: the network settings follow the
    checkpoint at ``ckpt_path`` (inference)."""
    backbone, pruner = split_bundle_name(name)
    config = {
        "imports": IMPORTS,
        "bundle_root": ".",  # the bundle's folder, as in the MONAI Model Zoo (--bundle_root from elsewhere)
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "amp": AMP,
        "ckpt_dir": "$os.path.join(@bundle_root, 'models')",
        "output_dir": "$os.path.join(@bundle_root, 'eval')",
        "debug": False,
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
        "coarse_head": False,
        "coarse_threshold": 0.4,
        "click_prompts": True,  # the click encoder in every bundle: methods compare with the same guidance
        "prompt_boxes": "union",
        **PRUNER_CONFIGS[pruner].get("keys", {}),
        **backbone_spec(backbone)["keys"],
    }
    blocks = {"pruner_def": pruner_def(name), **completion_def(name), "network_def": network_def(name)}
    # the settings the network is built from, listed once and recorded in every checkpoint
    # (prato_components.engine.checkpoint), so a trained network knows how it was built
    config[SETTINGS] = network_settings(config, blocks, trained)
    config.update(blocks)
    config["network"] = "$@network_def.to(@device)"
    config["prepare_batch"] = {"_target_": "PrepareBatchExtraInput", "extra_keys": {"boxes": "box"}}
    config["inferer"] = {"_target_": "prato_components.engine.PromptedInferer", "spatial_dims": 2}
    if backbone in BACKBONES_3D:
        config = _common_3d(config)
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
        "btcv": "@loading_by_dataset#decathlon",  # MSD and BTCV volumes are read alike
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
            *_intensity_and_size(["image", "label"], ["bilinear", "nearest"], "$[@image_size] * 2"),
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
        # simulated corrective clicks (click_training; probability 0: the batch as prepared, docs/design.md §9)
        "prepare_batch": {"_target_": "prato_components.engine.ClickTrainingBatch", "prepare_batch": "@prepare_batch",
                          "network": "@network", "inferer": "@train#inferer",
                          "probability": "@click_training#probability", "max_clicks": "@click_training#max_clicks",
                          "sampling": "@click_training#sampling", "amp": "@amp",
                          "previous_mask": "@click_training#previous_mask", "box": "@click_training#box"},
        "handlers": [
            *([{"_target_": "prato_components.engine.PruningWarmup", "network": "@network",
                "warmup_epochs": "@warmup_epochs", "ramp_epochs": "@ramp_epochs"}] if pruned else []),
            {"_target_": "LrScheduleHandler", "lr_scheduler": "@lr_scheduler", "print_lr": True},
            {"_target_": "ValidationHandler", "validator": "@validate#evaluator", "epoch_level": True,
             "interval": "@val_interval"},
            {"_target_": "StatsHandler", "tag_name": "train_loss",
             "output_transform": "$monai.handlers.from_engine(['loss'], first=True)"},
            {"_target_": "prato_components.engine.TrainingCheckpoint", "save_dir": "@ckpt_dir",
             "save_dict": {"model": "@network", "optimizer": "@optimizer", "lr_scheduler": "@lr_scheduler"},
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
            "prepare_batch": "@train#prepare_batch",
            "train_handlers": "@train#handlers",
        },
    }


SPLITS = "$prato_components.bundle.bundle_splits(@dataset, @dataset_dir, @datalist_path, @seed)"
CLICK_TRAINING = {"probability": 0.0, "max_clicks": 3, "sampling": "weighted", "previous_mask": False,
                  "box": "structure", "focus": 0.3}


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
        # the fraction of batches trained with 1..max_clicks simulated clicks per image (0: none), drawn "weighted"
        # toward the error components' centres or at the "centre"; previous_mask: the previous prediction goes with
        # the clicks, in training and in the interactive evaluation; box: the batch's boxes ("batch") or the clicked
        # structure's own box ("structure"), as the interactive evaluation boxes each structure
        # (engine.ClickTrainingBatch); focus: the weight of a cross-entropy around the clicks (engine.PrunedSegLoss)
        "click_training": CLICK_TRAINING,
        "cache_rate": 1.0,
        "resume": True,
        "splits": SPLITS,
        **_labelled_preprocessing(),  # loading and normalisation, shared by train, validate and evaluate.json
        "loss": {"_target_": "prato_components.engine.PrunedSegLoss",
                 "loss": {"_target_": "DiceCELoss", "to_onehot_y": True, "softmax": True},
                 "network": "@network", "click_weight": "@click_training#focus"},
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
    return settings_read_once(config, name)


def evaluate_config(name: str) -> dict:
    """``evaluate.json``, an overlay on ``train.json`` (``--config_file "['train.json','evaluate.json']"``): the
    network the checkpoint was trained with, the test split with the chosen box prompt, Dice / IoU / HD95 and the
    evaluation report."""
    train = train_config(name)
    config = {
        "ckpt_path": CKPT_PATH,
        "trained": TRAINED,
        **{f"{SETTINGS}#{key}": value for key, value in FROM_CHECKPOINT.items()},
        # one box quality, a list of them or "all" (the paper's Table VI rows), evaluated one after the other
        "prompt": "tight",
        "prompt_factor": None,
        "prompts": "$prato_components.bundle.prompt_qualities(@prompt)",
        "split": "test",
        # corrective clicks per structure of the interactive protocol (box, then clicks; 0: box only, as before)
        "clicks": 0,
        "latency_repeats": 5,
        "compile": False,
        "test": {
            "dataset": "$prato_components.bundle.prompt_datasets(@splits[@split], @preprocessing + @validate#prompt, "
                       "@validate#to_tensor, @prompts, @prompt_factor)",
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
             "network": "@network", "input_shape": "$[@in_channels] + [@image_size] * 2",
             "latency_repeats": "@latency_repeats", "prompts": "@prompts", "clicks": "@clicks",
             "inferer": "@inferer", "previous_mask": "@click_training#previous_mask"},
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "amp": "@amp",
            "val_data_loader": "@test#dataloader",
            "network": COMPILED_NETWORK,
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
    return settings_read_once(config, name)


def inference_config(name: str) -> dict:
    """``inference.json`` (standalone): images and their user boxes, the box carried through the resize as a mask,
    the prediction inverted to the image's grid and saved."""
    config = common(name, trained=True)
    config["imports"] = IMPORTS + ["$import numpy"]
    config.update({
        "input_dir": "$os.path.join(@bundle_root, 'sample_data')",
        "boxes_file": None,
        "allow_missing_boxes": False,
        "skip_bad_inputs": False,
        "compile": False,
        "spatial_size": "$[@image_size] * 2 + ([-1] if @spec['volumetric'] else [])",
        "datalist": "$prato_components.bundle.inference_datalist(@input_dir, @boxes_file, @allow_missing_boxes, "
                    "@skip_bad_inputs, @output_dir, @in_channels)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                _load(["image"]),
                {"_target_": "prato_components.prompts.ValidateBoxd", "box_key": "box", "image_key": "image"},
                {"_target_": "prato_components.prompts.BoxToRegionMaskd", "box_key": "box", "image_key": "image",
                 "mask_key": "box_mask"},
                *_intensity_and_size(["image", "box_mask"], ["bilinear", "nearest"], "@spatial_size"),
                {"_target_": "prato_components.prompts.RegionMaskToBoxd", "mask_key": "box_mask", "box_key": "box"},
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
            "network": COMPILED_NETWORK,
            "inferer": "@inferer",
            "prepare_batch": "@prepare_batch",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
        },
        "initialize": [CHECK_OVERRIDES, "$monai.utils.set_determinism(seed=@seed)"],
        "run": ["$@evaluator.run()"],
    })
    config["initialize"][1:1] = [check_settings(config), CHECK_TRAINED]
    return settings_read_once(config, name)


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
        "train#trainer#train_handlers": "$@train#handlers if torch.distributed.get_rank() == 0 else [h for h in "
                                        "@train#handlers if not isinstance(h, monai.handlers.StatsHandler)]",
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
        "finalize": ["$dist.is_initialized() and dist.barrier()",
                     "$dist.is_initialized() and dist.destroy_process_group()"],
    }


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
