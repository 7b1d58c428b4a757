"""Deterministic synthetic data sets written in the real on-disk layouts (ACDC, ISIC, MSD/decathlon, BTCV).

No data set can be downloaded in CI, so these generators write files that look like the real ones to
every loader: the same folder and file names, the same formats (NIfTI through nibabel, JPG/PNG through
pillow), the same label conventions, and anatomy-like content so that training, prompts (boxes from
labels) and evaluation have something meaningful to work on.

Every generator is deterministic from ``seed``: each case draws from its own
``numpy.random.Generator`` seeded by ``(seed, case number)``, so a case does not depend on how many
other cases are written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import nibabel as nib
import numpy as np
from monai.config import PathLike
from PIL import Image, ImageDraw

from prato_components.data.readers import ISIC_LAYOUTS

__all__ = [
    "ACDC_GROUPS",
    "ORGANS_3D",
    "make_btcv_like",
    "make_acdc_like",
    "make_acdc_like_splits",
    "make_decathlon_like",
    "make_isic_like",
]

ACDC_GROUPS = ("NOR", "DCM", "HCM", "MINF", "RV")
"""The five ACDC pathology groups written to ``Info.cfg``."""

# ---------------------------------------------------------------------------------------------------
# small numeric helpers
# ---------------------------------------------------------------------------------------------------


def _rng(seed: int, *keys: int) -> np.random.Generator:
    """A generator seeded by ``seed`` and case keys, independent of the order cases are made in."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *(int(k) for k in keys)]))


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma: float | Sequence[float]) -> np.ndarray:
    """White noise low-passed by a Gaussian of ``sigma`` voxels (periodic, by FFT), zero mean, unit std."""
    shape = tuple(int(s) for s in shape)
    sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (len(shape),))
    spectrum = np.fft.rfftn(rng.standard_normal(shape))
    freqs = [np.fft.fftfreq(n) for n in shape[:-1]] + [np.fft.rfftfreq(shape[-1])]
    grids = np.meshgrid(*freqs, indexing="ij")
    gain = np.exp(-2.0 * np.pi**2 * sum((s * f) ** 2 for s, f in zip(sig, grids)))
    out = np.fft.irfftn(spectrum * gain, s=shape, axes=tuple(range(len(shape))))
    out -= out.mean()
    std = out.std()
    return out / std if std > 0 else out


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a 2D array by FFT (periodic boundary; used for mild partial-volume effects)."""
    freqs = np.meshgrid(np.fft.fftfreq(image.shape[0]), np.fft.rfftfreq(image.shape[1]), indexing="ij")
    gain = np.exp(-2.0 * np.pi**2 * sigma**2 * (freqs[0] ** 2 + freqs[1] ** 2))
    return np.fft.irfftn(np.fft.rfftn(image) * gain, s=image.shape, axes=(0, 1))


def _rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of a complex signal with Gaussian noise on both channels (Rician noise, as in MRI)."""
    real = signal + sigma * rng.standard_normal(signal.shape)
    imag = sigma * rng.standard_normal(signal.shape)
    return np.sqrt(real**2 + imag**2)


def _save_nifti(
    array: np.ndarray,
    spacing: Sequence[float],
    path: str,
    origin: Sequence[float] | None = None,
    orientation: str = "RAS",
) -> None:
    """Write ``array`` as NIfTI-1 with an axis-aligned affine carrying ``spacing[:3]`` (mm) and ``origin``; the
    array axes point along ``orientation`` (``"RAS"``: identity directions, ``"LPS"``: the first two axes point
    to -x and -y of NIfTI's RAS world, as in DICOM-derived scans)."""
    affine = np.diag([*(float(s) for s in spacing[:3]), 1.0]) @ np.diag([*_axis_signs(orientation), 1.0])
    if origin is not None:
        affine[: len(origin), 3] = origin
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm", "sec")
    if array.ndim > 3:  # 4D cine: the 4th zoom is the frame interval
        img.header.set_zooms(tuple(float(s) for s in spacing[: array.ndim]))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)


def _axis_signs(orientation: str) -> tuple[float, float, float]:
    """Direction signs of the array axes in NIfTI's RAS world for axis-aligned codes (``RAS``, ``LPS``, ``LAS``...)."""
    code = str(orientation).upper()
    if len(code) != 3 or any(c not in pair for c, pair in zip(code, ("RL", "AP", "SI"))):
        raise ValueError(f"orientation must be an axis-aligned code such as 'RAS' or 'LPS', got {orientation!r}")
    return tuple(1.0 if c in "RAS" else -1.0 for c in code)


