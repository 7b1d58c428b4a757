"""Corrective clicks through the app's request path (``BoxPromptSegmenter.segment_request``): DeepEdit and VISTA3D
keys, clicks alone, the previous label, the mapping into network-input voxels, errors naming the parameter, and the
reuse of image-only work between requests on one image."""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import nibabel as nib
import numpy as np
import pytest
import test_monailabel
import torch
from conftest import ROOT
from monai.data import MetaTensor

from prato_components.errors import InputError
from prato_components.interactive import BoxPromptSegmenter, ClickSessions, points_to_network
from prato_components.verification import tiny_overrides
from tools.monailabel_load import multipart_post

SHAPE = (40, 48, 3)  # the image as loaded; the tiny bundle resizes it in-plane to 32 x 32
BOX = [5, 5, 0, 35, 40, 3]
monailabel_python = test_monailabel.monailabel_python  # the MONAI Label venv fixture
TINY = {k: v for k, v in tiny_overrides("unetr_prato", 32).items() if k not in ("num_workers", "batch_size")}


@pytest.fixture(scope="module")
def clicky(tmp_path_factory) -> tuple[str, str]:
    """(a tiny untrained unetr_prato whose click guidance weights are set by hand, so clicks change the label; a
    random 40 x 48 x 3 volume with an anisotropic affine)."""
    out = str(tmp_path_factory.mktemp("clicks"))
    target = os.path.join(out, "unetr_prato")
    shutil.copytree(os.path.join(ROOT, "bundles", "unetr_prato"), target)
    os.makedirs(os.path.join(target, "models"))
    # a fresh encoder is zero (no effect): give the guidance (all three maps) some weight
    test_monailabel.save_untrained(target, TINY, lambda network: network.click_encoder.guide.weight.data.normal_(0, 5))
    image = os.path.join(out, "img.nii.gz")
    volume = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.diag([1.2, 1.0, 5.0, 1.0])), image)
    return target, image


@pytest.fixture(scope="module")
def segmenter(clicky) -> BoxPromptSegmenter:
    return BoxPromptSegmenter(clicky[0])


def _segment(segmenter: BoxPromptSegmenter, image: str, **params) -> np.ndarray:
    return segmenter.segment_request({"image": image, **params})[0]


def test_a_foreground_click_changes_the_label_where_it_is(segmenter, clicky):
    image = clicky[1]
    box_only = _segment(segmenter, image, box=BOX)
    clicked = _segment(segmenter, image, box=BOX, foreground=[[20, 20, 1]])
    assert box_only.shape == clicked.shape == SHAPE
    changed = box_only != clicked
    assert changed[:, :, 1].any()  # the clicked slice changes ...
    assert not changed[:, :, 0].any() and not changed[:, :, 2].any()  # ... the 2D network's other slices do not
    assert changed[16:25, 16:25, 1].any()  # around the click


def test_deepedit_and_vista3d_keys_give_the_same_label(segmenter, clicky):
    image = clicky[1]
    deepedit = _segment(segmenter, image, box=BOX, foreground=[[20, 20, 1]], background=[[8, 30, 1]])
    vista = _segment(segmenter, image, box=BOX, points=[[20, 20, 1], [8, 30, 1]], point_labels=[1, 0])
    np.testing.assert_array_equal(deepedit, vista)
    assert not np.array_equal(deepedit, _segment(segmenter, image, box=BOX, foreground=[[20, 20, 1]]))  # bg counts


def test_clicks_alone_prompt_a_box_around_the_foreground_clicks(segmenter, clicky):
    image = clicky[1]
    label, _, used = segmenter.segment_request({"image": image, "points": [[20, 20, 1], [8, 30, 1]],
                                                "point_labels": [1, 0], "point_margin": 4})
    assert used == [[16.0, 16.0, 1.0, 25.0, 25.0, 2.0]]  # the foreground click grown by 4 in-plane, its slice
    same = _segment(segmenter, image, box=used[0], points=[[20, 20, 1], [8, 30, 1]], point_labels=[1, 0],
                    point_margin=4)
    np.testing.assert_array_equal(label, same)


