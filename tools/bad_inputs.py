"""The table of bad inputs: what the bundle command line and the MONAI Label app answer to each, and proof that no
checkpoint changed. Writes ``docs/bad_inputs.md``::

    python tools/bad_inputs.py                      # every case (a few minutes on 2 cores)
    python tools/bad_inputs.py --cases inverted_box restrict_maybe --out /tmp/bad.md

Everything runs on tiny synthetic data (an ACDC-like set, ``unetr_prato`` at 32 x 32 trained for one epoch; the one
checkpoint serves every case). Command-line cases run ``monai.bundle.run`` in-process, as ``python -m monai.bundle
run`` does, and record what the command line prints: for a known error (``UserError`` in the chain) the lines of
:func:`prato_components.command_line.error_lines`, which the bundles' ``sys.excepthook`` writes to stderr before the
process exits with status 1; for any other error the traceback Python prints. Server cases call
``BoxPromptSegmenter.segment_request``, the app's request path (the app answers 422 with the message for a
``ValueError``, which every ``InputError`` is, and 500 otherwise). Before and after each case the sha256 of every
``*.pt`` under the work folder is taken.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from prato_components.atomic import atomic_write_text  # noqa: E402 - after the repository is on the path
from prato_components.command_line import error_lines, user_error  # noqa: E402
from prato_components.verification import (  # noqa: E402
    acdc_inference_inputs,
    make_tiny_acdc,
    run_config,
    tiny_overrides,
)

BUNDLE = "unetr_prato"
SIZE = 32
DOC = os.path.join(ROOT, "docs", "bad_inputs.md")
# the image the server cases send, a volume of the tiny set: 48 x 48 x 3 or 4 slices
BOX = [11.0, 18.0, 0.0, 29.0, 34.0, 2.0]


@dataclass
class Case:
    """One bad input: ``kind`` ``"cli"`` (overrides of an inference or training run, and a function that prepares
    the input folder) or ``"server"`` (request parameters)."""

    name: str
    kind: str
    what: str
    overrides: dict = field(default_factory=dict)
    prepare: Callable[[str, "Work"], None] | None = None
    config: str = "inference"
    params: dict = field(default_factory=dict)


@dataclass
class Work:
    """The shared setup: the tiny data set, the bundle root with its checkpoint, good inputs, a served bundle."""

    folder: str
    acdc: str
    root: str
    inputs: str
    served: str


@dataclass
class Outcome:
    case: Case
    result: str
    message: str
    lines: int
    known: bool
    before: dict[str, str]
    after: dict[str, str]


# ---------------------------------------------------------------------------------------------- input folders
def _write(path: str, content: str | bytes) -> None:
    with open(path, "wb" if isinstance(content, bytes) else "w") as f:
        f.write(content)


def _sidecar(text: str) -> Callable[[str, Work], None]:
    """An extra image whose ``.box.json`` holds ``text``."""
    def prepare(folder: str, work: Work) -> None:
        _extra_image(folder, work)
        _write(os.path.join(folder, "zz_extra.box.json"), text)
    return prepare


def _extra_image(folder: str, work: Work, content: bytes | None = None) -> str:
    """``zz_extra.nii.gz`` in ``folder``: a copy of the first good image, or ``content``."""
    image = os.path.join(folder, "zz_extra.nii.gz")
    if content is None:
        shutil.copy(sorted(glob.glob(os.path.join(work.inputs, "*.nii.gz")))[0], image)
    else:
        _write(image, content)
    return image


def _boxes_file(text: str, name: str = "boxes.csv") -> Callable[[str, Work], None]:
    def prepare(folder: str, work: Work) -> None:
        _write(os.path.join(folder, name), text)
    return prepare


def _image(content: Callable[[Work], bytes]) -> Callable[[str, Work], None]:
    """An extra image of ``content`` with a good box."""
    def prepare(folder: str, work: Work) -> None:
        _extra_image(folder, work, content(work))
        _write(os.path.join(folder, "zz_extra.box.json"), json.dumps({"boxes": [BOX]}))
    return prepare


def _first_image(work: Work) -> bytes:
    return open(sorted(glob.glob(os.path.join(work.inputs, "*.nii.gz")))[0], "rb").read()


def _two_channels(folder: str, work: Work) -> None:
    data = np.zeros((48, 48, 3, 2), np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), os.path.join(folder, "zz_extra.nii.gz"))
    _write(os.path.join(folder, "zz_extra.box.json"), json.dumps({"boxes": [BOX]}))


def _corrupt_checkpoint(folder: str, work: Work) -> None:
    content = open(os.path.join(work.root, "models", "model.pt"), "rb").read()
    _write(os.path.join(work.folder, "corrupt", "model.pt"), content[: len(content) // 2])


def _no_prompt(folder: str, work: Work) -> None:
    _extra_image(folder, work)


def _empty_folder(folder: str, work: Work) -> None:
    for path in glob.glob(os.path.join(folder, "*")):
        os.remove(path)


INVERTED = json.dumps({"boxes": [[29, 18, 0, 11, 34, 2]]})
CLI_CASES = [
    Case("inverted_box", "cli", "inverted box (max < min) in a `.box.json` sidecar", prepare=_sidecar(INVERTED)),
    Case("inverted_box_debug", "cli", "the same with `--debug True` (full traceback)", {"debug": True},
         _sidecar(INVERTED)),
    Case("empty_box", "cli", "empty box (min = max on an axis)", prepare=_sidecar("[[11, 18, 0, 11, 34, 2]]")),
    Case("padding_row", "cli", "the Python API's padding row (0, .., -1, ..) in a sidecar",
         prepare=_sidecar("[[0, 0, 0, -1, -1, -1]]")),
    Case("box_2d_on_volume", "cli", "4 values for a volume", prepare=_sidecar("[11, 18, 29, 34]")),
    Case("box_5_values", "cli", "5 values", prepare=_sidecar("[11, 18, 0, 29, 34]")),
    Case("box_outside", "cli", "box outside the image", prepare=_sidecar("[[500, 500, 0, 600, 600, 2]]")),
    Case("box_nan", "cli", "NaN in a box", prepare=_sidecar("[[NaN, 18, 0, 29, 34, 2]]")),
    Case("box_bool", "cli", "booleans as coordinates", prepare=_sidecar("[[true, true, true, 79, 90, 9]]")),
    Case("box_string", "cli", "a string as a coordinate", prepare=_sidecar('[["a", 18, 0, 29, 34, 2]]')),
    Case("box_json_malformed", "cli", "malformed `.box.json`", prepare=_sidecar('{"boxes": [[11, 18, 0, 29')),
    Case("box_json_empty_list", "cli", "`{\"boxes\": []}`", prepare=_sidecar('{"boxes": []}')),
    Case("no_prompt", "cli", "an image without a box prompt", prepare=_no_prompt),
    Case("csv_inverted", "cli", "`--boxes_file` CSV with an inverted row", {"boxes_file": "{input}/boxes.csv"},
         _boxes_file("image,x1,y1,z1,x2,y2,z2\npatient001_frame01.nii.gz,29,18,0,11,34,2\n")),
    Case("csv_not_numbers", "cli", "`--boxes_file` CSV row with a word", {"boxes_file": "{input}/boxes.csv"},
         _boxes_file("image,x1,y1,z1,x2,y2,z2\npatient001_frame01.nii.gz,11,18,0,29,34,2\n"
                     "patient002_frame01.nii.gz,11,eighteen,0,29,34,2\n")),
    Case("csv_short_row", "cli", "`--boxes_file` CSV row with 3 values", {"boxes_file": "{input}/boxes.csv"},
         _boxes_file("patient001_frame01.nii.gz,11,18,0\n")),
    Case("json_boxes_file_list", "cli", "`--boxes_file` JSON that is a list", {"boxes_file": "{input}/boxes.json"},
         _boxes_file("[[11, 18, 0, 29, 34, 2]]", "boxes.json")),
    Case("boxes_file_missing", "cli", "`--boxes_file` that does not exist", {"boxes_file": "{input}/nothere.csv"}),
    Case("image_corrupt", "cli", "corrupt NIfTI (random bytes)", prepare=_image(lambda w: bytes(range(256)) * 8)),
    Case("image_truncated", "cli", "truncated NIfTI", prepare=_image(lambda w: _first_image(w)[:300])),
    Case("image_empty_file", "cli", "empty `.nii.gz` file", prepare=_image(lambda w: b"")),
    Case("wrong_channels", "cli", "a 2-channel volume for a 1-channel network", prepare=_two_channels),
    Case("input_dir_missing", "cli", "`--input_dir` that does not exist", {"input_dir": "{input}/nothere"}),
    Case("input_dir_empty", "cli", "`--input_dir` without images", prepare=_empty_folder),
    Case("skip_bad_inputs", "cli", "`--skip_bad_inputs True` with an inverted box: the rest is segmented",
         {"skip_bad_inputs": True}, _sidecar(INVERTED)),
    Case("skip_bad_inputs_maybe", "cli", "`--skip_bad_inputs maybe`", {"skip_bad_inputs": "maybe"}),
    Case("allow_missing_boxes_string", "cli", "`--allow_missing_boxes yes`", {"allow_missing_boxes": "yes"}),
    Case("keep_ratio_2", "cli", "`--keep_ratio 2`", {"keep_ratio": 2}),
    Case("keep_ratio_nan", "cli", "`--keep_ratio NaN`", {"keep_ratio": float("nan")}),
    Case("image_size_list", "cli", "`--image_size [96,96]`", {"image_size": [96, 96]}),
    Case("executor_unknown", "cli", "`--executor nope`", {"executor": "nope"}),
    Case("prune_stages_repeated", "cli", "`--prune_stages [1,1]`", {"prune_stages": [1, 1]}),
    Case("dataset_unknown", "cli", "`--dataset kvasir`", {"dataset": "kvasir"}),
    Case("decode_region_unknown", "cli", "`--decode_region boxes2`", {"decode_region": "boxes2"}),
    Case("pruner_unknown", "cli", "unknown pruner class `--pruner_def#_target_ NoSuchPruner`",
         {"pruner_def#_target_": "prato_components.pruners.NoSuchPruner"}),
    Case("checkpoint_missing", "cli", "`--ckpt_path` that does not exist", {"ckpt_path": "{work}/nothere/model.pt"}),
    Case("checkpoint_corrupt", "cli", "truncated checkpoint (`--ckpt_path`)", {"ckpt_path": "{work}/corrupt/model.pt"},
         _corrupt_checkpoint),
    Case("unknown_key", "cli", "unknown key `--epoch 1` on training", {"epoch": 1}, config="train"),
    Case("train_dataset_dir_missing", "cli", "training with a missing `--dataset_dir`",
         {"dataset_dir": "{work}/nothere", "epochs": 1}, config="train"),
]

SERVER_CASES = [
    Case("restrict_maybe", "server", "`restrict_to_box: \"maybe\"`", params={"box": BOX, "restrict_to_box": "maybe"}),
    Case("restrict_2", "server", "`restrict_to_box: 2`", params={"box": BOX, "restrict_to_box": 2}),
    Case("restrict_list", "server", "`restrict_to_box: [true]`", params={"box": BOX, "restrict_to_box": [True]}),
    Case("box_bools", "server", "booleans as coordinates", params={"box": [True, True, True, 79, 90, 9]}),
    Case("box_strings", "server", "strings as coordinates", params={"box": ["11", "18", "0", "29", "34", "2"]}),
    Case("box_inverted", "server", "inverted box", params={"box": [29, 18, 0, 11, 34, 2]}),
    Case("box_empty", "server", "empty box", params={"box": [11, 18, 0, 11, 34, 2]}),
    Case("box_5_values", "server", "5 values", params={"box": [11, 18, 0, 29, 34]}),
    Case("box_nan", "server", "NaN", params={"box": [float("nan"), 18, 0, 29, 34, 2]}),
    Case("box_huge", "server", "1e308", params={"box": [0, 0, 0, 1e308, 4, 1]}),
    Case("box_outside", "server", "box outside the image", params={"box": [500, 500, 0, 600, 600, 2]}),
    Case("boxes_8_values", "server", "a list of boxes, one of 8 values",
         params={"boxes": [BOX, [1, 2, 3, 4, 5, 6, 7, 8]]}),
    Case("boxes_dict", "server", "`boxes: {}`", params={"boxes": {"a": 1}}),
    Case("box_bad_json", "server", "`box: \"[1, 2\"`", params={"box": "[1, 2"}),
    Case("no_prompt", "server", "no prompt", params={"background": [[1, 1, 1]]}),
    Case("slice_99", "server", "`slice: 99` with a 2D box", params={"box": [11, 18, 29, 34], "slice": 99}),
    Case("slice_negative", "server", "`slice: -3`", params={"box": [11, 18, 29, 34], "slice": -3}),
    Case("slice_fraction", "server", "`slice: 2.5`", params={"box": [11, 18, 29, 34], "slice": 2.5}),
    Case("slice_bool", "server", "`slice: true`", params={"box": [11, 18, 29, 34], "slice": True}),
    Case("slice_word", "server", "`slice: \"abc\"`", params={"box": [11, 18, 29, 34], "slice": "abc"}),
    Case("click_outside", "server", "a click outside the image", params={"foreground": [[500, 500, 1]]}),
    Case("click_negative", "server", "a click at x = -4", params={"foreground": [[-4, 10, 1]]}),
    Case("click_mixed", "server", "clicks of 2 and 3 values", params={"foreground": [[1, 2], [1, 2, 3]]}),
    Case("click_not_points", "server", "`foreground: 5`", params={"foreground": 5}),
    Case("click_bool", "server", "a boolean in a click", params={"foreground": [[True, 10, 1]]}),
    Case("click_background_outside", "server", "a background click outside the image",
         params={"box": BOX, "background": [[10, 500, 1]]}),
    Case("click_nan", "server", "NaN in a click", params={"box": BOX, "foreground": [[float("nan"), 10, 1]]}),
    Case("click_2_values", "server", "a click of 2 values on a volume", params={"box": BOX, "foreground": [[10, 10]]}),
    Case("points_no_labels", "server", "`points` without `point_labels`", params={"box": BOX, "points": [[10, 10, 1]]}),
    Case("labels_no_points", "server", "`point_labels` without `points`", params={"box": BOX, "point_labels": [1]}),
    Case("points_labels_lengths", "server", "2 points, 1 label",
         params={"box": BOX, "points": [[10, 10, 1], [12, 12, 1]], "point_labels": [1]}),
    Case("point_label_2", "server", "`point_labels: [2]`",
         params={"box": BOX, "points": [[10, 10, 1]], "point_labels": [2]}),
    Case("point_label_bool", "server", "`point_labels: [true]`",
         params={"box": BOX, "points": [[10, 10, 1]], "point_labels": [True]}),
    Case("points_outside", "server", "a VISTA3D point outside the image",
         params={"box": BOX, "points": [[10, 10, 1], [10, 10, 9]], "point_labels": [1, 0]}),
    Case("clicks_both_styles", "server", "`foreground` and `points` together",
         params={"foreground": [[10, 10, 1]], "points": [[10, 10, 1]], "point_labels": [1]}),
    Case("background_only_points", "server", "only background clicks, no box",
         params={"points": [[10, 10, 1]], "point_labels": [0]}),
    Case("label_without_clicks", "server", "a previous `label` without clicks",
         params={"box": BOX, "label": "previous.nii.gz"}),
    Case("prompt_class_unknown", "server", "`prompt_class: \"liver\"` (not a class of the bundle)",
         params={"box": BOX, "foreground": [[10, 10, 1]], "prompt_class": "liver"}),
    Case("prompt_class_zero", "server", "`prompt_class: 0` (the background)",
         params={"box": BOX, "foreground": [[10, 10, 1]], "prompt_class": 0}),
    Case("prompt_class_without_clicks", "server", "`prompt_class` without clicks",
         params={"box": BOX, "prompt_class": 1}),
    Case("margin_word", "server", "`point_margin: \"x\"`", params={"foreground": [[10, 10, 1]], "point_margin": "x"}),
    Case("margin_negative", "server", "`point_margin: -1`", params={"foreground": [[10, 10, 1]], "point_margin": -1}),
    Case("margin_bool", "server", "`point_margin: true`", params={"foreground": [[10, 10, 1]], "point_margin": True}),
    Case("roi_5_values", "server", "`roi` of 5 values", params={"roi": [1, 2, 3, 4, 5]}),
    Case("roi_bool", "server", "a boolean in `roi`", params={"roi": [1, 20, True, 30, 0, 2]}),
    Case("image_truncated", "server", "truncated NIfTI upload", params={"box": BOX, "image": "truncated.nii.gz"}),
    Case("image_png_garbage", "server", "PNG header then zeros", params={"box": [1, 1, 5, 5], "image": "broken.png"}),
    Case("image_text", "server", "a text file", params={"box": BOX, "image": "notes.txt"}),
]
CASES = {case.name if case.kind == "cli" else f"server_{case.name}": case for case in CLI_CASES + SERVER_CASES}


# ---------------------------------------------------------------------------------------------- running
def checkpoints(folder: str) -> dict[str, str]:
    """sha256 of every ``*.pt`` under ``folder``, by path relative to it."""
    paths = sorted(glob.glob(os.path.join(folder, "**", "*.pt"), recursive=True))
    return {os.path.relpath(p, folder): hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths}


def setup(folder: str) -> Work:
    """The tiny data set, one epoch of ``unetr_prato`` at 32 x 32, two inputs with boxes, a served bundle."""
    acdc = make_tiny_acdc(os.path.join(folder, "acdc"))
    root = os.path.join(folder, "bundle")
    if not os.path.isfile(os.path.join(root, "models", "model.pt")):
        with contextlib.redirect_stdout(io.StringIO()):
            run_config(os.path.join(ROOT, "bundles", BUNDLE), "train", root, dataset_dir=acdc, epochs=1,
                       **tiny_overrides(BUNDLE, SIZE))
    inputs = os.path.join(folder, "inputs")
    if not os.path.isdir(inputs):
        acdc_inference_inputs(acdc, inputs, count=2)
    served = os.path.join(folder, "served")
    if not os.path.isdir(served):
        shutil.copytree(os.path.join(ROOT, "bundles", BUNDLE, "configs"), os.path.join(served, "configs"))
        os.makedirs(os.path.join(served, "models"))
        shutil.copy(os.path.join(root, "models", "model.pt"), os.path.join(served, "models", "model.pt"))
    os.makedirs(os.path.join(folder, "corrupt"), exist_ok=True)
    return Work(folder, acdc, root, inputs, served)


def _describe(error: BaseException) -> tuple[str, int, bool]:
    """The message as the command line shows it, its number of lines and whether it is a known error."""
    known = user_error(error)
    if known is not None:
        text = "\n".join(error_lines(known))
        return text, len(text.splitlines()), True
    root = error
    while root.__cause__ or root.__context__:
        root = root.__cause__ or root.__context__
    lines = len("".join(traceback.format_exception(error)).strip().splitlines())
    return f"traceback; first error: {type(root).__name__}: {str(root).splitlines()[0]}", lines, False


def _fill(value: Any, input_dir: str, work: Work) -> Any:
    return value.format(input=input_dir, work=work.folder) if isinstance(value, str) else value


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def run_cli_case(case: Case, work: Work) -> Outcome:
    """One command-line case in a fresh input folder (the two good inputs, then what ``prepare`` adds)."""
    case_dir = os.path.join(work.folder, "cases", case.name)
    shutil.rmtree(case_dir, ignore_errors=True)
    input_dir, output_dir = os.path.join(case_dir, "inputs"), os.path.join(case_dir, "out")
    shutil.copytree(work.inputs, input_dir)
    if case.prepare is not None:
        case.prepare(input_dir, work)
    before = checkpoints(work.folder)
    overrides = {k: _fill(v, input_dir, work) for k, v in case.overrides.items()}
    if case.config == "inference":
        overrides = {"input_dir": input_dir, "output_dir": output_dir, **overrides}
    else:
        overrides = {"dataset_dir": work.acdc, **overrides}
    root = work.root if case.config == "inference" else os.path.join(case_dir, "bundle")
    try:
        with _quiet():
            run_config(os.path.join(ROOT, "bundles", BUNDLE), case.config, root,
                       **{**tiny_overrides(BUNDLE, SIZE, case.config), **overrides})
    except Exception as error:  # noqa: BLE001 - every error is what the case records
        message, lines, known = _describe(error)
        if case.overrides.get("debug"):  # the hook prints the traceback as Python does
            lines = len("".join(traceback.format_exception(error)).strip().splitlines())
            message, known = f"full traceback, ending in {type(error).__name__}: {str(error).splitlines()[0]}", False
        result = "exit 1"
    else:
        written = sorted(os.listdir(output_dir)) if os.path.isdir(output_dir) else []
        skipped = os.path.join(output_dir, "skipped.json")
        message = f"exit 0; wrote {', '.join(written)}"
        if os.path.isfile(skipped):
            message += "; skipped.json: " + json.dumps(json.load(open(skipped))["skipped"])
        result, lines, known = "exit 0", 0, True
    message = message.replace(work.folder, "<work>").replace(ROOT, "<repo>")
    return Outcome(case, result, message, lines, known, before, checkpoints(work.folder))


def _server_image(case: Case, work: Work) -> tuple[str, str]:
    """The image file of a server case: the first good input, or a bad upload named as the case says."""
    good = sorted(glob.glob(os.path.join(work.inputs, "*.nii.gz")))[0]
    name = case.params.get("image")
    if name is None:
        return good, os.path.basename(good)
    os.makedirs(os.path.join(work.folder, "uploads"), exist_ok=True)
    path = os.path.join(work.folder, "uploads", name)
    content = {"truncated.nii.gz": open(good, "rb").read()[:300], "broken.png": b"\x89PNG\r\n\x1a\n" + bytes(100),
               "notes.txt": b"just some text\n"}[name]
    _write(path, content)
    return path, name


def run_server_case(case: Case, work: Work, segmenter: Any) -> Outcome:
    """One server case through the app's request path; 422 for an ``InputError``, 500 for anything else."""
    image, name = _server_image(case, work)
    before = checkpoints(work.folder)
    try:
        segmenter.segment_request({**case.params, "image": image, "image_name": name})
    except Exception as error:  # noqa: BLE001 - every error is what the case records
        known = user_error(error)
        status = 422 if isinstance(known, ValueError) else 500
        message = f"{segmenter.name}: {known.message}" if known is not None else f"{type(error).__name__}: {error}"
        result, lines = f"HTTP {status}", len(message.splitlines())
    else:
        result, message, lines, known = "HTTP 200", "label returned", 0, True
    return Outcome(case, result, message, lines, known is not None, before, checkpoints(work.folder))