# ---------------------------------------------------------------------------------------------------
# ACDC-like cardiac cine MRI
# ---------------------------------------------------------------------------------------------------


def _acdc_patient_params(rng: np.random.Generator, size: Sequence[int], spacing: Sequence[float], slices) -> dict:
    """Draw the anatomy of one patient (sizes in mm, scaled to the field of view)."""
    fov = min(size[0] * spacing[0], size[1] * spacing[1])
    group = ACDC_GROUPS[int(rng.integers(len(ACDC_GROUPS)))]
    r_out = fov * rng.uniform(0.13, 0.16)
    thick = r_out * rng.uniform(0.25, 0.33)
    rv_scale = rng.uniform(1.0, 1.2)
    if group == "DCM":  # dilated LV, thin wall
        r_out, thick = r_out * 1.12, thick * 0.8
    elif group == "HCM":  # thick wall
        thick = thick * 1.35
    elif group == "RV":  # dilated right ventricle
        rv_scale = rv_scale * 1.15
    nz = int(rng.integers(slices[0], slices[1] + 1))
    n_base = int(rng.integers(0, 2)) if nz >= 5 else 0
    n_apex = int(rng.integers(1, 3)) if nz - n_base >= 4 else 0
    centre = np.array([size[0] * spacing[0], size[1] * spacing[1]]) / 2 + rng.uniform(-0.06, 0.06, 2) * fov
    return {
        "group": group,
        "nz": nz,
        "heart": (n_base, nz - n_apex),  # slices [start, stop) that contain the heart
        "centre": centre,
        "drift": rng.uniform(-0.03, 0.03, 2) * fov,  # centre moves smoothly from base to apex
        "r_out": r_out,
        "thick": thick,
        "theta": np.pi + rng.uniform(-0.5, 0.5),  # direction of the RV from the LV centre
        "rv_scale": rv_scale,
        "rv_offset": rng.uniform(0.55, 0.7),
        "harm": rng.uniform(-0.05, 0.05, 4),  # small angular irregularity of the ring
        "es": (rng.uniform(0.55, 0.7), rng.uniform(1.3, 1.6), rng.uniform(0.7, 0.85)),  # LV, wall, RV
        "lung": rng.uniform(0.6, 1.2),  # angle (rel. to RV) of a dark lung region
        "tissue": rng.uniform(0.3, 0.42),
        "scale": rng.uniform(250.0, 450.0),
        "noise": rng.uniform(0.02, 0.04),
        "height": round(float(rng.uniform(150.0, 195.0)), 1),
        "weight": round(float(rng.uniform(50.0, 110.0)), 1),
        "nb_frames": int(rng.integers(25, 36)),
        "es_frame": int(rng.integers(9, 16)),
    }