def test_the_previous_label_reaches_the_network(segmenter, clicky, tmp_path):
    image = clicky[1]
    previous = np.zeros(SHAPE, np.uint8)
    previous[10:30, 12:36, :] = 2
    path = str(tmp_path / "previous.nii.gz")
    nib.save(nib.Nifti1Image(previous, nib.load(image).affine), path)
    seen = []
    hook = segmenter.network.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("previous_mask")), with_kwargs=True)
    try:
        with_label = _segment(segmenter, image, box=BOX, foreground=[[20, 20, 1]], label=path)
    finally:
        hook.remove()
    mask = seen[-1].reshape(3, 32, 32)  # the 2D network's slices: [B * Z, 32, 32]
    expected = np.zeros((32, 32), np.float32)  # the block on the 32 x 32 input: x * 32 / 40, y * 32 / 48
    expected[8:24, 8:24] = 1
    for z in range(3):
        np.testing.assert_array_equal(mask[z].numpy(), expected)
    assert not np.array_equal(with_label, _segment(segmenter, image, box=BOX, foreground=[[20, 20, 1]]))


def test_the_clicked_structure_reaches_the_network_by_name_or_index(segmenter, clicky):
    seen = []
    hook = segmenter.network.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("prompt_class")), with_kwargs=True)
    try:
        by_name = _segment(segmenter, clicky[1], box=BOX, foreground=[[20, 20, 1]], prompt_class="myocardium")
        by_index = _segment(segmenter, clicky[1], box=BOX, foreground=[[20, 20, 1]], prompt_class="[2]")
        _segment(segmenter, clicky[1], box=BOX, foreground=[[20, 20, 1]])
    finally:
        hook.remove()
    # one class per slice of the 2D network; the request by index asked the same (its session kept the answer: no
    # call), the request without a class did not
    assert len(seen) == 2 and seen[0].tolist() == [2, 2, 2] and seen[1] is None
    np.testing.assert_array_equal(by_name, by_index)


