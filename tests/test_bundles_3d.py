"""The 3D bundles end to end through ``monai.bundle``: one training iteration on crops, evaluation and
box-prompted inference on whole volumes with the prompt-aware sliding window (tiny widths, synthetic BTCV)."""

from __future__ import annotations

import json
import os

import jsonschema
import nibabel as nib
import numpy as np
import pytest
from conftest import BUNDLES_3D, ROOT, read_json, run_bundle

from prato_components.data import make_btcv_like
from prato_components.verification import TINY_NETWORKS

SCHEMA = os.path.join(ROOT, "schemas", "meta_schema.json")
# 2 x 2 mm voxels on a 40 x 40 x 12 grid of 0.8 x 0.8 x 2.5 mm: volumes of about 16 x 16 x 15 after resampling
TINY_3D = {"pixdim": [2.0, 2.0, 2.0], "sw_batch_size": 2, "latency_repeats": 0}


@pytest.fixture(scope="module")
def btcv_dir(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("btcv"))
    make_btcv_like(root, num_training=3, num_validation=1, num_test=1, size=(40, 40, 12), organs=3)
    return root


@pytest.mark.parametrize("bundle", BUNDLES_3D)
def test_metadata_and_multi_gpu_overlay(bundle):
    meta = read_json(os.path.join(ROOT, "bundles", bundle, "configs", "metadata.json"))
    jsonschema.validate(meta, read_json(SCHEMA))
    assert meta["network_data_format"]["inputs"]["boxes"]["num_channels"] == 6
    overlay = read_json(os.path.join(ROOT, "bundles", bundle, "configs", "multi_gpu_train.json"))
    assert overlay["train#sampler"]["_target_"] == "DistributedSampler"
    assert "[:" not in overlay["train#trainer#train_handlers"]  # ranks > 0 drop logging only
    train = read_json(os.path.join(ROOT, "bundles", bundle, "configs", "train.json"))
    assert train["network_def"]["spatial_dims"] == 3 and train["image_size"] == 96
    assert train["sw_inferer"]["_target_"] == "prato_components.engine.PromptedSlidingWindowInferer"


@pytest.mark.parametrize("bundle", BUNDLES_3D)
def test_train_evaluate_infer_3d(bundle, btcv_dir, tmp_path):
    root = str(tmp_path / "bundle")
    tiny = {k: v for k, v in TINY_3D.items() if k != "latency_repeats"}
    run_bundle(bundle, "train", root, dataset="btcv", dataset_dir=btcv_dir, epochs=1, batch_size=1, num_samples=1,
               **{"train#trainer#epoch_length": 1}, **tiny)
    assert os.path.isfile(os.path.join(root, "models", "model.pt"))
    splits = read_json(os.path.join(root, "models", "datalist_btcv.json"))
    assert [len(splits[k]) for k in ("training", "validation", "test")] == [2, 1, 1]

    run_bundle(bundle, "evaluate", root, dataset="btcv", dataset_dir=btcv_dir, **TINY_3D)
    metrics = read_json(os.path.join(root, "eval", "metrics.json"))
    assert set(metrics["metrics"]["mean_dice"]) == {"liver", "spleen", "kidney", "mean"}
    assert 0.0 <= metrics["metrics"]["mean_dice"]["mean"] <= 1.0 and metrics["gflops"] > 0
    assert metrics["windows"]["windows_computed"] >= 1 and metrics["windows"]["windows_total"] >= 1
    if not bundle.endswith("_baseline"):
        assert metrics["tokens"]["kept_fraction/stage1"] == pytest.approx(0.75, abs=0.05)

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    image = os.path.join(btcv_dir, "imagesTs", "img0005.nii.gz")
    os.symlink(image, inputs / "img0005.nii.gz")
    label = np.asarray(nib.load(os.path.join(btcv_dir, "labelsTr", "label0001.nii.gz")).dataobj)
    (inputs / "boxes.json").write_text(json.dumps({"img0005": [[6, 6, 2, 30, 30, 10]]}))
    run_bundle(bundle, "inference", root, dataset="btcv", dataset_dir=btcv_dir, input_dir=str(inputs),
               boxes_file=str(inputs / "boxes.json"), output_dir=str(tmp_path / "out"), **tiny)
    seg = nib.load(str(tmp_path / "out" / "img0005_seg.nii.gz"))
    original = nib.load(image)
    assert seg.shape == original.shape and label.shape == original.shape
    np.testing.assert_allclose(seg.affine, original.affine, atol=1e-4)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3}


def test_a_2d_bundle_trains_on_btcv_slices(btcv_dir, tmp_path):
    root = str(tmp_path / "bundle")
    run_bundle("unetr_prato", "train", root, dataset="btcv", dataset_dir=btcv_dir, epochs=1,
               **{"train#trainer#epoch_length": 1})
    splits = read_json(os.path.join(root, "models", "datalist_btcv.json"))
    assert [len(splits[k]) for k in ("training", "validation", "test")] == [2, 1, 1]  # volumes; served as slices
    assert os.path.isfile(os.path.join(root, "models", "model.pt"))


def test_demo_3d_at_tiny_size(tmp_path, capsys):
    """``tools/demo.py --bundle unetr3d_prato --clicks 1`` end to end (one epoch, tiny widths): trained and untrained
    Dice, then the trained network's Dice after each structure's box and after one click."""
    from tools.demo import demo

    tiny = {"image_size": 32, **TINY_NETWORKS["unetr3d"]}
    summaries = demo(str(tmp_path), epochs=1, patients=5, bundle="unetr3d_prato", sizes=tiny, clicks=1)
    splits = read_json(os.path.join(str(tmp_path), "unetr3d_prato", "models", "datalist_decathlon.json"))
    assert all(splits[k] for k in ("training", "validation", "test"))
    for name in ("trained", "untrained"):
        dice = summaries[name]["metrics"]["mean_dice"]
        assert set(dice) == {"liver", "spleen", "kidney", "mean"} and 0.0 <= dice["mean"] <= 1.0
        assert summaries[name]["windows"]["windows_total"] > 1  # whole volumes, several 32^3 windows
    interactive = summaries["trained"]["interactive"]
    assert interactive["clicks"] == 1 and interactive["num_structures"] >= 1
    assert all(len(values) == 2 for values in interactive["dice_per_step"].values()) and "interactive" not in \
        summaries["untrained"]
    out = capsys.readouterr().out
    assert "Dice per class, trained vs untrained (test split of 5 synthetic volumes)" in out and "kidney" in out
    assert "Dice per structure after its box and after each corrective click" in out and " +1 " in out
    with pytest.raises(ValueError, match="holds demo data made with 5 patients and seed 0, not 6 and 0"):
        demo(str(tmp_path), epochs=1, patients=6, bundle="unetr3d_prato", sizes=tiny)  # the data is kept, not mixed
