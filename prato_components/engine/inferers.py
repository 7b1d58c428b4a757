"""An inferer that passes box prompts to the network, for images or for the slices of a volume."""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.data import MetaTensor
from monai.inferers import Inferer

from prato_components.prompts.boxes import padding_boxes

__all__ = ["PromptedInferer", "boxes_for_slices"]


def boxes_for_slices(boxes: torch.Tensor | None, num_slices: int) -> torch.Tensor | None:
    """In-plane boxes of every slice along the last axis: ``[B, M, 2D+2]`` (or ``[B, M, 2D]``) -> ``[B*Z, M, 2D]``.

    A 3D box applies to the slices whose centre ``z + 0.5`` lies in ``[z_min, z_max)``; other slices get a
    padding row (for PrATo: no prompt, the whole slice). A 2D box applies to every slice.
    """
    if boxes is None:
        return None
    batch, rows, width = boxes.shape
    z = torch.arange(num_slices, device=boxes.device, dtype=boxes.dtype) + 0.5
    if width % 2 or width < 4:
        raise ValueError(f"boxes must have 2*D values, got {width}")
    if width == 4:
        return boxes[:, None].expand(batch, num_slices, rows, 4).reshape(batch * num_slices, rows, 4)
    dims = width // 2  # volume dims; the last axis is the slice axis
    inplane = torch.cat([boxes[..., : dims - 1], boxes[..., dims : 2 * dims - 1]], dim=-1)  # [B, M, 2(D-1)]
    inside = (boxes[:, None, :, dims - 1] <= z[None, :, None]) & (z[None, :, None] < boxes[:, None, :, 2 * dims - 1])
    pad = padding_boxes(1, dims - 1, like=inplane).to(inplane)
    per_slice = torch.where(inside[..., None], inplane[:, None], pad.view(1, 1, 1, -1))
    return per_slice.reshape(batch * num_slices, rows, 2 * (dims - 1))


class PromptedInferer(Inferer):
    """``network(image, boxes=boxes)`` for images with the network's dimensionality; a 2D network runs over
    the slices (last axis) of a volume in batches of ``slice_batch_size``, each slice with its in-plane box.

    Args:
        spatial_dims: the network's spatial dimensionality.
        slice_batch_size: slices per network call for volumes.
    """

    def __init__(self, spatial_dims: int = 2, slice_batch_size: int = 16) -> None:
        super().__init__()
        self.spatial_dims, self.slice_batch_size = spatial_dims, slice_batch_size

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args, boxes: torch.Tensor | None = None, **kwargs):
        if isinstance(boxes, MetaTensor):
            boxes = boxes.as_tensor()
        image_dims = inputs.ndim - 2
        if image_dims == self.spatial_dims:
            return network(inputs, *args, boxes=boxes, **kwargs)
        if image_dims != self.spatial_dims + 1:
            raise ValueError(
                f"a {self.spatial_dims}D network cannot segment an input of shape {tuple(inputs.shape)} "
                f"(expected [B, C, {self.spatial_dims} or {self.spatial_dims + 1} spatial dims])"
            )
        source = inputs if isinstance(inputs, MetaTensor) else None
        inputs = inputs.as_tensor() if source is not None else inputs
        batch, num_slices = inputs.shape[0], inputs.shape[-1]
        slices = inputs.movedim(-1, 1).reshape(batch * num_slices, *inputs.shape[1:-1])
        slice_boxes = boxes_for_slices(None if boxes is None else torch.as_tensor(boxes).float(), num_slices)
        outputs = []
        for start in range(0, slices.shape[0], self.slice_batch_size):
            part = slice(start, start + self.slice_batch_size)
            outputs.append(network(slices[part], *args, boxes=None if slice_boxes is None else slice_boxes[part], **kwargs))
        out = torch.cat(outputs)
        out = out.reshape(batch, num_slices, *out.shape[1:]).movedim(1, -1)
        if source is None:
            return out
        result = MetaTensor(out)
        result.copy_meta_from(source)
        return result
