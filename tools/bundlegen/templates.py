"""The bundles' text files: ``docs/README.md`` (2D and 3D), ``LICENSE`` and ``configs/logging.conf``."""

from __future__ import annotations

import os
import re
import textwrap

from prato_components.verification import split_bundle_name

from .spec import BACKBONES_3D, PRUNER_CONFIGS, ROOT, backbone_spec

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


# what differs between the 2D and the 3D bundles' README; the rest of ``BUNDLE_README`` is shared
README_PARTS: dict[int, dict[str, str]] = {
    2: {
        "what": "2D segmentation with a box prompt and optional clicks, called as\n`network(image, boxes)` or "
                "`network(image, boxes, points, point_labels)`.",
        "train": "Train (writes `models/last.pt` every epoch, resumes from it, keeps the best as `models/model.pt`)",
        "data_args": "--dataset acdc --dataset_dir /data/ACDC",
        "evaluate": "Evaluate on the test split (per-class Dice, IoU, HD95, token sparsity, GFLOPs, CPU latency to\n"
                    "`eval/metrics.json` and `eval/metrics.csv`)",
        "infer": "Segment new images with box prompts (see \"Box prompts\" below); writes `<image>_seg.nii.gz` / "
                 "`.png` to `eval/`",
        "infer_args": "--dataset acdc --input_dir /my/images",
        "configs": "",
        "datasets": "`dataset` (`acdc` | `isic` | `decathlon`; sets channels, classes, loading and output format), "
                    "`dataset_dir`,\n`image_size`",
        "decode": "`decode_region` (`full` | `box`: run the decoder only over the prompt\nboxes plus `decode_margin` "
                  "pixels, background outside | `guided`: also where the coarse head finds\nforeground outside the "
                  "boxes, so a wrong box does not erase a structure; default `guided` in PrATo\nbundles, `full` "
                  "elsewhere), `decode_margin`, `coarse_head` (the light head `guided` reads,\ntrained alone on "
                  "detached features), `coarse_threshold` (the coarse foreground probability from\nwhich `guided` "
                  "decodes outside the box window too, default 0.4), "
                  "`click_prompts` (the network also takes clicks, `points` and\n`point_labels`, and "
                  "`prompt_class`, the structure they are about; default `true`)",

        "data": """## Data

ACDC as shipped (`training/patientNNN/patientNNN_frameMM.nii.gz` + `_gt`), served as 2D short-axis slices and
split 80/10/10 by patient (saved as `models/datalist_acdc.json`, reused); ISIC 2017/2018 task 1 (`*.jpg` +
`*_segmentation.png`); MSD (`dataset.json`), served as slices. Images are scaled to [0, 1] (0.5-99.5
percentiles) and resized to `image_size` x `image_size`. Evaluation runs on the test split at the network's
resolution (per slice for volumes).

## Box prompts

Training derives one box around all foreground of the (augmented) label and jitters it; evaluation uses the
tight box (or a perturbed one, `prompt`; `prompt all` evaluates the four boxes of the paper's Table VI in one
run). At inference each image needs a box in **voxel coordinates of the
image as loaded by MONAI** (axis i of the array; for PNG/JPG `(x, y)` = (column, row)), min corner then max
corner: `[x1, y1, x2, y2]` for 2D images, `[x1, y1, z1, x2, y2, z2]` for volumes (a 2D network then segments
every slice; slices outside the box's z-range get no prompt). Give them in a sidecar next to the image,
`<stem>.box.json` (`{"boxes": [[x1, y1, x2, y2]]}`) or `<stem>.box.csv` (`image,x1,y1,x2,y2` rows), or in one
file `--boxes_file boxes.json` (`{"<image file name>": [[...]]}`) or CSV. The preprocessing moves the box with
the image (it is carried as a mask through the resize), so it lands on the same anatomy.""",
    },
    3: {
        "what": "3D segmentation with a box prompt and optional clicks, called as\n`network(image, boxes)` or "
                "`network(image, boxes, points, point_labels)` on 96^3 windows. The 2D notes "
                "of the backbone and pruner are at the end; what is 3D is\ndescribed here.",
        "train": "Train (label-balanced crops, validation on whole volumes with the sliding window; `models/last.pt` "
                 "every epoch,\nresumed from; the best as `models/model.pt`)",
        "data_args": "--dataset btcv --dataset_dir /data/BTCV",
        "evaluate": "Evaluate on the test split (per-class Dice, IoU, HD95, token sparsity, windows computed, GFLOPs "
                    "and CPU latency of\none window to `eval/metrics.json`)",
        "infer": "Segment new volumes with box prompts; writes `<image>_seg.nii.gz` on the grid of the file to "
                 "`eval/`",
        "infer_args": "--dataset btcv --input_dir /my/volumes",
        "configs": " The 3D loading is `loading` (`LoadImaged`, `Orientationd`, `Spacingd`) followed by\nthe "
                   "modality's entry of `intensity_by_modality`.",
        "datasets": "`dataset` (`btcv` | `decathlon` | `acdc`; sets channels, classes and the CT / MR normalisation), "
                    "`dataset_dir`,\n`image_size` (the side of the cubic window, default 96), `pixdim` (target "
                    "spacing, mm), `sw_batch_size`,\n`sw_overlap`, `sw_mode` (`constant` | `gaussian`), `num_samples` "
                    "(crops per volume)",
        "decode": "`decode_region`, `decode_margin` (voxels around the boxes that the decoder runs on, and that "
                  "decide\nwhich windows are computed)",
        "data": """## Data and preprocessing

BTCV as MONAI's tutorials lay it out (`imagesTr/img0001.nii.gz`, `labelsTr/label0001.nii.gz`, `dataset_0.json`
with `training` and `validation` lists: the validation list is kept, the training list is split 8:1 into training
and test, saved as `models/datalist_btcv.json`; without `dataset_0.json` the classes are BTCV's 14); an MSD task
(`dataset.json`, channel-last 4D images for multi-channel tasks). Every volume goes through the config's
`preprocessing`: `LoadImaged`, `EnsureChannelFirstd`, `Orientationd("RAS")`, `Spacingd(pixdim)`,
`ScaleIntensityRanged(-175, 250 HU)` (CT) or `NormalizeIntensityd(nonzero, channel_wise)` (MR), `CropForegroundd`.
Training pads to the window and draws `num_samples` crops per volume with `RandCropByPosNegLabeld` (1:1
foreground/background centres), then flips, 90-degree rotations and an intensity shift.

## Box prompts and the sliding window

Training derives the box from each crop's own label (one box around all structures, or one per structure with
`prompt_boxes per_class`) and jitters it; evaluation uses the tight box of the whole volume (or a perturbed one,
`prompt`). At inference each volume needs a box `[x1, y1, z1, x2, y2, z2]` in **voxel coordinates of the file as
loaded by MONAI** (array axes before any reorientation; min corner then max corner, voxel v covering [v, v+1)), in
a sidecar `<stem>.box.json` / `.box.csv` or in `--boxes_file`. The box is drawn as a mask, moved by the same
orientation, resampling and crop as the image, and read back, so it lands on the same anatomy.

The volume is segmented with `prato_components.engine.PromptedSlidingWindowInferer`: MONAI's windows and blending,
but a window that does not touch a box (plus `decode_margin` voxels) is not computed and says background, and each
computed window gets the boxes in its own coordinates, clipped to it. Without a box every window is computed.""",
    },
}

