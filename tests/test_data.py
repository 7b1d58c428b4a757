"""Tests for prato_components.data: synthetic layouts, datalists, splits, transforms and errors."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, load_decathlon_datalist
from monai.transforms import Compose
from PIL import Image

from prato_components.data import (
    DATASETS,
    ISIC_LAYOUTS,
    BinarizeMaskd,
    CheckLabelValuesd,
    ExtractSlice,
    ExtractSliced,
    SafeLoadImaged,
    acdc_datalist,
    acdc_slice_datalist,
    decathlon_datalist,
    isic_datalist,
    load_or_create_split,
    make_acdc_like,
    make_acdc_like_splits,
    make_decathlon_like,
    make_isic_like,
    parse_acdc_info,
    slice_datalist,
    split_datalist,
)

ACDC_KW = {"num_patients": 6, "slices": (6, 9), "size": (48, 56), "spacing": (1.5, 1.25, 8.0)}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def acdc_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("acdc"))
    make_acdc_like(root, seed=0, write_4d=True, **ACDC_KW)
    make_acdc_like(root, num_patients=2, slices=(6, 9), size=(48, 56), spacing=(1.5, 1.25, 8.0), split="testing")
    return root


@pytest.fixture(scope="module")
def isic_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("isic"))
    make_isic_like(root, num_images=6, size=(40, 56), seed=0)
    return root


@pytest.fixture(scope="module")
def msd_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("msd"))
    make_decathlon_like(root, num_cases=5, size=(20, 20, 12), seed=0, num_test=2)
    return root


def _arrays(path: str) -> np.ndarray:
    if path.endswith(".nii.gz"):
        return np.asarray(nib.load(path).dataobj)
    return np.asarray(Image.open(path))


# ---------------------------------------------------------------------------------------------------
# generators: layouts and formats
# ---------------------------------------------------------------------------------------------------


def test_acdc_layout_and_formats(acdc_root):
    patients = sorted(os.listdir(os.path.join(acdc_root, "training")))
    assert patients == [f"patient{i:03d}" for i in range(1, 7)]
    assert sorted(os.listdir(os.path.join(acdc_root, "testing"))) == ["patient007", "patient008"]
    for pdir in glob.glob(os.path.join(acdc_root, "*", "patient*")):
        name = os.path.basename(pdir)
        info = parse_acdc_info(os.path.join(pdir, "Info.cfg"))
        assert set(info) == {"ED", "ES", "Group", "Height", "NbFrame", "Weight"}
        assert info["ED"] == "1" and info["Group"] in ("NOR", "DCM", "HCM", "MINF", "RV")
        frames = sorted(f for f in os.listdir(pdir) if re.fullmatch(rf"{name}_frame\d\d\.nii\.gz", f))
        assert frames == [f"{name}_frame01.nii.gz", f"{name}_frame{int(info['ES']):02d}.nii.gz"]
        for frame in frames:
            img = nib.load(os.path.join(pdir, frame))
            gt = nib.load(os.path.join(pdir, frame.replace(".nii.gz", "_gt.nii.gz")))
            assert img.get_data_dtype() == np.float32 and gt.get_data_dtype() == np.uint8
            assert img.shape == gt.shape and img.shape[:2] == (48, 56) and 6 <= img.shape[2] <= 9
            np.testing.assert_allclose(np.abs(np.diag(img.affine)[:3]), (1.5, 1.25, 8.0))
            np.testing.assert_allclose(img.header.get_zooms(), (1.5, 1.25, 8.0))
            np.testing.assert_array_equal(img.affine, gt.affine)
            assert set(np.unique(np.asarray(gt.dataobj))) <= {0, 1, 2, 3}
            assert np.asarray(img.dataobj).min() >= 0
    assert os.path.isfile(os.path.join(acdc_root, "training", "patient001", "patient001_4d.nii.gz"))


def test_acdc_testing_numbering(tmp_path):
    make_acdc_like(str(tmp_path / "a"), num_patients=1, slices=(2, 2), size=(24, 24), split="testing")
    assert os.listdir(tmp_path / "a" / "testing") == ["patient101"]  # as in ACDC when alone
    make_acdc_like_splits(
        str(tmp_path / "b"), num_training=2, num_testing=1, slices=(2, 2), size=(24, 24), num_frames=1
    )
    assert sorted(os.listdir(tmp_path / "b" / "training")) == ["patient001", "patient002"]
    assert os.listdir(tmp_path / "b" / "testing") == ["patient003"]
    with pytest.raises(ValueError, match="num_frames"):
        make_acdc_like(str(tmp_path / "c"), num_frames=3)


def test_acdc_anatomy(acdc_root):
    n_fg = n_empty = 0
    for item in acdc_datalist(acdc_root):
        lab = np.asarray(nib.load(item["label"]).dataobj)
        img = np.asarray(nib.load(item["image"]).dataobj)
        assert not lab[0].any() and not lab[-1].any() and not lab[:, 0].any() and not lab[:, -1].any()
        for z in range(lab.shape[2]):
            s = lab[..., z]
            if not s.any():
                n_empty += 1
                continue
            n_fg += 1
            assert (s == 2).any()  # every heart slice has myocardium
            if (s == 3).any():
                lv, myo = np.argwhere(s == 3), np.argwhere(s == 2)
                c = lv.mean(0)
                assert (myo.min(0) <= c).all() and (c <= myo.max(0)).all()  # LV centroid inside the ring's box
                assert (myo.min(0) < lv.min(0)).all() and (lv.max(0) < myo.max(0)).all()  # ring encloses LV
                assert img[..., z][s == 3].mean() > 2 * img[..., z][s == 2].mean()  # bright blood, dark muscle
        es = item["phase"] == "ES"
        if es:
            ed = np.asarray(nib.load(item["label"].replace(f"frame{item['frame']:02d}", "frame01")).dataobj)
            assert (lab == 3).sum() < (ed == 3).sum()  # the LV contracts at end systole
    assert n_fg > 0 and n_empty > 0


def test_isic_layout_and_formats(isic_root, tmp_path):
    img_dir, gt_dir = ISIC_LAYOUTS[2018]["training"]
    jpgs = sorted(glob.glob(os.path.join(isic_root, img_dir, "*.jpg")))
    assert [os.path.basename(p) for p in jpgs] == [f"ISIC_{i:07d}.jpg" for i in range(6)]
    for jpg in jpgs:
        im = Image.open(jpg)
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (56, 40)
        mask = Image.open(os.path.join(isic_root, gt_dir, os.path.basename(jpg)[:-4] + "_segmentation.png"))
        assert mask.format == "PNG" and mask.mode == "L" and mask.size == (56, 40)
        m = np.asarray(mask)
        assert set(np.unique(m)) == {0, 255}
        rgb = np.asarray(im).astype(float)
        assert rgb[m == 255].mean() < rgb[m == 0].mean()  # the lesion is darker than the skin
    make_isic_like(str(tmp_path), num_images=2, size=(24, 32), year=2017)
    assert sorted(os.listdir(tmp_path)) == sorted(ISIC_LAYOUTS[2017]["training"])
    assert os.path.isfile(tmp_path / "ISIC-2017_Training_Part1_GroundTruth" / "ISIC_0000001_segmentation.png")


def test_decathlon_layout(msd_root):
    with open(os.path.join(msd_root, "dataset.json")) as f:
        meta = json.load(f)
    assert {"name", "labels", "modality", "numTraining", "numTest", "training", "test"} <= set(meta)
    assert meta["numTraining"] == len(meta["training"]) == 5 and len(meta["test"]) == 2
    assert meta["training"][0] == {"image": "./imagesTr/organ_001.nii.gz", "label": "./labelsTr/organ_001.nii.gz"}
    items = load_decathlon_datalist(os.path.join(msd_root, "dataset.json"), base_dir=msd_root)
    for item in items:
        lab = np.asarray(nib.load(item["label"]).dataobj)
        assert nib.load(item["image"]).shape == lab.shape == (20, 20, 12)
        assert set(np.unique(lab)) == {0, 1}


@pytest.mark.parametrize("kind", ["acdc", "isic", "decathlon"])
def test_generators_deterministic(tmp_path, kind):
    make = {
        "acdc": lambda r, s: make_acdc_like(r, num_patients=2, slices=(3, 4), size=(32, 32), seed=s),
        "isic": lambda r, s: make_isic_like(r, num_images=2, size=(24, 32), seed=s),
        "decathlon": lambda r, s: make_decathlon_like(r, num_cases=2, size=(12, 12, 8), seed=s, num_test=1),
    }[kind]
    a, b, _ = (make(str(tmp_path / n), s) for n, s in (("a", 0), ("b", 0), ("c", 1)))
    assert [os.path.relpath(p, tmp_path / "a") for p in a] == [os.path.relpath(p, tmp_path / "b") for p in b]
    data = [p for p in a if p.endswith((".nii.gz", ".jpg", ".png"))]
    differs = False
    for p in data:
        rel = os.path.relpath(p, tmp_path / "a")
        x, y = _arrays(p), _arrays(str(tmp_path / "b" / rel))
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
        other = str(tmp_path / "c" / rel)
        if os.path.exists(other):
            z = _arrays(other)
            differs |= z.shape != x.shape or z.tobytes() != x.tobytes()
    assert differs


# ---------------------------------------------------------------------------------------------------
# datalists
# ---------------------------------------------------------------------------------------------------


def test_acdc_datalist(acdc_root):
    items = acdc_datalist(acdc_root)
    assert len(items) == 6 * 2
    on_disk = {
        p
        for p in glob.glob(os.path.join(acdc_root, "training", "*", "*.nii.gz"))
        if not p.endswith(("_gt.nii.gz", "_4d.nii.gz"))
    }
    assert {i["image"] for i in items} == on_disk
    first = items[0]
    assert first["patient"] == "patient001" and first["frame"] == 1 and first["phase"] == "ED"
    assert first["label"] == first["image"].replace(".nii.gz", "_gt.nii.gz")
    assert {i["phase"] for i in items} == {"ED", "ES"}
    assert [i["patient"] for i in acdc_datalist(acdc_root, "testing")] == ["patient007"] * 2 + ["patient008"] * 2
    # pointing at the split folder itself also works
    assert acdc_datalist(os.path.join(acdc_root, "training")) == items


def test_slice_datalist_and_extract(acdc_root):
    vols = acdc_datalist(acdc_root)[:2]
    slices = acdc_slice_datalist(vols)
    depth = nib.load(vols[0]["image"]).shape[2]
    assert len(slices) == sum(nib.load(v["image"]).shape[2] for v in vols)
    assert [s["slice"] for s in slices[:depth]] == list(range(depth)) and slices[0]["num_slices"] == depth
    assert set(slices[0]) == {"image", "label", "patient", "frame", "phase", "slice", "num_slices"}
    nonempty = slice_datalist(vols, skip_empty=True)
    assert 0 < len(nonempty) < len(slices)
    for s in nonempty:
        assert np.asarray(nib.load(s["label"]).dataobj)[..., s["slice"]].any()

    z = 3
    t = Compose(
        [
            SafeLoadImaged(["image", "label"], ensure_channel_first=True),
            ExtractSliced(["image", "label"], slice_key="slice"),
        ]
    )
    out = t(slices[z])
    vol = nib.load(vols[0]["image"])
    assert out["image"].shape == (1, 48, 56) and out["label"].shape == (1, 48, 56)
    np.testing.assert_allclose(out["image"][0].numpy(), np.asarray(vol.dataobj)[..., z], rtol=1e-6)
    np.testing.assert_array_equal(out["label"][0].numpy(), np.asarray(nib.load(vols[0]["label"]).dataobj)[..., z])
    expected = vol.affine.copy()
    expected[:3, 3] += z * vol.affine[:3, 2]
    np.testing.assert_allclose(out["image"].affine.numpy(), expected)  # the slice stays placed in the volume
    np.testing.assert_allclose(out["image"].pixdim[:2], (1.5, 1.25))
    assert out["image"].meta["slice_index"] == z

    # batches collate (string, int and tensor keys)
    batch = next(iter(DataLoader(Dataset(slices[:4], t), batch_size=4)))
    assert batch["image"].shape == (4, 1, 48, 56) and batch["patient"] == ["patient001"] * 4
    assert batch["slice"].tolist() == [0, 1, 2, 3]


def test_extract_slice_other_axis():
    vol = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    assert torch.equal(ExtractSlice(axis=0)(vol, 1), vol[:, 1])
    assert torch.equal(ExtractSlice(axis=1)(vol, -1), vol[:, :, 3])
    with pytest.raises(IndexError, match="out of range"):
        ExtractSlice()(vol, 5)
    with pytest.raises(KeyError, match="slice"):
        ExtractSliced("image")({"image": vol})


def test_isic_datalist(isic_root, tmp_path):
    items = isic_datalist(isic_root)
    assert len(items) == 6 and set(items[0]) == {"image", "label"}
    assert items[0]["image"].endswith(os.path.join("ISIC2018_Task1-2_Training_Input", "ISIC_0000000.jpg"))
    assert items[0]["label"].endswith(
        os.path.join("ISIC2018_Task1_Training_GroundTruth", "ISIC_0000000_segmentation.png")
    )
    make_isic_like(str(tmp_path / "y17"), num_images=3, size=(16, 16), year=2017)
    assert len(isic_datalist(str(tmp_path / "y17"))) == 3
    # any other layout: X.jpg with X_segmentation.png anywhere underneath
    own = tmp_path / "own"
    shutil.copytree(os.path.join(isic_root, ISIC_LAYOUTS[2018]["training"][0]), own / "imgs" / "nested")
    shutil.copytree(os.path.join(isic_root, ISIC_LAYOUTS[2018]["training"][1]), own / "masks")
    found = isic_datalist(str(own))
    assert [os.path.basename(i["label"]) for i in found] == [f"ISIC_{i:07d}_segmentation.png" for i in range(6)]


def test_decathlon_datalist(msd_root):
    train = decathlon_datalist(msd_root)
    assert len(train) == 5 and all(os.path.isabs(i["image"]) and os.path.isfile(i["label"]) for i in train)
    assert len(decathlon_datalist(msd_root, "test")) == 2
    with pytest.raises(ValueError, match="no 'validation' list"):
        decathlon_datalist(msd_root, "validation")


# ---------------------------------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------------------------------


def test_split_by_group():
    items = [{"image": f"{p}_{f}", "patient": f"p{p:02d}"} for p in range(10) for f in range(3)]
    s = split_datalist(items, seed=0, group_key="patient")
    groups = {k: {i["patient"] for i in v} for k, v in s.items()}
    assert [len(groups[k]) for k in ("training", "validation", "test")] == [8, 1, 1]
    assert not (
        groups["training"] & groups["validation"]
        or groups["training"] & groups["test"]
        or groups["validation"] & groups["test"]
    )
    assert sum(len(v) for v in s.values()) == len(items)
    assert split_datalist(items, seed=0, group_key="patient") == s  # reproducible
    assert any(split_datalist(items, seed=k, group_key="patient") != s for k in range(1, 4))
    three = split_datalist(items[:9], seed=0, group_key="patient")  # 3 patients: one per split
    assert all(len(v) == 3 for v in three.values())
    assert len(split_datalist(items, fractions=(1, 0, 0))["training"]) == 30
    with pytest.raises(ValueError, match="fractions"):
        split_datalist(items, fractions=(0.5, 0.5))


def test_load_or_create_split(acdc_root, tmp_path):
    path = str(tmp_path / "splits" / "acdc.json")
    s = load_or_create_split("acdc", acdc_root, path, seed=0)
    assert os.path.isfile(path) and not [f for f in os.listdir(tmp_path / "splits") if f.endswith(".tmp")]
    patients = {k: {i["patient"] for i in v} for k, v in s.items()}
    assert all(patients.values()) and sum(map(len, patients.values())) == 6
    assert not (patients["training"] & patients["test"] or patients["training"] & patients["validation"])
    assert all("slice" in i and os.path.isabs(i["image"]) for i in s["training"])
    with open(path) as f:
        saved = json.load(f)
    assert saved["dataset"] == "acdc" and not os.path.isabs(saved["training"][0]["image"])
    # readable by MONAI too
    monai_items = load_decathlon_datalist(path, data_list_key="validation", base_dir=acdc_root)
    assert [i["image"] for i in monai_items] == [i["image"] for i in s["validation"]]
    # reuses the file (a hand edit survives), even with another seed
    saved["test"] = saved["test"][:1]
    with open(path, "w") as f:
        json.dump(saved, f)
    with pytest.warns(UserWarning, match="seed"):
        again = load_or_create_split("acdc", acdc_root, path, seed=1)
    assert again["training"] == s["training"] and len(again["test"]) == 1
    # other data sets and validation
    isic_dir = str(tmp_path / "isic")
    make_isic_like(isic_dir, num_images=5, size=(16, 16))
    assert [len(v) for v in load_or_create_split("isic", isic_dir, None).values()] == [3, 1, 1]
    with pytest.raises(ValueError, match="acdc, isic, decathlon"):
        load_or_create_split("brats", acdc_root, path)
    with pytest.raises(ValueError, match="made for 'acdc'"):
        load_or_create_split("isic", isic_dir, path)
    assert DATASETS == ("acdc", "isic", "decathlon", "btcv")


def test_load_or_create_split_missing_files(msd_root, tmp_path):
    root = str(tmp_path / "msd")
    shutil.copytree(msd_root, root)
    path = str(tmp_path / "msd.json")
    s = load_or_create_split("decathlon", root, path)
    assert sum(len(v) for v in s.values()) == 5
    os.remove(s["validation"][0]["label"])
    with pytest.raises(FileNotFoundError, match=re.escape(s["validation"][0]["label"])):
        load_or_create_split("decathlon", root, path)
    with open(path, "w") as f:
        f.write("{not json")
    with pytest.raises(ValueError, match="could not parse"):
        load_or_create_split("decathlon", root, path)


# ---------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------


def test_layout_errors(tmp_path, acdc_root, isic_root):
    missing = str(tmp_path / "nope")
    for fn in (acdc_datalist, isic_datalist, decathlon_datalist):
        with pytest.raises(FileNotFoundError, match=re.escape(missing)):
            fn(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        ValueError, match="does not look like an ACDC dataset: expected training/patientNNN/patientNNN_frameMM.nii.gz"
    ):
        acdc_datalist(str(empty))
    with pytest.raises(ValueError, match="does not look like an ISIC dataset"):
        isic_datalist(str(empty))
    with pytest.raises(ValueError, match="does not look like an MSD/decathlon dataset"):
        decathlon_datalist(str(empty))
    wrong = tmp_path / "wrong" / "training" / "patient001"
    wrong.mkdir(parents=True)
    shutil.copy(os.path.join(acdc_root, "training", "patient001", "patient001_frame01.nii.gz"), wrong / "image.nii.gz")
    with pytest.raises(ValueError, match="does not look like an ACDC dataset"):
        acdc_datalist(str(tmp_path / "wrong"))
    shutil.copy(
        os.path.join(acdc_root, "training", "patient001", "patient001_frame01.nii.gz"),
        wrong / "patient001_frame01.nii.gz",
    )
    with pytest.raises(FileNotFoundError, match=re.escape(str(wrong / "patient001_frame01.nii.gz"))):
        acdc_datalist(str(tmp_path / "wrong"))
    no_mask = tmp_path / "isic"
    shutil.copytree(isic_root, no_mask)
    os.remove(no_mask / ISIC_LAYOUTS[2018]["training"][1] / "ISIC_0000002_segmentation.png")
    with pytest.raises(FileNotFoundError, match="ISIC_0000002.jpg has no mask"):
        isic_datalist(str(no_mask))


def test_corrupt_files(tmp_path, acdc_root, isic_root):
    load = SafeLoadImaged(["image", "label"], ensure_channel_first=True)
    good = acdc_datalist(acdc_root)[0]
    garbage = str(tmp_path / "garbage.nii.gz")
    with open(garbage, "wb") as f:
        f.write(b"this is not a nifti file" * 10)
    truncated = str(tmp_path / "truncated_gt.nii.gz")
    with open(good["label"], "rb") as f:
        blob = f.read()
    with open(truncated, "wb") as f:
        f.write(blob[: len(blob) // 2])
    for bad in (garbage, truncated):
        with pytest.raises(RuntimeError, match=f"could not read {re.escape(bad)}"):
            load({"image": good["image"], "label": bad})
    with pytest.raises(RuntimeError, match=re.escape(garbage)):  # only the header is read there
        slice_datalist([{"image": garbage}])
    png = str(tmp_path / "ISIC_0000000_segmentation.png")
    with open(isic_datalist(isic_root)[0]["label"], "rb") as f:
        blob = f.read()
    with open(png, "wb") as f:
        f.write(blob[: len(blob) // 2])
    with pytest.raises(RuntimeError, match=f"could not read {re.escape(png)}"):
        load({"image": isic_datalist(isic_root)[0]["image"], "label": png})
    with pytest.raises(FileNotFoundError, match="gone.png"):
        load({"image": isic_datalist(isic_root)[0]["image"], "label": str(tmp_path / "gone.png")})
    # inside Compose the named error is the cause
    with pytest.raises(RuntimeError) as info:
        Compose([load])({"image": good["image"], "label": garbage})
    assert garbage in str(info.value) + str(info.value.__cause__)


def test_label_value_checks(tmp_path, acdc_root, isic_root):
    lab = np.asarray(nib.load(acdc_datalist(acdc_root)[0]["label"]).dataobj).copy()
    lab[0, 0, 0] = 7
    bad = str(tmp_path / "bad_gt.nii.gz")
    nib.save(nib.Nifti1Image(lab, np.eye(4)), bad)
    d = SafeLoadImaged("label", ensure_channel_first=True)({"label": bad})
    with pytest.raises(ValueError, match=re.escape(bad) + r".*unexpected label values \{7\}"):
        CheckLabelValuesd("label", allowed=(0, 1, 2, 3))(d)
    ok = SafeLoadImaged("label", ensure_channel_first=True)({"label": acdc_datalist(acdc_root)[0]["label"]})
    assert CheckLabelValuesd("label")(ok) is not None

    item = isic_datalist(isic_root)[0]
    d = SafeLoadImaged(["image", "label"], ensure_channel_first=True)(item)
    out = BinarizeMaskd("label")(d)
    assert set(torch.unique(out["label"]).tolist()) == {0.0, 1.0} and out["label"].dtype == torch.float32
    assert torch.equal(out["label"] == 1, d["label"] == 255)
    mask = np.asarray(Image.open(item["label"])).copy()
    mask[0, 0] = 128
    grey = str(tmp_path / "grey_segmentation.png")
    Image.fromarray(mask, mode="L").save(grey)
    with pytest.raises(ValueError, match=re.escape(grey) + r".*\{128\}"):
        BinarizeMaskd("label")(SafeLoadImaged("label", ensure_channel_first=True)({"label": grey}))


def test_make_data_cli(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("make_data", os.path.join(ROOT, "tools", "make_data.py"))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    cli.acdc(str(tmp_path / "acdc"), num_patients=2, num_testing=1, slices=(2, 3), size=(24, 24))
    cli.isic(str(tmp_path / "isic"), num_images=2, size=(16, 16))
    cli.decathlon(str(tmp_path / "msd"), num_cases=2, num_test=1, size=(8, 8, 4))
    printed = capsys.readouterr().out
    assert printed.count("wrote") == 3 and "12 .nii.gz" in printed
    assert len(acdc_datalist(str(tmp_path / "acdc"), "testing")) == 2
    assert len(isic_datalist(str(tmp_path / "isic"))) == 2 and len(decathlon_datalist(str(tmp_path / "msd"))) == 2


def test_acdc_small_dark(tmp_path):
    """``small_dark=True``: class 3 is small, varies in size between patients and slices, and is darker than the
    myocardium around it, with an intensity close to the background outside the body; everything else and the
    default data set are unchanged."""
    kw = {"num_patients": 4, "num_frames": 1, "slices": (6, 8), "size": (64, 64), "spacing": (2.0, 2.0, 8.0)}
    make_acdc_like(str(tmp_path / "dark"), small_dark=True, **kw)
    make_acdc_like(str(tmp_path / "plain"), **kw)
    make_acdc_like(str(tmp_path / "plain2"), small_dark=False, **kw)
    patient_areas, slice_areas, ratios = [], [], []
    for item in acdc_datalist(str(tmp_path / "dark")):
        lab = np.asarray(nib.load(item["label"]).dataobj)
        img = np.asarray(nib.load(item["image"]).dataobj)
        plain = item["label"].replace(os.sep + "dark" + os.sep, os.sep + "plain" + os.sep)
        lab_plain = np.asarray(nib.load(plain).dataobj)
        img_plain = np.asarray(nib.load(plain.replace("_gt", "")).dataobj)
        assert lab.shape == lab_plain.shape and img.shape == img_plain.shape and img.dtype == np.float32
        assert ((lab == 1) == (lab_plain == 1)).all()  # the RV is the default one
        assert ((lab > 0) == (lab_plain > 0)).all()  # the heart's outline too: class 3 only cut out of it
        assert ((lab == 3) <= (lab_plain == 3)).all()  # inside the default LV
        areas = [(lab[..., z] == 3).sum() / max((lab_plain[..., z] == 3).sum(), 1) for z in range(lab.shape[2])]
        areas = [a for a, z in zip(areas, range(lab.shape[2])) if (lab[..., z] == 3).any()]
        assert areas and max(areas) < 0.5  # small: under half the default LV's area on every slice
        patient_areas.append(float(np.mean(areas)))
        slice_areas.append(np.ptp([(lab[..., z] == 3).sum() for z in range(lab.shape[2]) if (lab[..., z] == 3).any()]))
        outside = img[:3, :3].mean()  # corner: outside the body
        dark, myo = img[lab == 3].mean(), img[lab == 2].mean()
        assert dark < 0.6 * myo  # darker than its surroundings
        ratios.append(abs(dark - outside) / (img_plain[lab_plain == 3].mean() - outside))
        assert img_plain[lab_plain == 3].mean() > 2 * img_plain[lab_plain == 2].mean()  # default: bright blood
    assert max(patient_areas) > 1.5 * min(patient_areas)  # sizes vary between patients
    assert min(slice_areas) > 0  # and between the slices of every patient
    assert max(ratios) < 0.15  # close to the background's intensity (relative to the default LV's contrast)
    for a, b in zip(acdc_datalist(str(tmp_path / "plain")), acdc_datalist(str(tmp_path / "plain2"))):  # default off
        assert (np.asarray(nib.load(a["image"]).dataobj) == np.asarray(nib.load(b["image"]).dataobj)).all()
