"""Verify bundles the way MONAI users consume them: files, metadata, network I/O, export, a tiny run.

The checks live in the package so that the tests and ``tools/verify_bundles.py`` (the command line) share them and a
bundle collection outside this repository can run them too. Per bundle:

1. ``check_files``: configs/{metadata,train,inference,evaluate,multi_gpu_train}.json, configs/logging.conf,
   docs/README.md, LICENSE.
2. ``check_metadata``: ``monai.bundle.verify_metadata`` against a local schema (``schemas/meta_schema.json`` beside
   the bundles folder unless given: no download), and ``version`` listed in ``changelog``.
3. ``check_net_in_out``: ``monai.bundle.verify_net_in_out`` on ``network_def`` (tiny sizes unless ``full_size``),
   once without a prompt and once with a box (``extra_forward_args={"boxes": ...}``).
4. ``check_train_infer``: one training iteration with validation (``train.json``) on synthetic ACDC-like data
   (3D bundles: synthetic BTCV volumes, ``TINY_3D``), then ``inference.json`` on two volumes with box sidecars;
   the checkpoint and segmentations (on the image's grid) must exist.
5. ``check_export``: ``torch.export`` of the trained network (see :mod:`prato_components.export` for why not
   TorchScript), saved with the bundle configs, reloaded, and compared with the eager network on new images and
   1, 2 and 3 boxes per image (the box count is a dynamic dimension; also a padding-only "no prompt" box).
   3D bundles export one window ``[B, C, S, S, S]`` with boxes ``[B, M, 6]`` (the sliding window stays outside).
   ``torchscript=True`` also tries ``python -m monai.bundle ckpt_export`` (trace) and records how it fails.

A bundle is a folder with ``configs/metadata.json``; its name is ``<backbone>_<pruner>`` with a backbone of
:data:`TINY_NETWORKS` (docs/design.md §9).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import nibabel as nib
import numpy as np
import torch
from monai.bundle import verify_metadata, verify_net_in_out

from prato_components.bundle import run, trained_bundle_config
from prato_components.data import make_acdc_like, make_btcv_like
from prato_components.engine import load_weights, trained_settings
from prato_components.export import example_inputs, export_network, load_exported, save_aoti_package, save_exported
from prato_components.prompts import boxes_from_label

__all__ = [
    "REQUIRED_FILES",
    "TINY_SIZE",
    "TINY_WINDOW_3D",
    "TINY_3D",
    "TINY_NETWORKS",
    "CONFIG_CHAINS",
    "EXPORT_SETTINGS",
    "find_bundles",
    "split_bundle_name",
    "spatial_dims",
    "config_chain",
    "tiny_overrides",
    "tiny_window_3d",
    "make_tiny_acdc",
    "make_tiny_btcv",
    "acdc_inference_inputs",
    "btcv_inference_inputs",
    "run_config",
    "check_files",
    "check_metadata",
    "check_net_in_out",
    "check_train_infer",
    "export",
    "check_export",
    "try_ckpt_export",
    "verify_bundle",
    "verify_bundles",
]

REQUIRED_FILES = (
    "configs/metadata.json",
    "configs/train.json",
    "configs/inference.json",
    "configs/evaluate.json",
    "configs/multi_gpu_train.json",
    "configs/logging.conf",
    "docs/README.md",
    "LICENSE",
)
TINY_SIZE = 64
TINY_WINDOW_3D = 32
"""Window side of the 3D bundles' tiny run, unless the backbone's :data:`TINY_NETWORKS` entry sets ``image_size``
(Swin UNETR-3D: 64, its 1/32 bottleneck needs 2^3 voxels in training mode)."""
TINY_3D = {"pixdim": [2.0, 2.0, 2.0], "sw_batch_size": 2}
"""Data settings of the 3D bundles' tiny run: 2 mm voxels (small synthetic volumes), two windows at a time."""