def test_points_map_through_the_preprocessing_as_the_image_does():
    image = MetaTensor(torch.zeros(1, 32, 32, 3), affine=torch.tensor(
        [[1.5, 0, 0, 0.25], [0, 1.5, 0, 0.25], [0, 0, 5.0, 0], [0, 0, 0, 1]], dtype=torch.float64),
        meta={"original_affine": np.diag([1.2, 1.0, 5.0, 1.0])})
    # loaded 40 x 48 at 1.2 x 1.0 mm, resized to 32 x 32: world x = 1.2 * i, network index = (x - 0.25) / 1.5
    mapped = points_to_network(np.array([[20.0, 24.0, 1.0], [0.0, 0.0, 0.0]]), image)
    np.testing.assert_allclose(mapped, [[(24.0 - 0.25) / 1.5 + 0.5, (24.0 - 0.25) / 1.5 + 0.5, 1.5],
                                        [0.5 - 0.25 / 1.5, 0.5 - 0.25 / 1.5, 0.5]])
    picture = MetaTensor(torch.zeros(1, 32, 32, 1), affine=torch.diag(torch.tensor([1.5, 1.25, 1.0, 1.0])))
    np.testing.assert_allclose(points_to_network(np.array([[6.0, 4.0]]), picture), [[4.5, 3.7, 0.5]])  # PNG
    rgb = MetaTensor(torch.zeros(3, 32, 32), affine=torch.tensor(  # a 2D image keeps a 4 x 4 affine in MONAI
        [[1.5, 0, 0, 0.25], [0, 1.25, 0, 0.125], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.float64))
    np.testing.assert_allclose(points_to_network(np.array([[6.0, 4.0]]), rgb), [[(6 - 0.25) / 1.5 + 0.5, 3.6]])


def test_clicks_and_a_previous_label_on_a_picture(tmp_path):
    """PNG (ISIC-like RGB): clicks [x, y] and a previous label PNG reach the 2D network."""
    from PIL import Image

    bundle = str(tmp_path / "unetr_prato")
    shutil.copytree(os.path.join(ROOT, "bundles", "unetr_prato"), bundle)
    os.makedirs(os.path.join(bundle, "models"))
    test_monailabel.save_untrained(bundle, {**TINY, "dataset": "isic"},
                                   lambda network: network.click_encoder.guide.weight.data.normal_(0, 5))
    image, previous = str(tmp_path / "skin.png"), str(tmp_path / "previous.png")
    Image.fromarray((np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8)).save(image)
    mask = np.zeros((40, 48), np.uint8)  # rows, columns: x = column in [5, 20), y = row in [10, 30)
    mask[10:30, 5:20] = 1
    Image.fromarray(mask).save(previous)
    segmenter = BoxPromptSegmenter(bundle, overrides={"dataset": "isic"})
    box = [2, 2, 40, 30]
    plain = _segment(segmenter, image, box=box)
    clicked = _segment(segmenter, image, box=box, foreground=[[20, 20]])
    with_label = _segment(segmenter, image, box=box, foreground=[[20, 20]], label=previous)
    assert plain.shape == clicked.shape == with_label.shape == (48, 40)  # MONAI's (x, y)
    assert (plain != clicked)[15:26, 15:26].any() and (clicked != with_label).any()
    with pytest.raises(InputError, match=r"parameter 'foreground' point 1 is \(20, 45\) but the image is 48 x 40"):
        segmenter.segment_request({"image": image, "box": box, "foreground": [[20, 45]]})


@pytest.mark.parametrize("params, message", [
    ({"box": BOX, "foreground": [[1, 1, 1], [300, 10, 1]]},
     r"parameter 'foreground' point 2 is \(300, 10, 1\) but the image is 40 x 48 x 3"),
    ({"box": BOX, "background": [[-1, 10, 1]]}, r"parameter 'background' point 1 is \(-1, 10, 1\) but the image"),
    ({"box": BOX, "points": [[1, 1, 3]], "point_labels": [1]}, r"parameter 'points' point 1 is \(1, 1, 3\) but"),
    ({"box": BOX, "foreground": [[20, 20]]}, "parameter 'foreground' point 1 has 2 values but the image has 3 axes"),
    ({"box": BOX, "background": [[float("nan"), 1, 1]]},
     r"parameter 'background' point 1 is \(nan, 1, 1\): not a finite number"),
    ({"box": BOX, "foreground": [[1, "a", 1]]}, "parameter 'foreground' point 1 must be numbers"),
    ({"box": BOX, "foreground": [[True, 1, 1]]}, "parameter 'foreground' point 1 must be numbers"),
    ({"box": BOX, "foreground": 5}, r"parameter 'foreground' must be points \[\[x, y\], ...\]"),
    ({"box": BOX, "points": [[1, 1, 1]]}, "parameter 'points' was sent without 'point_labels'"),
    ({"box": BOX, "point_labels": [1]}, "parameter 'point_labels' was sent without 'points'"),
    ({"box": BOX, "points": [[1, 1, 1], [2, 2, 2]], "point_labels": [1]},
     "'points' holds 2 point\\(s\\), 'point_labels' 1 label\\(s\\)"),
    ({"box": BOX, "points": [[1, 1, 1]], "point_labels": [2]},
     r"parameter 'point_labels' label 1 is 2; a label is 1 \(foreground\) or 0 \(background\)"),
    ({"box": BOX, "points": [[1, 1, 1]], "point_labels": [True]}, "parameter 'point_labels' label 1 is True"),
    ({"box": BOX, "points": [[1, 1, 1]], "point_labels": [-1]}, "parameter 'point_labels' label 1 is -1"),
    ({"foreground": [[1, 1, 1]], "points": [[1, 1, 1]], "point_labels": [1]}, "not both"),
    ({"points": [[1, 1, 1]], "point_labels": [0]}, "no box prompt in the request"),
    ({"box": BOX, "label": "previous.nii.gz"}, r"parameter 'label' \(the previous label\) needs clicks"),
    ({"box": BOX, "foreground": [[1, 1, 1]], "label": "no/such/file.nii.gz"},
     "parameter 'label' must be the previous label's file"),
    ({"box": BOX, "foreground": [[1, 1, 1]], "prompt_class": "liver"},
     r"parameter 'prompt_class' must be one of \['right_ventricle', 'myocardium', 'left_ventricle'\] or an index "
     r"1 .. 3, got 'liver'"),
    ({"box": BOX, "foreground": [[1, 1, 1]], "prompt_class": 4}, r"parameter 'prompt_class' must be one of .* got 4"),
    ({"box": BOX, "foreground": [[1, 1, 1]], "prompt_class": True}, "parameter 'prompt_class' must be one of"),
    ({"box": BOX, "prompt_class": 1}, r"parameter 'prompt_class' \(the structure the clicks are about\) needs clicks"),
])
def test_bad_clicks_are_named(segmenter, clicky, params, message):
    with pytest.raises(InputError, match=message):
        segmenter.segment_request({"image": clicky[1], **params})


def test_a_previous_label_of_another_shape_is_named(segmenter, clicky, tmp_path):
    path = str(tmp_path / "small.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((20, 16, 3), np.uint8), np.eye(4)), path)
    with pytest.raises(InputError, match="parameter 'label': the previous label is 20 x 16 x 3 but the image is "
                                         "40 x 48 x 3"):
        segmenter.segment_request({"image": clicky[1], "box": BOX, "foreground": [[1, 1, 1]], "label": path})


def _embedding_runs(segmenter: BoxPromptSegmenter, image: str, requests: list[dict]) -> tuple[int, list]:
    runs = []
    hook = segmenter.network.vit.patch_embedding.register_forward_hook(lambda *args: runs.append(1))
    try:
        labels = [_segment(segmenter, image, **params) for params in requests]
    finally:
        hook.remove()
    return len(runs), labels


def test_requests_on_one_image_reuse_the_image_only_work(clicky, tmp_path):
    bundle, image = clicky
    copy = str(tmp_path / "same_content.nii.gz")  # an upload of the same image under another path
    shutil.copy(image, copy)
    requests = [{"box": BOX}, {"box": BOX, "foreground": [[20, 20, 1]]},
                {"box": BOX, "foreground": [[20, 20, 1]], "background": [[8, 30, 1]]}]
    direct_runs, direct = _embedding_runs(BoxPromptSegmenter(bundle, session_images=0), image, requests)
    reusing = BoxPromptSegmenter(bundle)
    first, _ = _embedding_runs(reusing, image, requests[:1])
    later, labels = _embedding_runs(reusing, copy, requests)
    assert direct_runs == 3 * first and first >= 1 and later == 0  # three requests, one run of the embedding
    for a, b in zip(direct, labels):
        np.testing.assert_array_equal(a, b)  # and the same answers


def test_sessions_are_bounded_and_thread_safe(clicky, tmp_path):
    bundle, image = clicky
    segmenter = BoxPromptSegmenter(bundle, session_images=2)
    paths = []
    for i in range(3):
        path = str(tmp_path / f"img{i}.nii.gz")
        volume = np.random.default_rng(i + 1).random(SHAPE).astype(np.float32)
        nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
        paths.append(path)
    clicks = [{"box": BOX, "foreground": [[10 + 4 * i, 20, 1]]} for i in range(4)]
    jobs = [(path, params) for path in paths for params in clicks]
    expected = [_segment(BoxPromptSegmenter(bundle, session_images=0), p, **c) for p, c in jobs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda job: _segment(segmenter, job[0], **job[1]), jobs))
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a, b)
    assert len(segmenter.sessions) == 2
    assert not ClickSessions(torch.nn.Linear(1, 1)).enabled  # not a backbone of this package: no reuse


