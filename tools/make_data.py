"""Write synthetic data sets in the real ACDC, ISIC, MSD/decathlon and BTCV layouts.

Examples::

    python tools/make_data.py acdc --root /tmp/acdc --num_patients 10 --seed 0
    python tools/make_data.py acdc --root /tmp/acdc --num_patients 10 --num_testing 5
    python tools/make_data.py isic --root /tmp/isic --num_images 20 --year 2018
    python tools/make_data.py decathlon --root /tmp/msd --num_cases 6
    python tools/make_data.py decathlon --root /tmp/msd3d --organs 4 --orientation LPS --spacing "[0.8,0.8,2.5]"
    python tools/make_data.py decathlon --root /tmp/task01 --organs 3 --channels 4      # BrainTumour-like 4D MR
    python tools/make_data.py btcv --root /tmp/btcv --num_training 6 --num_validation 2
"""

from __future__ import annotations

import os
import sys

import fire

try:
    from prato_components.data import (
        make_acdc_like,
        make_acdc_like_splits,
        make_btcv_like,
        make_decathlon_like,
        make_isic_like,
    )
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from prato_components.data import (
        make_acdc_like,
        make_acdc_like_splits,
        make_btcv_like,
        make_decathlon_like,
        make_isic_like,
    )


def _report(root: str, written: list[str], verbose: bool) -> None:
    """Print the files written (all, or a summary)."""
    if verbose:
        print("\n".join(written))
    counts: dict[str, int] = {}
    for path in written:
        ext = ".nii.gz" if path.endswith(".nii.gz") else os.path.splitext(path)[1] or os.path.basename(path)
        counts[ext] = counts.get(ext, 0) + 1
    summary = ", ".join(f"{n} {ext}" for ext, n in sorted(counts.items()))
    print(f"wrote {len(written)} files under {os.path.abspath(root)}: {summary}")


def acdc(
    root: str,
    num_patients: int = 10,
    num_testing: int = 0,
    num_frames: int = 2,
    slices: tuple[int, int] = (6, 10),
    size: tuple[int, int] = (128, 128),
    spacing: tuple[float, float, float] = (1.5, 1.5, 10.0),
    seed: int = 0,
    small_dark: bool = False,
    verbose: bool = False,
) -> None:
    """ACDC-like cine MRI: ``root/training/patientNNN/...`` (and ``root/testing/`` with ``--num_testing``).

    Args:
        root: output folder.
        num_patients: training patients.
        num_testing: testing patients (numbered after the training ones); 0 writes none.
        num_frames: 1 (ED) or 2 (ED and ES).
        slices: (min, max) number of short-axis slices.
        size: in-plane size (X, Y).
        spacing: voxel spacing (x, y, z) in mm.
        seed: random seed.
        small_dark: class 3 small, of varying size, and dark like the background (fluid-like); default off.
        verbose: list every file.
    """
    kwargs = {
        "small_dark": bool(small_dark),
        "num_frames": num_frames,
        "slices": tuple(slices),
        "size": tuple(size),
        "spacing": tuple(spacing),
        "seed": seed,
    }
    if num_testing:
        written = make_acdc_like_splits(root, num_training=num_patients, num_testing=num_testing, **kwargs)
    else:
        written = make_acdc_like(root, num_patients=num_patients, **kwargs)
    _report(root, written, verbose)


def isic(
    root: str,
    num_images: int = 20,
    size: tuple[int, int] = (128, 160),
    seed: int = 0,
    year: int = 2018,
    verbose: bool = False,
) -> None:
    """ISIC-like dermoscopy (task 1 training folders of ``year``).

    Args:
        root: output folder.
        num_images: image/mask pairs.
        size: (height, width).
        seed: random seed.
        year: 2017 or 2018 folder names.
        verbose: list every file.
    """
    _report(root, make_isic_like(root, num_images=num_images, size=tuple(size), seed=seed, year=year), verbose)


def decathlon(
    root: str,
    num_cases: int = 6,
    num_test: int = 2,
    size: tuple[int, int, int] = (48, 48, 32),
    spacing: tuple[float, float, float] = (1.5, 1.5, 2.0),
    organs: int = 1,
    channels: int = 1,
    orientation: str = "RAS",
    seed: int = 0,
    verbose: bool = False,
) -> None:
    """MSD/decathlon-like 3D task: ``dataset.json``, ``imagesTr``, ``labelsTr``, ``imagesTs``.

    Args:
        root: output (task) folder.
        num_cases: labelled training cases.
        num_test: unlabelled test images.
        size: volume shape (X, Y, Z).
        spacing: voxel spacing (x, y, z) in mm.
        organs: 1 (one blob) or up to 4 ellipsoid organs of different sizes.
        channels: image channels; > 1 writes MR-like channel-last 4D images (Task01 BrainTumour layout).
        orientation: "RAS" or e.g. "LPS" (first two axes flipped against NIfTI's world).
        seed: random seed.
        verbose: list every file.
    """
    written = make_decathlon_like(root, num_cases=num_cases, size=tuple(size), seed=seed, num_test=num_test,
                                  spacing=tuple(spacing), organs=organs, channels=channels, orientation=orientation)
    _report(root, written, verbose)


def btcv(
    root: str,
    num_training: int = 6,
    num_validation: int = 2,
    num_test: int = 1,
    size: tuple[int, int, int] = (64, 64, 24),
    spacing: tuple[float, float, float] = (0.8, 0.8, 2.5),
    organs: int = 4,
    orientation: str = "LPS",
    seed: int = 0,
    verbose: bool = False,
) -> None:
    """BTCV-like abdomen CT as MONAI's tutorials lay it out: ``imagesTr/img0001.nii.gz``,
    ``labelsTr/label0001.nii.gz``, ``imagesTs/``, ``dataset_0.json`` (training / validation / test lists).

    Args:
        root: output folder.
        num_training: cases in the "training" list.
        num_validation: labelled cases in the "validation" list.
        num_test: unlabelled test images.
        size: volume shape (X, Y, Z).
        spacing: voxel spacing (x, y, z) in mm.
        organs: 1 to 4 organs (liver, spleen, kidney, gallbladder).
        orientation: "LPS" (default, DICOM-like) or "RAS".
        seed: random seed.
        verbose: list every file.
    """
    written = make_btcv_like(root, num_training=num_training, num_validation=num_validation, num_test=num_test,
                             size=tuple(size), spacing=tuple(spacing), organs=organs, orientation=orientation,
                             seed=seed)
    _report(root, written, verbose)


if __name__ == "__main__":
    fire.Fire({"acdc": acdc, "isic": isic, "decathlon": decathlon, "btcv": btcv})