BUNDLE_README = """# {name}: {title}

A MONAI bundle of the PrATo bundles collection: {what} It needs the `prato_components` package (`pip install -e .`
in the project's repository).

## Commands (from this bundle's folder)

{train}:

    python -m monai.bundle run --config_file configs/train.json {data_args} --epochs 100

{evaluate}; `evaluate.json` is an overlay on `train.json`, as in the MONAI Model Zoo, so both are given, in
that order:

    python -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json']" \\
        {data_args}

{infer}:

    python -m monai.bundle run --config_file configs/inference.json {infer_args}

Multi-GPU (or several CPU processes with gloo):

    torchrun --nproc_per_node=2 -m monai.bundle run \\
        --config_file "['configs/train.json','configs/multi_gpu_train.json']" ...

`bundle_root` is `.`, the bundle's folder, as in the MONAI Model Zoo: from another folder add
`--bundle_root <this folder>` (and give the config files' paths from there).

## Keys to override

{datasets}, `epochs`, `batch_size`, `learning_rate`, `val_interval`, `num_workers`, `device`, `bundle_root`,
`output_dir`, `ckpt_dir`, {pruning_keys}{decode}, `resume`, `amp` (mixed precision;
default: on with CUDA), `click_training#probability` (the share of batches trained with 1 to
`click_training#max_clicks` simulated corrective clicks; 0, the default: none; each such batch boxes the clicked
structure alone, `click_training#box` `structure`, or keeps its boxes, `batch`; `click_training#focus`, 0.3 by
default, weights a cross-entropy around the clicks); in `evaluate.json` also `prompt`
(`tight` | `oversized` | `partial` | `misleading`), `prompt_factor`, `split`, `clicks` (N > 0: per structure its
box, then N corrective clicks at the centre of the largest error; Dice per click, its AUC, NoC@85/90 in
`eval/metrics.json`, `eval/dice_vs_clicks.png`); in `inference.json` `input_dir`, `boxes_file`,
`allow_missing_boxes`, `skip_bad_inputs` (segment the good images, list the others in `skipped.json`), `ckpt_path`;
in both `compile` (`false`; `true`: `torch.compile`, compiled on the first batch and reused; `"trt"`: TensorRT, on a
GPU); `debug` (the full traceback of an error, also `PRATO_DEBUG=1`). Every input is checked before anything is
segmented, and an error in the settings or the inputs prints as one or two lines (the problem, the fix). An unknown
key stops the run at start and names the closest known one (`--epoch` -> `epochs`). The defaults are the paper's
network (a GPU job); on a CPU train a smaller one.
Checkpoints record the network settings, so `evaluate.json` and `inference.json` build the trained network without
repeating them (a contradicting override stops the run and names the keys).

## Configs

`configs/train.json` reads top to bottom, every key defined before it is used: the settings, the data set
(`spec`: channels, classes), the network settings (`network_settings`: what `network_def` is built from and every
checkpoint records), `pruner_def` (the pruner, the only block that differs between this backbone's bundles; `null`
in a baseline) and `network_def`, the training settings, the data loading written out as MONAI transforms, loss
and optimiser, `validate`, `train`, `initialize` and `run`. `configs/evaluate.json` holds only what evaluation
changes (the checkpoint's network settings, the test split and box prompt, the metrics and report);
`configs/inference.json` stands alone. Pruner options are overridden as `--pruner_def#<option> <value>`.{configs}

{data}
"""