def _acdc_label_slice(p: dict, z: int, phase: str, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Label of slice ``z`` (0 bg, 1 RV crescent, 2 myocardium ring, 3 LV disc) on the mm ``grid``."""
    xs, ys = grid
    lab = np.zeros(xs.shape, dtype=np.uint8)
    start, stop = p["heart"]
    if not start <= z < stop:
        return lab
    u = (z - start + 0.5) / (stop - start)  # 0 at the base, 1 at the apex
    m = np.sqrt(max(0.0, 1.0 - u**2.5))
    lv_f, wall_f, rv_f = p["es"] if phase == "ES" else (1.0, 1.0, 1.0)
    r_lv = (p["r_out"] - p["thick"]) * lv_f * m
    thick = p["thick"] * wall_f * (1.0 - 0.2 * u)
    centre = p["centre"] + p["drift"] * u
    dx, dy = xs - centre[0], ys - centre[1]
    dist = np.hypot(dx, dy)
    phi = np.arctan2(dy, dx)
    h = p["harm"]
    wobble = 1.0 + h[0] * np.cos(2 * phi + h[1] * 20) + h[2] * np.cos(3 * phi + h[3] * 20)
    if r_lv < 2.0:  # apical cap: myocardium only
        r_lv = 0.0
    r_outer = (r_lv + thick) * wobble
    lab[dist < r_outer] = 2
    small = p.get("small_dark")
    if small is not None:  # a small cavity of its own size per slice inside the (otherwise solid) ring
        r_small = (p["r_out"] - p["thick"]) * m * small["scale"][z]
        lab[dist < (r_small if r_small >= 1.5 else 0.0) * wobble] = 3
    else:
        lab[dist < r_lv * wobble] = 3
    if u < 0.8:  # the RV ends before the apex
        m_rv = m**1.5
        r_rv = p["r_out"] * p["rv_scale"] * rv_f * m_rv
        off = (r_lv + thick) * p["rv_offset"] * (1.0 + 0.3 * (1.0 - m_rv))
        c_rv = centre + off * np.array([np.cos(p["theta"]), np.sin(p["theta"])])
        crescent = (np.hypot(xs - c_rv[0], ys - c_rv[1]) < r_rv) & (dist >= r_outer)
        lab[crescent] = 1
    return lab


def _acdc_intensity(
    rng: np.random.Generator, p: dict, labels: np.ndarray, texture: np.ndarray, grid, fov
) -> np.ndarray:
    """MRI-like intensities for a labelled volume ``[X, Y, Z]``: bright blood, dark myocardium."""
    xs, ys = grid
    shape = labels.shape
    centre = np.array([xs.max() + xs.min(), ys.max() + ys.min()]) / 2
    body = ((xs - centre[0]) / (0.47 * (xs.max() - xs.min()))) ** 2 + (
        (ys - centre[1]) / (0.43 * (ys.max() - ys.min()))
    ) ** 2 < 1
    ang = p["theta"] + p["lung"]
    lung_c = p["centre"] + 2.2 * p["r_out"] * np.array([np.cos(ang), np.sin(ang)])
    lung = np.hypot(xs - lung_c[0], (ys - lung_c[1]) * 0.8) < 0.9 * p["r_out"]
    bias = np.exp(0.15 * _smooth_noise(rng, shape, (shape[0] / 3, shape[1] / 3, max(shape[2] / 2, 1))))
    out = np.empty(shape, dtype=np.float64)
    for z in range(shape[2]):
        lab = labels[..., z]
        img = np.where(body, p["tissue"] + 0.08 * texture[..., z], 0.02)
        img = np.where(body & lung, 0.07 + 0.02 * texture[..., z], img)
        img = np.where(lab == 2, 0.2 + 0.03 * texture[..., z], img)
        img = np.where(lab == 1, 0.8, img)
        img = np.where(lab == 3, p["small_dark"]["level"] if p.get("small_dark") else 0.9, img)
        out[..., z] = _blur(img, 0.7)
    out = _rician(rng, out * bias, p["noise"])
    return (out * p["scale"]).astype(np.float32)


def _small_dark_params(seed: int, pid: int, nz: int) -> dict:
    """Class 3 as a small dark (fluid-like) cavity: a radius fraction per slice and an intensity near the air's.

    Drawn from a generator of its own (``(seed, pid, 3)``) so the default data set does not change.
    """
    rng = _rng(seed, pid, 3)
    base = rng.uniform(0.28, 0.55)  # of the default LV radius: the area varies about 4x between patients
    scale = np.clip(base * (1.0 + rng.uniform(-0.35, 0.35, nz)), 0.12, 0.6)  # and from slice to slice
    return {"scale": scale, "level": float(rng.uniform(0.03, 0.07))}  # outside the body: 0.02, lung 0.07


def _acdc_write_patient(
    folder: str, pid: int, size, spacing, slices, num_frames: int, seed: int, write_4d: bool, small_dark: bool = False
) -> list[str]:
    """Write the frames, ground truths and ``Info.cfg`` of one patient; return the written paths."""
    rng = _rng(seed, pid)
    p = _acdc_patient_params(rng, size, spacing, slices)
    if small_dark:
        p["small_dark"] = _small_dark_params(seed, pid, p["nz"])
    name = f"patient{pid:03d}"
    pdir = os.path.join(folder, name)
    os.makedirs(pdir, exist_ok=True)
    xs, ys = np.meshgrid(np.arange(size[0]) * spacing[0], np.arange(size[1]) * spacing[1], indexing="ij")
    fov = min(size[0] * spacing[0], size[1] * spacing[1])
    texture = 0.8 * _smooth_noise(rng, (size[0], size[1], p["nz"]), (2.5, 2.5, 0.5))
    texture += 0.6 * _smooth_noise(rng, texture.shape, (0.8, 0.8, 0.0))
    origin = (-size[0] * spacing[0] / 2, -size[1] * spacing[1] / 2, 0.0)
    frames = [(1, "ED"), (p["es_frame"], "ES")][:num_frames]
    written, vols = [], []
    for frame, phase in frames:
        labels = np.stack([_acdc_label_slice(p, z, phase, (xs, ys)) for z in range(p["nz"])], axis=-1)
        image = _acdc_intensity(rng, p, labels, texture, (xs, ys), fov)
        stem = os.path.join(pdir, f"{name}_frame{frame:02d}")
        _save_nifti(image, spacing, stem + ".nii.gz", origin)
        _save_nifti(labels, spacing, stem + "_gt.nii.gz", origin)
        written += [stem + ".nii.gz", stem + "_gt.nii.gz"]
        vols.append(image)
    if write_4d:  # shortened: only the generated frames, not all NbFrame
        path = os.path.join(pdir, f"{name}_4d.nii.gz")
        _save_nifti(np.stack(vols, axis=-1), (*spacing, 1.0), path, origin)
        written.append(path)
    info = os.path.join(pdir, "Info.cfg")
    with open(info, "w") as f:
        f.write(f"ED: 1\nES: {p['es_frame']}\nGroup: {p['group']}\nHeight: {p['height']}\n")
        f.write(f"NbFrame: {p['nb_frames']}\nWeight: {p['weight']}\n")
    written.append(info)
    return written


def _max_patient_id(folder: str) -> int:
    """The largest ``patientNNN`` number in ``folder`` (0 when there is none)."""
    if not os.path.isdir(folder):
        return 0
    ids = [int(n[7:]) for n in os.listdir(folder) if n.startswith("patient") and n[7:].isdigit()]
    return max(ids, default=0)


def make_acdc_like(
    root: PathLike,
    num_patients: int = 10,
    num_frames: int = 2,
    slices: tuple[int, int] = (6, 10),
    size: tuple[int, int] = (128, 128),
    spacing: tuple[float, float, float] = (1.5, 1.5, 10.0),
    seed: int = 0,
    split: str = "training",
    first_id: int | None = None,
    write_4d: bool = False,
    small_dark: bool = False,
) -> list[str]:
    """Write an ACDC-like cine-MRI data set: ``root/<split>/patientNNN/patientNNN_frameMM[_gt].nii.gz``.

    Each patient gets an end-diastolic frame (``frame01``) and, with ``num_frames=2``, an end-systolic
    one (``frameMM``, MM from ``Info.cfg``'s ``ES``), each with a ``_gt`` label volume, plus ``Info.cfg``
    (``ED``, ``ES``, ``Group``, ``Height``, ``NbFrame``, ``Weight``, as in the real data). Volumes are
    short-axis stacks ``[X, Y, Z]`` float32 with a NIfTI affine carrying ``spacing``; labels are uint8,
    0 background, 1 right ventricle (crescent beside the LV), 2 myocardium (ring), 3 left ventricle
    (disc in the ring). The heart shrinks from base to apex; some basal/apical slices are empty.

    Args:
        root: the data set root; files go under ``root/<split>/``.
        num_patients: number of patients to write.
        num_frames: 1 (ED only) or 2 (ED and ES).
        slices: inclusive range of the number of short-axis slices per patient.
        size: in-plane shape ``(X, Y)`` in voxels.
        spacing: voxel spacing ``(x, y, z)`` in mm.
        seed: seed; patient ``N`` is drawn from ``(seed, N)`` alone.
        split: ``"training"`` or ``"testing"``.
        first_id: number of the first patient. Default: 1 for training; for testing, one more than the
            largest training patient under ``root/training`` (101 when there is none, as in ACDC).
        write_4d: also write a (shortened, ``num_frames`` long) ``patientNNN_4d.nii.gz``.
        small_dark: make class 3 a small structure that is darker than its surroundings, with an intensity
            close to the background outside the body (fluid-like): a cavity inside a thick myocardium whose
            radius is a patient-specific fraction (0.28-0.55) of the default LV radius, varied by up to 35%
            from slice to slice (absent where it would be under 1.5 mm). Drawn from a generator of its own, so
            classes 1 and 2 and the image elsewhere are the default data set's. Default off.

    Returns:
        the paths written, sorted.
    """
    if split not in ("training", "testing"):
        raise ValueError(f"split must be 'training' or 'testing', got {split!r}.")
    if num_frames not in (1, 2):
        raise ValueError(f"num_frames must be 1 or 2 (ACDC labels ED and ES only), got {num_frames}.")
    if not 1 <= slices[0] <= slices[1]:
        raise ValueError(f"slices must be a range (min, max) with 1 <= min <= max, got {slices}.")
    if first_id is None:
        first_id = 1 if split == "training" else (_max_patient_id(os.path.join(root, "training")) or 100) + 1
    folder = os.path.join(root, split)
    os.makedirs(folder, exist_ok=True)
    written: list[str] = []
    for pid in range(first_id, first_id + num_patients):
        written += _acdc_write_patient(
            folder, pid, tuple(size), tuple(spacing), slices, num_frames, seed, write_4d, small_dark
        )
    return sorted(written)


def make_acdc_like_splits(root: PathLike, num_training: int = 10, num_testing: int = 5, **kwargs) -> list[str]:
    """Write both ACDC-like splits: ``root/training`` (patients 1..) and ``root/testing`` (continuing).

    Args:
        root: the data set root.
        num_training: number of training patients.
        num_testing: number of testing patients, numbered after the training ones.
        kwargs: passed to :func:`make_acdc_like` (``num_frames``, ``slices``, ``size``, ``spacing``, ``seed``...).

    Returns:
        the paths written, sorted.
    """
    kwargs.pop("first_id", None)
    written = make_acdc_like(root, num_patients=num_training, split="training", first_id=1, **kwargs)
    written += make_acdc_like(root, num_patients=num_testing, split="testing", first_id=num_training + 1, **kwargs)
    return sorted(written)


# ---------------------------------------------------------------------------------------------------
# ISIC-like dermoscopy
# ---------------------------------------------------------------------------------------------------


def _isic_lesion(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An irregular blob: returns (mask, alpha for a soft border, normalised radius inside the lesion)."""
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    cy, cx = np.array([h, w]) / 2 + rng.uniform(-0.12, 0.12, 2) * np.array([h, w])
    r0 = rng.uniform(0.2, 0.33) * min(h, w)
    rot, elong = rng.uniform(0, np.pi), rng.uniform(0.75, 1.3)
    u = (xx - cx) * np.cos(rot) + (yy - cy) * np.sin(rot)
    v = -(xx - cx) * np.sin(rot) + (yy - cy) * np.cos(rot)
    dist, phi = np.hypot(u * elong, v / elong), np.arctan2(v, u)
    radius = np.ones_like(phi)
    for k in range(2, 9):
        radius += rng.uniform(0, 0.12 / k**0.6) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    radius = r0 * np.maximum(radius, 0.4)
    alpha = np.clip((radius - dist) / rng.uniform(1.5, 4.0) + 0.5, 0.0, 1.0)
    return dist < radius, alpha, dist / radius


def _isic_image(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """One dermoscopy-like RGB image ``[H, W, 3]`` uint8 and its mask ``[H, W]`` uint8 0/255."""
    light, tan = np.array([236.0, 200.0, 180.0]), np.array([185.0, 135.0, 105.0])
    skin = light + rng.uniform(0, 1) * (tan - light)
    img = np.broadcast_to(skin, (h, w, 3)).copy()
    img += 7.0 * _smooth_noise(rng, (h, w), 5.0)[..., None] + 3.0 * _smooth_noise(rng, (h, w, 3), (1.0, 1.0, 0.0))
    mask, alpha, rnorm = _isic_lesion(rng, h, w)
    dark, pale = np.array([80.0, 50.0, 35.0]), np.array([165.0, 115.0, 80.0])
    mix = np.clip(0.5 + 0.25 * _smooth_noise(rng, (h, w), 4.0) + 0.35 * (np.minimum(rnorm, 1.0) - 0.5), 0, 1)
    lesion = dark + mix[..., None] * (pale - dark)
    if rng.uniform() < 0.4:  # blue-grey veil in part of the lesion
        veil = np.clip(_smooth_noise(rng, (h, w), 6.0) - 0.5, 0, 1)[..., None]
        lesion = lesion * (1 - 0.6 * veil) + 0.6 * veil * np.array([105.0, 110.0, 135.0])
    img = img * (1 - alpha[..., None]) + lesion * alpha[..., None]
    if rng.uniform() < 0.5:  # dark dermoscope vignette in the corners
        yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
        img *= np.clip(1.0 - 0.5 * np.clip(np.hypot(xx, yy) - 0.9, 0, None) * 2.5, 0.1, 1.0)[..., None]
    img += 3.0 * rng.standard_normal(img.shape)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(0, 8))):  # hairs: dark curved strokes over skin and lesion
        p0, p1, p2 = rng.uniform(0, 1, (3, 2)) * np.array([w, h])
        t = np.linspace(0, 1, 24)[:, None]
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        shade = int(rng.integers(25, 60))
        draw.line([tuple(q) for q in pts], fill=(shade, shade - 8, shade - 15), width=int(rng.integers(1, 3)))
    return np.asarray(pil), (mask * 255).astype(np.uint8)


def make_isic_like(
    root: PathLike, num_images: int = 20, size: tuple[int, int] = (128, 160), seed: int = 0, year: int = 2018
) -> list[str]:
    """Write an ISIC-like task 1 training set in the layout of the ``year`` challenge.

    2018: ``root/ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg`` and
    ``root/ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png``; 2017:
    ``ISIC-2017_Training_Data`` and ``ISIC-2017_Training_Part1_GroundTruth``. Images are RGB JPEG
    (textured skin, an irregular brown lesion, hairs, noise); masks are 8-bit grey-scale PNG with values
    0 and 255. Like the real folders, the image folder also holds a non-image file (2018:
    ``LICENSE.txt``; 2017: the metadata CSV) that loaders must skip.

    Args:
        root: the data set root.
        num_images: number of image/mask pairs.
        size: image shape ``(height, width)`` in pixels.
        seed: seed; image ``N`` is drawn from ``(seed, N)`` alone.
        year: 2017 or 2018 (folder names).

    Returns:
        the paths written, sorted.
    """
    if year not in ISIC_LAYOUTS:
        raise ValueError(f"year must be one of {sorted(ISIC_LAYOUTS)}, got {year}.")
    img_dir, gt_dir = (os.path.join(root, d) for d in ISIC_LAYOUTS[year]["training"])
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(gt_dir, exist_ok=True)
    written, ids = [], []
    for i in range(num_images):
        image, mask = _isic_image(_rng(seed, i), int(size[0]), int(size[1]))
        name = f"ISIC_{i:07d}"
        ids.append(name)
        Image.fromarray(image, mode="RGB").save(os.path.join(img_dir, name + ".jpg"), quality=92)
        Image.fromarray(mask, mode="L").save(os.path.join(gt_dir, name + "_segmentation.png"))
        written += [os.path.join(img_dir, name + ".jpg"), os.path.join(gt_dir, name + "_segmentation.png")]
    if year == 2018:
        extra = os.path.join(img_dir, "LICENSE.txt")
        with open(extra, "w") as f:
            f.write("Synthetic ISIC-like images generated by prato_components (CC0).\n")
    else:
        extra = os.path.join(img_dir, "ISIC-2017_Training_Data_metadata.csv")
        with open(extra, "w") as f:
            f.write("image_id,age_approximate,sex\n" + "".join(f"{n},unknown,unknown\n" for n in ids))
    written.append(extra)
    return sorted(written)


# ---------------------------------------------------------------------------------------------------
# MSD / decathlon-like 3D
# ---------------------------------------------------------------------------------------------------


def _decathlon_case(rng: np.random.Generator, size: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like volume (HU, float32) with one blob-shaped organ (label 1, uint8)."""
    grids = np.meshgrid(*(np.linspace(-1, 1, s) for s in size), indexing="ij")
    body = grids[0] ** 2 / 0.85**2 + grids[1] ** 2 / 0.75**2 < 1
    centre = rng.uniform(-0.2, 0.2, 3)
    radii = rng.uniform(0.25, 0.4, 3)
    ell = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)))
    organ = ell + 0.15 * _smooth_noise(rng, size, [s / 6 for s in size]) < 1.0
    img = np.where(body, 40.0 + 15.0 * _smooth_noise(rng, size, 2.0), -1000.0)
    img = np.where(organ, 120.0 + 8.0 * _smooth_noise(rng, size, 1.5), img)
    img += 12.0 * rng.standard_normal(size)
    return img.astype(np.float32), organ.astype(np.uint8)


ORGANS_3D: tuple[tuple[str, float, tuple[float, float, float], tuple[float, float, float]], ...] = (
    ("liver", 90.0, (-0.35, 0.0, 0.0), (0.32, 0.3, 0.42)),
    ("spleen", 130.0, (0.45, 0.15, 0.05), (0.16, 0.16, 0.25)),
    ("kidney", 180.0, (0.25, 0.5, -0.1), (0.11, 0.1, 0.2)),
    ("gallbladder", 45.0, (0.05, -0.45, -0.1), (0.08, 0.08, 0.12)),
)
"""The organs of the multi-organ 3D cases, label ``i + 1`` each: name, CT value (HU), centre and radii as fractions
of the half field of view per axis. Four sizes, from about a third of the field of view (liver) down to a few
voxels (gallbladder), so their boxes differ."""

_MR_CONTRASTS = ((60.0, 30.0, 90.0, 120.0, 150.0), (150.0, 120.0, 60.0, 90.0, 30.0), (90.0, 150.0, 30.0, 60.0, 120.0),
                 (30.0, 60.0, 150.0, 120.0, 90.0))
"""MR-like channel contrasts (multi-channel cases): per channel, the values of body, organ 1, 2, 3, 4."""


def _organs_case(
    rng: np.random.Generator, size: tuple[int, int, int], organs: int, channels: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """A volume with ``organs`` ellipsoids of :data:`ORGANS_3D` (label ``i + 1``) in a body ellipse.

    ``channels == 1``: CT-like float32 HU, air -1000, each organ its own value. ``channels > 1``: MR-like
    ``[X, Y, Z, C]`` (MSD Task01's channel-last 4D layout), 0 outside the body, each channel its own contrast.
    """
    if not 1 <= organs <= len(ORGANS_3D):
        raise ValueError(f"organs must be in 1..{len(ORGANS_3D)}, got {organs}")
    if not 1 <= channels <= len(_MR_CONTRASTS):
        raise ValueError(f"channels must be in 1..{len(_MR_CONTRASTS)}, got {channels}")
    grids = np.meshgrid(*(np.linspace(-1, 1, s) for s in size), indexing="ij")
    body = grids[0] ** 2 / 0.9**2 + grids[1] ** 2 / 0.8**2 < 1
    label = np.zeros(size, np.uint8)
    for index, (_, _, centre, radii) in enumerate(ORGANS_3D[:organs]):
        c = np.asarray(centre) + rng.uniform(-0.05, 0.05, 3)
        r = np.asarray(radii) * rng.uniform(0.85, 1.15, 3)
        label[sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grids, c, r)) < 1.0] = index + 1
    label[~body] = 0
    texture = _smooth_noise(rng, size, 1.5)
    if channels == 1:
        values = np.array([20.0] + [o[1] for o in ORGANS_3D[:organs]])
        img = np.where(body, values[label] + 6.0 * texture, -1000.0) + 10.0 * rng.standard_normal(size)
        return img.astype(np.float32), label
    out = []
    for contrast in _MR_CONTRASTS[:channels]:
        values = np.asarray(contrast[: organs + 1])
        signal = np.where(body, values[label] * (1.0 + 0.05 * texture), 0.0)
        out.append(np.where(body, _rician(rng, signal, 6.0), 0.0))
    return np.stack(out, axis=-1).astype(np.float32), label


def make_decathlon_like(
    root: PathLike,
    num_cases: int = 6,
    size: tuple[int, int, int] = (48, 48, 32),
    seed: int = 0,
    num_test: int = 2,
    spacing: tuple[float, float, float] = (1.5, 1.5, 2.0),
    name: str = "organ",
    organs: int = 1,
    channels: int = 1,
    orientation: str = "RAS",
) -> list[str]:
    """Write an MSD/decathlon-like task: ``root/dataset.json``, ``imagesTr/``, ``labelsTr/``, ``imagesTs/``.

    ``dataset.json`` has the MSD keys (``name``, ``description``, ``tensorImageSize``, ``modality``,
    ``labels``, ``numTraining``, ``numTest``, ``training`` as ``[{"image": "./imagesTr/x.nii.gz",
    "label": "./labelsTr/x.nii.gz"}]`` and ``test`` as a list of paths), readable by
    ``monai.data.load_decathlon_datalist``. With the defaults the volumes are CT-like float32 in HU with one
    blob-shaped organ (label 1). ``organs > 1`` draws the ellipsoid organs of :data:`ORGANS_3D` (labels 1..organs);
    ``channels > 1`` writes MR-like channel-last 4D images ``[X, Y, Z, C]`` as MSD Task01 (BrainTumour) does.

    Args:
        root: the task folder.
        num_cases: number of labelled training cases.
        size: volume shape ``(X, Y, Z)``.
        seed: seed; case ``N`` is drawn from ``(seed, N)`` alone.
        num_test: number of unlabelled test images.
        spacing: voxel spacing in mm.
        name: case name prefix (``organ_001.nii.gz``).
        organs: 1 (one blob) or up to 4 ellipsoid organs of different sizes.
        channels: image channels (``> 1``: MR-like, 4D channel-last files).
        orientation: where the array axes point (``"RAS"``, or ``"LPS"`` for a flipped, DICOM-like affine).

    Returns:
        the paths written, sorted.
    """
    size = tuple(int(s) for s in size)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    image_spacing = (*spacing, 1.0) if channels > 1 else spacing
    training, test, written = [], [], []
    for i in range(1, num_cases + num_test + 1):
        rng = _rng(seed, i)
        image, label = _decathlon_case(rng, size) if organs == 1 and channels == 1 else \
            _organs_case(rng, size, organs, channels)
        fname = f"{name}_{i:03d}.nii.gz"
        if i <= num_cases:
            _save_nifti(image, image_spacing, os.path.join(root, "imagesTr", fname), orientation=orientation)
            _save_nifti(label, spacing, os.path.join(root, "labelsTr", fname), orientation=orientation)
            training.append({"image": f"./imagesTr/{fname}", "label": f"./labelsTr/{fname}"})
            written += [os.path.join(root, "imagesTr", fname), os.path.join(root, "labelsTr", fname)]
        else:
            _save_nifti(image, image_spacing, os.path.join(root, "imagesTs", fname), orientation=orientation)
            test.append(f"./imagesTs/{fname}")
            written.append(os.path.join(root, "imagesTs", fname))
    labels = {"0": "background", "1": name} if organs == 1 else \
        {"0": "background", **{str(k + 1): ORGANS_3D[k][0] for k in range(organs)}}
    modality = {"0": "CT"} if channels == 1 else {str(c): f"MR{c}" for c in range(channels)}
    meta = {
        "name": "SyntheticOrgan" if organs == 1 else "SyntheticOrgans",
        "description": f"Synthetic {'CT' if channels == 1 else 'MR'}-like volumes with "
                       f"{'one blob-shaped organ' if organs == 1 else f'{organs} ellipsoid organs'} (prato_components)",
        "reference": "prato_components.data.synthetic",
        "licence": "CC0",
        "release": "1.0",
        "tensorImageSize": "3D" if channels == 1 else "4D",
        "modality": modality,
        "labels": labels,
        "numTraining": num_cases,
        "numTest": num_test,
        "training": training,
        "test": test,
    }
    path = os.path.join(root, "dataset.json")
    with open(path, "w") as f:
        json.dump(meta, f, indent=4)
    written.append(path)
    return sorted(written)


def make_btcv_like(
    root: PathLike,
    num_training: int = 6,
    num_validation: int = 2,
    num_test: int = 1,
    size: tuple[int, int, int] = (64, 64, 24),
    spacing: tuple[float, float, float] = (0.8, 0.8, 2.5),
    organs: int = 4,
    orientation: str = "LPS",
    seed: int = 0,
) -> list[str]:
    """Write a BTCV-like abdomen CT set as MONAI's tutorials lay it out: ``imagesTr/img0001.nii.gz``,
    ``labelsTr/label0001.nii.gz``, ``imagesTs/img00NN.nii.gz`` and ``dataset_0.json`` with ``"training"``,
    ``"validation"`` (labelled, paths relative to ``root``) and ``"test"`` lists, ``labels`` and ``modality``.

    Cases are CT-like with the ellipsoid organs of :data:`ORGANS_3D` (labels 1..organs), an anisotropic spacing and,
    by default, an LPS-oriented affine (the first two axes flipped against NIfTI's RAS world), as DICOM-derived
    scans have.

    Args:
        root: the data set folder.
        num_training: cases in the ``"training"`` list.
        num_validation: labelled cases in the ``"validation"`` list (numbered after the training ones).
        num_test: unlabelled images in ``imagesTs`` (``"test"``).
        size: volume shape ``(X, Y, Z)``.
        spacing: voxel spacing in mm.
        organs: 1 to 4 organs.
        orientation: where the array axes point (``"LPS"`` or ``"RAS"``).
        seed: seed; case ``N`` is drawn from ``(seed, N)`` alone.

    Returns:
        the paths written, sorted.
    """
    size = tuple(int(s) for s in size)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    lists: dict[str, list] = {"training": [], "validation": [], "test": []}
    written = []
    labelled = num_training + num_validation
    for i in range(1, labelled + num_test + 1):
        image, label = _organs_case(_rng(seed, i), size, organs)
        if i <= labelled:
            item = {"image": f"imagesTr/img{i:04d}.nii.gz", "label": f"labelsTr/label{i:04d}.nii.gz"}
            _save_nifti(image, spacing, os.path.join(root, item["image"]), orientation=orientation)
            _save_nifti(label, spacing, os.path.join(root, item["label"]), orientation=orientation)
            lists["training" if i <= num_training else "validation"].append(item)
            written += [os.path.join(root, item["image"]), os.path.join(root, item["label"])]
        else:
            path = f"imagesTs/img{i:04d}.nii.gz"
            _save_nifti(image, spacing, os.path.join(root, path), orientation=orientation)
            lists["test"].append(path)
            written.append(os.path.join(root, path))
    meta = {
        "description": "Synthetic BTCV-like abdomen CT (prato_components)",
        "labels": {"0": "background", **{str(k + 1): ORGANS_3D[k][0] for k in range(organs)}},
        "licence": "CC0",
        "modality": {"0": "CT"},
        "name": "btcv",
        "numTest": num_test,
        "numTraining": labelled,
        "reference": "prato_components.data.synthetic",
        "release": "1.0",
        "tensorImageSize": "3D",
        **lists,
    }
    path = os.path.join(root, "dataset_0.json")
    with open(path, "w") as f:
        json.dump(meta, f, indent=4)
    written.append(path)
    return sorted(written)