_SWIN_TINY = {"feature_size": 12, "depths": [2, 2, 2, 2], "num_heads": [3, 3, 3, 3]}
TINY_NETWORKS: dict[str, dict] = {
    "unetr": {"hidden_size": 32, "mlp_dim": 64, "num_heads": 2, "feature_size": 8},
    "swin_unetr": _SWIN_TINY,
    "transunet": {"hidden_size": 32, "mlp_dim": 64, "num_heads": 2, "num_layers": 4, "cnn_layers": [1, 1, 1],
                  "cnn_width": 8, "head_channels": 32, "decoder_channels": [16, 8, 8, 8],
                  "network_def#cnn_norm": ["group", {"num_groups": 4}]},
    "segformer": {"variant": "b0", "network_def#embed_dims": [8, 16, 32, 64], "network_def#depths": [1, 1, 1, 1],
                  "network_def#num_heads": [1, 1, 2, 2], "network_def#decoder_dim": 16},
    "unetr3d": {"hidden_size": 48, "mlp_dim": 96, "num_heads": 2, "feature_size": 8},  # STP's MTA: width 12 in 3D
    # 64^3: the bottleneck (1/32) keeps 2^3 voxels, which instance norm needs in training
    "swin_unetr3d": {**_SWIN_TINY, "image_size": 64},
}
"""Per backbone, the config overrides that shrink its network for CPU checks (the bundles' generator,
``tools/bundles.py``, reads them from here)."""

CONFIG_CHAINS = {
    "train.json": ("train.json",),
    "evaluate.json": ("train.json", "evaluate.json"),
    "inference.json": ("inference.json",),
    "multi_gpu_train.json": ("train.json", "multi_gpu_train.json"),
}
"""The config files MONAI reads, in order, to run each config of a bundle (``evaluate.json`` is an overlay)."""


def find_bundles(bundles_dir: str) -> list[str]:
    """The names of the bundles under ``bundles_dir`` (folders with ``configs/metadata.json``), sorted."""
    return sorted(name for name in os.listdir(bundles_dir)
                  if os.path.isfile(os.path.join(bundles_dir, name, "configs", "metadata.json")))


def split_bundle_name(name: str) -> tuple[str, str]:
    """``"<backbone>_<pruner>"`` -> ``(backbone, pruner)``, the longest known backbone first."""
    for backbone in sorted(TINY_NETWORKS, key=len, reverse=True):
        if name.startswith(backbone + "_"):
            return backbone, name[len(backbone) + 1 :]
    raise ValueError(f"bundle {name!r} does not start with a known backbone {sorted(TINY_NETWORKS)}")


def config_chain(config: str) -> list[str]:
    """The configs (names without ``.json``) MONAI reads, in order, to run ``config``: ``"evaluate"`` is the overlay
    chain ``["train", "evaluate"]``; ``"a+b"`` names a chain itself (``"train+multi_gpu_train"``)."""
    if "+" in config:
        return config.split("+")
    return [file.removesuffix(".json") for file in CONFIG_CHAINS.get(f"{config}.json", (f"{config}.json",))]


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _name(bundle_dir: str) -> str:
    return _read_json(os.path.join(bundle_dir, "configs", "metadata.json")).get("name") or os.path.basename(
        os.path.normpath(bundle_dir)
    )


def tiny_overrides(name: str, image_size: int = TINY_SIZE, config: str = "train") -> dict:
    """Overrides that shrink bundle ``name`` for CPU checks: small image, the backbone's tiny widths, no workers,
    and (not for ``inference``, which reads one image at a time) a small batch."""
    backbone, _ = split_bundle_name(name)
    batch = {} if config == "inference" else {"batch_size": 4}
    return {"image_size": image_size, "num_workers": 0, **batch, **TINY_NETWORKS[backbone]}


def tiny_window_3d(name: str) -> int:
    """The window side a 3D bundle ``name`` is checked at (its :data:`TINY_NETWORKS` ``image_size``, else 32)."""
    return TINY_NETWORKS[split_bundle_name(name)[0]].get("image_size", TINY_WINDOW_3D)


def _network_overrides(bundle_dir: str, image_size: int = TINY_SIZE) -> dict:
    """:func:`tiny_overrides` without the data-loading keys (for building the network alone). A 3D bundle reads its
    channels from its data set's description (``dataset_0.json``), so here they come from its metadata."""
    name = _name(bundle_dir)
    out = {k: v for k, v in tiny_overrides(name, image_size).items() if k not in ("num_workers", "batch_size")}
    if spatial_dims(bundle_dir) == 3:
        io = _read_json(os.path.join(bundle_dir, "configs", "metadata.json"))["network_data_format"]
        out.update(
            in_channels=io["inputs"]["image"]["num_channels"], out_channels=io["outputs"]["pred"]["num_channels"]
        )
    return out


