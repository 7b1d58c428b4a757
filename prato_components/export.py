"""Export a box-prompted network with ``torch.export`` and load it back as a callable ``(image, boxes) -> logits``.

Why not TorchScript (``python -m monai.bundle ckpt_export``): ``torch.jit.script`` cannot compile the pruned
networks (dataclasses, closures, dicts of modules, keyword-only pruner interfaces), and ``torch.jit.trace`` in
torch 2.13 stops with an internal assertion on ``aten::scatter_`` / ``aten::full`` with a boolean fill value (used
to build keep masks); besides, tracing silently freezes every data-dependent Python branch of the example input,
and ``ckpt_export`` feeds the network a single random image, so the box input could not be traced at all.
``torch.export`` records the top-k selection and the gathers as graph operations (the kept count ``K`` is a
constant of the fixed input size, or a bounded run-time size where it depends on the data, as for Swin UNETR's
alive tokens and kept windows), fails loudly instead of freezing a branch, and
keeps the second input: the exported callable is ``module(image [B, C, H, W], boxes [B, M, 4])``, the batch size
dynamic where the network allows it.

The ``.pt2`` file carries the bundle's ``metadata.json`` and ``inference.json`` as extra files (as ``ckpt_export``
does for TorchScript).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn

__all__ = ["example_inputs", "export_network", "save_exported", "load_exported"]

logger = logging.getLogger(__name__)


def example_inputs(
    in_channels: int, spatial_shape: Sequence[int], batch: int = 1, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random image ``[batch, in_channels, *spatial_shape]`` in [0, 1] and one box per image ``[batch, 1, 2D]``
    covering a random part of the image (at least a quarter of each axis)."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, in_channels, *spatial_shape, generator=generator)
    size = torch.tensor([float(s) for s in spatial_shape])
    lo = torch.rand(batch, len(spatial_shape), generator=generator) * size * 0.5
    extent = (0.25 + 0.25 * torch.rand(batch, len(spatial_shape), generator=generator)) * size
    boxes = torch.cat([lo, torch.minimum(lo + extent, size)], dim=-1).floor()
    return image, boxes.unsqueeze(1)


def export_network(
    network: nn.Module, image: torch.Tensor, boxes: torch.Tensor, dynamic_batch: bool = True
) -> tuple[torch.export.ExportedProgram, bool]:
    """``torch.export`` of ``network(image, boxes)`` in eval mode.

    The network is called once eagerly first (pruners that cache eval-mode constants, e.g. the seeded draws of
    random masking, need it). With ``dynamic_batch`` the batch size is exported as a symbolic dimension; a network
    that cannot express that (a per-shape cache) is exported for the example batch size instead.

    Returns:
        the exported program and whether its batch size is dynamic.
    """
    network.eval()
    with torch.no_grad():
        network(image, boxes)
        if dynamic_batch:
            batch = torch.export.Dim("batch", min=1, max=4096)
            try:
                return torch.export.export(network, (image, boxes), dynamic_shapes=({0: batch}, {0: batch})), True
            except Exception as error:  # noqa: BLE001 - fall back to the static batch and say why
                logger.info("dynamic batch export failed (%s); exporting for batch %d", error, image.shape[0])
        return torch.export.export(network, (image, boxes)), False


def save_exported(
    program: torch.export.ExportedProgram, path: str, extra_files: Mapping[str, str] | None = None
) -> str:
    """``torch.export.save`` to ``path`` (``.pt2``) with text ``extra_files`` (e.g. the bundle configs)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.export.save(program, path, extra_files=dict(extra_files or {}))
    return path


def load_exported(path: str, extra_files: Sequence[str] = ("metadata.json",)) -> tuple[nn.Module, dict]:
    """Load a ``.pt2`` written by :func:`save_exported`: the callable ``module(image, boxes)`` and the requested
    extra files (JSON ones parsed)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"exported network {path} does not exist")
    files = dict.fromkeys(extra_files, "")
    program = torch.export.load(path, extra_files=files)
    parsed = {}
    for name, text in files.items():
        parsed[name] = json.loads(text) if name.endswith(".json") and text else text
    return program.module(), parsed
