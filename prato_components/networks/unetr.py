"""UNETR with token pruning between its ViT blocks, built on MONAI's ``UNETR``.

The pruned network *is* a MONAI ``UNETR`` (same modules, same state-dict keys) plus one pruner per pruned
stage under ``pruners.<stage>``; :func:`patch_unetr` turns an existing ``UNETR`` into one in place (the
ToMe way). Stage ``s`` in {1, 2, 3} is the boundary after ViT block ``3s`` (0-based), where UNETR taps
``hidden_states_out[3s]`` for its decoder: the tap sees the tokens before pruning, restored to the grid; the
blocks after it run on the kept tokens only.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
from monai.networks.nets import UNETR
from monai.utils import ensure_tuple_rep

from prato_components.networks.clicks import ClickPromptMixin
from prato_components.networks.inputs import check_image, check_network_boxes
from prato_components.networks.region import RegionDecodingMixin, run_decoder
from prato_components.networks.vit_pruning import (
    PrunedNetworkMixin,
    PrunerSpec,
    PruningSettings,
    build_completion,
    patched_class,
    stage_pruners,
    vit_layers,
)
from prato_components.tokens.blocks import check_supported_block
from prato_components.tokens.executor import TokenState

__all__ = ["PrunedUNETR", "patch_unetr", "UNETR_STAGES"]

UNETR_STAGES = (1, 2, 3)


class PrunedUNETR(ClickPromptMixin, RegionDecodingMixin, PrunedNetworkMixin, UNETR):
    """MONAI ``UNETR`` whose ViT drops tokens at chosen stage boundaries; called as ``net(image, boxes=None,
    points=None, point_labels=None)`` (clicks: docs/design.md §6.2).

    Args:
        pruner: a :class:`TokenPruner`, a registered pruner name or a factory (built with ``pruner_kwargs``; ``dim``
            and ``num_classes`` are filled in), a mapping ``{stage: TokenPruner}``, or ``None`` for the unpruned
            baseline. Each pruned stage gets its own copy (``vit_pruning.stage_pruners``).
        prune_stages: stage boundaries to prune at, a subset of ``(1, 2, 3)``; the paper uses ``(1, 2)``.
        executor: ``"gather"`` (fast), ``"padded"`` (variable counts), ``"attention_mask"`` (full length, pruned keys
            masked) or ``"mask"`` (reference); see docs/design.md §5.
        fill: how pruned positions are filled when the grid is restored: ``"carry"`` or ``"zero"``.
        pruner_kwargs: keyword arguments for a pruner given by name.
        completion: optional module ``completion(grid [B, N, C], state: TokenState, tap: int) -> grid`` applied to
            every restored grid the decoder taps once tokens were pruned (a learned fill, e.g. STP's MTA);
            ``tap`` is the stage (1-3) or 4 for the final ViT output. A factory (a bundle's ``_mode_: callable``
            block) is built here with ``dim=hidden_size`` (``vit_pruning.build_completion``).
        decode_region: ``"full"`` or ``"box"``: run the convolutional encoders 1-4 and the decoders only over the
            prompt boxes plus ``decode_margin`` voxels (snapped to the patch grid), background outside; ``"guided"``:
            also where the coarse head finds foreground outside them (docs/design.md §6.1).
        decode_margin: voxels added around the boxes' union for ``decode_region="box"``.
        coarse_head: a 1x1 convolution on the (detached) tap of stage 1, the deepest map computed before any
            pruning, for ``decode_region="guided"``.
        coarse_threshold: the coarse foreground probability from which ``"guided"`` decodes outside the box
            window too (default 0.4; docs/design.md §6.1).
        click_prompts: build the click encoder (``networks.clicks``): the click embedding joins the tokens at stage
            boundary 1, the full-resolution guidance the output of ``encoder1``.
        unetr_kwargs: everything MONAI's ``UNETR`` takes (``in_channels``, ``out_channels``, ``img_size``,
            ``spatial_dims``, ``hidden_size`` ...).

    After each forward pass, :attr:`token_report` lists per stage the tokens in and kept per image,
    :attr:`block_report` per ViT block the tokens it ran on (the token sparsity, :meth:`kept_fraction`),
    :attr:`aux_loss` holds the pruners' side loss (or ``None``) and :attr:`aux_logits` their intermediate
    segmentation logits (for :class:`~prato_components.engine.PrunedSegLoss`).
    """

    def __init__(
        self,
        *,
        pruner: PrunerSpec = None,
        prune_stages: Sequence[int] = (1, 2),
        executor: str = "gather",
        fill: str = "carry",
        pruner_kwargs: Mapping | None = None,
        completion: nn.Module | None = None,
        decode_region: str = "full",
        decode_margin: int = 16,
        coarse_head: bool = False,
        coarse_threshold: float = 0.4,
        click_prompts: bool = False,
        **unetr_kwargs,
    ) -> None:
        super().__init__(**unetr_kwargs)
        settings = PruningSettings(pruner, prune_stages, executor, fill, pruner_kwargs, completion, decode_region,
                                   decode_margin, coarse_head, coarse_threshold,
                                   click_prompts)
        self._setup_decoding(settings.decode_region, settings.decode_margin, settings.coarse_threshold)
        requested = tuple(ensure_tuple_rep(unetr_kwargs.get("img_size", ()), len(self.patch_size)))
        if requested != tuple(f * p for f, p in zip(self.feat_size, self.patch_size)):
            raise ValueError(f"img_size {requested} must be a multiple of the ViT patch size {tuple(self.patch_size)} "
                             "on every axis")
        self._setup_pruning(settings)

    def _setup_pruning(self, settings: PruningSettings) -> None:
        for block in self.vit.blocks:
            check_supported_block(block)
        widths = {stage: self.hidden_size for stage in UNETR_STAGES}
        num_classes = self.out.conv.conv.out_channels
        pruners = stage_pruners(
            "UNETR", settings.pruner, settings.pruner_kwargs, settings.prune_stages, widths, num_classes
        )
        self._install_pruners(pruners, settings.executor, settings.fill)
        self.completion = build_completion(settings.completion, self.hidden_size)
        self._setup_coarse_head(settings.coarse_head, self.hidden_size, num_classes, len(self.patch_size))
        self._setup_clicks(settings.click_prompts, len(self.patch_size), self.hidden_size, tuple(self.patch_size),
                           self.encoder1.layer.conv2.conv.out_channels, num_classes)
        self.in_channels = self.vit.patch_embedding.patch_dim // math.prod(self.patch_size)
        self.img_size = tuple(f * p for f, p in zip(self.feat_size, self.patch_size))

    def forward(self, x_in: torch.Tensor, boxes: torch.Tensor | None = None, points: torch.Tensor | None = None,
                point_labels: torch.Tensor | None = None, previous_mask: torch.Tensor | None = None,
                prompt_class: torch.Tensor | None = None) -> torch.Tensor:
        check_image(x_in, self.in_channels, self.img_size)
        boxes = check_network_boxes(boxes, x_in.shape[0], self.img_size)
        boxes = self._read_clicks(points, point_labels, previous_mask, boxes, self.img_size, x_in.shape[0],
                                  prompt_class)
        taps, final, state = self._encode(x_in, boxes)
        self._take_reports(state)
        window = self._decode_window(boxes, self.img_size, self.patch_size)
        maps = [x_in, *(self.proj_feat(taps[stage]) for stage in UNETR_STAGES), self.proj_feat(final)]
        maps, strides = self._with_click_maps(maps, [1, *[self.patch_size] * (len(maps) - 1)])
        return self._clicks_done(self._with_coarse_in_graph(run_decoder(window, self._decode, maps, strides)))

    def _coarse_map(self, x: torch.Tensor) -> torch.Tensor:
        """The coarse head on the stage-1 tap, running only the ViT blocks before it (nothing is pruned there)."""
        check_image(x, self.in_channels, self.img_size)
        tokens = self.vit.patch_embedding(x)
        for block in vit_layers(self.vit.blocks, {stage: 3 * stage for stage in UNETR_STAGES})[0]:
            tokens = block(tokens)
        return self.coarse_head(self.proj_feat(tokens))

    def _decode(self, x_in: torch.Tensor, tap1: torch.Tensor, tap2: torch.Tensor, tap3: torch.Tensor,
                final: torch.Tensor, click_maps: torch.Tensor | None = None) -> torch.Tensor:
        """UNETR's convolutional encoders 1-4 and decoders on the image and the channel-first restored grids; the
        click guidance joins ``encoder1``'s output."""
        enc1 = self._reused_on_window("encoder1", x_in, lambda: self.encoder1(x_in))  # image only
        enc2 = self._reused_on_window("encoder2", tap1, lambda: self.encoder2(tap1))  # the tap before the clicks
        enc3, enc4 = self.encoder3(tap2), self.encoder4(tap3)
        dec3 = self.decoder5(final, enc4)
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        return self.out(self.decoder2(dec1, self._click_guide(enc1, click_maps)))

    def _encode(self, x_in: torch.Tensor, boxes: torch.Tensor | None):
        """The ViT with pruning: the decoder taps (restored grids ``[B, N, C]``), the final grid, the state."""
        tokens = self._reused("embedding", lambda: self.vit.patch_embedding(x_in))  # image only
        state = TokenState(tokens, self.feat_size, self.executor_mode(), self.fill)
        taps: dict[int, torch.Tensor] = {}
        layers = vit_layers(self.vit.blocks, {stage: 3 * stage for stage in UNETR_STAGES})

        def tap(stage: int, current: TokenState, _) -> TokenState:  # the decoder sees the tokens before pruning
            taps[stage] = self._complete(current.restore(), current, stage)
            if stage == 1:  # the coarse pass, before the first pruned stage, so its boxes reach the pruners
                self._coarse_pass(self.proj_feat(taps[1]), boxes, self.img_size, self.patch_size)
                current.tokens = self._add_click_tokens(current.tokens)  # after the image-only tap, before pruning
            return current

        run_layer = functools.partial(self._run_vit_layer, layers)
        self._run_stages(state, len(layers), run_layer, tap, lambda *_: self.patch_size, boxes)
        final = state.restore(self.vit.norm(state.tokens), carry_transform=self.vit.norm)
        return taps, self._complete(final, state, len(UNETR_STAGES) + 1), state

    @property
    def vit_tokens(self) -> int:
        """Tokens on the ViT grid."""
        return math.prod(self.feat_size)

    def _complete(self, grid: torch.Tensor, state: TokenState, tap: int) -> torch.Tensor:
        """Apply the learned completion (e.g. STP's MTA) to a restored grid once tokens were pruned."""
        if self.completion is None or not state.pruned:
            return grid
        return self.completion(grid, state, tap)

def patch_unetr(model: UNETR, pruner: PrunerSpec = None, **settings) -> PrunedUNETR:
    """Turn an existing MONAI ``UNETR`` (weights and all) into a :class:`PrunedUNETR` in place; ``settings`` are the
    other :class:`~prato_components.networks.vit_pruning.PruningSettings` (``prune_stages``, ``executor`` ...). A
    subclass of ``UNETR`` keeps its own class under the pruned one (:func:`patched_class`)."""
    if not isinstance(model, UNETR):
        raise TypeError(f"patch_unetr expects a monai UNETR, got {type(model).__name__}")
    config = PruningSettings(pruner, **settings)
    model.__class__ = patched_class(type(model), PrunedUNETR)
    model._setup_decoding(config.decode_region, config.decode_margin, config.coarse_threshold)
    model._setup_pruning(config)
    return model