def check_files(bundle_dir: str) -> list[str]:
    """The required files of the MONAI bundle layout; ``FileNotFoundError`` naming the missing ones."""
    missing = [rel for rel in REQUIRED_FILES if not os.path.isfile(os.path.join(bundle_dir, rel))]
    if missing:
        raise FileNotFoundError(f"bundle {bundle_dir} lacks {missing}")
    return list(REQUIRED_FILES)


def check_metadata(bundle_dir: str, schema: str | None = None) -> str:
    """``verify_metadata`` against a local schema (default: ``schemas/meta_schema.json`` beside the folder that holds
    the bundle); the metadata ``version`` must be a ``changelog`` entry."""
    collection = os.path.dirname(os.path.dirname(os.path.abspath(bundle_dir)))
    schema = schema or os.path.join(collection, "schemas", "meta_schema.json")
    if not os.path.isfile(schema):
        raise FileNotFoundError(f"no metadata schema at {schema}: pass schema= (verification never downloads one)")
    meta_file = os.path.join(bundle_dir, "configs", "metadata.json")
    verify_metadata(meta_file=meta_file, filepath=schema)
    meta = _read_json(meta_file)
    if meta["version"] not in meta.get("changelog", {}):
        raise ValueError(f"{meta_file}: version {meta['version']} is not in the changelog {list(meta['changelog'])}")
    return meta["version"]


def spatial_dims(bundle_dir: str) -> int:
    """2 or 3: the length of the image ``spatial_shape`` in the bundle's metadata."""
    meta = _read_json(os.path.join(bundle_dir, "configs", "metadata.json"))
    return len(meta["network_data_format"]["inputs"]["image"]["spatial_shape"])


def _size_overrides(size: int, num_channels: int | None = None, dims: int = 2) -> dict:
    io = "_meta_#network_data_format"
    out = {f"{io}#inputs#image#spatial_shape": [size] * dims, f"{io}#outputs#pred#spatial_shape": [size] * dims}
    if num_channels is not None:
        out[f"{io}#outputs#pred#num_channels"] = num_channels
    return out


def check_net_in_out(bundle_dir: str, full_size: bool = False, image_size: int = TINY_SIZE) -> list[int]:
    """``monai.bundle.verify_net_in_out`` on ``network_def`` without and with a box prompt.

    Tiny widths and ``image_size`` unless ``full_size`` (the shipped network: ViT-B at 224x224).
    Returns the checked input spatial shape.
    """
    dims = spatial_dims(bundle_dir)
    meta = _read_json(os.path.join(bundle_dir, "configs", "metadata.json"))
    size = meta["network_data_format"]["inputs"]["image"]["spatial_shape"][0] if full_size else image_size
    overrides = {}
    if not full_size:
        overrides = {**_network_overrides(bundle_dir, image_size), **_size_overrides(image_size, dims=dims)}
    if full_size and dims == 3:
        overrides = {k: v for k, v in _network_overrides(bundle_dir).items() if k.endswith("_channels")}
    channels = meta["network_data_format"]["inputs"]["image"]["num_channels"]
    _, boxes = example_inputs(channels, (size,) * dims)
    common = {
        "net_id": "network_def",
        "meta_file": os.path.join(bundle_dir, "configs", "metadata.json"),
        "config_file": os.path.join(bundle_dir, "configs", "inference.json"),
        "bundle_root": bundle_dir,
        "device": "cpu",
        **overrides,
    }
    with torch.no_grad():
        verify_net_in_out(**common)
        verify_net_in_out(**common, extra_forward_args={"boxes": boxes})
    return [size] * dims


def run_config(bundle_dir: str, config: str, bundle_root: str, **overrides):
    """``python -m monai.bundle run`` in-process (:func:`prato_components.bundle.run`: unknown override keys are
    refused) for ``configs/<config>.json`` of ``bundle_dir``: ``"evaluate"`` runs the overlay chain ``train.json`` +
    ``evaluate.json``, ``"a+b"`` merges ``a.json`` and ``b.json`` (e.g. ``"train+multi_gpu_train"``;
    :func:`config_chain`)."""
    configs = os.path.join(bundle_dir, "configs")
    files = [os.path.join(configs, f"{c}.json") for c in config_chain(config)]
    return run(
        config_file=files if len(files) > 1 else files[0],
        meta_file=os.path.join(configs, "metadata.json"),
        logging_file=os.path.join(configs, "logging.conf"),
        bundle_root=bundle_root,
        **overrides,
    )


