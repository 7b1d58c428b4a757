"""Export a box-prompted network with ``torch.export`` and load it back as a callable ``(image, boxes) -> logits``.

Why not TorchScript (``python -m monai.bundle ckpt_export``): ``torch.jit.script`` cannot compile the pruned
networks (dataclasses, closures, dicts of modules, keyword-only pruner interfaces), and ``torch.jit.trace`` in
torch 2.13 stops with an internal assertion on ``aten::scatter_`` / ``aten::full`` with a boolean fill value (used
to build keep masks); besides, tracing silently freezes every data-dependent Python branch of the example input,
and ``ckpt_export`` feeds the network a single random image, so the box input could not be traced at all.
``torch.export`` records the top-k selection and the gathers as graph operations (the kept count ``K`` is a
constant of the fixed input size, or a bounded run-time size where it depends on the data, as for Swin UNETR's
alive tokens and kept windows), fails loudly instead of freezing a branch, and
keeps the second input: the exported callable is ``module(image [B, C, H, W], boxes [B, M, 4])``.

Shapes: the number of boxes per image ``M`` is a dynamic dimension (``torch.export.Dim``, min 1). The example has two
boxes per image (one real box, one padding row): ``torch.export`` specializes dimensions of size 0 or 1, so an
example with one box would export a program that accepts exactly one. The batch size ``B`` is dynamic where the
network allows it. The spatial size is fixed at export (the ViT position embeddings and the kept-token counts
depend on it): another size needs a new export with that ``image_size``. A network that cannot take a dynamic
dimension is exported with that dimension fixed to the example's, and :func:`export_network` says which and why
(``tools/verify_bundles.py export`` records it in the ``export.json`` extra file).

:func:`load_exported` returns an :class:`ExportedNetwork`: it checks inputs before calling the program, with the
project's own checks (:func:`~prato_components.networks.inputs.check_image`,
:func:`~prato_components.networks.inputs.check_network_boxes`), so a wrong size, channel count, box shape, NaN or
a box outside the image raises a ``ValueError`` naming the problem instead of a ``torch.export`` guard failure.

The ``.pt2`` file carries the bundle's ``metadata.json`` and ``inference.json`` as extra files (as ``ckpt_export``
does for TorchScript).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
from monai.networks import trt_compiler
from monai.utils import optional_import

from prato_components.networks.inputs import check_image, check_network_boxes
from prato_components.prompts.boxes import padding_boxes

__all__ = [
    "MAX_DIM", "COMPILE_MODES", "COMPILE_CONFIG", "example_inputs", "export_network", "save_exported", "load_exported",
    "ExportedNetwork", "CompiledNetwork", "compiled_network", "aoti_path", "save_aoti_package",
]

logger = logging.getLogger(__name__)

MAX_DIM = 4096  # upper bound of the dynamic batch and box dimensions
COMPILE_MODES = (False, True, "inductor", "trt")  # the bundle key ``compile``: eager, torch.compile, TensorRT
# torch.compile settings of CompiledNetwork: Swin UNETR's later boundaries keep a share of the live parents, a count
# that depends on the data (an unbacked size, as under torch.export; every other keep count is a constant of the input
# size); each network instance, input size and decoding window is one more graph of the same forward code
COMPILE_CONFIG = {"capture_scalar_outputs": True, "capture_dynamic_output_shape_ops": True, "recompile_limit": 64}


def example_inputs(
    in_channels: int, spatial_shape: Sequence[int], batch: int = 1, seed: int = 0, num_boxes: int = 2,
    real_boxes: int | None = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random image ``[batch, in_channels, *spatial_shape]`` in [0, 1] and ``num_boxes`` boxes per image
    ``[batch, num_boxes, 2D]``: the first ``real_boxes`` (all when ``None``) cover a random part of the image (at
    least a quarter of each axis), the others are padding rows (no box).

    The default, one real box and one padding row, is the export example: two boxes per image, so that the box
    dimension can be exported as dynamic (``torch.export`` specializes dimensions of size 1)."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, in_channels, *spatial_shape, generator=generator)
    real = num_boxes if real_boxes is None else min(real_boxes, num_boxes)
    size = torch.tensor([float(s) for s in spatial_shape])
    lo = torch.rand(batch, real, len(spatial_shape), generator=generator) * size * 0.5
    extent = (0.25 + 0.25 * torch.rand(batch, real, len(spatial_shape), generator=generator)) * size
    boxes = torch.cat([lo, torch.minimum(lo + extent, size)], dim=-1).floor()
    pad = padding_boxes(num_boxes - real, len(spatial_shape)).expand(batch, -1, -1)
    return image, torch.cat([boxes, pad], dim=1)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:500]


def export_network(
    network: nn.Module, image: torch.Tensor, boxes: torch.Tensor, dynamic_batch: bool = True,
    dynamic_boxes: bool = True,
) -> tuple[torch.export.ExportedProgram, dict]:
    """``torch.export`` of ``network(image, boxes)`` in eval mode.

    The network is called once eagerly first (pruners that cache eval-mode constants, e.g. the seeded draws of
    random masking, need it). With ``dynamic_batch`` / ``dynamic_boxes`` the batch size (dim 0 of both inputs) /
    the boxes per image (dim 1 of ``boxes``, which needs an example with at least 2) are exported as symbolic
    dimensions. A network that cannot express one (e.g. a per-shape cache) is exported with it fixed to the
    example's: the combinations are tried in the order both, boxes only, batch only, neither.

    Returns:
        the exported program and ``{"dynamic_batch": bool, "dynamic_boxes": bool, "static_reasons": {dim: why}}``
        (``static_reasons``: the export error of each requested dynamic dimension that had to be fixed).
    """
    if dynamic_boxes and (boxes.ndim != 3 or boxes.shape[1] < 2):
        raise ValueError(
            f"a dynamic box count needs an example with at least 2 boxes per image ([B, M>=2, 2D]), got boxes of "
            f"shape {tuple(boxes.shape)} (torch.export specializes dimensions of size 1)"
        )
    network.eval()
    batch_dim = torch.export.Dim("batch", min=1, max=MAX_DIM)
    box_dim = torch.export.Dim("boxes", min=1, max=MAX_DIM)
    wanted = [(b, m) for b in ((True, False) if dynamic_batch else (False,))
              for m in ((True, False) if dynamic_boxes else (False,))]
    wanted.sort(key=lambda bm: (not bm[1], not bm[0]))  # boxes matter more than batch (batch 1 in a loop works)
    errors: dict[tuple[bool, bool], str] = {}
    with torch.no_grad():
        network(image, boxes)
        for dyn_batch, dyn_boxes in wanted:
            image_dims = {0: batch_dim} if dyn_batch else None
            box_dims = {**({0: batch_dim} if dyn_batch else {}), **({1: box_dim} if dyn_boxes else {})} or None
            try:
                if image_dims is None and box_dims is None:
                    program = torch.export.export(network, (image, boxes))
                else:
                    program = torch.export.export(network, (image, boxes), dynamic_shapes=(image_dims, box_dims))
            except Exception as error:  # noqa: BLE001 - fall back to a fixed dimension and say why
                errors[(dyn_batch, dyn_boxes)] = _first_line(error)
                logger.info("export with dynamic batch=%s, boxes=%s failed (%s)", dyn_batch, dyn_boxes,
                            errors[(dyn_batch, dyn_boxes)])
                continue
            reasons = {}
            if dynamic_batch and not dyn_batch:
                reasons["batch"] = errors.get((True, dyn_boxes), "")
            if dynamic_boxes and not dyn_boxes:
                reasons["boxes"] = errors.get((dyn_batch, True), errors.get((True, True), ""))
            for dim, why in reasons.items():
                size = image.shape[0] if dim == "batch" else boxes.shape[1]
                logger.warning("exported with a fixed %s dimension (%d): %s", dim, size, why)
            return program, {"dynamic_batch": dyn_batch, "dynamic_boxes": dyn_boxes, "static_reasons": reasons}
    raise RuntimeError(f"torch.export failed for every shape combination: {errors}")


def save_exported(
    program: torch.export.ExportedProgram, path: str, extra_files: Mapping[str, str] | None = None
) -> str:
    """``torch.export.save`` to ``path`` (``.pt2``) with text ``extra_files`` (e.g. the bundle configs)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.export.save(program, path, extra_files=dict(extra_files or {}))
    return path


