"""3D as a first-class product: box prompts mapped through Orientation / Spacing / CropForeground,
the MSD and BTCV layouts with their synthetic twins, and the 3D training chain (crops, boxes, perturbations)."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data.box_utils import box_iou
from monai.transforms import Compose, RandCropByPosNegLabeld, SpatialPadd

from prato_components.bundle import bundle_splits_3d, dataset_spec, load_transforms_3d, prompt_transforms
from prato_components.data import (
    ORGANS_3D,
    btcv_datalist,
    decathlon_datalist,
    load_or_create_split,
    make_btcv_like,
    make_decathlon_like,
)
from prato_components.prompts import (
    BoxFromLabeld,
    ClipBoxd,
    RandJitterBoxd,
    RandPartialBoxd,
    RandShiftBoxd,
    box_is_padding,
    boxes_from_label,
)

# array axis -> world direction and spacing: RAS, LPS (the first two axes flipped), and a permuted scan whose
# first array axis runs along S at 2.5 mm and whose second runs to -x (R -> L)
AFFINES = {
    "RAS": np.diag([0.8, 0.8, 2.5, 1.0]),
    "LPS": np.diag([-0.8, -0.8, 2.5, 1.0]),
    "permuted": np.array([[0.0, -0.8, 0.0, 10.0], [0.0, 0.0, 0.8, -5.0], [2.5, 0.0, 0.0, 3.0], [0, 0, 0, 1.0]]),
}


def _blob_case(root: str, name: str, affine: np.ndarray) -> tuple[str, str, list[float]]:
    """A CT-like volume with a body (cropped by CropForeground) and an ellipsoid blob; returns the image, the label
    and the blob's tight box in voxels of the file as loaded."""
    spacing = np.abs(affine[:3, :3]).sum(0)  # per array axis
    shape = tuple(int(round(s)) for s in np.array([48.0, 40.0, 40.0]) / spacing)  # a 48 x 40 x 40 mm field of view
    grids = np.meshgrid(*(np.arange(n) + 0.5 for n in shape), indexing="ij")
    centre, radii = np.array(shape) * [0.4, 0.55, 0.5], np.array([9.0, 7.0, 12.0]) / spacing  # radii in mm
    blob = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) < 1
    body = np.zeros(shape, bool)
    body[tuple(slice(int(n * 0.1), int(n * 0.9) + 1) for n in shape)] = True
    image = np.where(body, 20.0, -1000.0) + np.where(blob, 130.0, 0.0)  # [0, 1] after the CT window: 0.46, 0.76
    paths = [os.path.join(root, f"{name}{suffix}.nii.gz") for suffix in ("", "_label")]
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), paths[0])
    nib.save(nib.Nifti1Image(blob.astype(np.uint8), affine), paths[1])
    box = boxes_from_label(blob[None])[0].tolist()
    return paths[0], paths[1], box


@pytest.fixture(scope="module")
def ct_dir(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("ct"))
    with open(os.path.join(root, "dataset.json"), "w") as f:
        json.dump({"modality": {"0": "CT"}, "labels": {"0": "background", "1": "blob"}}, f)
    return root


@pytest.mark.parametrize("orientation", sorted(AFFINES))
def test_a_box_in_file_voxels_lands_on_the_blob_after_preprocessing(ct_dir, orientation):
    image, label, box = _blob_case(ct_dir, orientation, AFFINES[orientation])
    preprocess = load_transforms_3d("decathlon", ct_dir, pixdim=(1.5, 1.5, 1.5), box_key="box")
    out = preprocess({"image": image, "label": label, "box": [box]})
    blob_box = boxes_from_label(out["label"])  # the blob's box after Orientation, Spacing and CropForeground
    seen_box = boxes_from_label(out["image"] > 0.6)  # the blob as the image shows it (130 HU over the 20 HU body)
    assert out["image"].shape[1:] == out["label"].shape[1:] and out["box"].shape == (1, 6)
    assert float(box_iou(out["box"], blob_box)) > 0.8, (out["box"], blob_box)
    assert float(box_iou(out["box"], seen_box)) > 0.8, (out["box"], seen_box)
    assert "box_mask" not in out
    if orientation != "RAS":  # the mapping moved the box: it is not where the raw numbers said
        assert float(box_iou(out["box"], torch.tensor([box]))) < 0.5


