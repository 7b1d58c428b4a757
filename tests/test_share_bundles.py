"""Share and download: deterministic bundle zips with a checksum index, `monai.bundle download` from file://."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import zipfile

import nibabel as nib
import numpy as np
import pytest
from conftest import BUNDLE_VERSION, BUNDLES_3D, ROOT, run_bundle

from prato_components.verification import acdc_inference_inputs, btcv_inference_inputs, make_tiny_btcv, tiny_overrides
from tools.package_bundles import check_index, pack_bundle, pack_bundles, sha256


def test_archives_are_deterministic_and_indexed(tmp_path):
    first, second = pack_bundles(str(tmp_path / "a")), pack_bundles(str(tmp_path / "b"))
    assert first == second and "unetr_prato" in first and set(BUNDLES_3D) <= set(first)
    for name, entry in first.items():
        assert entry["file"] == f"{name}_v{entry['version']}.zip"
        a, b = tmp_path / "a" / entry["file"], tmp_path / "b" / entry["file"]
        assert a.read_bytes() == b.read_bytes() and sha256(str(a)) == entry["sha256"]
        names = zipfile.ZipFile(a).namelist()
        assert names == sorted(names) and all(n.startswith(f"{name}/") for n in names)
        assert {f"{name}/configs/metadata.json", f"{name}/configs/inference.json", f"{name}/LICENSE",
                f"{name}/docs/README.md", f"{name}/configs/multi_gpu_train.json"} <= set(names)
    assert check_index(str(tmp_path / "a")) == first
    victim = tmp_path / "a" / first["unetr_prato"]["file"]
    victim.write_bytes(victim.read_bytes() + b"x")
    with pytest.raises(ValueError, match="unetr_prato.*sha256 mismatch"):
        check_index(str(tmp_path / "a"))


def _models(archive: str) -> dict[str, bytes]:
    with zipfile.ZipFile(archive) as z:
        return {n.split("/models/", 1)[1]: z.read(n) for n in z.namelist() if "/models/" in n}


def test_zip_packs_one_set_of_weights_by_default_the_other_on_request(tmp_path):
    bundles = tmp_path / "bundles"
    bundle = bundles / "unetr_prato"
    shutil.copytree(os.path.join(ROOT, "bundles", "unetr_prato"), bundle)
    (bundle / "models").mkdir()
    files = {"model.pt": b"best", "model_final.pt": b"final", "last.pt": b"resume", "model.pt2": b"export",
             "best_metric.txt": b"0.5", "datalist_acdc.json": b"{}"}
    for name, data in files.items():
        (bundle / "models" / name).write_bytes(data)
    packed = {}
    for weights in ("best", "final", "all"):
        index = pack_bundles(str(tmp_path / weights), bundles_dir=str(bundles), weights=weights)
        packed[weights] = _models(str(tmp_path / weights / index["unetr_prato"]["file"]))
        assert check_index(str(tmp_path / weights)) == index
        assert index["unetr_prato"]["weights"] == {
            "best": {"models/model.pt": "models/model.pt"}, "final": {"models/model.pt": "models/model_final.pt"},
            "all": {"models/model.pt": "models/model.pt", "models/model_final.pt": "models/model_final.pt"},
        }[weights]
    # default: the best checkpoint only, as models/model.pt (what inference.json's ckpt_path loads); exports kept
    assert packed["best"] == {"model.pt": b"best", "model.pt2": b"export"}
    assert packed["final"] == {"model.pt": b"final", "model.pt2": b"export"}
    assert packed["all"] == {"model.pt": b"best", "model_final.pt": b"final", "model.pt2": b"export"}
    # still deterministic with weights
    again = pack_bundle(str(bundle), str(tmp_path / "again"))
    assert sha256(again) == sha256(str(tmp_path / "best" / os.path.basename(again)))

    # only the final checkpoint: shipped under the default name, and index.json says so
    (bundle / "models" / "model.pt").unlink()
    index = pack_bundles(str(tmp_path / "fallback"), bundles_dir=str(bundles))
    assert index["unetr_prato"]["weights"] == {"models/model.pt": "models/model_final.pt"}
    assert _models(str(tmp_path / "fallback" / index["unetr_prato"]["file"])) == {"model.pt": b"final",
                                                                                  "model.pt2": b"export"}
    # an explicit request is not substituted; an unknown choice is named
    (bundle / "models" / "model.pt").write_bytes(b"best")
    (bundle / "models" / "model_final.pt").unlink()
    with pytest.raises(FileNotFoundError, match="weights='final' but .* has no model_final.pt"):
        pack_bundle(str(bundle), str(tmp_path / "missing"), weights="final")
    with pytest.raises(ValueError, match="weights must be one of"):
        pack_bundle(str(bundle), str(tmp_path / "bad"), weights="latest")


def test_download_round_trip_runs_inference(acdc_dir, tmp_path):
    # a tiny trained checkpoint in a copy of the bundle, with a large_files.yml
    trained = str(tmp_path / "trained")
    run_bundle("unetr_prato", "train", trained, dataset_dir=acdc_dir, epochs=1, **{"train#trainer#epoch_length": 1})
    bundle = str(tmp_path / "unetr_prato")
    shutil.copytree(os.path.join(ROOT, "bundles", "unetr_prato"), bundle)
    os.makedirs(os.path.join(bundle, "models"))
    for name in ("model.pt", "model_final.pt", "last.pt"):
        shutil.copy(os.path.join(trained, "models", name), os.path.join(bundle, "models", name))
    (tmp_path / "unetr_prato" / "large_files.yml").write_text(
        "large_files:\n  - path: models/model.pt\n    url: ''\n    hash_val: ''\n    hash_type: ''\n")
    archive = pack_bundle(bundle, str(tmp_path / "dist"))
    assert archive.endswith(f"unetr_prato_v{BUNDLE_VERSION}.zip")
    names = zipfile.ZipFile(archive).namelist()
    assert "unetr_prato/models/model.pt" in names and "unetr_prato/large_files.yml" in names
    assert "unetr_prato/models/last.pt" not in names  # resume state is not shared
    assert "unetr_prato/models/model_final.pt" not in names  # one set of weights by default

    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    downloads = str(tmp_path / "downloads")
    subprocess.run([sys.executable, "-m", "monai.bundle", "download", "--name", "unetr_prato",
                    "--url", "file://" + os.path.abspath(archive), "--bundle_dir", downloads, "--progress", "False"],
                   check=True, env=env, capture_output=True, timeout=300)
    root = os.path.join(downloads, "unetr_prato")
    assert os.path.isfile(os.path.join(root, "configs", "inference.json"))
    assert sha256(os.path.join(root, "models", "model.pt")) == sha256(os.path.join(bundle, "models", "model.pt"))

    inputs = str(tmp_path / "inputs")
    images = acdc_inference_inputs(acdc_dir, inputs, count=1)
    overrides = ["--num_workers=0"]  # no network settings: the shared model.pt records them (trained at 32 x 32)
    # run from the downloaded folder, as a user would: bundle_root defaults to "."
    subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
                    "--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf",
                    "--input_dir", inputs, *overrides], check=True, cwd=root, env=env, capture_output=True,
                   timeout=300)
    stem = os.path.basename(images[0])[: -len(".nii.gz")]
    seg = nib.load(os.path.join(root, "eval", f"{stem}_seg.nii.gz"))
    assert seg.shape == nib.load(images[0]).shape
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3}
    assert glob.glob(os.path.join(root, "models", "model.pt"))


def test_download_round_trip_3d(tmp_path):
    """A 3D bundle with (random, tiny) weights: packed, downloaded with MONAI's command, run on a BTCV volume."""
    import torch
    from monai.bundle import ConfigParser

    data = make_tiny_btcv(str(tmp_path / "btcv"))
    bundle = str(tmp_path / "unetr3d_prato")
    shutil.copytree(os.path.join(ROOT, "bundles", "unetr3d_prato"), bundle)
    os.makedirs(os.path.join(bundle, "models"))
    settings = {"dataset": "btcv", "dataset_dir": data, "pixdim": [2.0, 2.0, 2.0]}
    parser = ConfigParser()
    parser.read_config(os.path.join(bundle, "configs", "inference.json"))
    for key, value in {**settings, **tiny_overrides("unetr3d_prato", 32, "inference")}.items():
        parser[key] = value
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    torch.save({"model": network.state_dict(), "network_settings": parser.get_parsed_content("network_settings")},
               os.path.join(bundle, "models", "model.pt"))
    archive = pack_bundle(bundle, str(tmp_path / "dist"))
    assert archive.endswith(f"unetr3d_prato_v{BUNDLE_VERSION}.zip")

    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    downloads = str(tmp_path / "downloads")
    subprocess.run([sys.executable, "-m", "monai.bundle", "download", "--name", "unetr3d_prato",
                    "--url", "file://" + os.path.abspath(archive), "--bundle_dir", downloads, "--progress", "False"],
                   check=True, env=env, capture_output=True, timeout=300)
    root = os.path.join(downloads, "unetr3d_prato")
    images = btcv_inference_inputs(data, str(tmp_path / "inputs"), count=1)
    # the data set names the classes; the network sizes come from the shared model.pt
    subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
                    "--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf",
                    "--input_dir", str(tmp_path / "inputs"), "--num_workers", "0", "--dataset", "btcv",
                    "--dataset_dir", data, "--pixdim", "[2.0, 2.0, 2.0]"], check=True, cwd=root, env=env,
                   capture_output=True, timeout=300)
    stem = os.path.basename(images[0])[: -len(".nii.gz")]
    seg, image = nib.load(os.path.join(root, "eval", f"{stem}_seg.nii.gz")), nib.load(images[0])
    assert seg.shape == image.shape
    np.testing.assert_allclose(seg.affine, image.affine, atol=1e-4)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3}
