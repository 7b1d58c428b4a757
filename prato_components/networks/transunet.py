"""TransUNet (Chen et al. 2021, arXiv:2102.04306) with token pruning between its ViT blocks, 2D.

Not in MONAI, so built here from MONAI blocks: a ResNet-50-style CNN (MONAI ``ResNetBottleneck``) takes the image
to 1/16 resolution, a MONAI ``PatchEmbeddingBlock`` with patch size 1 turns that map into tokens (14x14 at
224x224), MONAI ``TransformerBlock``s encode them, the token grid is restored **once** after the final norm and a
cascaded upsampler (bilinear x2, concatenation with the CNN features at 1/8, 1/4, 1/2, two conv-norm-ReLU per
level) brings it back to full resolution for a 3x3 segmentation head.

Pruning follows :class:`~prato_components.networks.unetr.PrunedUNETR`: stage boundary ``s`` in {1, 2, 3} sits
after ViT block ``s * num_layers // 4`` (0-based; blocks 3, 6, 9 of 12, as UNETR's taps), the paper's default is
``(1, 2)``, the blocks after a pruned boundary run on the kept tokens only, and a box reaches the ViT at the
token stride (input voxels per token, 16 by default).

Adaptations of the original (documented, none changes the architecture's shape): plain convolutions instead of
weight-standardised ones (those matter for transferring BiT weights; nothing is downloaded here), and a padded
3x3 max-pool so that 224 maps to 56 without the original's zero-padding fix-up.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution, PatchEmbeddingBlock, TransformerBlock, UpSample
from monai.networks.layers.utils import get_norm_layer
from monai.networks.nets.resnet import ResNetBottleneck

from prato_components.networks.clicks import ClickPromptMixin
from prato_components.networks.inputs import check_image, check_network_boxes
from prato_components.networks.region import DecodeWindow, RegionDecodingMixin, run_decoder
from prato_components.networks.vit_pruning import (
    PrunedNetworkMixin,
    PrunerSpec,
    PruningSettings,
    build_completion,
    stage_pruners,
    vit_layers,
)
from prato_components.tokens.blocks import check_supported_block
from prato_components.tokens.executor import TokenState

__all__ = ["TransUNet", "TRANSUNET_STAGES", "HybridResNetEncoder", "CascadedUpsampler"]

TRANSUNET_STAGES = (1, 2, 3)
_GROUP_NORM = ("group", {"num_groups": 32})


class HybridResNetEncoder(nn.Module):
    """The CNN half of the R50 hybrid: a 7x7/2 root, a 3x3/2 max-pool and three bottleneck stages to 1/16.

    Args:
        in_channels: image channels.
        layers: bottleneck units per stage (R50: ``(3, 4, 9)``).
        width: root channels ``w`` (R50: 64); the stages output ``4w, 8w, 16w`` channels at 1/4, 1/8, 1/16.
        norm: MONAI norm spec (TransUNet: group norm with 32 groups).

    ``forward`` returns the 1/16 map and the skip features ``[1/8 (8w), 1/4 (4w), 1/2 (w)]``, deepest first.
    """

    def __init__(
        self,
        in_channels: int,
        layers: Sequence[int] = (3, 4, 9),
        width: int = 64,
        norm: str | tuple = _GROUP_NORM,
    ) -> None:
        super().__init__()
        if len(layers) != 3 or min(layers) < 1:
            raise ValueError(f"layers must give 3 stages of at least one bottleneck unit each, got {tuple(layers)}")
        self.root = Convolution(
            2, in_channels, width, strides=2, kernel_size=7, padding=3, norm=norm, act="relu", bias=False
        )
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages, channels = [], width
        for index, (units, stride) in enumerate(zip(layers, (1, 2, 2))):
            planes = width * 2**index
            stages.append(self._make_stage(channels, planes, units, stride, norm))
            channels = planes * ResNetBottleneck.expansion
        self.stages = nn.ModuleList(stages)
        self.out_channels = channels
        self.skip_channels = (width * 8, width * 4, width)

    @staticmethod
    def _make_stage(in_planes: int, planes: int, units: int, stride: int, norm) -> nn.Sequential:
        out_planes = planes * ResNetBottleneck.expansion
        downsample = nn.Sequential(
            nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
            get_norm_layer(name=norm, spatial_dims=2, channels=out_planes),
        )
        blocks = [ResNetBottleneck(in_planes, planes, spatial_dims=2, stride=stride, downsample=downsample, norm=norm)]
        blocks += [ResNetBottleneck(out_planes, planes, spatial_dims=2, norm=norm) for _ in range(units - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        half = self.root(x)
        quarter = self.stages[0](self.pool(half))
        eighth = self.stages[1](quarter)
        return self.stages[2](eighth), [eighth, quarter, half]


class _UpBlock(nn.Module):
    """Bilinear x2, concatenate the skip (if any), two 3x3 conv-BN-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = UpSample(2, scale_factor=2, mode="nontrainable", interp_mode="bilinear", align_corners=True)
        conv = dict(kernel_size=3, norm="batch", act="relu", bias=False)
        self.conv1 = Convolution(2, in_channels + skip_channels, out_channels, **conv)
        self.conv2 = Convolution(2, out_channels, out_channels, **conv)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class CascadedUpsampler(nn.Module):
    """TransUNet's decoder: a 3x3 conv on the token grid, then four x2 up-blocks (the first three with CNN skips).

    Args:
        in_channels: token width.
        skip_channels: channels of the skips at 1/8, 1/4, 1/2.
        head_channels: width of the first 3x3 conv (TransUNet: 512).
        decoder_channels: output channels of the four up-blocks (TransUNet: ``(256, 128, 64, 16)``).
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: Sequence[int],
        head_channels: int = 512,
        decoder_channels: Sequence[int] = (256, 128, 64, 16),
    ) -> None:
        super().__init__()
        if len(decoder_channels) != 4:
            raise ValueError(f"decoder_channels must give 4 levels (1/16 -> 1/1), got {tuple(decoder_channels)}")
        self.conv_more = Convolution(2, in_channels, head_channels, kernel_size=3, norm="batch", act="relu", bias=False)
        ins = [head_channels, *decoder_channels[:-1]]
        skips = [*skip_channels, 0]
        self.blocks = nn.ModuleList(_UpBlock(i, s, o) for i, s, o in zip(ins, skips, decoder_channels))

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.conv_more(x)
        for index, block in enumerate(self.blocks):
            x = block(x, skips[index] if index < len(skips) else None)
        return x


class TransUNet(ClickPromptMixin, RegionDecodingMixin, PrunedNetworkMixin, nn.Module):
    """TransUNet (R50 hybrid + ViT + cascaded upsampler) whose ViT drops tokens at chosen stage boundaries.

    Called as ``net(image [B, C, H, W], boxes=None, points=None, point_labels=None)`` with boxes ``[B, M, 4]`` (or
    ``[B, 4]``) and clicks ``[B, N, 2]`` in input pixels (docs/design.md §6.2).

    Args:
        in_channels: image channels.
        out_channels: segmentation classes.
        img_size: ``(H, W)``, divisible by 16 (the position embedding is built for this grid).
        cnn_layers: bottleneck units of the three CNN stages (R50: ``(3, 4, 9)``).
        cnn_width: root width of the CNN (R50: 64).
        cnn_norm: MONAI norm spec of the CNN (default group norm, 32 groups).
        hidden_size, mlp_dim, num_layers, num_heads: the ViT (ViT-B: 768, 3072, 12, 12).
        dropout_rate: dropout of the embedding and the ViT blocks.
        qkv_bias: bias of the qkv projection (ViT-B has one).
        head_channels, decoder_channels: the cascaded upsampler (512; ``(256, 128, 64, 16)``).
        pruner: a :class:`TokenPruner`, a registered pruner name or a factory (built with ``pruner_kwargs``; ``dim``
            and ``num_classes`` are filled in), a mapping ``{stage: TokenPruner}``, or ``None`` for the unpruned
            baseline. Each pruned stage gets its own copy (``vit_pruning.stage_pruners``).
        prune_stages: stage boundaries to prune at, a subset of ``(1, 2, 3)``; default ``(1, 2)`` as the paper.
        executor: ``"gather"`` (fast), ``"padded"`` (variable counts), ``"mask"`` or ``"attention_mask"``.
        fill: how pruned positions are filled when the grid is restored: ``"carry"`` or ``"zero"``.
        pruner_kwargs: keyword arguments for a pruner given by name.
        completion: optional module ``completion(grid [B, N, C], state, tap) -> grid`` applied to the restored grid
            once tokens were pruned (e.g. STP's MTA); TransUNet has one tap, the final grid, numbered 4 as in UNETR.
            A factory is built here with ``dim=hidden_size`` (``vit_pruning.build_completion``).
        decode_region: ``"full"`` or ``"box"``: run the cascaded upsampler and head only over the prompt boxes plus
            ``decode_margin`` pixels (snapped to the 16-pixel token grid), background outside; ``"guided"``: also
            where the coarse head finds foreground outside them (docs/design.md §6.1).
        decode_margin: pixels added around the boxes' union for ``decode_region="box"``.
        coarse_head: a 1x1 convolution on the (detached) CNN features, computed before any pruning, for
            ``decode_region="guided"``.
        coarse_threshold: the coarse foreground probability from which ``"guided"`` decodes outside the box
            window too (default 0.4; docs/design.md §6.1).
        click_prompts: build the click encoder (``networks.clicks``): the click embedding joins the tokens at stage
            boundary 1, the full-resolution guidance the last up-block's output, before the head.

    After each forward pass, :attr:`token_report` lists per stage the tokens in and kept per image,
    :attr:`block_report` per ViT block the tokens it ran on (the token sparsity, :meth:`kept_fraction`),
    :attr:`aux_loss` holds the pruners' side loss (or ``None``) and :attr:`aux_logits` their intermediate logits.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 4,
        img_size: Sequence[int] = (224, 224),
        cnn_layers: Sequence[int] = (3, 4, 9),
        cnn_width: int = 64,
        cnn_norm: str | tuple = _GROUP_NORM,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        dropout_rate: float = 0.0,
        qkv_bias: bool = True,
        head_channels: int = 512,
        decoder_channels: Sequence[int] = (256, 128, 64, 16),
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
    ) -> None:
        super().__init__()
        settings = PruningSettings(pruner, prune_stages, executor, fill, pruner_kwargs, completion, decode_region,
                                   decode_margin, coarse_head, coarse_threshold,
                                   click_prompts)
        self._setup_decoding(settings.decode_region, settings.decode_margin, settings.coarse_threshold)
        img_size = tuple(int(s) for s in img_size)
        if len(img_size) != 2 or any(s % 16 or s < 16 for s in img_size):
            raise ValueError(f"TransUNet is 2D: img_size must be two sizes divisible by 16, got {img_size}")
        if num_layers < 4:
            raise ValueError(f"num_layers must be at least 4 (three stage boundaries inside the ViT), got {num_layers}")
        self.in_channels, self.out_channels, self.img_size = in_channels, out_channels, img_size
        self.hidden_size = hidden_size
        self.patch_size = (16, 16)  # input pixels per token: the CNN's total stride
        self.feat_size = tuple(s // 16 for s in img_size)
        self.stage_blocks = {stage: stage * num_layers // 4 for stage in TRANSUNET_STAGES}

        self.cnn = HybridResNetEncoder(in_channels, cnn_layers, cnn_width, cnn_norm)
        self.patch_embedding = PatchEmbeddingBlock(
            in_channels=self.cnn.out_channels,
            img_size=self.feat_size,
            patch_size=1,
            hidden_size=hidden_size,
            num_heads=num_heads,
            proj_type="conv",
            pos_embed_type="learnable",
            dropout_rate=dropout_rate,
            spatial_dims=2,
        )
        self.blocks = nn.ModuleList(
            TransformerBlock(hidden_size, mlp_dim, num_heads, dropout_rate, qkv_bias=qkv_bias)
            for _ in range(num_layers)
        )
        for block in self.blocks:
            check_supported_block(block)
        self.norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.decoder = CascadedUpsampler(hidden_size, self.cnn.skip_channels, head_channels, decoder_channels)
        self.segmentation_head = Convolution(2, decoder_channels[-1], out_channels, kernel_size=3, conv_only=True)

        widths = {stage: hidden_size for stage in TRANSUNET_STAGES}
        pruners = stage_pruners(
            "TransUNet", settings.pruner, settings.pruner_kwargs, settings.prune_stages, widths, out_channels
        )
        self._install_pruners(pruners, settings.executor, settings.fill)
        self.completion = build_completion(settings.completion, hidden_size)
        self._setup_coarse_head(settings.coarse_head, self.cnn.out_channels, out_channels, 2)
        self._setup_clicks(settings.click_prompts, 2, hidden_size, self.patch_size, decoder_channels[-1], out_channels)

    def encode(self, image: torch.Tensor, boxes: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The hybrid encoder: the restored token grid ``[B, N, hidden]`` (after the final norm) and the CNN skips.

        ``boxes`` must already be checked (``[B, M, 4]`` or ``None``). Sets the token report and side terms.
        """
        features, skips = self._reused("cnn", lambda: self.cnn(image))  # image only
        self._coarse_pass(features, boxes, self.img_size, self.patch_size)  # before pruning: its boxes reach it
        tokens = self._reused("embedding", lambda: self.patch_embedding(features))
        state = TokenState(tokens, self.feat_size, self.executor_mode(), self.fill)
        layers = vit_layers(self.blocks, self.stage_blocks)

        def next_grid(number: int, current: TokenState, _) -> TokenState:
            if number == 1:  # the clicks join before the first pruner; the layer before saw the image only
                current.tokens = self._add_click_tokens(current.tokens)
            return current

        run_layer = functools.partial(self._run_vit_layer, layers)
        self._run_stages(state, len(layers), run_layer, next_grid, lambda *_: self.patch_size, boxes)
        grid = state.restore(self.norm(state.tokens), carry_transform=self.norm)
        if self.completion is not None and state.pruned:
            grid = self.completion(grid, state, len(TRANSUNET_STAGES) + 1)
        self._take_reports(state)
        return grid, skips

    def decode(
        self, grid: torch.Tensor, skips: Sequence[torch.Tensor], window: DecodeWindow | None = None
    ) -> torch.Tensor:
        """The cascaded upsampler and head on the token grid ``[B, N, hidden]`` and the CNN skips (1/8, 1/4, 1/2),
        over the whole image or only over ``window`` (background outside; docs/design.md §6.1); the click guidance
        of this forward pass, if any, joins before the head."""
        x = grid.transpose(1, 2).reshape(grid.shape[0], self.hidden_size, *self.feat_size)
        strides = [self.patch_size, *(2 ** (3 - index) for index in range(len(skips)))]
        count = len(skips)

        def head(x: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
            click_maps = rest[count] if len(rest) > count else None
            return self.segmentation_head(self._click_guide(self.decoder(x, rest[:count]), click_maps))

        maps, strides = self._with_click_maps([x, *skips], strides)
        return self._with_coarse_in_graph(run_decoder(window, head, maps, strides))

    @property
    def vit_tokens(self) -> int:
        """Tokens on the ViT grid."""
        return math.prod(self.feat_size)

    def forward(self, image: torch.Tensor, boxes: torch.Tensor | None = None, points: torch.Tensor | None = None,
                point_labels: torch.Tensor | None = None, previous_mask: torch.Tensor | None = None,
                prompt_class: torch.Tensor | None = None) -> torch.Tensor:
        check_image(image, self.in_channels, self.img_size)
        boxes = check_network_boxes(boxes, image.shape[0], self.img_size)
        boxes = self._read_clicks(points, point_labels, previous_mask, boxes, self.img_size, image.shape[0],
                                  prompt_class)
        grid, skips = self.encode(image, boxes)
        return self._clicks_done(self.decode(grid, skips, self._decode_window(boxes, self.img_size, self.patch_size)))