def test_padding_rows_and_several_boxes_survive_the_mapping(ct_dir):
    image, label, box = _blob_case(ct_dir, "several", AFFINES["LPS"])
    out = load_transforms_3d("decathlon", ct_dir, pixdim=(1.5, 1.5, 1.5), box_key="box")(
        {"image": image, "label": label, "box": [box, [0, 0, 0, -1, -1, -1]]})
    assert box_is_padding(out["box"]).tolist() == [False, True]


def test_msd_multichannel_task_reads_as_channel_first_mr(tmp_path):
    root = str(tmp_path / "Task01_like")
    make_decathlon_like(root, num_cases=2, num_test=0, size=(24, 24, 12), organs=3, channels=4, orientation="LPS",
                        spacing=(1.0, 1.0, 1.5))
    items = decathlon_datalist(root)
    assert nib.load(items[0]["image"]).shape == (24, 24, 12, 4) and nib.load(items[0]["label"]).shape == (24, 24, 12)
    spec = dataset_spec("decathlon", root)
    assert (spec["in_channels"], spec["out_channels"], spec["modality"]) == (4, 4, "MR")
    out = load_transforms_3d("decathlon", root, pixdim=(1.5, 1.5, 1.5))(items[0])
    assert out["image"].shape[0] == 4 and out["label"].shape[0] == 1
    inside = out["image"][0] != 0
    assert abs(float(out["image"][0][inside].mean())) < 0.1  # NormalizeIntensityd(nonzero, channel_wise)
    assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0, 2.0, 3.0}


def test_btcv_layout_datalist_and_split(tmp_path):
    root = str(tmp_path / "btcv")
    written = make_btcv_like(root, num_training=5, num_validation=2, num_test=1, size=(32, 32, 12))
    assert os.path.join(root, "imagesTr", "img0001.nii.gz") in written
    assert os.path.join(root, "labelsTr", "label0007.nii.gz") in written
    with open(os.path.join(root, "dataset_0.json")) as f:
        meta = json.load(f)
    assert meta["training"][0] == {"image": "imagesTr/img0001.nii.gz", "label": "labelsTr/label0001.nii.gz"}
    assert [len(meta[k]) for k in ("training", "validation", "test")] == [5, 2, 1]
    assert len(btcv_datalist(root)) == 5 and len(btcv_datalist(root, "validation")) == 2
    assert list(btcv_datalist(root, "test")[0]) == ["image"]
    affine = nib.load(os.path.join(root, "imagesTr", "img0001.nii.gz")).affine
    np.testing.assert_allclose(np.diag(affine)[:3], [-0.8, -0.8, 2.5])  # LPS, anisotropic
    spec = dataset_spec("btcv", root)
    assert spec["class_names"] == [o[0] for o in ORGANS_3D] and spec["modality"] == "CT"
    splits = load_or_create_split("btcv", root, str(tmp_path / "split.json"))
    assert splits["validation"] == btcv_datalist(root, "validation")  # the datalist's own validation list
    assert sorted(x["image"] for x in splits["training"] + splits["test"]) == sorted(
        x["image"] for x in btcv_datalist(root))
    assert bundle_splits_3d("btcv", root, None)["test"]
    os.remove(os.path.join(root, "dataset_0.json"))  # without the datalist: images paired with labels by number
    assert [os.path.basename(x["label"]) for x in btcv_datalist(root)] == [f"label{i:04d}.nii.gz" for i in range(1, 8)]
    with pytest.raises(ValueError, match="does not look like a BTCV dataset"):
        btcv_datalist(str(tmp_path))


def test_synthetic_organs_differ_in_size_with_a_small_one(tmp_path):
    root = str(tmp_path / "msd")
    make_decathlon_like(root, num_cases=1, num_test=0, size=(64, 64, 24), organs=4, orientation="LPS",
                        spacing=(0.8, 0.8, 2.5))
    item = decathlon_datalist(root)[0]
    label = np.asarray(nib.load(item["label"]).dataobj)
    assert set(np.unique(label)) == {0, 1, 2, 3, 4}
    boxes = boxes_from_label(label[None], per_class=True, classes=[1, 2, 3, 4])
    volumes = (boxes[:, 3:] - boxes[:, :3]).prod(-1)
    assert len(set(volumes.tolist())) == 4 and volumes.min() < volumes.max() / 20
    image = np.asarray(nib.load(item["image"]).dataobj)
    means = [float(image[label == k].mean()) for k in range(1, 5)]
    assert min(abs(a - b) for i, a in enumerate(means) for b in means[i + 1:]) > 20  # distinct intensities