def run_cases(names: list[str] | None, work: Work) -> list[Outcome]:
    """The chosen cases (default all), command line first."""
    from prato_components.interactive import BoxPromptSegmenter

    chosen = [CASES[n] for n in names] if names else list(CASES.values())
    outcomes = [run_cli_case(case, work) for case in chosen if case.kind == "cli"]
    if any(case.kind == "server" for case in chosen):
        segmenter = BoxPromptSegmenter(work.served)
        outcomes += [run_server_case(case, work, segmenter) for case in chosen if case.kind == "server"]
    return outcomes


# ---------------------------------------------------------------------------------------------- the page
def _cell(text: str) -> str:
    return "<br>".join(f"`{line}`" for line in text.replace("|", "\\|").splitlines())


def _digest(hashes: dict[str, str]) -> str:
    """One short sha256 over every checkpoint's: equal before and after means no ``*.pt`` changed."""
    return hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:12]


def page(outcomes: list[Outcome], seconds: float) -> str:
    """``docs/bad_inputs.md``."""
    unchanged = all(o.before == o.after for o in outcomes)
    first = outcomes[0].before if outcomes else {}
    lines = [
        "# Bad inputs: what the command line and the MONAI Label app answer",
        "",
        "Generated by `python tools/bad_inputs.py` (tiny synthetic ACDC-like data; `unetr_prato` at 32 x 32, one "
        f"epoch; {len(outcomes)} cases in {seconds:.0f} s). Do not edit by hand.",
        "",
        "**Command line** (`python -m monai.bundle run ... --config_file configs/inference.json`): a known error "
        "(`UserError` in the exception chain) prints `error: <message>` and `fix: <what to do>` on stderr and the "
        "process exits with status 1; `--debug True` or `PRATO_DEBUG=1` print the full traceback instead; any "
        "other error keeps its traceback. *Lines* counts what our hook prints (MONAI adds two lines of its own "
        "warning about trusting config files before the run starts). Folder inference checks every input before it "
        "segments anything; each case folder holds two good images and the bad one.",
        "",
        "**Server** (`POST /infer/<model>`, the app's request path `BoxPromptSegmenter.segment_request`): a bad "
        "parameter is a 422 whose `detail` names the parameter the client sent.",
        "",
        "**Checkpoints**: the sha256 of every `*.pt` under the work folder is taken before and after every case; "
        "*pt before* / *pt after* are a 12-digit digest of all of them. All unchanged: "
        f"**{'yes' if unchanged else 'NO'}**.",
        "",
        "| *.pt file (at the start) | sha256 |",
        "|---|---|",
        *[f"| `{path}` | `{digest}` |" for path, digest in first.items()],
        "",
        "| # | case | input | result | message | lines | known | pt before | pt after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, o in enumerate(outcomes, 1):
        label = o.case.name if o.case.kind == "cli" else f"server: {o.case.name}"
        lines.append(f"| {i} | {label} | {o.case.what} | {o.result} | {_cell(o.message)} | {o.lines} | "
                     f"{'yes' if o.known else 'no (traceback)'} | `{_digest(o.before)}` | `{_digest(o.after)}` |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="*", help=f"case names (default all): {', '.join(CASES)}")
    parser.add_argument("--work", help="work folder (default: a temporary one, removed afterwards)")
    parser.add_argument("--out", default=DOC, help="the page to write (default docs/bad_inputs.md)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        folder = args.work or stack.enter_context(tempfile.TemporaryDirectory(prefix="bad_inputs_"))
        outcomes = run_cases(args.cases, setup(folder))
    text = page(outcomes, time.monotonic() - start)
    atomic_write_text(text, args.out)
    print(f"wrote {args.out}: {len(outcomes)} cases")
    return 0 if all(o.before == o.after for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
