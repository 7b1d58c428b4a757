"""The UNETR bundles end to end through ``monai.bundle`` (tiny sizes), their metadata, and bad input."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jsonschema
import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import BUNDLES, ROOT, error_text, read_json, run_bundle, tiny_overrides
from PIL import Image

from prato_components.verification import REQUIRED_FILES, acdc_inference_inputs

UNETR_BUNDLES = ["unetr_baseline", "unetr_prato"]
SCHEMA = os.path.join(ROOT, "schemas", "meta_schema.json")


def _digest(paths) -> dict[str, str]:
    return {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in sorted(paths)}


def _epoch(checkpoint: dict) -> int:
    return checkpoint["trainer"]["iteration"] // checkpoint["trainer"]["epoch_length"]


def test_every_bundle_has_the_files_of_the_bundle_layout():
    assert len(REQUIRED_FILES) == 8 and "configs/multi_gpu_train.json" in REQUIRED_FILES
    for name in BUNDLES:
        for rel in REQUIRED_FILES:
            assert os.path.isfile(os.path.join(ROOT, "bundles", name, rel)), (name, rel)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_matches_local_schema(bundle):
    schema = read_json(SCHEMA)
    meta = read_json(os.path.join(ROOT, "bundles", bundle, "configs", "metadata.json"))
    jsonschema.validate(meta, schema)
    assert meta["version"] in meta["changelog"]
    broken = {k: v for k, v in meta.items() if k != "network_data_format"}
    with pytest.raises(jsonschema.ValidationError, match="network_data_format"):
        jsonschema.validate(broken, schema)


def test_monai_verify_metadata_offline_and_net_in_out():
    from monai.bundle import verify_metadata, verify_net_in_out

    configs = os.path.join(ROOT, "bundles", "unetr_prato", "configs")
    verify_metadata(meta_file=os.path.join(configs, "metadata.json"), filepath=SCHEMA)
    verify_net_in_out(net_id="network_def", meta_file=os.path.join(configs, "metadata.json"),
                      config_file=os.path.join(configs, "inference.json"),
                      bundle_root=os.path.join(ROOT, "bundles", "unetr_prato"), device="cpu")


@pytest.mark.parametrize("bundle", UNETR_BUNDLES)
def test_acdc_train_evaluate_infer(bundle, acdc_dir, tmp_path):
    root = str(tmp_path / "bundle")
    run_bundle(bundle, "train", root, dataset="acdc", dataset_dir=acdc_dir, epochs=2)
    models = os.path.join(root, "models")
    for name in ("last.pt", "model.pt", "model_final.pt", "datalist_acdc.json"):
        assert os.path.isfile(os.path.join(models, name)), name
    last = torch.load(os.path.join(models, "last.pt"), weights_only=False)
    assert _epoch(last) == 2 and {"model", "optimizer", "lr_scheduler"} <= set(last)
    splits = read_json(os.path.join(models, "datalist_acdc.json"))
    patients = [{item["patient"] for item in splits[k]} for k in ("training", "validation", "test")]
    assert all(patients) and not (patients[0] & patients[1] or patients[0] & patients[2])

    run_bundle(bundle, "evaluate", root, dataset="acdc", dataset_dir=acdc_dir, latency_repeats=1)
    metrics = read_json(os.path.join(root, "eval", "metrics.json"))
    assert set(metrics["metrics"]) == {"mean_dice", "mean_iou", "hd95"}
    assert set(metrics["metrics"]["mean_dice"]) == {"right_ventricle", "myocardium", "left_ventricle", "mean"}
    assert 0.0 <= metrics["metrics"]["mean_dice"]["mean"] <= 1.0 and metrics["gflops"] > 0
    # 2x2 tokens, keep 3 then 2: twelve ViT blocks run on 4, 4, 4, 4, 3, 3, 3, 2, 2, 2, 2, 2 tokens of 4
    expected_sparsity = 0.0 if bundle == "unetr_baseline" else 1 - (4 * 4 + 3 * 3 + 5 * 2) / (12 * 4)
    assert metrics["tokens"]["token_sparsity"] == pytest.approx(expected_sparsity)
    assert os.path.isfile(os.path.join(root, "eval", "metrics.csv"))

    inputs = str(tmp_path / "inputs")
    images = acdc_inference_inputs(acdc_dir, inputs)
    run_bundle(bundle, "inference", root, dataset="acdc", input_dir=inputs, output_dir=str(tmp_path / "out"))
    for image in images:
        stem = os.path.basename(image)[: -len(".nii.gz")]
        seg = nib.load(str(tmp_path / "out" / f"{stem}_seg.nii.gz"))
        original = nib.load(image)
        assert seg.shape == original.shape
        np.testing.assert_allclose(seg.affine, original.affine, atol=1e-4)
        assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3}


def test_isic_train_evaluate_infer_png(isic_dir, tmp_path):
    root = str(tmp_path / "bundle")
    run_bundle("unetr_prato", "train", root, dataset="isic", dataset_dir=isic_dir, epochs=1)
    run_bundle("unetr_prato", "evaluate", root, dataset="isic", dataset_dir=isic_dir, latency_repeats=0)
    metrics = read_json(os.path.join(root, "eval", "metrics.json"))
    assert set(metrics["metrics"]["mean_dice"]) == {"lesion", "mean"}
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    images = sorted(glob.glob(os.path.join(isic_dir, "*Input", "*.jpg")))[:2]
    rows = []
    for image in images:
        shutil.copy(image, inputs)
        width, height = Image.open(image).size
        rows.append(f"{os.path.basename(image)},4,4,{width - 6},{height - 8}")
    (inputs / "boxes.csv").write_text("image,x1,y1,x2,y2\n" + "\n".join(rows) + "\n")
    run_bundle("unetr_prato", "inference", root, dataset="isic", input_dir=str(inputs),
               boxes_file=str(inputs / "boxes.csv"), output_dir=str(tmp_path / "out"))
    for image in images:
        stem = os.path.splitext(os.path.basename(image))[0]
        seg = Image.open(tmp_path / "out" / f"{stem}_seg.png")
        assert seg.size == Image.open(image).size
        assert set(np.unique(np.asarray(seg))) <= {0, 255}


def test_resume_continues_from_the_last_checkpoint(acdc_dir, tmp_path):
    root = str(tmp_path / "bundle")
    interrupted = {"epochs": 1, "lr_scheduler#T_max": 2}  # a 2-epoch run stopped after its first epoch
    run_bundle("unetr_prato", "train", root, dataset_dir=acdc_dir, val_interval=5, **interrupted)
    last = os.path.join(root, "models", "last.pt")
    weights = torch.load(last, weights_only=False)["model"]
    run_bundle("unetr_prato", "train", root, dataset_dir=acdc_dir, val_interval=5, **interrupted)  # done: no step
    again = torch.load(last, weights_only=False)
    assert _epoch(again) == 1
    assert all(torch.equal(weights[k], again["model"][k]) for k in weights)
    run_bundle("unetr_prato", "train", root, dataset_dir=acdc_dir, epochs=2, val_interval=5)
    resumed = torch.load(last, weights_only=False)
    assert _epoch(resumed) == 2 and resumed["trainer"]["iteration"] == 2 * again["trainer"]["iteration"]
    assert any(not torch.equal(weights[k], resumed["model"][k]) for k in weights)


def test_kill_9_during_training_then_resume_finishes_every_epoch(acdc_dir, tmp_path):
    """SIGKILL at a moment after the first checkpoint: every file left is whole, and the rerun resumes from the last
    complete epoch and ends with all epochs done."""
    root, epochs = str(tmp_path / "bundle"), 4
    configs = os.path.join(ROOT, "bundles", "unetr_prato", "configs")
    overrides = {**tiny_overrides("unetr_prato"), "dataset_dir": acdc_dir, "epochs": epochs, "bundle_root": root}
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", os.path.join(configs, "train.json"),
               "--meta_file", os.path.join(configs, "metadata.json"),
               "--logging_file", os.path.join(configs, "logging.conf"),
               *[f"--{k}={json.dumps(v)}" for k, v in overrides.items()]]
    last = os.path.join(root, "models", "last.pt")
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not os.path.exists(last) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(random.Random(0).uniform(0.0, 0.5))  # somewhere in the next epoch (or in its checkpoint writes)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "training finished before it could be killed"
    saved = [f for f in os.listdir(os.path.join(root, "models")) if f.endswith(".pt")]
    for name in saved:  # whole files only; a killed write leaves at most a hidden .tmp beside them
        torch.load(os.path.join(root, "models", name), weights_only=False)
    before = _epoch(torch.load(last, weights_only=False))
    assert 1 <= before < epochs
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
    resumed = torch.load(last, weights_only=False)
    assert _epoch(resumed) == epochs
    assert os.path.isfile(os.path.join(root, "models", "model_final.pt"))


def _corrupt_copy(source: str, target: str, pattern: str, content: bytes) -> str:
    shutil.copytree(source, target)
    victim = sorted(glob.glob(os.path.join(target, pattern), recursive=True))[0]
    with open(victim, "wb") as f:
        f.write(content)
    return victim


@pytest.mark.parametrize(
    "case",
    ["missing_dir", "empty_dir", "unknown_dataset", "corrupt_nifti", "corrupt_png", "unknown_label"],
)
def test_bad_training_data_gives_named_errors(case, acdc_dir, isic_dir, tmp_path):
    root, dataset, data = str(tmp_path / "bundle"), "acdc", str(tmp_path / "data")
    if case == "missing_dir":
        expected = "does not exist"
    elif case == "empty_dir":
        os.makedirs(data)
        expected = "does not look like an ACDC|does not exist"
    elif case == "unknown_dataset":
        dataset, data = "kvasir", acdc_dir
        expected = r"dataset must be one of \['acdc', 'isic', 'decathlon', 'btcv'\], got 'kvasir'"
    elif case == "corrupt_nifti":
        victim = _corrupt_copy(acdc_dir, data, "training/patient001/patient001_frame01.nii.gz", b"not a nifti")
        expected = os.path.basename(victim)
    elif case == "corrupt_png":
        dataset = "isic"
        victim = _corrupt_copy(isic_dir, data, "**/*_segmentation.png", b"\x89PNG\r\n\x1a\nbroken")
        expected = os.path.basename(victim)
    else:
        shutil.copytree(acdc_dir, data)
        victim = sorted(glob.glob(os.path.join(data, "training", "*", "*_gt.nii.gz")))[0]
        img = nib.load(victim)
        label = np.asarray(img.dataobj).copy()
        label[0, 0, :] = 7
        nib.save(nib.Nifti1Image(label, img.affine), victim)
        expected = r"7"
    with pytest.raises(Exception) as caught:
        run_bundle("unetr_prato", "train", root, dataset=dataset, dataset_dir=data, epochs=1, cache_rate=0.0)
    import re

    assert re.search(expected, error_text(caught.value)), error_text(caught.value)


def test_bad_inference_input_is_named_and_nothing_written_is_lost(acdc_dir, tmp_path):
    root, out = str(tmp_path / "bundle"), str(tmp_path / "out")
    run_bundle("unetr_prato", "train", root, dataset_dir=acdc_dir, epochs=1)
    inputs = str(tmp_path / "inputs")
    acdc_inference_inputs(acdc_dir, inputs, count=1)
    run_bundle("unetr_prato", "inference", root, input_dir=inputs, output_dir=out)
    before = _digest(glob.glob(os.path.join(root, "models", "*")) + glob.glob(os.path.join(out, "*")))

    no_prompt = str(tmp_path / "no_prompt")
    os.makedirs(no_prompt)
    image = sorted(glob.glob(os.path.join(inputs, "*.nii.gz")))[0]
    shutil.copy(image, no_prompt)
    with pytest.raises(Exception) as caught:
        run_bundle("unetr_prato", "inference", root, input_dir=no_prompt, output_dir=out)
    assert "has no box prompt" in error_text(caught.value)

    outside = str(tmp_path / "outside")
    shutil.copytree(no_prompt, outside)
    stem = os.path.basename(image)[: -len(".nii.gz")]
    with open(os.path.join(outside, stem + ".box.json"), "w") as f:
        json.dump({"boxes": [[500, 500, 0, 600, 600, 2]]}, f)
    with pytest.raises(Exception) as caught:
        run_bundle("unetr_prato", "inference", root, input_dir=outside, output_dir=out)
    assert "lies outside the image" in error_text(caught.value)

    with pytest.raises(Exception) as caught:
        run_bundle("unetr_prato", "inference", str(tmp_path / "untrained"), input_dir=inputs, output_dir=out)
    assert "checkpoint" in error_text(caught.value) and "does not exist" in error_text(caught.value)
    assert _digest(before) == before

    run_bundle("unetr_prato", "inference", root, input_dir=no_prompt, output_dir=str(tmp_path / "free"),
               allow_missing_boxes=True)
    assert os.path.isfile(tmp_path / "free" / f"{stem}_seg.nii.gz")


@pytest.mark.parametrize("bundle", [b for b in BUNDLES if b not in UNETR_BUNDLES])
def test_one_iteration_train_and_evaluate(bundle, acdc_dir, tmp_path):
    """Every other bundle: one training iteration (with validation) and an evaluation, at a 64x64 input."""
    root = str(tmp_path / "bundle")
    run_bundle(bundle, "train", root, dataset_dir=acdc_dir, epochs=1, image_size=64,
               **{"train#trainer#epoch_length": 1})
    assert os.path.isfile(os.path.join(root, "models", "model.pt"))
    run_bundle(bundle, "evaluate", root, dataset_dir=acdc_dir, image_size=64, latency_repeats=0)
    metrics = read_json(os.path.join(root, "eval", "metrics.json"))
    assert 0.0 <= metrics["metrics"]["mean_dice"]["mean"] <= 1.0
    tokens = metrics["tokens"]
    if bundle.endswith("_baseline"):
        assert tokens["token_sparsity"] == 0.0 and "kept_fraction/stage1" not in tokens
    elif bundle.startswith("unetr_"):
        assert tokens["kept_fraction/stage1"] == pytest.approx(12 / 16)  # 4x4 tokens, keep 0.75 per stage
        assert tokens["kept_fraction"] == pytest.approx((4 * 16 + 3 * 12 + 5 * 9) / (12 * 16))  # per ViT block
    else:
        assert tokens["kept_fraction/stage1"] == pytest.approx(0.75, abs=0.02) and 0.0 < tokens["token_sparsity"] < 0.25
