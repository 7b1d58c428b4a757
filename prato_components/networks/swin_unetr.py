"""Swin UNETR with token pruning at its patch-merging outputs, built on MONAI's ``SwinUNETR``.

The pruned network *is* a MONAI ``SwinUNETR`` (same modules, same state-dict keys) plus one pruner per pruned
stage under ``pruners.<stage>``; :func:`patch_swin_unetr` turns an existing ``SwinUNETR`` into one in place.

Stages. MONAI's Swin encoder is ``patch_embed -> layers1 -> layers2 -> layers3 -> layers4``, every ``layersN``
ending in a patch merging, and the decoder taps ``x0 .. x4``: ``x0`` after the patch embedding, ``xs`` the output
of the ``s``-th patch merging. **Stage ``s`` in {1, 2, 3} is the output of the ``s``-th patch merging** (grid
``img / (patch_size * 2^s)``, width ``feature_size * 2^s``, ``StageInput.stride = patch_size * 2^s``): the tap
``xs`` sees the tokens before pruning, ``layers{s+1}`` runs on the kept ones. Stage 4 (the last merging) feeds only
the decoder bottleneck, so pruning there would save nothing. The default ``(1, 2)`` matches the paper's "stages
{1, 2}": in UNETR those are the first two decoder taps after the first one (blocks 3 and 6), here the first two
merging outputs ``x1``, ``x2``, i.e. the first two tap boundaries inside the transformer.

Later grids. A token of stage ``s + 1`` (a patch-merging parent) is **alive if any of its ``2^D`` children was
kept** (kept sets shrink monotonically, like the UNETR executor; a pruner at ``s + 1`` prunes among the alive
parents only). The executor is the shared one: one :class:`~prato_components.tokens.TokenState` per grid, the
next grid's continued from the last (:meth:`TokenState.next_grid`, starting with the alive parents live), builds
the pruners' ``StageInput``, applies their selections, reports and restores (docs/design.md §5). Alive counts differ
per image, so it holds the live tokens padded to the batch maximum (mode ``padded``, with ``StageInput.valid``),
and the Swin blocks read them as one flat list over the batch (``[T, C]`` with their flat grid positions
``b * N + cell``, :func:`~prato_components.networks.swin.live.live_tokens`), which norms, linears, MLPs and window
attention consume without padding.

Saving work (SparseViT's window skipping). In every Swin block, ``norm1``, ``qkv``, ``proj``, ``norm2`` and the
MLP run on the live tokens only. The live tokens' ``q, k, v`` are scattered into the windows that hold at least
one live token (for the block's own partition, shifted or not), all kept windows of the whole batch are attended
as one batch of windows (with the relative position bias and the shifted-window mask), and the live tokens'
outputs are gathered back. Windows with no live token are never built. **Pruned tokens inside a kept window are
masked out of attention as keys** (not entered with carried values): then a kept token computes exactly what
the "full length, pruned keys masked" reference computes (:func:`swin_block_forward_masked`), their ``qkv`` is
never needed, and the result does not depend on which windows happen to group kept tokens. Padding slots that
MONAI adds when a grid is not a multiple of the window stay keys with ``qkv(0)``, as in MONAI.

Filling. The grid is restored before every patch merging and decoder tap: pruned positions hold their value when
pruned (``fill="carry"``) or zero (``fill="zero"``, the literal ``beta * Y``). Patch merging (MONAI's own module)
runs on the restored grid; a parent with no alive child is filled by the same policy in the decoder tap
(``carry``: the merging of its carried children; ``zero``: 0). A pruner's ``StageInput.feature_map`` is that
merged grid before the tap's zeroing.

Attention-based pruners (Evo-ViT, TRAM: ``needs_attention``). The blocks of the layer before such a pruner's stage
return their window attention (:class:`~prato_components.tokens.attention.WindowAttention`, the maps of the attended
windows on that layer's grid, one stage finer than the pruner's); a layer with nothing pruned yet then runs on the
live-token path (every token live, the same output as MONAI's layer). A pruner's fast path
(:meth:`TokenPruner.placeholder_weights`, Evo-ViT) runs one representative token per image through every block of
the later layers, as one query over its image's live tokens (:func:`swin_block_run`), and adds its residual to
every cell that is not live (the carried values the patch merging reads).

Completion (STP's MTA). One module per decoder tap that reads pruned positions (``x_t`` after the first pruned
stage), at the width of grid ``t - 1``: it completes the restored grid, with where each cell was pruned
(the grid's :meth:`TokenState.pruned_at`; a parent whose children were all pruned counts as pruned when its last
child was), and that completed grid is merged for the tap only; the next layer merges the carried grid.

Export. ``torch.export`` traces the same path: the number of kept windows (``nonzero`` in :func:`plan_windows`),
the alive parents and the stage-2 padded width are unbacked symbolic sizes (bounded with ``torch._check``), so the
exported graph keeps the pruning decisions *and* the window skipping. While exporting, the pruned-key mask is
always built (a zero bias when every key is live) and the pruner always gets the padded view with ``valid``.

Where the savings are. Pruning thins the transformer of ``layers{s+1}`` onward; MONAI's convolutional encoders and
decoder run on full grids and dominate SwinUNETR's FLOPs (about three quarters at 224x224, feature size 48), and
window attention only shrinks when whole windows empty, which needs a spatially coherent selection (a trained
prompt-driven one). A scattered selection still saves every linear layer and MLP on the pruned tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from monai.networks.nets import SwinUNETR

from prato_components.networks.clicks import ClickPromptMixin
from prato_components.networks.inputs import check_network_boxes
from prato_components.networks.region import RegionDecodingMixin, run_decoder
from prato_components.networks.swin import (
    LayerWindows,
    live_tokens,
    parent_stages,
    parents,
    set_live_tokens,
    swin_block_forward_masked,
)
from prato_components.networks.swin.blocks import swin_block_run
from prato_components.networks.vit_pruning import (
    PrunedNetworkMixin,
    PrunerSpec,
    PruningSettings,
    build_completions,
    patched_class,
    stage_pruners,
)
from prato_components.tokens.executor import TokenState, check_executor

__all__ = ["SWIN_EXECUTORS", "SWIN_STAGES", "PrunedSwinUNETR", "WindowReport", "patch_swin_unetr"]

SWIN_STAGES = (1, 2, 3)
SWIN_EXECUTORS = ("gather", "attention_mask")


@dataclass
class WindowReport:
    """Windows attended by one block in the last forward pass (whole batch) of a pruned Swin stage."""

    layer: int
    block: int
    windows_kept: int
    windows_total: int


def _grid_tokens(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, *G]`` -> ``[B, N, C]`` (a view of MONAI's channels-last maps)."""
    return x.flatten(2).transpose(1, 2)