@pytest.mark.slow
def test_monailabel_server_takes_clicks_and_the_previous_label(monailabel_python, clicky, tmp_path):
    """The real server: clicks and an uploaded previous label give the in-process answer; bad ones a 4xx."""
    bundle, image = clicky
    previous = np.zeros(SHAPE, np.uint8)
    previous[10:30, 12:36, :] = 1
    label_path = str(tmp_path / "previous.nii.gz")
    nib.save(nib.Nifti1Image(previous, nib.load(image).affine), label_path)
    content, label_content = open(image, "rb").read(), open(label_path, "rb").read()
    local = BoxPromptSegmenter(bundle)
    clicks = {"box": BOX, "foreground": [[20, 20, 1]], "background": [[8, 30, 1]]}
    studies, server_tmp = tmp_path / "studies", tmp_path / "server_tmp"
    studies.mkdir()
    server_tmp.mkdir()
    served = test_monailabel._server(monailabel_python, os.path.dirname(bundle), str(studies), tmp_path, [],
                                     tmpdir=str(server_tmp))
    with served as (base, info, _log):
        assert "point_labels" in info["models"]["unetr_prato"]["description"]
        url = f"{base}/infer/unetr_prato?output=image"
        for params, label, expected in (
                (clicks, None, _segment(local, image, **clicks)),
                (clicks, ("previous.nii.gz", label_content), _segment(local, image, **clicks, label=label_path))):
            status, body, _ = multipart_post(url, content, "img.nii.gz", params, timeout=120, label=label)
            assert status == 200, body[:500]
            (tmp_path / "out.nii.gz").write_bytes(body)
            np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / "out.nii.gz")).dataobj), expected)
        for params, label, code, message in (
                ({"box": BOX, "foreground": [[300, 10, 1]]}, None, 422,
                 "unetr_prato: parameter 'foreground' point 1 is (300, 10, 1) but the image is 40 x 48 x 3"),
                ({"box": BOX, "points": [[1, 1, 1]], "point_labels": [2]}, None, 422, "'point_labels' label 1 is 2"),
                (clicks, ("notes.txt", b"text"), 415, "uploaded label 'notes.txt': unsupported file type")):
            status, body, _ = multipart_post(url, content, "img.nii.gz", params, timeout=120, label=label)
            assert status == code and message in json.loads(body)["detail"], (status, body[:500])
    assert not list(server_tmp.glob("prato_upload_*"))  # the uploads (images and labels) are removed


