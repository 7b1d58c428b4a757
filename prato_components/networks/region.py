"""Prompt-restricted decoding: run a backbone's convolutional paths only over the prompt boxes' region.

With a box prompt the answer outside the box is background, so the decoder (and every convolutional path that
feeds it) need not run there. :func:`decode_window` turns a batch's boxes into one window per image: the union of
its real boxes plus ``margin`` voxels, snapped outwards to the backbone's coarsest stride (``align``) so every
feature map of the decoder is cut at whole cells, and grown to one common size so the decoder runs batched.
:func:`run_decoder` runs a backbone's decoder over the windows and pastes the logits into a full-size output that
says background outside; images without a real box (only padding rows) are decoded whole, in a second batched
call. See docs/design.md §6.1 for when the logits inside the box equal the full network's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import math

import torch

from prato_components.tokens import tracing

__all__ = [
    "DECODE_REGIONS", "BACKGROUND_LOGIT_GAP", "DecodeWindow", "decode_window", "RegionDecodingMixin", "run_decoder",
    "background_logits",
]

DECODE_REGIONS = ("full", "box")
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


class RegionDecodingMixin:
    """The ``decode_region`` / ``decode_margin`` options of a backbone (docs/design.md §6.1)."""

    decode_region: str = "full"
    decode_margin: int = 16
    last_decode_window: DecodeWindow | None = None
    planned_window: DecodeWindow | None = None
    decode_geometry: tuple[tuple[int, ...], int | tuple[int, ...]] | None = None

    def _setup_decoding(self, decode_region: str, decode_margin: int) -> None:
        if decode_region not in DECODE_REGIONS:
            raise ValueError(f"unknown decode_region {decode_region!r}; choose one of {DECODE_REGIONS}")
        if int(decode_margin) < 0:
            raise ValueError(f"decode_margin must be >= 0 voxels, got {decode_margin}")
        self.decode_region, self.decode_margin = decode_region, int(decode_margin)
        self.last_decode_window = None

    def _decode_window(
        self, boxes: torch.Tensor | None, image_size: Sequence[int], align: int | Sequence[int]
    ) -> DecodeWindow | None:
        """This forward pass's window (``None``: decode the whole image); kept in :attr:`last_decode_window`.
        While a compiler traces, the window is :attr:`planned_window` (:meth:`plan_decoding`, eager)."""
        if tracing():
            return self.planned_window if self.decode_region == "box" else None
        window = None
        if self.decode_region == "box":
            self.decode_geometry = (tuple(int(s) for s in image_size), align)
            window = decode_window(boxes, image_size, align, self.decode_margin)
        self.last_decode_window = window
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
