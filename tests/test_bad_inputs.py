"""Bad inputs: box files follow the server's rules, folder inference checks every input first, known errors are one
or two lines on the command line (a real ``python -m monai.bundle run``), and the table tool's cases."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import BUNDLES_DIR, ROOT

from prato_components.bundle import check_settings, inference_datalist, read_boxes_file
from prato_components.command_line import debug_requested, error_lines, user_error
from prato_components.errors import InputError, UserError
from prato_components.interactive import flag_from_request, request_boxes_for_image
from prato_components.verification import tiny_overrides
from tools import bad_inputs

MONAI_WARNING = "UserWarning: parsing config_file"  # MONAI's own two-line warning before every run


def _volume(path, shape=(20, 16, 3)) -> str:
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), str(path))
    return str(path)


def _folder(tmp_path, sidecars: dict[str, str | None]) -> str:
    """A folder of 20 x 16 x 3 volumes ``<name>.nii.gz``, each with the ``.box.json`` text given (``None``: none)."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    for name, text in sidecars.items():
        _volume(folder / f"{name}.nii.gz")
        if text is not None:
            (folder / f"{name}.box.json").write_text(text)
    return str(folder)


GOOD = "[[2, 3, 0, 10, 12, 2]]"


# ---------------------------------------------------------------------------------------------- box files
@pytest.mark.parametrize("text, problem", [
    ("[[10, 3, 0, 2, 12, 2]]", r"row 1: box \[10.0, 3.0, 0.0, 2.0, 12.0, 2.0\] is inverted \(max <= min on axis 0\)"),
    ('{"boxes": [[2, 3, 0, 10, 12, 2], [0, 0, 0, -1, -1, -1]]}', "row 2: box .* is inverted"),  # a padding row
    ("[2, 3, 1, 10, 12, 1]", "row 1: box .* is empty"),
    ("[[true, true, true, 10, 12, 2]]", "row 1: box values must be finite numbers"),
    ("[[NaN, 3, 0, 10, 12, 2]]", "row 1: box values must be finite numbers"),
    ("[[2, 3, 0, 10, 12]]", "a box has 4 values .2D. or 6 .3D., got 5"),
    ('{"boxes": [[2, 3, 0, 10', "is not valid JSON: Expecting .* at line 1, column"),
])
def test_a_bad_sidecar_box_is_an_error_naming_the_file_and_the_row(tmp_path, text, problem):
    folder = _folder(tmp_path, {"a": GOOD, "b": text})
    with pytest.raises(InputError, match=problem) as raised:
        inference_datalist(folder)
    assert os.path.join(folder, "b.box.json") in str(raised.value) and "1 of 2 images" in str(raised.value)


