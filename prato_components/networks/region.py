"""Prompt-restricted decoding: run a backbone's convolutional paths only over the prompt boxes' region.

With a box prompt the answer outside the box is background, so the decoder (and every convolutional path that
feeds it) need not run there. :func:`decode_window` turns a batch's boxes into one window per image: the union of
its real boxes plus ``margin`` voxels, snapped outwards to the backbone's coarsest stride (``align``) so every
feature map of the decoder is cut at whole cells, and grown to one common size so the decoder runs batched.
:func:`run_decoder` runs a backbone's decoder over the windows and pastes the logits into a full-size output that
says background outside; images without a real box (only padding rows) are decoded whole, in a second batched
call. See docs/design.md §6.1 for when the logits inside the box equal the full network's.

``decode_region="guided"`` adds a coarse pass: a light head (:class:`CoarseHead`, a 1x1 convolution on a detached
encoder map, trained with its own loss) gives every position cheap logits, and where they find foreground outside
the box window, its bounding box joins the prompt boxes (:func:`coarse_boxes`), so a wrong box does not erase the
structure; where they find none, the window is exactly the box window.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
from monai.networks.layers import Conv

from prato_components.networks.vit_pruning import own_random_stream
from prato_components.tokens import tracing

__all__ = [
    "DECODE_REGIONS", "BACKGROUND_LOGIT_GAP", "DecodeWindow", "decode_window", "RegionDecodingMixin", "run_decoder",
    "background_logits", "CoarseHead", "coarse_boxes", "coarse_foreground",
]

DECODE_REGIONS = ("full", "box", "guided")
BACKGROUND_LOGIT_GAP = 20.0  # outside the window: background logit 0, every other class -20 (softmax 1 - 2e-9)


@dataclass(frozen=True)
class DecodeWindow:
    """Where a batch is decoded: the batch indices decoded in a window (``images``), each window's first voxel
    (``starts``, multiples of the alignment), their common ``size``, and the images decoded whole (``whole``: no
    real box, or a window that would cover the image), on images of ``image_size`` (network-input voxels)."""

    images: tuple[int, ...]
    starts: tuple[tuple[int, ...], ...]
    size: tuple[int, ...]
    image_size: tuple[int, ...]
    whole: tuple[int, ...] = ()

    def crop(self, x: torch.Tensor, stride: int | Sequence[int] = 1) -> torch.Tensor:
        """The windows of the windowed images cut out of a channel-first batch map ``[B, C, *image_size / stride]``
        (``stride`` divides the alignment): ``[len(images), C, *size / stride]``."""
        strides = _per_axis(stride, len(self.size))
        size = [s // st for s, st in zip(self.size, strides)]
        pieces = []
        for index, start in zip(self.images, self.starts):
            piece = x[index : index + 1]
            for axis, (s, st, n) in enumerate(zip(start, strides, size)):
                piece = piece.narrow(axis + 2, s // st, n)
            pieces.append(piece)
        return torch.cat(pieces)

    def paste(self, logits: torch.Tensor, batch: int) -> torch.Tensor:
        """The full-size logits of a batch of ``batch`` images: the windowed images' ``logits`` in place, background
        everywhere else (:data:`BACKGROUND_LOGIT_GAP`), including the images decoded whole (filled by the caller)."""
        out = background_logits(batch, logits.shape[1], self.image_size, logits)
        for row, (index, start) in enumerate(zip(self.images, self.starts)):
            target = out[index : index + 1]
            for axis, (s, n) in enumerate(zip(start, self.size)):
                target = target.narrow(axis + 2, s, n)
            target.copy_(logits[row : row + 1])
        return out

    @property
    def fraction(self) -> float:
        """The decoded share of the batch's voxels."""
        windowed = math.prod(self.size) * len(self.images)
        return (windowed + math.prod(self.image_size) * len(self.whole)) / (
            math.prod(self.image_size) * (len(self.images) + len(self.whole)))


