"""Input image files: is this a file the bundles and the MONAI Label app read, and what is its shape.

Reading the whole file here names a corrupt, truncated or mislabelled image before anything runs (folder inference
checks every input first, docs/design.md §9; the app answers 422, §10).
"""

from __future__ import annotations

import os

import numpy as np

from prato_components.errors import InputError, UserError

__all__ = ["IMAGE_SUFFIXES", "MissingFileError", "UnreadableFileError", "read_image_header", "check_image_file"]

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".png", ".jpg", ".jpeg")


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the run needs does not exist (still a ``FileNotFoundError`` for callers that catch those)."""


class UnreadableFileError(UserError, RuntimeError):
    """A data file exists but cannot be read (still the ``RuntimeError`` the loading transforms raised before)."""


def read_image_header(path: str, name: str | None = None) -> tuple[tuple[int, ...], int]:
    """Read ``path`` whole as MONAI loads it (NIfTI: channels last in a 4D file; PNG/JPG: PIL ``(x, y)`` axes, one
    channel per band); its spatial shape and number of channels.

    Args:
        path: the image file.
        name: how the image is called in messages (e.g. the uploaded file name); default the base name of ``path``.

    Raises:
        InputError: an unsupported file type, or a file that cannot be read as its type (corrupt, truncated, another
            format under this name), with the reason.
    """
    name = name or os.path.basename(path)
    lower = path.lower()
    if not lower.endswith(IMAGE_SUFFIXES):
        raise InputError(
            f"image {name!r}: unsupported file type (send NIfTI .nii/.nii.gz or PNG/JPG; the type is taken from the "
            "file name ending)"
        )
    try:
        if lower.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            data = np.asarray(nib.load(path).dataobj)  # reads the whole file: a truncated one fails here
            if data.ndim < 2 or data.size == 0:
                raise ValueError(f"the image has shape {data.shape}")
            return tuple(int(s) for s in data.shape[:3]), int(data.shape[3]) if data.ndim > 3 else 1
        from PIL import Image

        with Image.open(path) as image:
            image.load()
            return tuple(image.size), len(image.getbands())  # MONAI's PIL reader: axis 0 = x (columns)
    except Exception as err:  # noqa: BLE001 - every reader error means "this file is not a readable image"
        kind = "NIfTI" if lower.endswith((".nii", ".nii.gz")) else "PNG/JPG"
        reason = str(err).replace(path, name)  # the client's name, not a server's temp path
        raise InputError(f"image {name!r} cannot be read as {kind}: {type(err).__name__}: {reason}") from err


def check_image_file(path: str, name: str | None = None) -> tuple[int, ...]:
    """The spatial shape of image ``path`` after reading it whole (:func:`read_image_header`)."""
    return read_image_header(path, name)[0]
