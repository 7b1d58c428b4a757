"""``tools/monailabel_session.py``: an interactive session through MONAI Label's own client against the real server
(a box, then corrective clicks with the previous label, then the bad click requests)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import test_monailabel
from conftest import ROOT

from prato_components.verification import tiny_overrides

monailabel_python = test_monailabel.monailabel_python  # the MONAI Label venv fixture
TINY = {k: v for k, v in tiny_overrides("unetr_prato", 32).items() if k not in ("num_workers", "batch_size")}
# bad requests whose exact message the client must get (the others: a 4xx naming the parameter)
MESSAGES = {
    "click_outside": (422, "unetr_prato: parameter 'foreground' point 1 is (500, 500, 0) but the image is 48 x 48 x 1"),
    "points_labels_lengths": (422, "'points' holds 2 point(s), 'point_labels' 1 label(s)"),
    "point_label_2": (422, "parameter 'point_labels' label 1 is 2; a label is 1 (foreground) or 0 (background)"),
    "points_outside": (422, "parameter 'points' point 2 is (10, 10, 9) but the image is 48 x 48 x 1"),
    "click_word": (422, "parameter 'foreground' point 1 must be numbers"),
    "label_without_clicks": (422, "parameter 'label' (the previous label) needs clicks"),
    "label_other_shape": (422, "parameter 'label': the previous label is 24 x 24 x 1 but the image is 48 x 48 x 1"),
    # the client sends its local path as the file name: the server names the file alone
    "label_text": (415, "uploaded label 'previous.txt': unsupported file type"),
}


@pytest.mark.slow
def test_a_session_through_monailabel_client(monailabel_python, tmp_path):
    """Two clicks on a tiny bundle (untrained; its click guidance weights set by hand so that clicks act): each
    click's request changes the label around the click; every bad click request is a 4xx naming the parameter."""
    bundle = str(tmp_path / "unetr_prato")
    shutil.copytree(os.path.join(ROOT, "bundles", "unetr_prato"), bundle)
    os.makedirs(os.path.join(bundle, "models"))
    test_monailabel.save_untrained(bundle, TINY, lambda network: network.click_encoder.guide.weight.data.normal_(0, 5))
    out = tmp_path / "session.json"
    done = subprocess.run(
        [monailabel_python, os.path.join(ROOT, "tools", "monailabel_session.py"), "--bundle_root", bundle,
         "--size", "48", "--clicks", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    result = json.loads(out.read_text())
    assert "| right_ventricle | 2 | box + clicks |" in done.stdout and "| click_outside |" in done.stdout
    assert result["weights"] == "models/model.pt" and result["image_shape"] == [48, 48, 1]

    (session,) = result["sessions"]
    assert session["structure"] == 1 and session["name"] == "right_ventricle"
    x1, y1, z1, x2, y2, z2 = session["box"]
    assert 0 <= x1 < x2 <= 48 and 0 <= y1 < y2 <= 48 and (z1, z2) == (0, 1)
    steps = session["steps"]
    assert [s["step"] for s in steps] == [0, 1, 2] and steps[0]["prompt"] == "box"
    assert all(0.0 <= s["dice"] <= 1.0 and s["seconds"] > 0 for s in steps)
    clicks = [s["click"] for s in steps[1:]]
    assert all(c["label"] in ("foreground", "background") and len(c["point"]) == 3 for c in clicks)
    assert clicks[0]["point"] != clicks[1]["point"]
    for step in steps[1:]:  # the guidance acts: the label changes where the click is
        assert step["changed_near_click"] and step["changed_voxels"] > 0 and "note" not in step, step

    requests = {r["name"]: r for r in result["bad_requests"]}
    assert set(MESSAGES) <= set(requests) and len(requests) >= 20
    for name, (status, message) in MESSAGES.items():
        assert requests[name]["status"] == status and message in requests[name]["message"], requests[name]
    for request in requests.values():
        assert request["status"] in (415, 422) and (
            "parameter '" in request["message"] or "no box prompt" in request["message"]
            or "not both" in request["message"] or "uploaded label" in request["message"]), request