def test_a_bad_boxes_file_row_is_named(tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_text("image,x1,y1,z1,x2,y2,z2\na.nii.gz,2,3,0,10,12,2\nb.nii.gz,10,3,0,2,12,2\n")
    with pytest.raises(InputError, match=rf"{path}, row 3: box .* is inverted") as raised:
        read_boxes_file(str(path))
    assert raised.value.fix.startswith("write each box as its min corner then its max corner")
    path.write_text("a.nii.gz,2,3,0,10,12,2\n")
    assert read_boxes_file(str(path)) == {"a": [[2.0, 3.0, 0.0, 10.0, 12.0, 2.0]]}


# ---------------------------------------------------------------------------------------------- folder inference
def test_folder_inference_reports_every_bad_input_at_once(tmp_path):
    folder = _folder(tmp_path, {"a": GOOD, "b": "[[50, 50, 0, 60, 60, 2]]", "c": None, "d": GOOD})
    (tmp_path / "inputs" / "d.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(InputError) as raised:
        inference_datalist(folder, output_dir=str(tmp_path / "out"))
    message = raised.value.message
    assert message.startswith(f"3 of 4 images in {folder} cannot be segmented (nothing was segmented):")
    assert "b.nii.gz: the box prompt of image" in message and "lies outside the image of shape (20, 16, 3)" in message
    assert "c.nii.gz: image" in message and "has no box prompt" in message
    assert "d.nii.gz: image" in message and "cannot be read as NIfTI" in message
    assert "--skip_bad_inputs True" in raised.value.fix
    assert not (tmp_path / "out").exists()


def test_skip_bad_inputs_segments_the_rest_and_lists_what_was_skipped(tmp_path):
    folder = _folder(tmp_path, {"a": GOOD, "b": "[[10, 3, 0, 2, 12, 2]]", "c": None})
    out = tmp_path / "out"
    items = inference_datalist(folder, skip_bad_inputs=True, output_dir=str(out))
    assert items == [{"image": os.path.join(folder, "a.nii.gz"), "box": [[2.0, 3.0, 0.0, 10.0, 12.0, 2.0]]}]
    skipped = json.loads((out / "skipped.json").read_text())
    assert [s["image"] for s in skipped["skipped"]] == ["b.nii.gz", "c.nii.gz"]
    assert "is inverted" in skipped["skipped"][0]["reason"] and "no box prompt" in skipped["skipped"][1]["reason"]
    assert [p.name for p in out.iterdir()] == ["skipped.json"]  # written atomically: no temporary file left


def test_wrong_channels_and_missing_boxes_with_allow_missing_boxes(tmp_path):
    folder = _folder(tmp_path, {"a": None})
    _volume(tmp_path / "inputs" / "b.nii.gz", (20, 16, 3, 2))
    (tmp_path / "inputs" / "b.box.json").write_text(GOOD)
    with pytest.raises(InputError, match="b.nii.gz has 2 channel.s.; the network takes 1"):
        inference_datalist(folder, allow_missing_boxes=True, in_channels=1)
    items = inference_datalist(folder, allow_missing_boxes=True, in_channels=2, skip_bad_inputs=True)
    assert [os.path.basename(i["image"]) for i in items] == ["b.nii.gz"]  # a (1 channel) skipped, no output_dir


def test_settings_errors_are_user_errors():
    with pytest.raises(UserError, match=r"keep_ratio must be a number in \(0, 1\].*got 2; skip_bad_inputs must be "
                                        r"true or false, got 'maybe'"):
        check_settings({"keep_ratio": 2, "skip_bad_inputs": "maybe"})


# ---------------------------------------------------------------------------------------------- the error handler
def test_user_error_is_found_anywhere_in_the_chain():
    try:
        try:
            raise InputError("keep_ratio is 2", "pass --keep_ratio 0.5")
        except InputError as inner:
            raise RuntimeError("Failed to evaluate ConfigExpression") from inner
    except RuntimeError as outer:
        assert error_lines(user_error(outer)) == ["error: keep_ratio is 2", "fix: pass --keep_ratio 0.5"]
    assert user_error(RuntimeError("other")) is None
    assert debug_requested(["run", "--debug", "True"], {}) and debug_requested(["run"], {"PRATO_DEBUG": "1"})
    assert not debug_requested(["run", "--debug", "False"], {"PRATO_DEBUG": "0"})


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> bad_inputs.Work:
    """The table tool's setup: tiny ACDC-like data, one epoch of unetr_prato at 32 x 32, two inputs with boxes."""
    return bad_inputs.setup(str(tmp_path_factory.mktemp("bad_inputs")))


def _cli(work, *args: str, env: dict | None = None) -> tuple[int, list[str]]:
    """``python -m monai.bundle run`` of unetr_prato's inference.json at the tiny size: the status and the stderr
    lines other than MONAI's warning about trusting config files."""
    configs = os.path.join(BUNDLES_DIR, bad_inputs.BUNDLE, "configs")
    tiny = tiny_overrides(bad_inputs.BUNDLE, bad_inputs.SIZE, "inference")
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", os.path.join(configs, "inference.json"),
               "--meta_file", os.path.join(configs, "metadata.json"), "--bundle_root", work.root,
               *[a for k, v in tiny.items() for a in (f"--{k}", json.dumps(v))], *args]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", **(env or {})})
    lines = done.stderr.strip().splitlines()
    if lines and MONAI_WARNING in lines[0]:
        lines = lines[2:]
    return done.returncode, lines


def test_command_line_prints_known_errors_in_a_few_lines(work, tmp_path):
    inputs, out = str(tmp_path / "inputs"), tmp_path / "out"
    shutil.copytree(work.inputs, inputs)
    (tmp_path / "inputs" / "patient002_frame01.box.json").write_text('{"boxes": [[29, 18, 0, 11, 34, 2]]}')
    rc, lines = _cli(work, "--input_dir", inputs, "--output_dir", str(out))
    assert rc == 1 and len(lines) == 3, lines
    assert lines[0] == f"error: 1 of 2 images in {inputs} cannot be segmented (nothing was segmented):"
    assert "patient002_frame01.box.json, row 1: box [29.0, 18.0, 0.0, 11.0, 34.0, 2.0] is inverted" in lines[1]
    assert lines[2].startswith("fix: fix them, or pass --skip_bad_inputs True")
    assert not out.exists() or not os.listdir(out)  # the good image was not segmented either

    rc, lines = _cli(work, "--input_dir", inputs, "--output_dir", str(out), "--keep_ratio", "2")
    assert rc == 1 and lines == ["error: keep_ratio must be a number in (0, 1], the fraction of tokens kept per "
                                 "stage, got 2"], lines
    for switch, env in ((["--debug", "True"], None), ([], {"PRATO_DEBUG": "1"})):
        rc, lines = _cli(work, "--input_dir", inputs, "--output_dir", str(out), "--keep_ratio", "2", *switch, env=env)
        assert rc == 1 and lines[0] == "Traceback (most recent call last):" and len(lines) > 20, lines
        assert "InputError: keep_ratio must be a number" in "\n".join(lines)


def test_command_line_keeps_the_traceback_of_unexpected_errors(work, tmp_path):
    rc, lines = _cli(work, "--input_dir", work.inputs, "--output_dir", str(tmp_path / "out"),
                     "--pruner_def#_target_", "prato_components.pruners.NoSuchPruner")
    assert rc == 1 and lines[0] == "Traceback (most recent call last):" and "NoSuchPruner" in "\n".join(lines)


def test_skip_bad_inputs_on_the_command_line(work, tmp_path):
    inputs, out = str(tmp_path / "inputs"), tmp_path / "out"
    shutil.copytree(work.inputs, inputs)
    (tmp_path / "inputs" / "patient002_frame01.box.json").write_text("[[1, 1, 0, 1, 5, 2]]")
    rc, lines = _cli(work, "--input_dir", inputs, "--output_dir", str(out), "--skip_bad_inputs", "True")
    assert rc == 0, lines
    assert sorted(os.listdir(out)) == ["patient001_frame01_seg.nii.gz", "skipped.json"]
    skipped = json.loads((out / "skipped.json").read_text())["skipped"]
    assert [s["image"] for s in skipped] == ["patient002_frame01.nii.gz"] and "is empty" in skipped[0]["reason"]


# ---------------------------------------------------------------------------------------------- server parameters
@pytest.mark.parametrize("value, expected", [(True, True), ("false", False), ("TRUE", True), (0, False), ("", True)])
def test_flag_parameter(value, expected):
    assert flag_from_request({"restrict_to_box": value}, "restrict_to_box", True) is expected


@pytest.mark.parametrize("value", ["maybe", 2, [True], 1.0, "yes please"])
def test_bad_flag_parameter_is_named(value):
    with pytest.raises(InputError, match=r"parameter 'restrict_to_box' must be true or false, got"):
        flag_from_request({"restrict_to_box": value}, "restrict_to_box", True)


@pytest.mark.parametrize("params, message", [
    ({"box": [True, True, True, 79, 90, 9]}, "parameter 'box': box values must be numbers"),
    ({"box": ["1", 2, 0, 10, 12, 2]}, "parameter 'box': box values must be numbers"),
    ({"box": [2, 3, 10, 12], "slice": 99}, r"parameter 'slice' is 99, but the image has 3 slices \(0 to 2\)"),
    ({"foreground": [[50, 5, 1]]}, r"parameter 'foreground' point 1 is \(50, 5, 1\) but the image is 20 x 16 x 3"),
    ({"roi": [50, 60, 0, 5, 0, 2]}, "parameter 'roi': .* lies outside the image"),
    ({"box": [50, 50, 0, 60, 60, 2]}, "parameter 'box': .* lies outside the image"),
])
def test_request_errors_name_the_parameter_sent(params, message):
    with pytest.raises(InputError, match=message):
        request_boxes_for_image(params, (20, 16, 3))


def test_request_boxes_fit_the_image():
    assert request_boxes_for_image({"box": [2, 3, 10, 12], "slice": 1}, (20, 16, 3)) == [[2, 3, 1, 10, 12, 2]]
    assert request_boxes_for_image({"foreground": [[5, 5, 1]], "point_margin": 10}, (20, 16, 3)) == [
        [0, 0, 1, 16, 16, 2]]  # grown by the margin, clipped to the image


# ---------------------------------------------------------------------------------------------- the table tool
def test_table_cases_keep_every_checkpoint(work, tmp_path):
    names = ["inverted_box", "csv_inverted", "keep_ratio_2", "checkpoint_missing", "server_restrict_maybe",
             "server_slice_99", "server_box_bools"]
    outcomes = bad_inputs.run_cases(names, work)
    assert [o.result for o in outcomes] == ["exit 1"] * 4 + ["HTTP 422"] * 3
    assert all(o.known and 1 <= o.lines <= 3 and o.before == o.after and o.before for o in outcomes)
    assert "parameter 'restrict_to_box' must be true or false, got 'maybe'" in outcomes[4].message
    page = bad_inputs.page(outcomes, 1.0)
    assert page.count("\n| ") == 2 + len(outcomes) + len(outcomes[0].before)  # two headers, rows, files
    assert "All unchanged: **yes**" in page
    assert len([c for c in bad_inputs.CASES.values() if c.kind == "cli"]) >= 30
    assert len([c for c in bad_inputs.CASES.values() if c.kind == "server"]) >= 30