def aoti_path(path: str) -> str:
    """Where the AOTInductor package of the program ``path`` (``name.pt2``) lies: ``name.aoti.pt2`` beside it."""
    return (path[: -len(".pt2")] if path.endswith(".pt2") else path) + ".aoti.pt2"


def save_aoti_package(program: torch.export.ExportedProgram, path: str) -> str:
    """Compile ``program`` ahead of time with AOTInductor (``torch._inductor.aoti_compile_and_package``: a shared
    library for this machine's CPU / GPU, no Python tracing at load) into :func:`aoti_path` of ``path``, written to a
    temporary file first so that an earlier package is never left half-written."""
    target = aoti_path(path)
    temporary = target[: -len(".pt2")] + ".tmp.pt2"
    torch._inductor.aoti_compile_and_package(program, package_path=temporary)
    os.replace(temporary, target)
    return target


def _input_dims(program: torch.export.ExportedProgram) -> list[list[tuple[int, int | None]]]:
    """Per user input of ``program``, per dimension, the accepted ``(min, max)`` (``min == max`` when fixed)."""
    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    out = []
    for name in program.graph_signature.user_inputs:
        dims = []
        for size in placeholders[name].meta["val"].shape:
            if isinstance(size, int):
                dims.append((size, size))
                continue
            bounds = program.range_constraints.get(size.node.expr)
            if bounds is None:
                dims.append((0, None))
                continue
            dims.append((int(bounds.lower), int(bounds.upper) if bounds.upper.is_finite else None))
        out.append(dims)
    return out


