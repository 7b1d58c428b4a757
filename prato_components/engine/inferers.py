"""Inferers that pass box prompts (and clicks: ``points``, ``point_labels``, ``previous_mask``, ``prompt_class``) to
the network: whole images, the slices of a volume (:class:`PromptedInferer`) and sliding windows that skip the
windows no box touches (:class:`PromptedSlidingWindowInferer`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.data.utils import compute_importance_map, dense_patch_slices, get_valid_patch_size
from monai.inferers import Inferer
from monai.utils import BlendMode, PytorchPadMode, ensure_tuple_rep, fall_back_tuple, look_up_option

from prato_components.engine.distributed import unwrap
from prato_components.networks.region import background_logits
from prato_components.prompts.boxes import box_is_padding, clip_boxes, padding_boxes
from prato_components.prompts.points import FOREGROUND, PADDING, point_boxes, validate_prompt_class

__all__ = [
    "PromptedInferer", "PromptedSlidingWindowInferer", "WindowReport", "boxes_for_slices", "boxes_in_window",
    "points_for_slices", "points_in_window", "scan_interval", "windows_touching_boxes",
]


def _plain(value: Any) -> Any:
    """A MetaTensor as a plain tensor; anything else as is."""
    return value.as_tensor() if isinstance(value, MetaTensor) else value


def _clicks(points: Any, point_labels: Any, previous_mask: Any, prompt_class: Any = None, batch: int = 1) -> dict:
    """The network's click keywords that are given (a network without clicks is called as before); ``prompt_class``
    as ``[batch]`` (its values are the network's to check)."""
    given = {"points": _plain(points), "point_labels": _plain(point_labels), "previous_mask": _plain(previous_mask),
             "prompt_class": validate_prompt_class(_plain(prompt_class), batch, 0, check_values=False)}
    return {key: value for key, value in given.items() if value is not None}


def points_for_slices(points: torch.Tensor, point_labels: torch.Tensor,
                      num_slices: int) -> tuple[torch.Tensor, torch.Tensor]:
    """In-plane clicks of every slice along the last axis: ``[B, N, 3]``, ``[B, N]`` -> ``[B*Z, N, 2]``,
    ``[B*Z, N]``. A click belongs to the slice that holds it (``floor(z)``, the last slice for ``z = Z``); in the
    other slices it is padding (label -1)."""
    batch, count = point_labels.shape
    slice_of = points[..., -1].floor().clamp(0, num_slices - 1)  # [B, N]
    here = slice_of[:, None] == torch.arange(num_slices, device=points.device, dtype=points.dtype)[None, :, None]
    labels = torch.where(here, point_labels[:, None], torch.full_like(point_labels[:, None], PADDING))
    inplane = points[:, None, :, :-1].expand(batch, num_slices, count, points.shape[-1] - 1)
    return inplane.reshape(batch * num_slices, count, -1), labels.reshape(batch * num_slices, count)


def points_in_window(points: torch.Tensor, point_labels: torch.Tensor, start: torch.Tensor,
                     roi_size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Clicks ``[N, D]``, ``[N]`` in the coordinates of the window whose first voxel is ``start [D]``; a click outside
    the window is padding there (label -1, coordinates 0)."""
    shifted = points - start.to(points)
    inside = ((shifted >= 0) & (shifted <= torch.as_tensor(roi_size, dtype=points.dtype))).all(-1)
    labels = torch.where(inside, point_labels, torch.full_like(point_labels, PADDING))
    return torch.where(inside[:, None], shifted, torch.zeros_like(shifted)), labels


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
    the slices (last axis) of a volume in batches of ``slice_batch_size``, each slice with its in-plane box. Clicks
    (``points``, ``point_labels``, ``previous_mask``, ``prompt_class``) go to the network, a volume's to the slices
    that hold them (:func:`points_for_slices`).

    Args:
        spatial_dims: the network's spatial dimensionality.
        slice_batch_size: slices per network call for volumes.
    """

    def __init__(self, spatial_dims: int = 2, slice_batch_size: int = 16) -> None:
        super().__init__()
        self.spatial_dims, self.slice_batch_size = spatial_dims, slice_batch_size

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args, boxes: torch.Tensor | None = None,
                 points: torch.Tensor | None = None, point_labels: torch.Tensor | None = None,
                 previous_mask: torch.Tensor | None = None, prompt_class: torch.Tensor | None = None, **kwargs):
        boxes, clicks = _plain(boxes), _clicks(points, point_labels, previous_mask, prompt_class, inputs.shape[0])
        image_dims = inputs.ndim - 2
        if image_dims == self.spatial_dims:  # float32 logits under autocast, as MONAI's sliding window gives
            return network(inputs, *args, boxes=boxes, **clicks, **kwargs).to(inputs.dtype)
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
        if "points" in clicks and "point_labels" in clicks:
            clicks["points"], clicks["point_labels"] = points_for_slices(
                torch.as_tensor(clicks["points"]).float(), torch.as_tensor(clicks["point_labels"]), num_slices)
        if "previous_mask" in clicks:  # [B, 1, *spatial] or [B, *spatial] -> [B*Z, *in-plane]
            mask = clicks["previous_mask"].reshape(batch, *inputs.shape[2:])
            clicks["previous_mask"] = mask.movedim(-1, 1).reshape(batch * num_slices, *inputs.shape[2:-1])
        if "prompt_class" in clicks:
            clicks["prompt_class"] = clicks["prompt_class"].repeat_interleave(num_slices)
        outputs = []
        for start in range(0, slices.shape[0], self.slice_batch_size):
            part = slice(start, start + self.slice_batch_size)
            part_boxes = None if slice_boxes is None else slice_boxes[part]
            part_clicks = {key: value[part] for key, value in clicks.items()}
            outputs.append(network(slices[part], *args, boxes=part_boxes, **part_clicks, **kwargs))
        out = torch.cat(outputs).to(slices.dtype)
        out = out.reshape(batch, num_slices, *out.shape[1:]).movedim(1, -1)
        if source is None:
            return out
        result = MetaTensor(out)
        result.copy_meta_from(source)
        return result


@dataclass(frozen=True)
class WindowReport:
    """What the last call of :class:`PromptedSlidingWindowInferer` computed: ``windows`` per image (the sliding
    window grid) and, per image of the batch, how many of them ran the network (``computed``) and how many windows
    no box touches got the coarse scan of a guided network (``scanned``; those where it found foreground are among
    the computed)."""

    windows: int
    computed: tuple[int, ...]
    scanned: tuple[int, ...] = ()

    @property
    def total(self) -> int:
        """Windows of the whole batch."""
        return self.windows * len(self.computed)

    @property
    def num_computed(self) -> int:
        """Windows that ran the network, over the batch."""
        return sum(self.computed)

    @property
    def skipped(self) -> int:
        """Windows left as background, over the batch."""
        return self.total - self.num_computed


def scan_interval(image_size: Sequence[int], roi_size: Sequence[int], overlap: Sequence[float]) -> tuple[int, ...]:
    """Window step per axis, MONAI's rule (``sliding_window_inference``): ``int(roi * (1 - overlap))``, at least 1,
    and the whole axis when the window spans it."""
    return tuple(r if r == s else max(int(r * (1 - o)), 1) for s, r, o in zip(image_size, roi_size, overlap))


def windows_touching_boxes(
    starts: torch.Tensor, roi_size: Sequence[int], boxes: torch.Tensor | None, margin: float
) -> torch.Tensor:
    """Which windows (first voxels ``starts [W, D]``, size ``roi_size``) overlap a real box of ``boxes [M, 2D]``
    widened by ``margin`` voxels per side: bool ``[W]``. No box, or only padding rows: every window."""
    if boxes is None or not bool((~box_is_padding(boxes)).any()):
        return torch.ones(starts.shape[0], dtype=torch.bool)
    dims = starts.shape[1]
    real = boxes[~box_is_padding(boxes)]
    lo, hi = real[:, :dims] - margin, real[:, dims:] + margin  # [R, D]
    ends = starts + torch.as_tensor(roi_size, dtype=starts.dtype)
    overlaps = (starts[:, None] < hi[None]) & (ends[:, None] > lo[None])  # [W, R, D]
    return overlaps.all(-1).any(-1)


def boxes_in_window(boxes: torch.Tensor, start: torch.Tensor, roi_size: Sequence[int]) -> torch.Tensor:
    """Boxes ``[M, 2D]`` in the coordinates of the window whose first voxel is ``start [D]``, clipped to it; boxes
    that miss the window (and padding rows) are padding rows (``max < min``)."""
    pad = box_is_padding(boxes)
    shifted = torch.where(pad[:, None], boxes, boxes - torch.cat([start, start]).to(boxes))
    return clip_boxes(shifted, roi_size, empty_to_padding=True)


class PromptedSlidingWindowInferer(Inferer):
    """Sliding-window inference that computes only the windows a box prompt touches.

    The windows, their step (``overlap``), the padding of inputs smaller than ``roi_size`` and the blending
    (``mode`` ``"constant"`` or ``"gaussian"``, ``sigma_scale``) are MONAI's ``sliding_window_inference``'s
    (``dense_patch_slices``, ``compute_importance_map``). MONAI's inferer has no way to leave windows out or to give
    each window its own prompt, hence this class:

    - A window that does not overlap any real box of its image, widened by ``margin`` voxels per side, is not
      computed; the voxels that no computed window covers say background (``region.background_logits``: background
      logit 0, the other classes ``-BACKGROUND_LOGIT_GAP``).
    - Every computed window gets ``network(window, boxes=...)`` with the boxes ``[M, 2D]`` shifted to the window's
      coordinates and clipped to it; a box that misses the window becomes a padding row (docs/design.md §3), so a
      window reached only through the margin runs with no prompt (PrATo: the whole window).
    - A network that decodes ``"guided"`` (``decode_region``, docs/design.md §6.1) scans the windows no box touches
      with its coarse pass (:meth:`~prato_components.networks.region.RegionDecodingMixin.finds_foreground`: the
      encoder and the coarse head, no decoder) and computes those where it finds foreground, so a wrong box does
      not leave a structure as background.
    - Without boxes (``boxes=None``), or for an image whose rows are all padding, every window is computed (no
      prompt says nothing about where the target is). Boxes are clipped to the image first, so a box lying
      entirely outside it counts as padding.
    - Clicks (``points [B, N, D]``, ``point_labels [B, N]``, ``previous_mask``, ``prompt_class [B]``) reach every
      computed window in its coordinates (:func:`points_in_window`: a click outside it is padding there); the voxel
      under a foreground click counts as a box when choosing the windows of an image that has a box (docs/design.md
      §6.2).

    Computed windows are batched ``sw_batch_size`` at a time, across the images of the batch. After each call
    :attr:`last_report` (a :class:`WindowReport`) says how many windows were computed and skipped, and
    :attr:`network_reports` holds the network's ``(token_report, block_report)`` of every window batch (a pruned
    network overwrites them on each call; ``TokenSparsityHandler(inferer=...)`` reads them all).

    Args:
        roi_size: window size (non-positive components: the image size on that axis, as in MONAI).
        sw_batch_size: windows per network call.
        overlap: overlap of neighbouring windows per axis, in ``[0, 1)``.
        mode: blending of overlapping windows, ``"constant"`` or ``"gaussian"``.
        sigma_scale: Gaussian sigma as a fraction of the window size (``mode="gaussian"``).
        padding_mode: ``torch.nn.functional.pad`` mode for inputs smaller than ``roi_size``.
        cval: padding value for ``padding_mode="constant"``.
        margin: voxels around the boxes whose windows are computed too (context for the box border).
        sw_device: device the windows run on (default: the input's).
        device: device of the blended output (default: the input's).
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        sw_batch_size: int = 1,
        overlap: Sequence[float] | float = 0.25,
        mode: BlendMode | str = BlendMode.CONSTANT,
        sigma_scale: Sequence[float] | float = 0.125,
        padding_mode: PytorchPadMode | str = PytorchPadMode.CONSTANT,
        cval: float = 0.0,
        margin: int = 16,
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if int(sw_batch_size) < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
        if int(margin) < 0:
            raise ValueError(f"margin must be >= 0 voxels, got {margin}")
        self.roi_size, self.sw_batch_size, self.overlap = roi_size, int(sw_batch_size), overlap
        self.mode, self.sigma_scale = look_up_option(mode, BlendMode), sigma_scale
        self.padding_mode, self.cval = look_up_option(padding_mode, PytorchPadMode), cval
        self.margin, self.sw_device, self.device = int(margin), sw_device, device
        self.last_report: WindowReport | None = None
        self.network_reports: list[tuple[list, list]] = []

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any,
                 boxes: torch.Tensor | None = None, points: torch.Tensor | None = None,
                 point_labels: torch.Tensor | None = None, previous_mask: torch.Tensor | None = None,
                 prompt_class: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """Blended logits ``[B, C, *spatial]`` of ``network`` over ``inputs [B, C_in, *spatial]`` with box prompts
        ``boxes [B, M, 2D]`` or ``[B, 2D]`` (voxels of ``inputs``) or ``None``, and clicks, if any."""
        source = inputs if isinstance(inputs, MetaTensor) else None
        inputs = inputs.as_tensor() if source is not None else inputs
        batch, dims, image_size = inputs.shape[0], inputs.ndim - 2, tuple(inputs.shape[2:])
        roi = tuple(int(r) for r in fall_back_tuple(self.roi_size, image_size))
        overlap = ensure_tuple_rep(self.overlap, dims)
        if len(roi) != dims or any(not 0 <= o < 1 for o in overlap):
            raise ValueError(f"roi_size {self.roi_size} / overlap {self.overlap} do not fit an input of shape "
                             f"{tuple(inputs.shape)} (overlap must be in [0, 1))")
        device, sw_device = self.device or inputs.device, self.sw_device or inputs.device
        # pad inputs smaller than the window, as MONAI does (half before, the rest after)
        padded = tuple(max(s, r) for s, r in zip(image_size, roi))
        before = [(p - s) // 2 for p, s in zip(padded, image_size)]
        if padded != image_size:
            after = [p - s - b for p, s, b in zip(padded, image_size, before)]
            pads = [v for axis in reversed(range(dims)) for v in (before[axis], after[axis])]
            inputs = F.pad(inputs, pads, mode=self.padding_mode, value=self.cval)
        boxes = self._image_boxes(boxes, batch, dims, image_size, before)
        clicks = _clicks(points, point_labels, previous_mask, prompt_class, batch)
        if "points" in clicks and "point_labels" in clicks:
            offset = torch.tensor(before, dtype=torch.float32)
            clicks["points"] = torch.as_tensor(clicks["points"]).detach().float().cpu() + offset
            clicks["point_labels"] = torch.as_tensor(clicks["point_labels"]).detach().cpu()
        if "previous_mask" in clicks:
            mask = clicks["previous_mask"].reshape(batch, 1, *image_size)
            clicks["previous_mask"] = F.pad(mask, [v for b, p, s in zip(reversed(before), reversed(padded),
                                                                         reversed(image_size)) for v in (b, p - s - b)])
        choosing = self._choosing_boxes(boxes, clicks, padded)

        slices = dense_patch_slices(padded, roi, scan_interval(padded, roi, overlap))
        starts = torch.tensor([[s.start for s in window] for window in slices], dtype=torch.float32)
        chosen = [windows_touching_boxes(starts, roi, None if choosing is None else choosing[b], self.margin)
                  for b in range(batch)]
        scanned = self._coarse_scan(inputs, slices, chosen, network, sw_device)
        jobs = [(b, w) for b in range(batch) for w in chosen[b].nonzero()[:, 0].tolist()]
        self.last_report = WindowReport(len(slices), tuple(int(c.sum()) for c in chosen), scanned)
        self.network_reports = []

        importance = compute_importance_map(get_valid_patch_size(padded, roi), mode=self.mode,
                                            sigma_scale=self.sigma_scale, device=sw_device, dtype=inputs.dtype)
        importance = importance[None, None]
        importance_out = importance.to(device)  # what each computed window adds to the count, on the output device
        out = count = None
        for first in range(0, len(jobs), self.sw_batch_size):
            part = jobs[first : first + self.sw_batch_size]
            window = torch.cat([inputs[(slice(b, b + 1), slice(None), *slices[w])] for b, w in part]).to(sw_device)
            window_boxes = None if boxes is None else torch.stack(
                [boxes_in_window(boxes[b], starts[w], roi) for b, w in part]).to(sw_device)
            logits = network(window, *args, boxes=window_boxes, **self._window_clicks(clicks, part, slices, starts, roi,
                                                                                      sw_device), **kwargs)
            self._keep_network_reports(network)
            if isinstance(logits, MetaTensor):
                logits = logits.as_tensor()
            if tuple(logits.shape[2:]) != roi:
                raise ValueError(f"the network returned windows of shape {tuple(logits.shape)}; the prompted sliding "
                                 f"window needs outputs of the window's spatial size {roi}")
            if out is None:
                out = torch.zeros(batch, logits.shape[1], *padded, dtype=inputs.dtype, device=device)
                count = torch.zeros(batch, 1, *padded, dtype=inputs.dtype, device=device)
            weighted = (logits * importance).to(device)
            for row, (b, w) in enumerate(part):
                index = (slice(b, b + 1), slice(None), *slices[w])
                out[index] += weighted[row : row + 1]
                count[index] += importance_out
        covered = count > 0
        result = torch.where(covered, out / torch.where(covered, count, torch.ones_like(count)),
                             background_logits(batch, out.shape[1], padded, out))
        if padded != image_size:
            result = result[(slice(None), slice(None), *(slice(b, b + s) for b, s in zip(before, image_size)))]
        if source is None:
            return result
        meta = MetaTensor(result)
        meta.copy_meta_from(source)
        return meta

    def _coarse_scan(self, inputs: torch.Tensor, slices: Sequence, chosen: list[torch.Tensor],
                     network: Callable[..., torch.Tensor], sw_device: torch.device | str) -> tuple[int, ...]:
        """For a network that decodes ``"guided"``: mark (in ``chosen``, in place) the windows no box touches where
        its coarse pass finds foreground; returns the windows scanned per image (none for other networks)."""
        module = unwrap(network) if isinstance(network, nn.Module) else network
        if getattr(module, "decode_region", None) != "guided":
            return ()
        jobs = [(b, w) for b, c in enumerate(chosen) for w in (~c).nonzero()[:, 0].tolist()]
        for first in range(0, len(jobs), self.sw_batch_size):
            part = jobs[first : first + self.sw_batch_size]
            window = torch.cat([inputs[(slice(b, b + 1), slice(None), *slices[w])] for b, w in part]).to(sw_device)
            for (b, w), found in zip(part, module.finds_foreground(window).tolist()):
                chosen[b][w] = found
        return tuple(sum(1 for b, _ in jobs if b == image) for image in range(len(chosen)))

    def _keep_network_reports(self, network: Callable[..., torch.Tensor]) -> None:
        """Keep the token reports of the window batch just computed (networks without them: nothing)."""
        module = unwrap(network) if isinstance(network, nn.Module) else network
        if hasattr(module, "token_report") or hasattr(module, "block_report"):
            self.network_reports.append((list(getattr(module, "token_report", None) or []),
                                         list(getattr(module, "block_report", None) or [])))

    @staticmethod
    def _choosing_boxes(boxes: torch.Tensor | None, clicks: dict, image_size: Sequence[int]) -> torch.Tensor | None:
        """The boxes that choose the windows: ``boxes`` and, in an image that has a box, the voxel under each
        foreground click."""
        if boxes is None or "points" not in clicks:
            return boxes
        extra = point_boxes(clicks["points"], clicks["point_labels"], image_size, FOREGROUND)
        has_box = (~box_is_padding(boxes)).any(1)
        return torch.cat([boxes, torch.where(has_box[:, None, None], extra, padding_boxes(1, len(image_size),
                                                                                          like=extra))], 1)

    @staticmethod
    def _window_clicks(clicks: dict, part: Sequence[tuple[int, int]], slices: Sequence, starts: torch.Tensor,
                       roi: Sequence[int], device: torch.device | str) -> dict:
        """The click keywords of a batch of windows ``part`` (``(image, window)`` pairs), in window coordinates."""
        out = {}
        if "points" in clicks and "point_labels" in clicks:
            moved = [points_in_window(clicks["points"][b], clicks["point_labels"][b], starts[w], roi) for b, w in part]
            out["points"] = torch.stack([p for p, _ in moved]).to(device)
            out["point_labels"] = torch.stack([labels for _, labels in moved]).to(device)
        if "previous_mask" in clicks:
            mask = clicks["previous_mask"]
            out["previous_mask"] = torch.cat([mask[(slice(b, b + 1), slice(None), *slices[w])] for b, w in part])
            out["previous_mask"] = out["previous_mask"].to(device)
        if "prompt_class" in clicks:
            out["prompt_class"] = clicks["prompt_class"][[b for b, _ in part]].to(device)
        return out

    @staticmethod
    def _image_boxes(boxes: torch.Tensor | None, batch: int, dims: int, image_size: Sequence[int],
                     before: Sequence[int]) -> torch.Tensor | None:
        """Boxes ``[B, M, 2D]`` (float32, CPU) clipped to the image and moved by the padding; ``None`` stays."""
        if boxes is None:
            return None
        boxes = torch.as_tensor(boxes.as_tensor() if isinstance(boxes, MetaTensor) else boxes).detach().float().cpu()
        if boxes.ndim == 2:
            boxes = boxes[:, None]
        if boxes.ndim != 3 or boxes.shape[0] != batch or boxes.shape[-1] != 2 * dims:
            raise ValueError(f"boxes must be [B={batch}, M, {2 * dims}] or [B, {2 * dims}], got {tuple(boxes.shape)}")
        boxes = clip_boxes(boxes, image_size, empty_to_padding=True)
        offset = torch.tensor([*before, *before], dtype=torch.float32)
        return torch.where(box_is_padding(boxes)[..., None], boxes, boxes + offset)