# a markdown link to a page of the project (a relative path), which a downloaded bundle does not hold
_PROJECT_LINK = re.compile(r"\[([^\]]+)\]\((?!https?:)[^)]+\)")


def bundle_text(text: str) -> str:
    """The project's docs ``text`` as a bundle README shows it: links to the project's pages become their text (a
    downloaded bundle holds none of them)."""
    return _PROJECT_LINK.sub(r"\1", text)


def readme(name: str) -> str:
    """``docs/README.md`` of bundle ``name`` (2D or 3D): commands, keys, configs, data, box prompts, then the notes of
    its backbone and pruner from the project's docs."""
    backbone, pruner = split_bundle_name(name)
    spec = backbone_spec(backbone)
    dims = 3 if backbone in BACKBONES_3D else 2
    title = f"{spec['title']} with {PRUNER_CONFIGS[pruner]['title']}"
    notes = []
    for path in (os.path.join(ROOT, "docs", "backbones", f"{spec.get('docs', backbone)}.md"),
                 os.path.join(ROOT, "docs", "pruners", f"{pruner}.md")):
        if os.path.exists(path):
            with open(path) as f:
                notes.append(bundle_text(f.read().strip()))
    pruning_keys = "" if pruner == "baseline" else (
        "`keep_ratio`, `prune_stages`, `executor` (`gather` | `padded` | `mask` |\n`attention_mask`), `fill` "
        "(`carry` | `zero`), `warmup_epochs`, `ramp_epochs`, ")
    text = _reflow(BUNDLE_README.format(name=name, title=title, pruning_keys=pruning_keys, **README_PARTS[dims]))
    return "\n\n".join([text.rstrip(), *notes]) + "\n"


def _reflow(text: str, width: int = 116) -> str:
    """``text`` with each prose paragraph filled to ``width`` (code blocks and headings kept as written)."""
    paragraphs = text.split("\n\n")
    return "\n\n".join(p if p.startswith(("    ", "#")) else textwrap.fill(
        " ".join(p.split()), width, break_long_words=False, break_on_hyphens=False) for p in paragraphs)


LICENSE = """Apache License, Version 2.0

Copyright (c) PrATo bundles contributors

Licensed under the Apache License, Version 2.0 (the "License"); you may not use the files in this bundle except in
compliance with the License. You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software distributed under the License is distributed
on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the License for
the specific language governing permissions and limitations under the License.
"""
