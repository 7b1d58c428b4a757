"""tools/verify_bundles.py on every bundle: files, metadata, network I/O (full size), tiny train + inference, export."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from conftest import ROOT

from tools.bundles import BUNDLE_VERSION, BUNDLES
from tools.verify_bundles import check_files, check_metadata, verify_bundle


@pytest.mark.parametrize("bundle", BUNDLES)
def test_verify_bundle(bundle, acdc_dir, tmp_path):
    report = verify_bundle(os.path.join(ROOT, "bundles", bundle), str(tmp_path), acdc_dir, full_size=True)
    assert report["files"] == 8 and report["metadata"] == BUNDLE_VERSION and report["net_in_out"] == [224, 224]
    export = report["export"]
    assert export["max_abs_diff"] <= 1e-4 and os.path.isfile(export["file"])
    assert len(torch.export.load(export["file"]).graph_signature.user_inputs) == 2  # (image, boxes)


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
    with pytest.raises(ValueError, match="9.9.9 is not in the changelog"):
        check_metadata(bundle)
