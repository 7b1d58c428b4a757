"""The bundles' text files: ``docs/README.md`` (2D and 3D), ``LICENSE`` and ``configs/logging.conf``."""

from __future__ import annotations

import os

from prato_components.verification import split_bundle_name

from .spec import BACKBONES, PRUNER_CONFIGS, ROOT, backbone_spec

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
`decode_margin`, `resume`; in `evaluate.json` also `prompt` (`tight` |
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
which windows are computed), `resume`; in `evaluate.json` also `prompt`, `prompt_factor`, `split`; in
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