served_3d = test_monailabel.served_3d  # a tiny unetr3d_prato and a rotated LPS volume of 0.8 x 0.8 x 2.5 mm


def test_clicks_on_a_volume_follow_orientation_spacing_and_crop(served_3d):
    """3D: a click maps into the box that the preprocessing makes of the voxels around it (rotated LPS affine,
    2 mm resampling, foreground crop), and requests through the sliding window reuse work and answer as without."""
    bundles, image, overrides = served_3d
    bundle = os.path.join(bundles, "unetr3d_prato")
    segmenter = BoxPromptSegmenter(bundle, overrides=overrides)
    click = [25.0, 30.0, 10.0]
    around = [[v - 3 for v in click] + [v + 4 for v in click]]  # voxels click +- 3
    data = segmenter.preprocessing({"image": image, "box": around})
    mapped = points_to_network(np.array([click]), data["image"])[0]
    box = np.asarray(data["box"], dtype=np.float64).reshape(-1)
    assert (box[:3] <= mapped).all() and (mapped <= box[3:]).all(), (mapped, box)
    assert (box[3:] - box[:3] <= 7 * 1.25 + 2).all()  # the box of 7 voxels of at most 2.5 mm, at 2 mm, stays small
    requests = [{"box": test_monailabel.BOX_3D}, {"box": test_monailabel.BOX_3D, "foreground": [click]},
                {"box": test_monailabel.BOX_3D, "foreground": [click], "background": [[12.0, 14.0, 5.0]]}]
    direct_runs, direct = _embedding_runs(BoxPromptSegmenter(bundle, overrides=overrides, session_images=0), image,
                                          requests)
    runs, labels = _embedding_runs(segmenter, image, requests)
    assert runs >= 1 and direct_runs == 3 * runs, (runs, direct_runs)  # the clicks lie in the box's windows
    for a, b in zip(direct, labels):
        np.testing.assert_array_equal(a, b)


def test_a_checkpoint_trained_without_clicks_is_named_when_served(segmenter, tmp_path, caplog):
    assert segmenter.clicks_trained is True
    target = str(tmp_path / "unetr_prato")
    shutil.copytree(os.path.join(ROOT, "bundles", "unetr_prato"), target)
    os.makedirs(os.path.join(target, "models"))
    test_monailabel.save_untrained(target, TINY)  # a fresh click encoder is zero, as after a training without clicks
    with caplog.at_level("WARNING", logger="prato_components.interactive"):
        served = BoxPromptSegmenter(target)
    assert served.clicks_trained is False
    assert "was trained without clicks (its click encoder is zero), so clicks will not change its answers" in \
        caplog.text
