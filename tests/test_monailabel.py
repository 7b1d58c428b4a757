"""MONAI Label: box prompts from /infer params, the bundle pipeline on one image, and the real server (slow)."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import ROOT, run_bundle

from prato_components.interactive import (
    BoxPromptSegmenter,
    boxes_from_request,
    check_image_file,
    slice_from_request,
)
from prato_components.prompts import boxes_from_label
from prato_components.verification import tiny_overrides
from tools.monailabel_load import monailabel_server, multipart_post

SIZE = 32
TINY = {k: v for k, v in tiny_overrides("unetr_prato", SIZE).items() if k not in ("num_workers", "batch_size")}


# ---------------------------------------------------------------------------------------------- request params
@pytest.mark.parametrize(
    "params, expected",
    [
        ({"box": [1, 2, 11, 12]}, [[1, 2, 11, 12]]),
        ({"box": "[1, 2, 0, 11, 12, 3]"}, [[1, 2, 0, 11, 12, 3]]),  # JSON string
        ({"boxes": [[1, 2, 11, 12], [3, 3, 5, 6]]}, [[1, 2, 11, 12], [3, 3, 5, 6]]),
        ({"roi": [4, 20, 30, 6, 0, 3]}, [[4, 6, 0, 20, 30, 3]]),  # 3D Slicer pairs, j axis flipped by IJK direction
        ({"roi": [[4, 6], [20, 30]]}, [[4, 6, 20, 30]]),  # CVAT rectangle corners
        ({"foreground": [[10, 12, 2], [14, 11, 2]], "point_margin": 2}, [[8, 9, 2, 17, 15, 3]]),
        ({"box": [], "roi": [], "foreground": [[5, 5]], "point_margin": 0}, [[5, 5, 6, 6]]),  # empty ones skipped
    ],
)
def test_boxes_from_request(params, expected):
    assert boxes_from_request(params) == [[float(v) for v in box] for box in expected]


@pytest.mark.parametrize(
    "params, message",
    [
        ({}, "no box prompt in the request"),
        ({"background": [[1, 1, 1]]}, "no box prompt in the request"),
        ({"box": [1, 2, 3]}, "a box has 4 values .* got 3"),
        ({"box": [10, 10, 5, 20]}, r"is empty \(max <= min"),
        ({"box": [0, 0, "a", 4]}, "box values must be numbers"),
        ({"box": [0, 0, float("nan"), 4]}, "must be finite"),
        ({"roi": [1, 2, 3, 4, 5]}, "'roi' must have 6 values"),
        ({"box": "[1, 2"}, "not valid JSON"),
        ({"foreground": [[1, 2], [1, 2, 3]]}, "'foreground' must be points"),
        ({"box": [0, 0, 1e308, 4]}, r"parameter 'box': box values must lie within \+-3.4e\+38"),
        ({"foreground": [[5, 5]], "point_margin": "x"}, "parameter 'point_margin' must be a number of voxels >= 0"),
        ({"foreground": [[5, 5]], "point_margin": -1}, "parameter 'point_margin' must be a finite number"),
    ],
)
def test_bad_prompts_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        boxes_from_request(params)


@pytest.mark.parametrize("value, expected", [(None, None), ("", None), (-1, None), ("-1", None), (3, 3), ("4", 4),
                                             (2.0, 2)])
def test_slice_from_request(value, expected):
    assert slice_from_request({"slice": value}) == expected


@pytest.mark.parametrize("value", ["abc", 2.5, -3, True, [1], float("nan")])
def test_bad_slice_is_named(value):
    with pytest.raises(ValueError, match="parameter 'slice' must be an integer slice index >= 0"):
        slice_from_request({"slice": value})


def test_check_image_file(tmp_path):
    good = str(tmp_path / "ok.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 9, 3), np.float32), np.eye(4)), good)
    assert check_image_file(good) == (8, 9, 3)
    content = open(good, "rb").read()
    half = content[: len(content) // 2]
    for name, data, message in (("half.nii.gz", half, "image 'up.nii.gz' cannot be read as NIfTI"),
                                ("text.nii.gz", b"hello", "File up.nii.gz is not a gzip file"),
                                ("text.png", b"hello", "image 'up.png' cannot be read as PNG/JPG"),
                                ("text.txt", b"hello", "image 'up.txt': unsupported file type")):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ValueError) as raised:
            check_image_file(str(path), name="up" + name[name.index("."):])
        assert message in str(raised.value) and str(tmp_path) not in str(raised.value), str(raised.value)


# ---------------------------------------------------------------------------------------------- the pipeline
def save_untrained(bundle: str, overrides: dict, edit: Callable[[torch.nn.Module], None] | None = None) -> None:
    """``<bundle>/models/model.pt``: the bundle's network built with ``overrides`` (seed 0; ``edit`` changes it), as
    training writes a weights file: the state dict and the network settings it was built with."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(os.path.join(bundle, "configs", "inference.json"))
    for key, value in overrides.items():
        parser[key] = value
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    if edit is not None:
        edit(network)
    torch.save({"model": network.state_dict(), "network_settings": parser.get_parsed_content("network_settings")},
               os.path.join(bundle, "models", "model.pt"))