def make_tiny_acdc(root: str) -> str:
    """A small synthetic ACDC-like data set (the real layout) under ``root``."""
    if not os.path.isdir(os.path.join(root, "training")):
        make_acdc_like(root, num_patients=5, num_frames=1, slices=(3, 4), size=(48, 48), seed=0)
    return root


def make_tiny_btcv(root: str) -> str:
    """A small synthetic BTCV data set (MONAI's tutorial layout, three organs) under ``root``: the 3D bundles'."""
    if not os.path.isfile(os.path.join(root, "dataset_0.json")):
        make_btcv_like(root, num_training=3, num_validation=1, num_test=1, size=(40, 40, 12), organs=3)
    return root


def acdc_inference_inputs(dataset_dir: str, target: str, count: int = 2) -> list[str]:
    """Copy ``count`` ACDC volumes to ``target`` with a ``.box.json`` sidecar around the heart (from the label)."""
    images = sorted(glob.glob(os.path.join(dataset_dir, "training", "patient*", "*_frame??.nii.gz")))[:count]
    return _inputs_with_boxes([(image, image.replace(".nii.gz", "_gt.nii.gz")) for image in images], target)


def btcv_inference_inputs(dataset_dir: str, target: str, count: int = 2) -> list[str]:
    """Copy ``count`` BTCV volumes to ``target`` with a ``.box.json`` sidecar around their organs (from the label)."""
    images = sorted(glob.glob(os.path.join(dataset_dir, "imagesTr", "img*.nii.gz")))[:count]
    return _inputs_with_boxes([(image, image.replace("imagesTr", "labelsTr").replace(os.sep + "img", os.sep + "label"))
                               for image in images], target)


def _inputs_with_boxes(pairs: Sequence[tuple[str, str]], target: str) -> list[str]:
    """Copy the images of ``(image, label)`` pairs to ``target``, each with the label's box as ``.box.json``."""
    os.makedirs(target, exist_ok=True)
    images = [image for image, _ in pairs]
    for image, label_path in pairs:
        shutil.copy(image, target)
        label = np.asanyarray(nib.load(label_path).dataobj)
        box = boxes_from_label(label[None], spatial_dims=3)
        stem = os.path.basename(image)[: -len(".nii.gz")]
        with open(os.path.join(target, stem + ".box.json"), "w") as f:
            json.dump({"boxes": np.asarray(box).tolist()}, f)
    return [os.path.join(target, os.path.basename(i)) for i in images]


def check_train_infer(bundle_dir: str, work_dir: str, dataset_dir: str, image_size: int = TINY_SIZE) -> dict:
    """One training iteration (with validation) and box-prompted inference on two volumes, tiny sizes.

    Writes the bundle's models/ and outputs under ``work_dir`` (the ``bundle_root``); returns their paths.
    """
    name = _name(bundle_dir)
    three_d = spatial_dims(bundle_dir) == 3
    data = {"dataset": "btcv", **TINY_3D} if three_d else {"dataset": "acdc"}
    overrides = {**tiny_overrides(name, image_size), **({"batch_size": 1, "num_samples": 1} if three_d else {})}
    run_config(bundle_dir, "train", work_dir, dataset_dir=dataset_dir, epochs=1,
         **{"train#trainer#epoch_length": 1}, **data, **overrides)
    checkpoint = os.path.join(work_dir, "models", "model.pt")
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"{name}: training wrote no {checkpoint}")
    inputs, outputs = os.path.join(work_dir, "inputs"), os.path.join(work_dir, "predictions")
    images = (btcv_inference_inputs if three_d else acdc_inference_inputs)(dataset_dir, inputs)
    run_config(bundle_dir, "inference", work_dir, dataset_dir=dataset_dir, input_dir=inputs, output_dir=outputs,
               **data, **tiny_overrides(name, image_size, "inference"))
    for image in images:
        seg_path = os.path.join(outputs, os.path.basename(image)[: -len(".nii.gz")] + "_seg.nii.gz")
        seg = nib.load(seg_path)
        if seg.shape != nib.load(image).shape:
            raise ValueError(f"{name}: {seg_path} has shape {seg.shape}, the image {nib.load(image).shape}")
        values = set(np.unique(np.asarray(seg.dataobj)).tolist())
        if not values <= {0, 1, 2, 3}:
            raise ValueError(f"{name}: {seg_path} has label values {sorted(values)} outside 0..3")
    return {"checkpoint": checkpoint, "predictions": outputs}


