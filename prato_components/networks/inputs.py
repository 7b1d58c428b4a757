"""Checks of the network call ``network(image, boxes=None)`` with errors that name the problem."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from prato_components.prompts.boxes import validate_boxes
from prato_components.tokens import tracing

__all__ = ["check_image", "check_network_boxes"]


SIZE_REMEDY = "resize/crop in preprocessing or use a sliding-window inferer"


def check_image(
    image: torch.Tensor, in_channels: int, spatial_shape: Sequence[int], size_remedy: str = SIZE_REMEDY
) -> None:
    """Raise ``ValueError`` unless ``image`` is ``[B, in_channels, *spatial_shape]`` and finite; ``size_remedy`` ends
    the message for a wrong spatial shape (what the caller can do about it)."""
    dims = len(spatial_shape)
    if image.ndim != dims + 2:
        raise ValueError(
            f"expected an image of shape [B, C, {', '.join('*' * dims)}] ({dims}D), got shape {tuple(image.shape)}"
        )
    if image.shape[1] != in_channels:
        raise ValueError(f"the network expects {in_channels} input channel(s), got {image.shape[1]}")
    if tuple(image.shape[2:]) != tuple(spatial_shape):
        raise ValueError(
            f"the network was built for images of spatial shape {tuple(spatial_shape)}, got {tuple(image.shape[2:])}; "
            + size_remedy
        )
    if tracing():  # value checks are data-dependent: compilers trace shapes only (the callers check eagerly)
        return
    if image.is_floating_point() and not bool(torch.isfinite(image).all()):
        raise ValueError("the image contains NaN or infinite values")


def check_network_boxes(boxes: torch.Tensor | None, batch: int, spatial_shape: Sequence[int]) -> torch.Tensor | None:
    """Validate box prompts for a batch and return them as ``[B, M, 2*D]`` float.

    ``boxes`` may be ``[B, 2*D]`` (one box per image) or ``[B, M, 2*D]``; rows with ``max < min`` on some axis
    are padding (no box) and are allowed. A real box must be finite, have a positive size on every axis and
    overlap the image ``[0, size]`` (:func:`~prato_components.prompts.validate_boxes` on all rows at once).
    """
    if boxes is None:
        return None
    dims = len(spatial_shape)
    boxes = torch.as_tensor(boxes)
    if boxes.ndim == 2:
        boxes = boxes.unsqueeze(1)
    if boxes.ndim != 3 or boxes.shape[0] != batch:
        raise ValueError(
            f"boxes must have shape [B={batch}, M, {2 * dims}] or [B, {2 * dims}], got {tuple(boxes.shape)}"
        )
    if boxes.shape[-1] != 2 * dims:
        raise ValueError(
            f"a box has {boxes.shape[-1]} values but the image has {dims} spatial dims (expected {2 * dims}: "
            "min corner then max corner)"
        )
    if tracing():  # the value checks below are data-dependent (see check_image)
        return boxes.float()
    flat = validate_boxes(
        boxes.reshape(-1, 2 * dims), spatial_shape, allow_padding=True, name="boxes (flattened [B*M, 2D])"
    )
    return flat.reshape(boxes.shape).to(boxes.device)