@pytest.fixture(scope="module")
def served_bundles(acdc_dir, tmp_path_factory) -> str:
    """A bundles folder with unetr_prato (a tiny checkpoint trained briefly) and the same bundle untrained."""
    out = str(tmp_path_factory.mktemp("served"))
    trained = os.path.join(out, "train_root")
    # 40 short epochs without augmentation: enough for a clear margin over the untrained network
    run_bundle("unetr_prato", "train", trained, dataset_dir=acdc_dir, epochs=40, learning_rate=3e-3, val_interval=40,
               **{**TINY, "batch_size": 4, "train#augmentation": []})
    for name, weights in (("unetr_prato", os.path.join(trained, "models", "model_final.pt")),
                          ("unetr_prato_untrained", None)):
        target = os.path.join(out, "bundles", name)
        shutil.copytree(os.path.join(ROOT, "bundles", "unetr_prato"), target)
        os.makedirs(os.path.join(target, "models"))
        if weights is None:
            save_untrained(target, TINY)
        else:
            shutil.copy(weights, os.path.join(target, "models", "model.pt"))
    return os.path.join(out, "bundles")


def _test_case(acdc_dir: str) -> tuple[str, np.ndarray, list[float]]:
    """A volume (the last patient), its ground truth and the tight box around the heart (image voxels)."""
    image = sorted(glob.glob(os.path.join(acdc_dir, "training", "patient*", "*_frame??.nii.gz")))[-1]
    gt = np.asarray(nib.load(image.replace(".nii.gz", "_gt.nii.gz")).dataobj)
    box = np.asarray(boxes_from_label(gt[None], spatial_dims=3)).reshape(-1).tolist()
    return image, gt, box


def _foreground_dice(label: np.ndarray, gt: np.ndarray) -> float:
    """Mean Dice over the three cardiac classes."""
    scores = []
    for c in (1, 2, 3):
        a, b = label == c, gt == c
        scores.append(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))
    return float(np.mean(scores))


