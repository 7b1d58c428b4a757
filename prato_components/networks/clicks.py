"""Click prompts inside the networks (docs/design.md §6.2): the guidance encoder and reusing work between clicks.

A network built with ``click_prompts=True`` takes ``network(image, boxes=None, points=None, point_labels=None,
previous_mask=None, prompt_class=None)``. The clicks act three ways:

- **Guidance** (:class:`ClickEncoder`): foreground and background click maps (Gaussians of :data:`CLICK_SIGMA`
  voxels, DeepEdit's guidance signal) and the previous mask are turned into (a) an embedding added to the tokens
  at stage boundary 1, before its pruner, by a convolution with the stride of that grid, and (b) a full-resolution
  guidance added at the decoder's finest level. Both convolutions start at zero, so a fresh network, or one
  loaded from a checkpoint without them, answers as without clicks.
- **Pruning**: the voxel under each foreground click joins the pruners' boxes (PrATo with ``protect_boxes`` keeps
  its token), for images that have a box.
- **Decoding window**: the same boxes join the decoding window (``decode_region`` ``"box"`` / ``"guided"``), so a
  foreground click outside the box widens what is decoded. A background click changes nothing structural.

The work before stage boundary 1 sees only the image. :class:`ClickSession` keeps it for consecutive clicks on one
image and box (the backbones read the session's cache through :meth:`ClickPromptMixin._reused` and
:meth:`ClickPromptMixin._image_layer`). :class:`SessionNetwork` is the network as an inferer calls it during the
clicks on one image: one session per input it is called with (the whole image, a batch of slices or of sliding
windows), and an input whose clicks did not change keeps its last answer (the windows a click does not touch).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers import Conv

from prato_components.networks.vit_pruning import own_random_stream
from prato_components.prompts.points import BACKGROUND, FOREGROUND, point_boxes, validate_points, validate_prompt_class
from prato_components.tokens import tracing
from prato_components.tokens.executor import TokenState

__all__ = ["CLICK_SIGMA", "ClickEncoder", "ClickPromptMixin", "ClickSession", "SessionNetwork", "click_channels",
           "click_focus", "click_maps"]

CLICK_SIGMA = 3.0  # voxels: the standard deviation of a click's Gaussian in the guidance maps
CLICK_CHANNELS = 3  # foreground clicks of no stated class, background clicks, previous mask
CLICK_GAIN = 10.0  # the encoder's output scale: its zero-initialised weights move the logits ten times as fast


def click_channels(num_classes: int | None) -> int:
    """The channels of :func:`click_maps`: :data:`CLICK_CHANNELS`, plus with ``num_classes`` (the network's output
    channels, background included) two per foreground class (its foreground and its background clicks)."""
    return CLICK_CHANNELS + (2 * (num_classes - 1) if num_classes else 0)


def click_focus(maps: torch.Tensor) -> torch.Tensor:
    """Where the clicks are, ``[B, *spatial]``: per voxel the largest of the click channels of :func:`click_maps`
    ``maps`` (every channel but the previous mask's), so 1 at a click and falling with its Gaussian."""
    return torch.cat([maps[:, :2], maps[:, CLICK_CHANNELS:]], 1).amax(1)


def click_maps(points: torch.Tensor, point_labels: torch.Tensor, spatial_shape: Sequence[int],
               previous_mask: torch.Tensor | None = None, sigma: float = CLICK_SIGMA,
               prompt_class: torch.Tensor | None = None, num_classes: int | None = None) -> torch.Tensor:
    """The guidance maps ``[B, click_channels(num_classes), *spatial_shape]`` of checked clicks: per voxel the
    largest Gaussian (peak 1, ``sigma`` voxels) of the foreground clicks, of the background clicks, and the previous
    mask (0 without one). With ``num_classes`` (``K``), the clicks of an image whose ``prompt_class`` (``[B]``) is
    ``c`` go to channels ``3 + c - 1`` (foreground) and ``3 + K - 1 + c - 1`` (background) instead of 0 and 1, which
    keep the clicks of images without a class (DeepEdit's guidance per label)."""
    centres = [torch.arange(s, device=points.device, dtype=points.dtype) + 0.5 for s in spatial_shape]
    maps = []
    for label in (FOREGROUND, BACKGROUND):
        weight = (point_labels == label).to(points.dtype)  # [B, N]
        gauss = weight.view(*weight.shape, *([1] * len(spatial_shape)))
        for axis, centre in enumerate(centres):  # separable: one factor per axis
            shape = [1] * len(spatial_shape)
            shape[axis] = -1
            factor = torch.exp(-((centre - points[..., axis : axis + 1]) ** 2) / (2 * sigma**2))  # [B, N, S_axis]
            gauss = gauss * factor.view(*points.shape[:2], *shape)
        maps.append(gauss.amax(1) if points.shape[1] else gauss.new_zeros(points.shape[0], *spatial_shape))
    previous = torch.zeros_like(maps[0]) if previous_mask is None else previous_mask.reshape(maps[0].shape)
    if not num_classes:
        return torch.stack([*maps, previous.to(maps[0])], 1)
    free = torch.stack(maps, 1)  # [B, 2, *spatial]: foreground, background
    per_class = free.new_zeros(free.shape[0], 2, num_classes - 1, *spatial_shape)
    if prompt_class is not None:
        one_hot = F.one_hot(prompt_class - 1, num_classes - 1).to(free)  # [B, K - 1]
        per_class = one_hot.view(one_hot.shape[0], 1, -1, *([1] * len(spatial_shape))) * free.unsqueeze(2)
        free = torch.zeros_like(free)
    return torch.cat([free, previous.to(free).unsqueeze(1), per_class.flatten(1, 2)], 1)


class ClickEncoder(nn.Module):
    """The click guidance: ``tokens`` turns the ``channels`` click maps (:func:`click_maps`) into an embedding
    ``[B, token_dim, *grid]`` (kernel = stride = ``token_stride``), ``guide`` into a full-resolution map of
    ``guide_channels`` (3x3); both start at zero and have no bias, so empty click maps (an image whose clicks are all
    padding) add nothing. Both outputs are multiplied by ``gain`` (as LoRA scales its zero-initialised branch): Adam
    moves each weight by about the learning rate per step whatever its gradient, so the gain sets how fast the clicks
    come to matter (docs/design.md §6.2). Weights saved with fewer input channels (before the per-class channels)
    load with the missing channels at zero."""

    def __init__(self, spatial_dims: int, token_dim: int, token_stride: int | Sequence[int], guide_channels: int,
                 gain: float = CLICK_GAIN, channels: int = CLICK_CHANNELS) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.tokens = conv(channels, token_dim, kernel_size=token_stride, stride=token_stride, bias=False)
        self.guide = conv(channels, guide_channels, kernel_size=3, padding=1, bias=False)
        self.gain = float(gain)
        for layer in (self.tokens, self.guide):
            nn.init.zeros_(layer.weight)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Weights with fewer input channels than this encoder's get zero weights for the missing channels."""
        for name in ("tokens", "guide"):
            key, weight = f"{prefix}{name}.weight", getattr(self, name).weight
            saved = state_dict.get(key)
            if saved is not None and saved.ndim == weight.ndim and saved.shape[1] < weight.shape[1]:
                state_dict[key] = torch.cat([saved, saved.new_zeros(saved.shape[0], weight.shape[1] - saved.shape[1],
                                                                    *saved.shape[2:])], 1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def embedding(self, maps: torch.Tensor) -> torch.Tensor:
        """The token embedding ``[B, token_dim, *grid]`` of click maps ``[B, channels, *spatial]``."""
        return self.tokens(maps) * self.gain

    def guidance(self, maps: torch.Tensor) -> torch.Tensor:
        """The full-resolution guidance ``[B, guide_channels, *spatial]`` of click maps ``[B, channels, *spatial]``."""
        return self.guide(maps) * self.gain


@dataclass
class ClickInputs:
    """One forward pass's clicks: the guidance maps and each image's foreground-click boxes ``[B, N, 2D]``."""

    maps: torch.Tensor
    boxes: torch.Tensor


class ClickPromptMixin:
    """The ``click_prompts`` option of a backbone (docs/design.md §6.2)."""

    _clicks: ClickInputs | None = None
    _session_cache: dict | None = None
    click_focus: torch.Tensor | None = None  # [B, *spatial] of the last training forward with clicks (see _read_clicks)

    def _setup_clicks(self, enabled: bool, spatial_dims: int, token_dim: int, token_stride: int | Sequence[int],
                      guide_channels: int, num_classes: int) -> None:
        """Build the click encoder when ``enabled`` (its maps with a foreground and a background channel per class of
        the ``num_classes`` output channels, :func:`click_channels`), on its own random stream (the other weights
        stay those of a network without it); a checkpoint without its weights loads (they stay zero)."""
        self.click_encoder, self.click_classes = None, int(num_classes)
        if enabled:
            with own_random_stream():
                self.click_encoder = ClickEncoder(spatial_dims, token_dim, token_stride, guide_channels,
                                                  channels=click_channels(num_classes))
            self.register_load_state_dict_post_hook(_tolerate_missing_click_encoder)
        self._clicks = None

    def _read_clicks(self, points, point_labels, previous_mask, boxes: torch.Tensor | None,
                     spatial_shape: Sequence[int], batch: int, prompt_class=None) -> torch.Tensor | None:
        """Check this forward pass's clicks, keep their guidance maps (:attr:`_clicks`; in training also
        :attr:`click_focus`, :func:`click_focus` of them, for the loss) and return the prompt boxes
        with the foreground clicks' boxes added to the images that have a real box (``boxes`` as is without
        clicks). A network with one foreground class reads clicks without ``prompt_class`` as that class's."""
        points, labels = validate_points(points, point_labels, spatial_shape, batch, check_values=not tracing())
        self._clicks = self.click_focus = None
        if points is None:
            if previous_mask is not None:
                raise ValueError("previous_mask was given without clicks (points and point_labels)")
            if prompt_class is not None:
                raise ValueError("prompt_class was given without clicks (points and point_labels)")
            return boxes
        if getattr(self, "click_encoder", None) is None:
            raise ValueError("this network takes no clicks: build it with click_prompts=True")
        if previous_mask is not None:
            previous_mask = _check_previous_mask(previous_mask, batch, spatial_shape)
        classes = self.click_classes
        prompt_class = validate_prompt_class(prompt_class, batch, classes, check_values=not tracing())
        if prompt_class is None and classes == 2:
            prompt_class = torch.ones(batch, dtype=torch.long, device=points.device)
        maps = click_maps(points, labels, spatial_shape, previous_mask, prompt_class=prompt_class,
                          num_classes=classes if classes > 1 else None)
        self._clicks = ClickInputs(maps, point_boxes(points, labels, spatial_shape))
        if self.training:
            self.click_focus = click_focus(maps)
        if boxes is None:
            return None
        dims = len(spatial_shape)
        has_box = (boxes[..., dims:] >= boxes[..., :dims]).all(-1).any(1)  # [B]
        extra = torch.where(has_box[:, None, None], self._clicks.boxes.to(boxes), self._clicks.boxes.new_tensor(
            [0.0] * dims + [-1.0] * dims).to(boxes))
        return torch.cat([boxes, extra], 1)

    def _add_click_tokens(self, tokens: torch.Tensor, grid_shape: Sequence[int] | None = None,
                          channels_first: bool = False) -> torch.Tensor:
        """``tokens`` at stage boundary 1 (``[B, N, C]``, or a map ``[B, C, *grid]`` with ``channels_first``) plus
        the click embedding; ``tokens`` itself without clicks. A ``grid_shape`` whose cells reach past the image
        (SegFormer's padded embeddings) sees the click maps padded with zeros."""
        if self._clicks is None:
            return tokens
        maps = self._clicks.maps.to(tokens.dtype)
        grid = tuple(tokens.shape[2:]) if channels_first else grid_shape
        if grid is not None:
            stride = self.click_encoder.tokens.stride
            extra = [g * st - s for g, st, s in zip(grid, stride, maps.shape[2:])]
            maps = F.pad(maps, [p for e in reversed(extra) for p in (0, max(e, 0))])
        embedding = self.click_encoder.embedding(maps)  # [B, C, *grid]
        return tokens + (embedding if channels_first else embedding.flatten(2).transpose(1, 2))

    def _click_guide(self, features: torch.Tensor, click_maps: torch.Tensor | None) -> torch.Tensor:
        """``features`` (the decoder's finest level, full resolution) plus the click guidance of the (cropped)
        ``click_maps``; ``features`` itself without clicks."""
        if click_maps is None:
            return features
        return features + self.click_encoder.guidance(click_maps.to(features.dtype))

    def _clicks_done(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` of a forward pass, whose clicks are then forgotten (a later encoder-only pass, e.g.
        ``finds_foreground``, runs without them)."""
        self._clicks = None
        return logits

    def _with_click_maps(self, maps: list, strides: list) -> tuple[list, list]:
        """The decoder's maps and strides with this pass's click maps (stride 1) at the end, when there are clicks."""
        if self._clicks is None:
            return maps, strides
        return [*maps, self._clicks.maps], [*strides, 1]

    @contextlib.contextmanager
    def reusing(self, cache: dict) -> Iterator[None]:
        """Within: the work before stage boundary 1 (image only) is read from ``cache`` once it holds it
        (:class:`ClickSession`: one cache per image)."""
        self._session_cache = cache
        try:
            yield
        finally:
            self._session_cache = None

    def _reused(self, key: str, compute: Callable[[], object]) -> object:
        """``compute()``, or within :meth:`reusing` its value computed once for the session."""
        cache = self._session_cache
        if cache is None:
            return compute()
        if key not in cache:
            cache[key] = compute()
        return cache[key]

    def _reused_on_window(self, key: str, image_map: torch.Tensor, compute: Callable[[], torch.Tensor]
                          ) -> torch.Tensor:
        """``compute()``, a decoder path that reads only ``image_map`` (the image or an image-only tap, cut to this
        forward pass's decoding window), or within :meth:`reusing` its value while the window stays the same."""
        window = getattr(self, "last_decode_window", None)
        return self._reused((key, window, tuple(image_map.shape)), compute)

    def _run_vit_layer(self, layers: Sequence[Sequence[nn.Module]], number: int, state: TokenState,
                       attentions: list) -> None:
        """Layer ``number`` of a plain ViT (``layers``: :func:`~prato_components.networks.vit_pruning.vit_layers`)
        on ``state``; layer 1, image only, through :meth:`_image_layer`."""
        def run() -> None:
            self._run_vit_blocks(layers[number - 1], number, state, attentions)

        if number == 1:
            self._image_layer(state, attentions, run)
        else:
            run()

    def _image_layer(self, state: TokenState, attentions: list, run: Callable[[], object]) -> object:
        """Layer 1 (before stage boundary 1: image only) on ``state``: ``run()`` (its blocks update ``state`` and
        may append attention maps), or within :meth:`reusing` a replay of its first run: the tokens, attention maps,
        block reports and ``run()``'s value."""
        cache = self._session_cache
        if cache is None:
            return run()
        if "layer1" not in cache:
            attention_start, block_start = len(attentions), len(state.block_reports)
            value = run()
            cache["layer1"] = (value, state.tokens, attentions[attention_start:],
                               len(state.block_reports) - block_start)
            return value
        value, tokens, maps, blocks = cache["layer1"]
        state.tokens = tokens
        attentions.extend(maps)
        for _ in range(blocks):
            state.record_block()
        return value


def _check_previous_mask(mask: torch.Tensor, batch: int, spatial_shape: Sequence[int]) -> torch.Tensor:
    """``previous_mask`` ``[B, 1, *spatial]`` or ``[B, *spatial]``, finite, as float ``[B, *spatial]``."""
    mask = torch.as_tensor(mask)
    shapes = ((batch, 1, *spatial_shape), (batch, *spatial_shape))
    if tuple(mask.shape) not in shapes:
        raise ValueError(f"previous_mask must have shape {list(shapes[0])} or {list(shapes[1])}, got "
                         f"{tuple(mask.shape)}")
    mask = mask.float().reshape(shapes[1])
    if not tracing() and not bool(torch.isfinite(mask).all()):
        raise ValueError("previous_mask contains NaN or infinite values")
    return mask


def _tolerate_missing_click_encoder(module: nn.Module, incompatible_keys) -> None:
    """A checkpoint saved without the click encoder loads: its weights stay zero (no guidance)."""
    missing = [key for key in incompatible_keys.missing_keys if key.startswith("click_encoder.")]
    for key in missing:
        incompatible_keys.missing_keys.remove(key)


class ClickSession:
    """An interactive session on one image and box: ``segment`` runs the network with the clicks so far and does the
    work before stage boundary 1 (which sees only the image) once for the session (docs/design.md §6.2).

    Args:
        network: a backbone of this package (built with ``click_prompts=True`` to take clicks).
        image: ``[B, C, *spatial]``, the network's input.
        boxes: the box prompt(s) of the session, as the network takes them, or ``None``.
    """

    def __init__(self, network: nn.Module, image: torch.Tensor, boxes: torch.Tensor | None = None) -> None:
        if not isinstance(network, ClickPromptMixin):
            raise TypeError(f"ClickSession needs a network of prato_components, got {type(network).__name__}")
        self.network, self.image, self.boxes = network, image, boxes
        self.cache: dict = {}

    @torch.no_grad()
    def segment(self, points: torch.Tensor | None = None, point_labels: torch.Tensor | None = None,
                previous_mask: torch.Tensor | None = None, prompt_class: torch.Tensor | None = None) -> torch.Tensor:
        """The logits for the session's image and box with these clicks (all clicks so far, ``[B, N, D]`` and
        ``[B, N]``), the previous mask and the clicked structure's class, if any."""
        with self.network.reusing(self.cache):
            return self.network(self.image, boxes=self.boxes, points=points, point_labels=point_labels,
                                previous_mask=previous_mask, prompt_class=prompt_class)


def _digest(*parts: torch.Tensor | None) -> str:
    """A digest of tensors' dtypes, shapes and values (``None`` parts skipped)."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        if part is not None:
            part = torch.as_tensor(part).detach().cpu().contiguous()
            digest.update(f"{part.dtype}{tuple(part.shape)}".encode())
            digest.update(part.numpy().tobytes())
    return digest.hexdigest()


def given_clicks(points: torch.Tensor | None, point_labels: torch.Tensor | None) -> tuple:
    """The clicks of each image of a batch without the padding rows (label -1), as plain numbers; ``()`` when there
    are none: equal for two calls whose clicks can make no difference to the network (padding rows are ignored)."""
    if points is None or point_labels is None:
        return ()
    points, point_labels = torch.as_tensor(points).detach().cpu(), torch.as_tensor(point_labels).detach().cpu()
    given = tuple(tuple((tuple(p.tolist()), int(v)) for p, v in zip(rows, labels) if v >= 0)
                  for rows, labels in zip(points, point_labels))
    return given if any(given) else ()


class SessionNetwork:
    """The network as an inferer calls it during the clicks on one image (docs/design.md §6.2).

    Each input it is called with (the whole image, a batch of slices or of sliding windows, told apart by the
    digest of the input and its boxes) gets its own :class:`ClickSession`, so the image-only work is done once per
    input. An input called with the same clicks as last time (padding rows aside) keeps its last answer without a
    network call: in a sliding window, the windows that a new click does not touch. With ``follow_previous_mask``
    a changed previous mask is a change too; without, such a window keeps its answer rather than following the
    previous mask (which, in the interactive protocol, is the network's own last answer blended over the windows).
    :attr:`calls` and :attr:`kept` count the network calls and the answers kept. Other attributes are the
    network's, so the inferers read ``decode_region``, ``finds_foreground`` and the reports through it.

    Args:
        network: a backbone of this package (:class:`ClickPromptMixin`).
        sessions: where the sessions live (keyed by input digest), e.g. shared by the requests on one image.
        follow_previous_mask: recompute an input whose previous mask changed although its clicks did not (a
            label the annotator sent).
    """

    def __init__(self, network: nn.Module, sessions: MutableMapping | None = None,
                 follow_previous_mask: bool = False) -> None:
        if not isinstance(network, ClickPromptMixin):
            raise TypeError(f"SessionNetwork needs a network of prato_components, got {type(network).__name__}")
        self.network, self.follow_previous_mask = network, follow_previous_mask
        self.sessions: MutableMapping = {} if sessions is None else sessions
        self.calls = self.kept = 0

    def __getattr__(self, name: str):
        return getattr(self.network, name)

    def __call__(self, image: torch.Tensor, boxes: torch.Tensor | None = None, points: torch.Tensor | None = None,
                 point_labels: torch.Tensor | None = None, previous_mask: torch.Tensor | None = None,
                 prompt_class: torch.Tensor | None = None) -> torch.Tensor:
        key = _digest(image, boxes)
        if key not in self.sessions:
            self.sessions[key] = [ClickSession(self.network, image, boxes), None, None]
        entry = self.sessions[key]
        clicks = given_clicks(points, point_labels)
        if clicks:
            clicks = (clicks, _digest(prompt_class))
        if self.follow_previous_mask:
            clicks = (clicks, _digest(previous_mask))
        if entry[2] is not None and entry[1] == clicks:
            self.kept += 1
            return entry[2]
        self.calls += 1
        entry[1], entry[2] = clicks, entry[0].segment(points, point_labels, previous_mask, prompt_class)
        return entry[2]