def _network(bundle_dir: str, checkpoint: str | None, overrides: dict):
    """The bundle's ``network_def`` (eval, CPU) built with the settings ``checkpoint`` records, with its weights."""
    recorded = trained_settings(checkpoint) if checkpoint is not None else {}
    # the channels a checkpoint records win over the metadata's (3D: a tiny run on 3-organ synthetic BTCV)
    overrides = {k: recorded[k] if k.endswith("_channels") and k in recorded else v for k, v in overrides.items()}
    parser = trained_bundle_config(bundle_dir, checkpoint, overrides)
    network = parser.get_parsed_content("network_def")
    if checkpoint is not None:
        network.load_state_dict(load_weights(checkpoint)[0])
    settings = parser.get_parsed_content("network_settings")  # as resolved: the checkpoint's unless overridden
    size = settings["image_size"] if "image_size" in settings else parser.get_parsed_content("image_size")
    return network.eval(), settings["in_channels"], size


# what an exported program computes: box decoding cuts windows of data-dependent size, which torch.export cannot
# trace as one graph, so the program decodes the whole image (docs/design.md §10)
EXPORT_SETTINGS = {"decode_region": "full"}


def export(bundle_dir: str, checkpoint: str, filepath: str, aoti: bool = False, **overrides) -> str:
    """``torch.export`` the bundle network with the weights of ``checkpoint`` to ``filepath`` (``.pt2``), with the
    bundle's metadata.json and inference.json inside; ``aoti``: also its AOTInductor package beside it
    (``export.save_aoti_package``). ``overrides``: config keys (e.g. ``image_size``)."""
    overrides = {**EXPORT_SETTINGS, **overrides}
    network, channels, size = _network(bundle_dir, checkpoint, overrides)
    dims = spatial_dims(bundle_dir)
    image, boxes = example_inputs(channels, (size,) * dims, batch=2)  # 2 boxes per image: one real, one padding
    program, shapes = export_network(network, image, boxes)
    configs = os.path.join(bundle_dir, "configs")
    extra = {name: open(os.path.join(configs, name)).read() for name in ("metadata.json", "inference.json")}
    extra["export.json"] = json.dumps({
        "signature": "(image [B, C, H, W], boxes [B, M, 4]) -> logits" if dims == 2 else
                     "(image [B, C, D, H, W] one window, boxes [B, M, 6]) -> logits",
        "image_size": size, "in_channels": channels, "spatial_dims": dims,
        **shapes,  # dynamic_batch, dynamic_boxes, static_reasons (why a dimension is fixed)
        "batch_size": None if shapes["dynamic_batch"] else int(image.shape[0]),
        "boxes_per_image": None if shapes["dynamic_boxes"] else int(boxes.shape[1]),
        "overrides": overrides,
    })
    save_exported(program, filepath, extra)
    if aoti:
        save_aoti_package(program, filepath)
    return filepath


def check_export(bundle_dir: str, checkpoint: str, filepath: str, image_size: int = TINY_SIZE,
                 atol: float = 1e-4) -> dict:
    """Export the trained tiny network, reload the file, and compare its logits with the eager network's on new
    images and boxes: batch 1 and, where the batch is dynamic, 3; 1, 2 and 3 real boxes per image where the box
    count is dynamic (else the exported count), and a padding-only box (no prompt)."""
    name, dims = _name(bundle_dir), spatial_dims(bundle_dir)
    shape = (image_size,) * dims
    overrides = {**EXPORT_SETTINGS, **_network_overrides(bundle_dir, image_size)}
    export(bundle_dir, checkpoint, filepath, **overrides)
    exported, files = load_exported(filepath, ("metadata.json", "export.json"))
    if files["metadata.json"].get("name") != name:
        raise ValueError(f"{filepath} carries the metadata of {files['metadata.json'].get('name')}, not {name}")
    network, channels, _ = _network(bundle_dir, checkpoint, overrides)
    shapes = files["export.json"]
    batches = (1, 3) if shapes["dynamic_batch"] else (shapes["batch_size"],)
    counts = (1, 2, 3) if shapes["dynamic_boxes"] else (shapes["boxes_per_image"],)
    worst = 0.0
    for seed, batch in enumerate(batches, start=1):
        image, _ = example_inputs(channels, shape, batch=batch, seed=seed)
        prompts = [example_inputs(channels, shape, batch=batch, seed=10 * seed + count, num_boxes=count,
                                  real_boxes=None)[1] for count in counts]
        no_prompt = torch.tensor([0.0] * dims + [-1.0] * dims).expand(batch, counts[0], 2 * dims).clone()
        for prompt in (*prompts, no_prompt):
            with torch.no_grad():
                expected, got = network(image, prompt), exported(image, prompt)
            if got.shape != expected.shape:
                raise ValueError(f"{name}: exported output shape {tuple(got.shape)} != eager {tuple(expected.shape)}")
            diff = float((got - expected).abs().max())
            worst = max(worst, diff)
            if diff > atol:
                raise ValueError(f"{name}: exported logits differ from the eager network's by {diff:.3g} > {atol}")
    return {"file": filepath, "max_abs_diff": worst, "dynamic_batch": shapes["dynamic_batch"],
            "dynamic_boxes": shapes["dynamic_boxes"], "static_reasons": shapes["static_reasons"]}