def test_segmenter_in_process(served_bundles, acdc_dir):
    """The app's inference path without the server: shape, label values, box restriction, better than untrained."""
    image, gt, box = _test_case(acdc_dir)
    scores = {}
    for name in ("unetr_prato", "unetr_prato_untrained"):
        segmenter = BoxPromptSegmenter(os.path.join(served_bundles, name))  # sizes from the checkpoint
        assert not segmenter.restricts_to_boxes  # the PrATo bundles decode guided: a wrong box must not cut the label
        label, affine, used = segmenter(image, boxes_from_request({"box": box}), restrict=True)
        assert label.shape == gt.shape and label.dtype == np.uint8 and set(np.unique(label)) <= {0, 1, 2, 3}
        np.testing.assert_allclose(affine, nib.load(image).affine, atol=1e-4)
        outside = np.ones(gt.shape, bool)
        lo, hi = [int(v) for v in used[0][:3]], [int(np.ceil(v)) for v in used[0][3:]]
        outside[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = False
        assert not label[outside].any()
        scores[name] = _foreground_dice(label, gt)
    assert scores["unetr_prato"] > scores["unetr_prato_untrained"] + 0.1, scores
    assert segmenter.labels == {"right_ventricle": 1, "myocardium": 2, "left_ventricle": 3}


# ---------------------------------------------------------------------------------------------- the real server
def _post(url: str, file_path: str, params: dict) -> tuple[int, bytes]:
    """POST ``file_path`` and ``params`` to MONAI Label's /infer; the status and the body."""
    with open(file_path, "rb") as f:
        status, body, _seconds = multipart_post(url, f.read(), os.path.basename(file_path), params, timeout=120)
    return status, body


@pytest.fixture(scope="module")
def monailabel_python() -> str:
    """The MONAI Label venv (tools/monailabel_env.sh; reused when it already works). The modules that serve share
    it, and so may parallel workers: one at a time builds or checks it (a lock on its folder)."""
    venv = os.environ.get("PRATO_MONAILABEL_VENV", os.path.join(ROOT, ".venv-monailabel"))
    os.makedirs(venv, exist_ok=True)
    folder = os.open(venv, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)  # released when the folder is closed
        done = subprocess.run(["bash", os.path.join(ROOT, "tools", "monailabel_env.sh"), venv], capture_output=True,
                              text=True, timeout=1800)
    finally:
        os.close(folder)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return os.path.join(venv, "bin", "python")


@pytest.mark.slow
def test_monailabel_server_infers_with_a_box(monailabel_python, served_bundles, acdc_dir, tmp_path):
    image, gt, box = _test_case(acdc_dir)
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(image, studies)
    # no bundle_overrides: the bundles were trained (or saved) at 32 x 32 with a tiny ViT, and their checkpoints
    # record it, so the server builds those networks instead of the bundles' 224 x 224 ViT-B defaults
    with _server(monailabel_python, served_bundles, str(studies), tmp_path,
                 ["--conf", "models", "unetr_prato,unetr_prato_untrained"]) as (base, info, _log):
        assert {"unetr_prato", "unetr_prato_untrained"} <= set(info["models"])
        assert info["models"]["unetr_prato"]["labels"] == {"right_ventricle": 1, "myocardium": 2, "left_ventricle": 3}

        scores = {}
        for name in ("unetr_prato", "unetr_prato_untrained"):
            status, content = _post(f"{base}/infer/{name}?output=image", image, {"box": box})
            assert status == 200, content[-2000:]
            result = tmp_path / f"{name}.nii.gz"
            result.write_bytes(content)
            label = np.asarray(nib.load(str(result)).dataobj)
            assert label.shape == gt.shape and set(np.unique(label)) <= {0, 1, 2, 3}
            scores[name] = _foreground_dice(label, gt)
        assert scores["unetr_prato"] > scores["unetr_prato_untrained"] + 0.1, scores

        # 3D Slicer's ROI gives the same label as the equivalent box
        roi = [box[0], box[3], box[1], box[4], box[2], box[5]]
        status, content = _post(f"{base}/infer/unetr_prato?output=image", image, {"roi": roi})
        assert status == 200
        (tmp_path / "roi.nii.gz").write_bytes(content)
        np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / "roi.nii.gz")).dataobj),
                                      np.asarray(nib.load(str(tmp_path / "unetr_prato.nii.gz")).dataobj))

        for params, message in (({}, "no box prompt"), ({"box": [500, 500, 0, 600, 600, 2]}, "lies outside the image"),
                                ({"box": [1, 2, 3]}, "a box has 4 values")):
            status, content = _post(f"{base}/infer/unetr_prato?output=image", image, params)
            assert status == 422 and message in json.loads(content)["detail"], (status, content)