class ExportedNetwork(nn.Module):
    """An exported program as ``module(image [B, C, *spatial], boxes [B, M, 2D] or [B, 2D]) -> logits``.

    The inputs are checked first (:func:`~prato_components.networks.inputs.check_image` and
    :func:`~prato_components.networks.inputs.check_network_boxes`, the eager networks' own checks, plus the
    batch / box counts the program accepts): what the program cannot take raises a ``ValueError`` naming the
    problem. The image is cast to the exported dtype, the boxes to float.

    Attributes: ``in_channels``, ``spatial_shape`` (fixed at export), ``batch_range`` / ``boxes_range``
    (``(min, max)``; ``min == max`` when fixed at export).
    """

    def __init__(self, program: torch.export.ExportedProgram, runner=None) -> None:
        super().__init__()
        image_dims, box_dims = _input_dims(program)
        self.module_ = program.module() if runner is None else runner  # runner: an AOTInductor package's model
        self.in_channels = image_dims[1][0]
        self.spatial_shape = tuple(lo for lo, _ in image_dims[2:])
        self.batch_range, self.boxes_range = image_dims[0], box_dims[1]
        placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
        self.image_dtype = placeholders[program.graph_signature.user_inputs[0]].meta["val"].dtype

    def check_inputs(self, image: torch.Tensor, boxes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The validated ``(image, boxes [B, M, 2D])``; ``ValueError`` naming what this export cannot take."""
        size = "x".join(str(s) for s in dict.fromkeys(self.spatial_shape))  # 32, or 32x48 when not square
        check_image(
            torch.as_tensor(image), self.in_channels, self.spatial_shape,
            size_remedy=(f"this export was made at image_size {size} (the ViT position embeddings and the kept-token "
                         "counts are fixed at export): resize/crop the image to it, or re-export the bundle with that "
                         "`image_size` (python tools/verify_bundles.py export BUNDLE_DIR CHECKPOINT OUT.pt2 "
                         "--image_size N)"),
        )
        image = torch.as_tensor(image)
        if boxes is None:
            raise ValueError(
                f"the exported network needs boxes [B, M, {2 * len(self.spatial_shape)}]; for no prompt pass one "
                "padding row per image (min 0, max -1 on every axis, prato_components.prompts.padding_boxes)"
            )
        boxes = check_network_boxes(torch.as_tensor(boxes), image.shape[0], self.spatial_shape)
        for what, count, (lo, hi), why in (
            ("batch size", image.shape[0], self.batch_range, "split or pad the batch"),
            ("number of boxes per image", boxes.shape[1], self.boxes_range, "pad with padding rows or split the boxes"),
        ):
            if count < lo or (hi is not None and count > hi):
                accepted = f"exactly {lo}" if lo == hi else f"{lo} to {hi if hi is not None else 'any'}"
                fixed = " (fixed at export: see export.json)" if lo == hi else ""
                raise ValueError(f"this export takes a {what} of {accepted}{fixed}, got {count}; {why}")
        return image.to(self.image_dtype), boxes.float()

    def forward(self, image: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        image, boxes = self.check_inputs(image, boxes)
        return self.module_(image, boxes)


def load_exported(
    path: str, extra_files: Sequence[str] = ("metadata.json",), aoti: bool = False
) -> tuple[ExportedNetwork, dict]:
    """Load a ``.pt2`` written by :func:`save_exported`: the callable ``module(image, boxes)`` (an
    :class:`ExportedNetwork`, which checks its inputs) and the requested extra files (JSON ones parsed). ``aoti``:
    run the AOTInductor package beside it (:func:`save_aoti_package`) instead of the program, with the same checks."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"exported network {path} does not exist")
    if aoti and not os.path.isfile(aoti_path(path)):
        raise FileNotFoundError(f"AOTInductor package {aoti_path(path)} does not exist (export with aoti=True)")
    files = dict.fromkeys(extra_files, "")
    program = torch.export.load(path, extra_files=files)
    parsed = {}
    for name, text in files.items():
        parsed[name] = json.loads(text) if name.endswith(".json") and text else text
    return ExportedNetwork(program, torch._inductor.aoti_load_package(aoti_path(path)) if aoti else None), parsed


class CompiledNetwork(nn.Module):
    """``network(image, boxes=None)`` through ``torch.compile(fullgraph=True)`` (``backend`` a torch.compile backend,
    default ``"inductor"``) or TensorRT (``backend="trt"``, ``monai.networks.trt_compiler``, CUDA only), compiled on
    the first call and reused.

    The data-dependent input checks run here, eagerly (a compiled program skips them,
    :func:`~prato_components.tokens.tracing`); so does the choice of the box decoding window
    (``plan_decoding`` of the backbones, docs/design.md §6.1): a new window recompiles (windows snap to the decoder
    alignment, so there are few). The first call also runs ``network`` once eagerly (it records the decoding
    geometry and the random pruner's evaluation draws). The compile time is logged once. ``options`` go to
    ``torch.compile`` (inductor's, e.g. ``{"freezing": True}``; docs/benchmarks.md, "Compiled inference").
    """

    def __init__(self, network: nn.Module, backend: str = "inductor", trt_path: str | None = None,
                 options: dict | None = None) -> None:
        super().__init__()
        if backend == "trt" and not torch.cuda.is_available():
            raise RuntimeError("compile 'trt' needs a CUDA GPU (TensorRT); use compile true (torch.compile) on CPU")
        self.network, self.backend, self.trt_path = network, backend, trt_path
        self.options = dict(options) if options else None
        self.compile_seconds: float | None = None
        self._compiled = None

    def _compile(self, image: torch.Tensor, boxes: torch.Tensor | None) -> None:
        start = time.perf_counter()
        with torch.no_grad():
            self.network(image, boxes=boxes)
        if self.backend == "trt":
            self._compiled = _trt_compiled(self.network, self.trt_path)
        else:
            self._compiled = torch.compile(self.network, backend=self.backend, fullgraph=True, options=self.options)
        if hasattr(self.network, "plan_decoding"):
            self.network.plan_decoding(boxes)
        with torch._dynamo.config.patch(**COMPILE_CONFIG):
            self._compiled(image, boxes=boxes)
        self.compile_seconds = time.perf_counter() - start
        logger.info("compiled %s (%s) in %.1f s", type(self.network).__name__, self.backend, self.compile_seconds)

    def forward(self, image: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        image = torch.as_tensor(image)
        check_image(image, image.shape[1] if image.ndim > 1 else 0, image.shape[2:])  # NaN / inf
        boxes = check_network_boxes(boxes, image.shape[0], image.shape[2:])
        if self._compiled is None:
            self._compile(image, boxes)
        if hasattr(self.network, "plan_decoding"):
            self.network.plan_decoding(boxes)
        with torch._dynamo.config.patch(**COMPILE_CONFIG):
            return self._compiled(image, boxes=boxes)


def _trt_compiled(network: nn.Module, path: str | None):
    """``network`` with its forward run by TensorRT engines (``monai.networks.trt_compiler``, built on first call)."""
    if not optional_import("tensorrt")[1]:
        raise RuntimeError("compile 'trt' needs the tensorrt package (pip install tensorrt)")
    return trt_compiler(network, path or os.path.join(os.getcwd(), "trt_engines"), args={"method": "onnx"})


def compiled_network(network: nn.Module, compile: bool | str = False, trt_path: str | None = None) -> nn.Module:
    """The bundle key ``compile``: ``network`` itself (``False``), a :class:`CompiledNetwork` with ``torch.compile``
    (``True`` / ``"inductor"``) or TensorRT (``"trt"``)."""
    if compile not in COMPILE_MODES or isinstance(compile, int) and not isinstance(compile, bool):
        raise ValueError(f"compile must be one of {COMPILE_MODES}, got {compile!r}")
    if compile is False:
        return network
    return CompiledNetwork(network, "trt" if compile == "trt" else "inductor", trt_path)