def try_ckpt_export(bundle_dir: str, checkpoint: str, filepath: str, image_size: int = TINY_SIZE) -> dict:
    """``python -m monai.bundle ckpt_export --use_trace True`` (TorchScript); returns whether it worked and the last
    line of its error. (It traces the network with one random image: the box input cannot be traced this way.)"""
    overrides = _network_overrides(bundle_dir, image_size)
    configs = os.path.join(bundle_dir, "configs")
    command = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", filepath,
               "--ckpt_file", checkpoint, "--meta_file", os.path.join(configs, "metadata.json"),
               "--config_file", os.path.join(configs, "inference.json"), "--bundle_root", bundle_dir,
               "--use_trace", "True", "--input_shape", json.dumps([1, 1] + [image_size] * spatial_dims(bundle_dir))]
    for key, value in overrides.items():
        command += [f"--{key}", json.dumps(value)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    lines = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
    return {"ok": done.returncode == 0 and os.path.isfile(filepath), "error": "" if done.returncode == 0 else
            next((line.strip() for line in lines if "Error" in line), lines[-1] if lines else "")}


def verify_bundle(bundle_dir: str, work_dir: str, dataset_dir: str, full_size: bool = False,
                  torchscript: bool = False, image_size: int = TINY_SIZE, schema: str | None = None) -> dict:
    """All checks for one bundle; returns ``{check: result}`` and raises on the first failure."""
    results: dict = {}
    start = time.perf_counter()
    results["files"] = len(check_files(bundle_dir))
    results["metadata"] = check_metadata(bundle_dir, schema)
    results["net_in_out"] = check_net_in_out(bundle_dir, full_size=full_size, image_size=image_size)
    trained = check_train_infer(bundle_dir, work_dir, dataset_dir, image_size=image_size)
    results["train_infer"] = "ok"
    results["export"] = check_export(bundle_dir, trained["checkpoint"], os.path.join(work_dir, "models", "model.pt2"),
                                     image_size=image_size)
    if torchscript:
        results["torchscript"] = try_ckpt_export(bundle_dir, trained["checkpoint"],
                                                 os.path.join(work_dir, "models", "model.ts"), image_size)
    results["seconds"] = round(time.perf_counter() - start, 1)
    return results


def verify_bundles(bundles_dir: str, names: Sequence[str] | None = None, dataset_dir: str | None = None,
                   work_dir: str | None = None, full_size: bool = False, torchscript: bool = False,
                   schema: str | None = None) -> dict:
    """:func:`verify_bundle` for ``names`` under ``bundles_dir`` (default: every bundle there, 2D and 3D); synthetic
    ACDC-like data (3D bundles: synthetic BTCV) unless ``dataset_dir``. A failure is recorded (``{"error": ...}``)
    and the others still run."""
    names = find_bundles(bundles_dir) if names is None else list(names)
    work = work_dir or tempfile.mkdtemp(prefix="verify_bundles_")
    report = {}
    for name in names:
        bundle_dir = os.path.join(bundles_dir, name)
        try:
            three_d = spatial_dims(bundle_dir) == 3
            data = dataset_dir or (make_tiny_btcv(os.path.join(work, "btcv")) if three_d else
                                   make_tiny_acdc(os.path.join(work, "acdc")))
            report[name] = verify_bundle(bundle_dir, os.path.join(work, name), data, full_size=full_size,
                                         torchscript=torchscript, schema=schema,
                                         image_size=tiny_window_3d(name) if three_d else TINY_SIZE)
        except Exception as error:  # noqa: BLE001 - reported per bundle
            report[name] = {"error": f"{type(error).__name__}: {error}"}
    return report