@contextlib.contextmanager
def _server(python: str, bundles: str, studies: str, tmp_path, extra: list[str], tmpdir: str | None = None,
            overrides: dict | None = None):
    """A MONAI Label server on 127.0.0.1 serving ``bundles`` (with ``bundle_overrides`` when given); yields (base
    url, /info/ at start, log path)."""
    log_path = tmp_path / f"server-{uuid.uuid4().hex[:8]}.log"
    conf = {"bundle_overrides": json.dumps(overrides)} if overrides else None
    # this checkout's package (the venv's editable install may point to another checkout)
    env = {"PYTHONPATH": ROOT, **({"TMPDIR": tmpdir} if tmpdir is not None else {})}
    with monailabel_server(python, studies, bundles, str(log_path), conf, extra, cwd=str(tmp_path), env=env,
                           startup_timeout=240) as (base, info, _process):
        yield base, info, log_path


@pytest.fixture(scope="module")
def tiny_bundles(tmp_path_factory) -> str:
    """Bundles without training: ``tiny`` (random weights, TINY sizes), ``broken`` (model.pt is not a checkpoint),
    ``mismatched`` (a weight of the wrong shape)."""
    from monai.bundle import ConfigParser

    out = str(tmp_path_factory.mktemp("tiny_bundles"))
    for name in ("tiny", "broken", "mismatched"):
        target = os.path.join(out, name)
        shutil.copytree(os.path.join(ROOT, "bundles", "unetr_prato"), target)
        os.makedirs(os.path.join(target, "models"))
    parser = ConfigParser()
    parser.read_config(os.path.join(out, "tiny", "configs", "inference.json"))
    for key, value in TINY.items():
        parser[key] = value
    torch.manual_seed(0)
    state = parser.get_parsed_content("network_def").state_dict()
    torch.save(state, os.path.join(out, "tiny", "models", "model.pt"))
    with open(os.path.join(out, "broken", "models", "model.pt"), "wb") as f:
        f.write(b"this is not a torch checkpoint")
    key = next(k for k, v in state.items() if v.ndim >= 2)
    torch.save({**state, key: torch.zeros(3, 3)}, os.path.join(out, "mismatched", "models", "model.pt"))
    return out


def _post_bytes(url: str, name: str, content: bytes, params) -> tuple[int, dict]:
    path = os.path.join(tempfile.mkdtemp(), name)
    with open(path, "wb") as f:
        f.write(content)
    status, body = _post(url, path, params)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, {"detail": body.decode(errors="replace")}


