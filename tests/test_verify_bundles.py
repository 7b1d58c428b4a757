"""The bundle verification (``prato_components.verification`` and its command line ``tools/verify_bundles.py``) on every
bundle: files, metadata, network I/O (full size), tiny train + inference, export."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ALL_BUNDLES, BUNDLE_VERSION, BUNDLES, BUNDLES_3D, ROOT, SCHEMA

from prato_components.export import example_inputs, load_exported
from prato_components.verification import (
    EXPORT_SETTINGS,
    _network,
    _network_overrides,
    check_export,
    check_files,
    check_metadata,
    check_net_in_out,
    export,
    make_tiny_btcv,
    tiny_window_3d,
    verify_bundle,
    verify_bundles,
)
from tools.verify_bundles import model_zoo_shape_check


@pytest.mark.parametrize("bundle", ALL_BUNDLES)
def test_model_zoo_shape_check_with_fresh_weights_and_no_data(bundle, tmp_path, monkeypatch):
    """The MONAI Model Zoo's ``verify_net_in_out`` step on every bundle, from a folder without data: each network
    builds from its configs alone (a 3D bundle's BTCV classes included) and maps the metadata's input to its
    output."""
    monkeypatch.chdir(tmp_path)
    model_zoo_shape_check(os.path.join(ROOT, "bundles", bundle))


@pytest.mark.parametrize("bundle", BUNDLES)
def test_verify_bundle(bundle, acdc_dir, tmp_path):
    report = verify_bundle(os.path.join(ROOT, "bundles", bundle), str(tmp_path), acdc_dir, full_size=True)
    assert report["files"] == 8 and report["metadata"] == BUNDLE_VERSION and report["net_in_out"] == [224, 224]
    export = report["export"]
    assert export["max_abs_diff"] <= 1e-4 and os.path.isfile(export["file"])
    assert len(torch.export.load(export["file"]).graph_signature.user_inputs) == 2  # (image, boxes)


def test_verify_bundle_3d(tmp_path):
    """Every check of a 3D bundle: tiny training on BTCV crops, box-prompted inference, export of one window."""
    data = make_tiny_btcv(str(tmp_path / "btcv"))
    report = verify_bundle(os.path.join(ROOT, "bundles", "unetr3d_prato"), str(tmp_path / "run"), data,
                           image_size=32)
    assert report["files"] == 8 and report["metadata"] == BUNDLE_VERSION and report["net_in_out"] == [32, 32, 32]
    assert report["export"]["max_abs_diff"] <= 1e-4 and report["export"]["dynamic_boxes"]


@pytest.mark.parametrize("bundle", BUNDLES_3D)
def test_3d_metadata_net_in_out_and_export(bundle, tmp_path):
    """The 3D bundles' metadata, network I/O and torch.export of one window with [B, M, 6] boxes (random tiny
    weights; the exported program equals the eager network for 1-3 boxes and no prompt). Swin UNETR at 64^3:
    ``verify_net_in_out`` runs the network in training mode, where its 1/32 bottleneck needs 2^3 voxels."""
    bundle_dir, size = os.path.join(ROOT, "bundles", bundle), tiny_window_3d(bundle)
    assert check_metadata(bundle_dir) == BUNDLE_VERSION
    assert check_net_in_out(bundle_dir, image_size=size) == [size] * 3
    network, _, _ = _network(bundle_dir, None, _network_overrides(bundle_dir, size))
    torch.save(network.state_dict(), str(tmp_path / "model.pt"))
    result = check_export(bundle_dir, str(tmp_path / "model.pt"), str(tmp_path / "model.pt2"), image_size=size)
    assert result["max_abs_diff"] <= 1e-4
    module, files = load_exported(result["file"], ("export.json", "metadata.json"))
    assert module.spatial_shape == (size,) * 3 and files["export.json"]["spatial_dims"] == 3
    assert files["metadata.json"]["name"] == bundle
    image, boxes = example_inputs(1, (size,) * 3, batch=1)
    with torch.no_grad():
        assert module(image, boxes).shape == (1, 14, size, size, size)
    with pytest.raises(ValueError, match="a box has 4 values but the image has 3 spatial dims"):
        module(image, torch.zeros(1, 1, 4))


def test_missing_file_and_version_outside_changelog_are_named(tmp_path):
    bundle = str(tmp_path / "unetr_prato")
    shutil.copytree(os.path.join(ROOT, "bundles", "unetr_prato"), bundle)
    os.remove(os.path.join(bundle, "LICENSE"))
    with pytest.raises(FileNotFoundError, match="LICENSE"):
        check_files(bundle)
    meta_path = os.path.join(bundle, "configs", "metadata.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["version"] = "9.9.9"
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(FileNotFoundError, match=r"no metadata schema at .*schemas/meta_schema.json: pass schema="):
        check_metadata(bundle)  # a copy outside the collection has no schema beside it, and none is downloaded
    with pytest.raises(ValueError, match="9.9.9 is not in the changelog"):
        check_metadata(bundle, SCHEMA)


def test_a_failing_bundle_is_reported_and_the_others_still_run(tmp_path):
    """``verify_bundles`` records a failure per bundle and goes on; the command line exits non-zero naming it."""
    collection = tmp_path / "collection"
    shutil.copytree(os.path.join(ROOT, "bundles", "unetr_prato"), collection / "bundles" / "unetr_prato")
    os.remove(collection / "bundles" / "unetr_prato" / "LICENSE")
    os.makedirs(collection / "bundles" / "not_a_bundle")  # no configs/metadata.json: not found as a bundle
    report = verify_bundles(str(collection / "bundles"), schema=SCHEMA, work_dir=str(tmp_path / "work"))
    assert list(report) == ["unetr_prato"]
    error = report["unetr_prato"]["error"]
    assert error.startswith("FileNotFoundError: ") and "LICENSE" in error
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "verify_bundles.py"), "run", "--bundles_dir",
                           str(collection / "bundles"), "--work_dir", str(tmp_path / "cli")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "verification failed for ['unetr_prato']" in done.stderr
    assert '"error": "FileNotFoundError' in done.stdout


def _export_tiny(bundle: str, size: int, folder) -> tuple:
    """Export bundle ``bundle`` (tiny widths, ``size`` px, random weights) through the verification's ``export``;
    the eager network the program computes (``EXPORT_SETTINGS``: the whole image decoded), the loaded export and its
    export.json."""
    bundle_dir = os.path.join(ROOT, "bundles", bundle)
    overrides = _network_overrides(bundle_dir, size)
    network, _, _ = _network(bundle_dir, None, {**overrides, **EXPORT_SETTINGS})
    checkpoint = str(folder / "model.pt")
    torch.save(network.state_dict(), checkpoint)
    path = export(bundle_dir, checkpoint, str(folder / "model.pt2"), **overrides)
    module, files = load_exported(path, ("export.json",))
    return network, module, files["export.json"]


@pytest.fixture(scope="module")
def unetr_export(tmp_path_factory):
    # 48 px: a 3 x 3 token grid, where the tiny random network's output depends on the boxes (at 32 px it does not)
    return _export_tiny("unetr_prato", 48, tmp_path_factory.mktemp("unetr_export"))


@pytest.mark.parametrize("bundle,size", [("unetr_prato", 48), ("segformer_prato", 64)])
def test_export_takes_any_number_of_boxes_per_image(bundle, size, unetr_export, tmp_path):
    # exported once with 2 boxes per image (a real one and a padding row); called with 1, 2 and 3
    network, module, shapes = unetr_export if bundle == "unetr_prato" else _export_tiny(bundle, size, tmp_path)
    assert shapes["dynamic_boxes"] and shapes["boxes_per_image"] is None and module.boxes_range[0] == 1
    assert shapes["image_size"] == size and module.spatial_shape == (size, size)
    if bundle == "segformer_prato":  # its batch cannot be symbolic: exported for batch 2, and export.json says why
        assert not shapes["dynamic_batch"] and shapes["batch_size"] == 2 and shapes["static_reasons"]["batch"]
    else:
        assert shapes["dynamic_batch"] and shapes["static_reasons"] == {}
    batch = 3 if shapes["dynamic_batch"] else shapes["batch_size"]
    outputs = []
    for count in (1, 2, 3):
        image, boxes = example_inputs(1, (size, size), batch=batch, seed=7, num_boxes=count, real_boxes=None)
        with torch.no_grad():
            expected, got = network(image, boxes), module(image, boxes)
        assert got.shape == expected.shape == (batch, 4, size, size)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
        outputs.append(got)
    assert any(not torch.equal(a, b) for a, b in zip(outputs, outputs[1:]))  # the extra boxes reach the program
    with torch.no_grad():  # [B, 4] (one box per image, no M axis) is accepted as for the eager network
        torch.testing.assert_close(module(image, boxes[:, 0]), network(image, boxes[:, :1]), atol=1e-4, rtol=1e-4)


def test_exported_network_names_what_it_cannot_take(unetr_export):
    _, module, _ = unetr_export
    image, boxes = example_inputs(1, (48, 48), batch=2)
    with pytest.raises(ValueError, match=r"spatial shape \(48, 48\), got \(64, 64\); this export was made at "
                                         r"image_size 48 .*re-export the bundle with that `image_size`"):
        module(torch.rand(2, 1, 64, 64), boxes)
    with pytest.raises(ValueError, match=r"expects 1 input channel\(s\), got 3"):
        module(torch.rand(2, 3, 48, 48), boxes)
    with pytest.raises(ValueError, match=r"expected an image of shape \[B, C, \*, \*\] \(2D\)"):
        module(torch.rand(2, 48, 48), boxes)
    outside = boxes.clone()
    outside[1, 0] = torch.tensor([50.0, 50.0, 60.0, 70.0])
    with pytest.raises(ValueError, match=r"row 2 \(50, 50, 60, 70\) lies outside the image of shape \(48, 48\)"):
        module(image, outside)
    with pytest.raises(ValueError, match="a box has 6 values but the image has 2 spatial dims"):
        module(image, torch.zeros(2, 1, 6))
    with pytest.raises(ValueError, match=r"boxes must have shape \[B=2, M, 4\]"):
        module(image, boxes[:1])
    nan = boxes.clone()
    nan[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="contains NaN or inf"):
        module(image, nan)
    with pytest.raises(ValueError, match="the image contains NaN or infinite values"):
        module(torch.full_like(image, float("inf")), boxes)
    with pytest.raises(ValueError, match="needs boxes .*padding row"):
        module(image, None)