def background_logits(batch: int, channels: int, image_size: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """Logits that say background everywhere: class 0 at 0, the others at ``-BACKGROUND_LOGIT_GAP`` (a single
    channel, i.e. sigmoid output, at ``-BACKGROUND_LOGIT_GAP``)."""
    fill = torch.full((channels,), -BACKGROUND_LOGIT_GAP, dtype=like.dtype, device=like.device)
    if channels > 1:
        fill[0] = 0.0
    return fill.view(1, channels, *([1] * len(image_size))).expand(batch, channels, *image_size).contiguous()


def _per_axis(value: int | Sequence[int], dims: int) -> tuple[int, ...]:
    return tuple(int(v) for v in value) if isinstance(value, Sequence) else (int(value),) * dims


def decode_window(
    boxes: torch.Tensor | None, image_size: Sequence[int], align: int | Sequence[int], margin: int | Sequence[int]
) -> DecodeWindow | None:
    """The batch's decoding windows from checked boxes ``[B, M, 2D]`` (padding rows allowed), or ``None`` when every
    image is decoded whole (no boxes, while exporting, or no image with a window smaller than the image).

    An image's window is the union of its real boxes widened by ``margin`` voxels per side, clipped to the image and
    snapped outwards to multiples of ``align``. An image without a real box, or whose window covers the image, is
    decoded whole. The windowed images share the largest window size, and a window that would then leave the
    image is shifted back inside (its boxes stay covered). ``image_size`` must be a multiple of ``align``.
    """
    if boxes is None or tracing():  # data-dependent shapes: compiled programs decode the window planned eagerly
        return None
    dims = len(image_size)
    aligns, margins = _per_axis(align, dims), _per_axis(margin, dims)
    if any(s % a for s, a in zip(image_size, aligns)):
        raise ValueError(f"image size {tuple(image_size)} must be a multiple of the decoder alignment {aligns}")
    lo, hi = boxes[..., :dims].detach().float(), boxes[..., dims:].detach().float()
    real = (hi >= lo).all(-1)  # [B, M]; padding rows have max < min
    inf = torch.tensor(float("inf"), device=boxes.device)
    lo = torch.where(real[..., None], lo, inf).amin(1).cpu()  # [B, D]
    hi = torch.where(real[..., None], hi, -inf).amax(1).cpu()
    size_t = torch.tensor(image_size, dtype=torch.float32)
    align_t = torch.tensor(aligns, dtype=torch.float32)
    margin_t = torch.tensor(margins, dtype=torch.float32)
    lo = ((lo - margin_t).clamp(min=0) / align_t).floor() * align_t
    hi = torch.minimum(((hi + margin_t) / align_t).ceil() * align_t, size_t)
    windowed = real.any(-1).cpu() & ((hi - lo) < size_t).any(-1)  # [B]
    if not bool(windowed.any()):
        return None
    size = (hi - lo)[windowed].amax(0)  # [D], multiples of align
    if bool((size >= size_t).all()):
        return None
    starts = torch.minimum(lo[windowed], size_t - size)  # stays a multiple of align: image and window sizes are
    return DecodeWindow(
        images=tuple(int(i) for i in windowed.nonzero()[:, 0].tolist()),
        starts=tuple(tuple(int(v) for v in row) for row in starts.tolist()),
        size=tuple(int(v) for v in size.tolist()),
        image_size=tuple(int(s) for s in image_size),
        whole=tuple(int(i) for i in (~windowed).nonzero()[:, 0].tolist()),
    )


class CoarseHead(nn.Module):
    """Cheap logits at every position of an encoder map: a 1x1 convolution from ``in_channels`` to ``out_channels``
    on the *detached* map, so its own loss trains it and nothing else (the rest of the network trains as without
    it)."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int) -> None:
        super().__init__()
        self.conv = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv(features.detach())


def coarse_foreground(coarse: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """The cells of coarse logits ``[B, C, *grid]`` whose foreground probability (1 - softmax of class 0, or the
    sigmoid of a single channel) reaches ``threshold``: bool ``[B, *grid]``."""
    if coarse.shape[1] > 1:
        return 1 - coarse.softmax(1)[:, 0] >= threshold
    return coarse[:, 0].sigmoid() >= threshold


def coarse_boxes(coarse: torch.Tensor, window: DecodeWindow, threshold: float = 0.5) -> torch.Tensor:
    """One box per image ``[B, 1, 2D]`` (network-input voxels) around the coarse foreground cells of ``coarse``
    (logits ``[B, C, *grid]``, :func:`coarse_foreground` at ``threshold``) that lie outside the image's window;
    a padding row (max < min) where there are none. Images that ``window`` decodes whole get padding rows."""
    dims = len(window.image_size)
    found = coarse_foreground(coarse, threshold)  # [B, *grid]
    grid = found.shape[1:]
    strides = [s / g for s, g in zip(window.image_size, grid)]
    outside = torch.zeros_like(found)
    for index, start in zip(window.images, window.starts):
        inside = torch.zeros(grid, dtype=torch.bool, device=found.device)
        cells = tuple(slice(int(s // st), math.ceil((s + n) / st)) for s, n, st in zip(start, window.size, strides))
        inside[cells] = True
        outside[index] = found[index] & ~inside
    lo, hi = [], []
    for axis in range(dims):
        line = outside.any(dim=[d + 1 for d in range(dims) if d != axis])  # [B, cells along the axis]
        cells = torch.arange(grid[axis], device=found.device)
        first = torch.where(line, cells, grid[axis]).amin(1)
        last = torch.where(line, cells, -1).amax(1)
        lo.append(first * strides[axis])
        hi.append((last + 1) * strides[axis])  # no cell: first * stride = image size > 0 = hi, a padding row
    return torch.stack(lo + hi, -1).to(coarse.dtype)[:, None]


def _with_found(boxes: torch.Tensor, coarse: torch.Tensor, region: DecodeWindow | None,
                threshold: float) -> torch.Tensor | None:
    """``boxes`` plus one row per image around the coarse foreground outside ``region`` (:func:`coarse_boxes`);
    ``None`` when there is none (or no region: the boxes cover the images)."""
    if region is None:
        return None
    extra, dims = coarse_boxes(coarse, region, threshold), len(region.image_size)
    if not bool((extra[..., dims:] >= extra[..., :dims]).all(-1).any()):
        return None
    return torch.cat([boxes, extra.to(boxes)], 1)


class RegionDecodingMixin:
    """The ``decode_region`` / ``decode_margin`` options of a backbone and its optional coarse head
    (docs/design.md §6.1)."""

    decode_region: str = "full"
    decode_margin: int = 16
    last_decode_window: DecodeWindow | None = None
    #: the coarse logits of the last forward pass (``None`` without a coarse head), for the loss and the window
    coarse_logits: torch.Tensor | None = None
    #: the foreground probability from which a coarse cell counts as foreground (:func:`coarse_foreground`)
    coarse_threshold: float = 0.4
    planned_window: DecodeWindow | None = None
    decode_geometry: tuple[tuple[int, ...], int | tuple[int, ...]] | None = None

    def _setup_decoding(self, decode_region: str, decode_margin: int, coarse_threshold: float = 0.4) -> None:
        if decode_region not in DECODE_REGIONS:
            raise ValueError(f"unknown decode_region {decode_region!r}; choose one of {DECODE_REGIONS}")
        if int(decode_margin) < 0:
            raise ValueError(f"decode_margin must be >= 0 voxels, got {decode_margin}")
        if not 0.0 < float(coarse_threshold) < 1.0:
            raise ValueError(f"coarse_threshold must be a probability strictly between 0 and 1, got {coarse_threshold}")
        self.decode_region, self.decode_margin = decode_region, int(decode_margin)
        self.coarse_threshold = float(coarse_threshold)
        self.last_decode_window = None

    def _setup_coarse_head(self, enabled: bool, in_channels: int, out_channels: int, spatial_dims: int) -> None:
        """Build the coarse head (on its own random stream, so the other weights stay those of a network without
        it) when ``enabled``; ``decode_region="guided"`` needs one."""
        self.coarse_head = None
        if enabled:
            with own_random_stream():
                self.coarse_head = CoarseHead(in_channels, out_channels, spatial_dims)
        elif self.decode_region == "guided":
            raise ValueError("decode_region 'guided' needs the coarse head: build the network with coarse_head=True")
        self.coarse_logits = None

    def _coarse_pass(self, features: torch.Tensor, boxes: torch.Tensor | None = None,
                     image_size: Sequence[int] | None = None, align: int | Sequence[int] | None = None) -> None:
        """The coarse head's logits on the channel-first encoder map ``features`` (kept in :attr:`coarse_logits`)
        and, decoding ``"guided"`` in eval mode with ``boxes``, the box around the coarse foreground outside the box
        window of images of ``image_size`` (decoder alignment ``align``; ``None``: no window): it joins the boxes
        of the decoding window and, when the coarse pass runs before a pruned stage, of the pruners."""
        head = getattr(self, "coarse_head", None)
        self.coarse_logits = None if head is None else head(features)
        self._guide_boxes = self._guide_window = None
        if self.decode_region != "guided" or self.training or boxes is None or align is None or tracing():
            return  # traced: the whole image is decoded (:meth:`_decode_window`)
        if self.coarse_logits is None:
            raise ValueError("decode_region 'guided' needs the coarse head: build the network with coarse_head=True")
        # the pruners: the foreground that no box overlaps; the decoder: the foreground outside the box window
        found = self.coarse_logits, self.coarse_threshold
        self._guide_boxes = _with_found(boxes, found[0], decode_window(boxes, image_size, 1, 0), found[1])
        self._guide_window = _with_found(boxes, found[0], decode_window(boxes, image_size, align, self.decode_margin),
                                         found[1])

    def _with_coarse_in_graph(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits``, unchanged in value, joined to the coarse head's logits while training: the head then sits in
        the output's graph, as ``DistributedDataParallel(find_unused_parameters=True)`` needs (a parameter it finds
        unused at the end of forward must not receive a gradient from the loss's coarse term as well)."""
        coarse = getattr(self, "coarse_logits", None)
        if not self.training or coarse is None or not coarse.requires_grad:
            return logits
        return logits + 0.0 * coarse.sum()

    def _pruning_boxes(self, boxes: torch.Tensor | None) -> torch.Tensor | None:
        """The boxes a pruned stage of this forward pass gets: the prompt and, once a guided coarse pass found
        foreground outside it, that too."""
        guided = getattr(self, "_guide_boxes", None)
        return boxes if guided is None else guided

    def finds_foreground(self, x: torch.Tensor) -> torch.Tensor:
        """Whether the coarse pass finds foreground anywhere in each image of ``x`` (bool ``[B]``), without the
        decoder: the encoder (no prompt) and the coarse head; for the prompt-aware sliding window."""
        if getattr(self, "coarse_head", None) is None:
            raise ValueError("finds_foreground needs the coarse head: build the network with coarse_head=True")
        return coarse_foreground(self._coarse_map(x), self.coarse_threshold).flatten(1).any(1)

    def _coarse_map(self, x: torch.Tensor) -> torch.Tensor:
        """The coarse head's logits on ``x`` without decoding (a backbone that offers :meth:`finds_foreground`)."""
        raise NotImplementedError(f"{type(self).__name__} has no coarse pass without its decoder")

    def _decode_window(
        self, boxes: torch.Tensor | None, image_size: Sequence[int], align: int | Sequence[int]
    ) -> DecodeWindow | None:
        """This forward pass's window (``None``: decode the whole image); kept in :attr:`last_decode_window`.
        ``"guided"`` widens the box window to the coarse foreground outside it (:meth:`_coarse_pass`), except while
        training (the boxes are right there; the rest of the network then trains as with ``"box"``). While a compiler
        traces, the window is :attr:`planned_window` for ``"box"`` (:meth:`plan_decoding`, eager) and the whole image
        for ``"guided"`` (a compiled program's window cannot follow its coarse pass; the whole image keeps what the
        network finds outside a wrong box)."""
        if tracing():
            return self.planned_window if self.decode_region == "box" else None
        window = None
        if self.decode_region in ("box", "guided"):
            self.decode_geometry = (tuple(int(s) for s in image_size), align)
            guided = getattr(self, "_guide_window", None)
            window = decode_window(boxes if guided is None else guided, image_size, align, self.decode_margin)
        self.last_decode_window = window
        self._guide_boxes = self._guide_window = None  # this forward pass's only
        return window

    def plan_decoding(self, boxes: torch.Tensor | None) -> DecodeWindow | None:
        """Eagerly, before a compiled forward pass on checked ``boxes`` ``[B, M, 2D]``: the window it decodes, kept in
        :attr:`planned_window` (a compiled program reads it as a constant and is recompiled for a new window). Needs
        one eager forward pass first (it records the image size and decoder alignment, :attr:`decode_geometry`)."""
        window = None
        if self.decode_region == "box" and self.decode_geometry is not None:
            window = decode_window(boxes, *self.decode_geometry, self.decode_margin)
        self.planned_window = self.last_decode_window = window
        return window


def run_decoder(
    window: DecodeWindow | None,
    decoder: Callable[..., torch.Tensor],
    maps: Sequence[torch.Tensor],
    strides: Sequence[int | Sequence[int]],
) -> torch.Tensor:
    """``decoder(*maps)`` (channel-first maps of the whole batch at the given strides) over the whole images, or
    batched over the windows of ``window``'s windowed images and batched again over the images it decodes whole;
    the output says background outside the windows."""
    if window is None:
        return decoder(*maps)
    batch = maps[0].shape[0]
    out = window.paste(decoder(*(window.crop(m, s) for m, s in zip(maps, strides))), batch)
    if window.whole:
        whole = torch.tensor(window.whole, device=out.device)
        out = out.index_copy(0, whole, decoder(*(m.index_select(0, whole) for m in maps)))
    return out