@pytest.mark.parametrize("per_class", [False, True])
def test_every_training_crop_gets_the_box_of_its_own_label(tmp_path, per_class):
    root = str(tmp_path / "btcv")
    make_btcv_like(root, num_training=1, num_validation=0, num_test=0, size=(48, 48, 16))
    chain = Compose([
        load_transforms_3d("btcv", root, pixdim=(1.5, 1.5, 2.0)),
        SpatialPadd(keys=["image", "label"], spatial_size=(32, 32, 32)),
        RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=(32, 32, 32), pos=1, neg=1,
                               num_samples=4, image_key="image", image_threshold=0),
        BoxFromLabeld(keys="label", box_key="box", per_class=per_class, classes=[1, 2, 3, 4] if per_class else None),
        RandJitterBoxd(box_key="box", prob=1.0),
        ClipBoxd(box_key="box", image_key="image"),
    ]).set_random_state(0)
    crops = chain(btcv_datalist(root)[0])
    assert len(crops) == 4
    for crop in crops:
        assert crop["image"].shape[1:] == (32, 32, 32) and crop["box"].shape == ((4, 6) if per_class else (1, 6))
        tight = boxes_from_label(crop["label"], per_class=per_class, classes=[1, 2, 3, 4] if per_class else None)
        assert box_is_padding(crop["box"]).tolist() == box_is_padding(tight).tolist()
        real = ~box_is_padding(tight)
        assert (crop["box"][real] >= 0).all() and (crop["box"][real][:, 3:] <= 32).all()
        if real.any():  # jittered by at most 10% of the size, then clipped: still on the structure
            assert (torch.diag(box_iou(crop["box"][real], tight[real])) > 0.4).all()


@pytest.mark.parametrize("prompt", ["tight", "oversized", "partial", "misleading"])
def test_prompt_perturbations_in_3d(prompt):
    label = torch.zeros(1, 32, 32, 32)
    label[0, 8:16, 10:20, 4:28] = 1
    data = {"image": torch.zeros(1, 32, 32, 32), "label": label}
    data = BoxFromLabeld(keys="label", box_key="box")(data)
    out = Compose(prompt_transforms(prompt))(data)["box"][0]
    tight = torch.tensor([8.0, 10.0, 4.0, 16.0, 20.0, 28.0])
    expected = {"tight": tight, "oversized": torch.tensor([6.0, 7.5, 0.0, 18.0, 22.5, 32.0]),
                "partial": torch.tensor([8.0, 10.0, 4.0, 12.0, 15.0, 16.0]),
                "misleading": torch.tensor([16.0, 20.0, 28.0, 24.0, 30.0, 32.0])}[prompt]
    torch.testing.assert_close(out, expected)
    for transform in (RandPartialBoxd(prob=1.0), RandShiftBoxd(prob=1.0, offset_fraction=0.5),
                      RandJitterBoxd(prob=1.0)):
        moved = transform.set_random_state(1)({"box": tight[None]})["box"]
        assert moved.shape == (1, 6) and not torch.equal(moved, tight[None])


def test_make_data_cli_3d(tmp_path, capsys):
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("make_data", os.path.join(root, "tools", "make_data.py"))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    cli.btcv(str(tmp_path / "btcv"), num_training=2, num_validation=1, num_test=1, size=(16, 16, 8))
    cli.decathlon(str(tmp_path / "msd"), num_cases=2, num_test=0, size=(16, 16, 8), organs=4, orientation="LPS")
    printed = capsys.readouterr().out
    assert printed.count("wrote") == 2 and "7 .nii.gz" in printed
    assert len(btcv_datalist(str(tmp_path / "btcv"), "validation")) == 1
    assert dataset_spec("decathlon", str(tmp_path / "msd"))["out_channels"] == 5