@pytest.mark.slow
def test_monailabel_server_bad_requests(monailabel_python, tiny_bundles, acdc_dir, tmp_path):
    """Every bad request gets a 4xx naming the problem; failed uploads leave no temp file; bad bundles are skipped."""
    image, _gt, box = _test_case(acdc_dir)
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(image, studies)
    image_id = os.path.basename(image)[: -len(".nii.gz")]
    server_tmp = tmp_path / "server_tmp"
    server_tmp.mkdir()
    with _server(monailabel_python, tiny_bundles, str(studies), tmp_path, [], tmpdir=str(server_tmp),
                 overrides=TINY) as (
            base, info, log):
        # a bundle that cannot load is skipped with its reason; the others are served
        assert set(info["models"]) == {"tiny"}, info["models"].keys()
        skipped = info["skipped_models"]
        assert set(skipped) == {"broken", "mismatched"}, skipped
        assert "not a readable torch checkpoint" in skipped["broken"] and "model.pt" in skipped["broken"], skipped
        assert "size mismatch" in skipped["mismatched"] or "shape" in skipped["mismatched"], skipped
        assert "skip broken" in log.read_text()

        url = f"{base}/infer/tiny?output=image"
        good = open(image, "rb").read()
        png = b"\x89PNG\r\n\x1a\n" + bytes(100)
        ok_box = {"box": box}
        before = sorted(os.listdir(server_tmp))
        cases = [
            # (url, file name, content, params, status, text the message must hold)
            (url, "truncated.nii.gz", good[: len(good) // 2], ok_box, 422, "cannot be read as NIfTI"),
            (url, "corrupt.nii.gz", bytes(range(256)) * 8, ok_box, 422, "File corrupt.nii.gz is not a gzip file"),
            (url, "picture.nii.gz", png, ok_box, 422, "cannot be read as NIfTI"),
            (url, "notes.nii.gz", b"just some text\n", ok_box, 422, "cannot be read as NIfTI"),
            (url, "notes.txt", b"just some text\n", ok_box, 415, "unsupported file type"),
            (url, "image", good, ok_box, 415, "uploaded file 'image': unsupported file type"),
            (url, "broken.png", png, {"box": [1, 1, 5, 5]}, 422, "cannot be read as PNG/JPG"),
            (url, "img.nii.gz", good, {**ok_box, "slice": "abc"}, 422, "tiny: parameter 'slice' must be an integer"),
            (url, "img.nii.gz", good, {"box": box[:2] + box[3:5], "slice": -3}, 422, "parameter 'slice'"),
            (url, "img.nii.gz", good, {"foreground": [[10, 10, 1]], "point_margin": "x"}, 422,
             "parameter 'point_margin' must be a number"),
            (url, "img.nii.gz", good, {"box": [0, 0, 0, 1e308, 4, 1]}, 422, "within +-3.4e+38"),
            # strict parameters: errors name the parameter the client sent
            (url, "img.nii.gz", good, {**ok_box, "restrict_to_box": "maybe"}, 422,
             "tiny: parameter 'restrict_to_box' must be true or false, got 'maybe'"),
            (url, "img.nii.gz", good, {"box": [True, True, True, 79, 90, 9]}, 422,
             "parameter 'box': box values must be numbers"),
            (url, "img.nii.gz", good, {"box": box[:2] + box[3:5], "slice": 99}, 422, "parameter 'slice' is 99"),
            (url, "img.nii.gz", good, {"foreground": [[500, 500, 1]]}, 422,
             "parameter 'foreground' point 1 is (500, 500, 1) but the image is"),
            (url, "img.nii.gz", good, "not json", 422, "'params' must be a JSON object"),
            (f"{base}/infer/nosuchmodel?output=image", "img.nii.gz", good, ok_box, 404, "unknown model 'nosuchmodel'"),
            (f"{base}/infer/broken?output=image", "img.nii.gz", good, ok_box, 404, "model 'broken' is not served"),
        ]
        for case_url, name, content, params, status, text in cases:
            got, body = _post_bytes(case_url, name, content, params)
            assert got == status and text in body.get("detail", ""), (name, params, got, body)
            assert "prato_upload" not in body["detail"], body  # the client's file name, not the server's temp path
        assert sorted(os.listdir(server_tmp)) == before, "failed requests left files in the temp folder"

        # params that are not JSON at all (the form field as sent)
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{{box: [1\r\n"
                f"--{boundary}--\r\n").encode()
        request = urllib.request.Request(f"{url}&image={image_id}", data=body, method="POST",
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(request, timeout=60)
        assert raised.value.code == 422 and "'params' is not valid JSON" in json.loads(raised.value.read())["detail"]

        # datastore image ids: unknown -> 404, known -> the label
        for query, status in (("image=nosuchimage", 404), (f"image={image_id}", 200)):
            request = urllib.request.Request(f"{base}/infer/tiny?output=image&{query}",
                                             data=urllib.parse.urlencode({"params": json.dumps(ok_box)}).encode(),
                                             method="POST")
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    got = response.status
            except urllib.error.HTTPError as error:
                got, detail = error.code, json.loads(error.read())["detail"]
                assert "unknown image id 'nosuchimage'" in detail, detail
            assert got == status
        deadline = time.monotonic() + 10  # the label of a success is removed after the response is sent
        while sorted(os.listdir(server_tmp)) != before and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sorted(os.listdir(server_tmp)) == before


@pytest.mark.slow
def test_monailabel_server_concurrent_clients(monailabel_python, tiny_bundles, tmp_path):
    """N concurrent /infer requests all succeed, and /info/ answers while they run (not after them)."""
    image = str(tmp_path / "volume.nii.gz")  # many slices, so that the requests take a while with the tiny network
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.normal(size=(64, 64, 160)).astype(np.float32), np.eye(4)), image)
    box = [8, 8, 0, 56, 56, 160]
    studies = tmp_path / "studies"
    studies.mkdir()
    n = 6
    conf = ["--conf", "models", "tiny", "--conf", "infer_concurrency", "2"]
    with _server(monailabel_python, tiny_bundles, str(studies), tmp_path, conf, overrides=TINY) as (base, info, _log):
        assert info["infer_concurrency"] == 2
        url = f"{base}/infer/tiny?output=image"
        results: list = []

        def one():
            start = time.monotonic()
            status, content = _post(url, image, {"box": box})
            results.append((status, time.monotonic() - start, content))

        threads = [threading.Thread(target=one) for _ in range(n)]
        start = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(0.3)
        probe = time.monotonic()
        with urllib.request.urlopen(f"{base}/info/", timeout=60) as response:
            assert response.status == 200
        info_latency, info_done = time.monotonic() - probe, time.monotonic() - start
        for t in threads:
            t.join(timeout=300)
        assert [r[0] for r in results] == [200] * n, [(r[0], r[2][:300]) for r in results]
        labels = []
        for i, (_status, _seconds, content) in enumerate(results):  # the same request gives the same label
            (tmp_path / f"label{i}.nii.gz").write_bytes(content)
            labels.append(np.asarray(nib.load(str(tmp_path / f"label{i}.nii.gz")).dataobj))
        assert labels[0].shape == (64, 64, 160) and all(np.array_equal(labels[0], label) for label in labels[1:])
        slowest = max(r[1] for r in results)
        assert info_done < slowest, (info_latency, sorted(r[1] for r in results))
        assert info_latency < 2, info_latency


# ---------------------------------------------------------------------------------------------- 3D
TINY_3D = {k: v for k, v in tiny_overrides("unetr3d_prato", 32).items() if k not in ("num_workers", "batch_size")}
# a volume of 200 x 200 x 40 voxels of 0.8 x 0.8 x 2.5 mm is about 80 x 80 x 50 voxels of 2 mm: several 32^3 windows
VOLUME_3D = {"size": (200, 200, 40), "organs": 3}
MARGIN_3D = 2  # decode_margin (2 mm voxels) recorded in the checkpoint


def _affine_3d() -> np.ndarray:
    """A non-identity affine: LPS directions, anisotropic spacing, a shifted origin and a small rotation in-plane."""
    angle = np.deg2rad(10.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-0.8, -0.8, 2.5])
    affine[:3, 3] = [40.0, -25.0, -60.0]
    return affine


@pytest.fixture(scope="module")
def served_3d(tmp_path_factory) -> tuple[str, str, dict]:
    """(bundles folder with a tiny untrained unetr3d_prato, the image, the bundle overrides the app needs)."""
    from monai.bundle import ConfigParser

    from prato_components.data import make_btcv_like

    out = str(tmp_path_factory.mktemp("served_3d"))
    data = os.path.join(out, "btcv")
    make_btcv_like(data, num_training=1, num_validation=1, num_test=1, **VOLUME_3D)
    source = nib.load(os.path.join(data, "imagesTs", "img0003.nii.gz"))
    image = os.path.join(out, "volume.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(source.dataobj, np.float32), _affine_3d()), image)
    overrides = {"dataset": "btcv", "dataset_dir": data, "pixdim": [2.0, 2.0, 2.0], "sw_batch_size": 2}
    target = os.path.join(out, "bundles", "unetr3d_prato")
    shutil.copytree(os.path.join(ROOT, "bundles", "unetr3d_prato"), target)
    os.makedirs(os.path.join(target, "models"))
    parser = ConfigParser()
    parser.read_config(os.path.join(target, "configs", "inference.json"))
    # box decoding: the windows a random network computes are those the box reaches (a guided network's random
    # coarse head would add windows anywhere; guided scanning is tested in tests/test_inferers.py)
    for key, value in {**overrides, **TINY_3D, "decode_margin": MARGIN_3D, "decode_region": "box"}.items():
        parser[key] = value
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    torch.save({"model": network.state_dict(), "network_settings": parser.get_parsed_content("network_settings")},
               os.path.join(target, "models", "model.pt"))
    return os.path.join(out, "bundles"), image, overrides


BOX_3D = [10, 12, 4, 40, 44, 16]  # image voxels [i0, j0, k0, i1, j1, k1], near one corner
ROI_3D = [BOX_3D[0], BOX_3D[3], BOX_3D[1], BOX_3D[4], BOX_3D[2], BOX_3D[5]]  # 3D Slicer's per-axis pairs


def _check_label_3d(label: np.ndarray, affine: np.ndarray, image: str, restricted: bool) -> None:
    """The label is on the image's grid and affine; background outside the box (restricted) or, unrestricted,
    outside every window that the box plus its margin reaches (the prompt-aware sliding window skipped them)."""
    original = nib.load(image)
    assert label.shape == original.shape and set(np.unique(label)) <= {0, 1, 2, 3}
    np.testing.assert_allclose(affine, original.affine, atol=1e-4)
    inside = np.zeros(label.shape, bool)
    inside[BOX_3D[0]:BOX_3D[3], BOX_3D[1]:BOX_3D[4], BOX_3D[2]:BOX_3D[5]] = True
    assert label[inside].any(), "the random network labels nothing inside the box"
    if restricted:
        assert not label[~inside].any()
        return
    assert label[~inside].any(), "restrict_to_box false: the computed windows reach beyond the box"
    # a 32-voxel window of 2 mm plus the margin spans 85 in-plane voxels of 0.8 mm: farther is never computed
    reach = int(np.ceil((32 + MARGIN_3D) * 2.0 / 0.8))
    assert not label[BOX_3D[3] + reach:, :, :].any() and not label[:, BOX_3D[4] + reach:, :].any()


def test_segmenter_in_process_3d(served_3d):
    """A 3D bundle through the app's inference path: the prompt-aware sliding window on the whole volume."""
    bundles, image, overrides = served_3d
    segmenter = BoxPromptSegmenter(os.path.join(bundles, "unetr3d_prato"), overrides=overrides)
    assert segmenter.spatial_dims == 3 and segmenter.labels == {"liver": 1, "spleen": 2, "kidney": 3}
    for restricted in (True, False):
        label, affine, used = segmenter(image, boxes_from_request({"roi": ROI_3D}), restrict=restricted)
        assert used == [[float(v) for v in BOX_3D]]
        _check_label_3d(label, affine, image, restricted)
    report = segmenter.inferer.last_report
    assert 0 < report.computed[0] < report.windows, report


@pytest.mark.slow
def test_monailabel_server_infers_3d_with_a_roi(monailabel_python, served_3d, tmp_path):
    """The real server: a NIfTI volume with a non-identity affine and a 3D Slicer ROI to a 3D bundle."""
    bundles, image, overrides = served_3d
    studies = tmp_path / "studies"
    studies.mkdir()
    with _server(monailabel_python, bundles, str(studies), tmp_path, ["--conf", "models", "unetr3d_prato"],
                 overrides=overrides) as (base, info, _log):
        assert info["models"]["unetr3d_prato"]["dimension"] == 3
        assert info["models"]["unetr3d_prato"]["labels"] == {"liver": 1, "spleen": 2, "kidney": 3}
        labels = {}
        for restricted in (True, False):
            status, content = _post(f"{base}/infer/unetr3d_prato?output=image", image,
                                    {"roi": ROI_3D, "restrict_to_box": restricted})
            assert status == 200, content[-2000:]
            result = tmp_path / f"label_{restricted}.nii.gz"
            result.write_bytes(content)
            returned = nib.load(str(result))
            labels[restricted] = np.asarray(returned.dataobj)
            _check_label_3d(labels[restricted], returned.affine, image, restricted)
        box = {"box": BOX_3D}  # the same prompt as a box: the same label
        status, content = _post(f"{base}/infer/unetr3d_prato?output=image", image, box)
        assert status == 200
        (tmp_path / "box.nii.gz").write_bytes(content)
        np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / "box.nii.gz")).dataobj), labels[True])
        status, content = _post(f"{base}/infer/unetr3d_prato?output=image", image, {"box": [500, 500, 0, 600, 600, 2]})
        assert status == 422 and "lies outside the image" in json.loads(content)["detail"], (status, content)