class PrunedSwinUNETR(ClickPromptMixin, RegionDecodingMixin, PrunedNetworkMixin, SwinUNETR):
    """MONAI ``SwinUNETR`` that drops tokens at patch-merging outputs and skips windows with no live token;
    called as ``net(image, boxes=None, points=None, point_labels=None)`` (clicks: docs/design.md §6.2). See the
    module docstring for stages, window skipping and filling.

    Args:
        pruner: a :class:`TokenPruner` (deep-copied to every pruned stage: it must accept every stage's width), a
            registered pruner name or a factory (built per stage with ``pruner_kwargs`` and that stage's ``dim =
            feature_size * 2^s``), a mapping ``{stage: TokenPruner}``, or ``None`` for the unpruned baseline.
        prune_stages: patch-merging outputs to prune at, a subset of ``(1, 2, 3)``; default ``(1, 2)``.
        executor: ``"gather"`` (live tokens only, window skipping; ``"padded"`` is accepted as an alias since the flat
            token list handles any count per image; both run the ``TokenState`` mode ``padded``) or
            ``"attention_mask"`` (full grid, pruned keys masked: the reference; saves nothing). A pruner's
            ``train_executor`` is honoured the same way while training (:attr:`executor_aliases`: ``mask`` runs as
            ``attention_mask``).
        fill: pruned positions in restored grids: ``"carry"`` (value when pruned) or ``"zero"``.
        pruner_kwargs: keyword arguments for a pruner given by name.
        completion: a learned fill of the pruned positions for the decoder (STP's MTA), one per tap that reads pruned
            positions (``x_t`` for ``t`` after the first pruned stage, merged from grid ``t - 1`` of width
            ``feature_size * 2^(t-1)``): a factory called as ``completion(dim=width, taps=(t,))`` or a mapping
            ``{t: module}``; each runs as ``module(grid [B, N, C], TokenState, t)`` on the restored grid before the
            patch merging that feeds tap ``t`` (the next Swin layer still merges the carried grid, as the original
            MTA only feeds the decoder).
        decode_region: ``"full"`` or ``"box"``: run the convolutional encoders and decoders only over the prompt
            boxes plus ``decode_margin`` voxels (snapped to the deepest map's 32-voxel cells), background outside
            (docs/design.md §6.1); the Swin transformer still sees the whole image.
        decode_margin: voxels added around the boxes' union for ``decode_region="box"``.
        coarse_head: a 1x1 convolution on the (detached) deepest tap ``x4``, for ``decode_region="guided"``
            (where the coarse head finds foreground outside the boxes, the decoder runs too).
        coarse_threshold: the coarse foreground probability from which ``"guided"`` decodes outside the box
            window too (default 0.4; docs/design.md §6.1).
        click_prompts: build the click encoder (``networks.clicks``): the click embedding joins the merged grid of
            stage 1 (after the tap ``x1``), the full-resolution guidance the output of ``encoder1``.
        swin_kwargs: everything MONAI's ``SwinUNETR`` takes (``in_channels``, ``out_channels``, ``feature_size``,
            ``spatial_dims``, ``depths``, ``num_heads``, ``window_size`` ...).

    After each forward pass, :attr:`token_report` lists per pruned stage the tokens in and kept per image,
    :attr:`block_report` per Swin block (all four layers) the live tokens it ran on (the token sparsity,
    :meth:`kept_fraction`), :attr:`window_report` the windows attended per block of the pruned Swin layers,
    :attr:`aux_loss` and :attr:`aux_logits` the pruners' side terms, and :attr:`pruned_grid_tokens` the grid size of
    the last pruned stage.
    """

    # the live tokens run as a flat list (``TokenState`` mode ``padded``: any count per image; at equal counts the same
    # as ``gather``); the full-grid reference masks pruned keys in every mode that keeps the full length
    executor_aliases = {"gather": "padded", "mask": "attention_mask"}

    def __init__(
        self,
        *,
        pruner: PrunerSpec = None,
        prune_stages: Sequence[int] = (1, 2),
        executor: str = "gather",
        fill: str = "carry",
        pruner_kwargs: Mapping | None = None,
        completion=None,
        decode_region: str = "full",
        decode_margin: int = 16,
        coarse_head: bool = False,
        coarse_threshold: float = 0.4,
        click_prompts: bool = False,
        **swin_kwargs,
    ) -> None:
        super().__init__(**swin_kwargs)
        settings = PruningSettings(pruner, prune_stages, executor, fill, pruner_kwargs, completion, decode_region,
                                   decode_margin, coarse_head, coarse_threshold,
                                   click_prompts)
        self._setup_decoding(settings.decode_region, settings.decode_margin, settings.coarse_threshold)
        self._setup_pruning(settings)

    def _setup_pruning(self, settings: PruningSettings) -> None:
        # the flat live-token list takes any count
        executor, fill = "gather" if settings.executor == "padded" else settings.executor, settings.fill
        check_executor(executor, fill, SWIN_EXECUTORS)
        vit = self.swinViT
        dims = {s: int(vit.embed_dim * 2**s) for s in SWIN_STAGES}  # the first three merging outputs are the boundaries
        num_classes = self.out.conv.conv.out_channels
        pruners = stage_pruners("SwinUNETR", settings.pruner, settings.pruner_kwargs, settings.prune_stages, dims,
                                num_classes, hierarchical=True)
        if pruners and (vit.use_v2 or any(getattr(vit, "_per_stage_hyena", []))):
            raise ValueError("pruned SwinUNETR supports MONAI's default Swin blocks (use_v2=False, use_hyena=False)")
        stages = sorted(pruners)
        self._install_pruners(pruners, executor, fill, SWIN_EXECUTORS)
        # tap t is merged from grid t - 1 (width embed_dim * 2^(t-1)); it reads pruned positions after the first stage
        taps = range(stages[0] + 1, len(SWIN_STAGES) + 2) if stages else ()
        self.completion = build_completions(settings.completion, {t: int(vit.embed_dim * 2 ** (t - 1)) for t in taps})
        self.in_channels = vit.patch_embed.proj.in_channels
        self.spatial_dims = len(vit.window_size)
        # the deepest tap x4: the output of the fourth layer, 16 x embed_dim channels at 1/32 of the input
        self._setup_coarse_head(settings.coarse_head, 16 * int(vit.embed_dim), self.out.conv.conv.out_channels,
                                self.spatial_dims)
        # the clicks join stage 1: the merged grid at 2 x patch_size, 2 x embed_dim channels
        self._setup_clicks(settings.click_prompts, self.spatial_dims, 2 * int(vit.embed_dim), 2 * self.patch_size,
                           self.encoder1.layer.conv2.conv.out_channels, self.out.conv.conv.out_channels)
        self.window_report: list[WindowReport] = []
        self.pruned_grid_tokens = 1
        self._layouts: dict = {}  # WindowLayout per (grid, window, shift, device): fixed for a given input size

    # ------------------------------------------------------------------ forward
    def forward(self, x_in: torch.Tensor, boxes: torch.Tensor | None = None, points: torch.Tensor | None = None,
                point_labels: torch.Tensor | None = None, previous_mask: torch.Tensor | None = None,
                prompt_class: torch.Tensor | None = None) -> torch.Tensor:
        dims = self.spatial_dims
        if x_in.ndim != dims + 2:
            raise ValueError(
                f"expected an image of shape [B, C, {', '.join('*' * dims)}] ({dims}D), got {tuple(x_in.shape)}"
            )
        if x_in.shape[1] != self.in_channels:
            raise ValueError(f"the network expects {self.in_channels} input channel(s), got {x_in.shape[1]}")
        spatial_shape = tuple(x_in.shape[2:])  # MONAI's _check_input_size in plain ints (its numpy does not compile)
        wrong_dims = [axis + 2 for axis, s in enumerate(spatial_shape) if s % self.patch_size**5]
        if wrong_dims:
            raise ValueError(f"spatial dimensions {wrong_dims} of input image (spatial shape: {spatial_shape}) must be "
                             f"divisible by {self.patch_size}**5.")
        size = tuple(x_in.shape[2:])
        boxes = check_network_boxes(boxes, x_in.shape[0], size)
        boxes = self._read_clicks(points, point_labels, previous_mask, boxes, size, x_in.shape[0],
                                  prompt_class)
        hidden_states_out = self._encode(x_in, boxes)
        strides = [tuple(s // h for s, h in zip(size, tap.shape[2:])) for tap in hidden_states_out]
        self._coarse_pass(hidden_states_out[-1], boxes, size, strides[-1])
        window = self._decode_window(boxes, size, strides[-1])
        maps, strides = self._with_click_maps([x_in, *hidden_states_out], [1, *strides])
        return self._clicks_done(self._with_coarse_in_graph(run_decoder(window, self._decode, maps, strides)))

    def _coarse_map(self, x: torch.Tensor) -> torch.Tensor:
        """The coarse head on the deepest tap: the Swin encoder without a prompt, no decoder."""
        return self.coarse_head(self._encode(x, None)[-1])

    def _decode(self, x_in: torch.Tensor, *taps: torch.Tensor) -> torch.Tensor:
        """MONAI's convolutional encoders and decoders on the image and the five taps ``x0 .. x4`` (and the click
        maps, a sixth, whose guidance joins ``encoder1``'s output)."""
        enc0 = self._reused_on_window("encoder1", x_in, lambda: self.encoder1(x_in))  # image only
        enc0 = self._click_guide(enc0, taps[5] if len(taps) > 5 else None)
        enc1 = self._reused_on_window("encoder2", taps[0], lambda: self.encoder2(taps[0]))  # x0 and x1: before the
        enc2 = self._reused_on_window("encoder3", taps[1], lambda: self.encoder3(taps[1]))  # clicks join
        enc3 = self.encoder4(taps[2])
        dec4 = self.encoder10(taps[4])
        dec3 = self.decoder5(dec4, taps[3])
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        dec0 = self.decoder2(dec1, enc1)
        return self.out(self.decoder1(dec0, enc0))

    def _encode(self, x_in: torch.Tensor, boxes: torch.Tensor | None) -> list[torch.Tensor]:
        """MONAI's ``SwinTransformer.forward`` with pruning: the five decoder taps ``x0 .. x4`` (channel first).

        One :class:`~prato_components.tokens.TokenState` per grid, continued from grid to grid
        (:meth:`TokenState.next_grid`), does what every backbone's executor does: the pruners' stage input, applying
        their selections, the stage and block reports, the side terms and restoring the grid (docs/design.md §5)."""
        vit = self.swinViT
        merged = self._reused("embedding", lambda: vit.pos_drop(vit.patch_embed(x_in)))  # the map the next layer reads
        outs = [vit.proj_out(merged, self.normalize)]
        state = TokenState(_grid_tokens(merged), tuple(merged.shape[2:]), self.executor_mode(), self.fill)
        self.window_report = []
        layers = [vit.layers1[0], vit.layers2[0], vit.layers3[0], vit.layers4[0]]

        def run_layer(number: int, current: TokenState, attentions: list) -> torch.Tensor | None:
            nonlocal merged
            layer = layers[number - 1]

            def run() -> tuple:
                if not current.pruned and not self._wants_attention(number):
                    out = layer(merged.contiguous())  # nothing pruned yet: MONAI's own layer
                    for _ in layer.blocks:
                        current.record_block()
                    return out, out, None, []
                reports = len(self.window_report)
                return (*self._pruned_layer(number, layer, current, attentions), self.window_report[reports:])

            if number == 1:  # image only (the clicks join after it)
                merged, tap, alive, windows = self._image_layer(current, attentions, run)
                self.window_report = list(windows)  # layer 1's, also when replayed
            else:
                merged, tap, alive, _ = run()
            outs.append(vit.proj_out(tap, self.normalize))
            return alive

        def next_grid(number: int, current: TokenState, alive: torch.Tensor | None) -> TokenState:
            nonlocal merged
            pruned_before = None  # where the dead cells of the next grid were pruned, for a completion
            if alive is not None and self.completion is not None:
                pruned_before = parent_stages(current.pruned_at(), current.grid_shape, alive)
            if number == 1:  # the clicks join before the first pruner and layer 2 (the tap x1 saw the image only)
                merged = self._add_click_tokens(merged, channels_first=True)
            state = current.next_grid(_grid_tokens(merged), tuple(merged.shape[2:]), alive, pruned_before)
            if number in self.prune_stages:
                self.pruned_grid_tokens = state.grid_tokens
            return state

        def stride(number: int, current: TokenState) -> tuple[float, ...]:
            return tuple(float(self.patch_size * 2**number) for _ in current.grid_shape)

        self._take_reports(self._run_stages(state, len(layers), run_layer, next_grid, stride, boxes))
        return outs

    def _pruned_layer(self, number: int, layer, state: TokenState, attentions: list):
        """One Swin layer (its blocks and patch merging) on the live tokens of ``state`` (updated in place): the
        merged grid that the next layer reads, the decoder tap (the same, or merged from the completed grid) and the
        alive cells of the merged grid (``[B, N']`` bool: the parents of live cells; ``None`` while nothing is
        pruned)."""
        tokens, index = live_tokens(state)
        grid, batch, num_cells, channels = state.grid_shape, state.tokens.shape[0], state.grid_tokens, tokens.shape[1]
        want = self._wants_attention(number)
        alive = state.alive_grid()  # [B, N]
        fast_path = self._placeholder_weights(number, state)  # Evo-ViT's
        windows = LayerWindows(index, grid, batch, self._layouts)
        full = state.mode == "attention_mask"  # the reference: the full grid, pruned keys masked
        if full:  # the masked blocks take a hard key mask: the straight-through keep weights go with the tokens
            h = state.tokens if state.policy is None else state.tokens * state.policy.unsqueeze(-1)
        for block_number, block in enumerate(layer.blocks):
            # the representative of the pruned cells, from the values they carry (the weights are 0 on live cells)
            rep = None if fast_path is None else state.representative(fast_path[1]).squeeze(1)
            if full:
                out = None
                if want or rep is not None:  # attention and representative from the live tokens, as in gather
                    live = h.reshape(-1, channels).index_select(0, index)
                    out = swin_block_run(block, live, index, grid, batch, windows.plan(block), want, rep)
                h = swin_block_forward_masked(block, h.view(batch, *grid, channels), alive.view(batch, *grid))
                h = h.reshape(batch, num_cells, channels)
            else:
                plan = windows.plan(block)
                self.window_report.append(WindowReport(number, block_number, plan.num_kept, plan.num_windows))
                out = swin_block_run(block, tokens, index, grid, batch, plan, want, rep)
                tokens = out.tokens
            state.record_block()
            if want:
                attentions.append(out.attention)
            if rep is not None:  # every placeholder moves by the representative's residual
                state.evolve_placeholders(fast_path[0], rep.unsqueeze(1), out.representative.unsqueeze(1))
        if full:
            state.tokens = h
        else:
            set_live_tokens(state, tokens, index)
        restored = state.restore()  # [B, N, C]
        merged = layer.downsample(restored.view(batch, *grid, channels))  # [B, *G', C'] on the restored grid
        merged = merged.movedim(-1, 1)  # a channels-last view, as MONAI's own layers return it (no copy)
        next_alive = parents(index, grid, batch).view(batch, -1) if state.pruned else None
        tap = merged
        if self.completion is not None and str(number) in self.completion and state.pruned:
            completed = self.completion[str(number)](restored, state, number)
            tap = layer.downsample(completed.view(batch, *grid, channels)).movedim(-1, 1)
        elif self.fill == "zero" and next_alive is not None:  # parents with no alive child
            tap = merged * next_alive.view(batch, 1, *merged.shape[2:]).to(merged.dtype)
        return merged, tap, next_alive

    # ------------------------------------------------------------------ reports and weights
def patch_swin_unetr(model: SwinUNETR, pruner: PrunerSpec = None, **settings) -> PrunedSwinUNETR:
    """Turn an existing MONAI ``SwinUNETR`` (weights and all) into a :class:`PrunedSwinUNETR` in place; ``settings``
    are the other :class:`~prato_components.networks.vit_pruning.PruningSettings` (``prune_stages``, ``executor``
    ...). A subclass of ``SwinUNETR`` keeps its own class under the pruned one (:func:`patched_class`)."""
    if not isinstance(model, SwinUNETR):
        raise TypeError(f"patch_swin_unetr expects a monai SwinUNETR, got {type(model).__name__}")
    config = PruningSettings(pruner, **settings)
    model.__class__ = patched_class(type(model), PrunedSwinUNETR)
    model._setup_decoding(config.decode_region, config.decode_margin, config.coarse_threshold)
    model._setup_pruning(config)
    return model
