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
parents only). Alive counts then differ per image, so the live tokens are kept as one flat list over the
batch (``[T, C]`` with their flat grid positions ``b * N + cell``), which norms, linears, MLPs and window
attention consume without padding; pruners see a padded ``[B, n, C]`` view with ``StageInput.valid``.

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
(:class:`~prato_components.tokens.stage.PrunedGrid`; a parent whose children were all pruned counts as pruned when
its last child was), and that completed grid is merged for the tap only; the next layer merges the carried grid.

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

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from monai.networks.nets import SwinUNETR

from prato_components.networks.inputs import check_network_boxes
from prato_components.networks.region import RegionDecodingMixin, run_decoder
from prato_components.networks.swin.blocks import swin_block_forward, swin_block_forward_masked, swin_block_run
from prato_components.networks.swin.windows import WindowLayout, WindowPlan, block_layout, plan_windows, window_layout
from prato_components.networks.vit_pruning import (
    PrunedNetworkMixin,
    build_completions,
    build_pruner,
    check_stage_pruner,
    pruned_stages,
)
from prato_components.pruners.base import TokenPruner
from prato_components.tokens.attention import coarse_cells
from prato_components.tokens.executor import BlockReport, StageReport, check_executor
from prato_components.tokens.stage import PrunedGrid, StageInput, TokenSelection, straight_through

__all__ = [
    "SWIN_EXECUTORS",
    "SWIN_STAGES",
    "PrunedSwinUNETR",
    "WindowLayout",
    "WindowPlan",
    "WindowReport",
    "block_layout",
    "patch_swin_unetr",
    "plan_windows",
    "swin_block_forward",
    "swin_block_forward_masked",
    "swin_block_run",
    "window_layout",
]

SWIN_STAGES = (1, 2, 3)
SWIN_EXECUTORS = ("gather", "attention_mask")


@dataclass
class WindowReport:
    """Windows attended by one block in the last forward pass (whole batch) of a pruned Swin stage."""

    layer: int
    block: int
    windows_kept: int
    windows_total: int


@dataclass
class _Live:
    """The live tokens of one grid, flat over the batch."""

    tokens: torch.Tensor  # [T, C]
    index: torch.Tensor  # [T] image * N + cell, ascending


@dataclass
class _Pass:
    """What one forward pass of the pruned encoder carries from layer to layer."""

    mode: str
    boxes: torch.Tensor | None
    memory: dict = field(default_factory=dict)  # StageInput.memory, shared by the stages
    reports: list = field(default_factory=list)
    blocks: list = field(default_factory=list)
    windows: list = field(default_factory=list)
    aux_losses: list = field(default_factory=list)
    aux_logits: list = field(default_factory=list)
    attentions: list = field(default_factory=list)  # WindowAttention since the last pruned stage, when wanted
    stage_of: torch.Tensor | None = None  # [B * N] current grid: stage each cell was pruned at (0: alive), for MTA


def _unravel(cell: torch.Tensor, grid_shape: Sequence[int]) -> list[torch.Tensor]:
    coords = []
    for size in reversed(grid_shape):
        coords.append(cell % size)
        cell = torch.div(cell, size, rounding_mode="floor")
    return coords[::-1]


def _parents(index: torch.Tensor, grid_shape: Sequence[int], batch_size: int) -> torch.Tensor:
    """Flat indices (ascending) of the patch-merging parents of the live cells ``index`` on the next grid."""
    num_cells = math.prod(grid_shape)
    image = torch.div(index, num_cells, rounding_mode="floor")
    coords = _unravel(index - image * num_cells, grid_shape)
    next_shape = [math.ceil(g / 2) for g in grid_shape]
    parent = torch.zeros_like(index)
    for c, size in zip(coords, next_shape):
        parent = parent * size + torch.div(c, 2, rounding_mode="floor")
    alive = torch.zeros(batch_size * math.prod(next_shape), dtype=torch.bool, device=index.device)
    alive[image * math.prod(next_shape) + parent] = True
    return alive.nonzero().squeeze(1)


def _parent_stages(stage_of: torch.Tensor, grid_shape: Sequence[int], next_index: torch.Tensor, batch_size: int):
    """The stage at which each cell of the next grid was pruned: a parent dies with its last child (the latest
    stage among its children), alive parents (``next_index``) hold 0."""
    next_shape = [math.ceil(g / 2) for g in grid_shape]
    num_cells, num_next = math.prod(grid_shape), math.prod(next_shape)
    parent = coarse_cells(grid_shape, next_shape).to(stage_of.device)
    offsets = torch.arange(batch_size, device=stage_of.device).unsqueeze(1) * num_next
    parent = (parent.unsqueeze(0) + offsets).reshape(batch_size * num_cells)
    stages = torch.zeros(batch_size * num_next, dtype=stage_of.dtype, device=stage_of.device)
    stages = stages.scatter_reduce(0, parent, stage_of, "amax")
    return stages.index_fill(0, next_index, 0)


def _build_pruners(
    pruner, pruner_kwargs: Mapping | None, stages: Sequence[int], dims: Mapping[int, int], num_classes: int
) -> dict:
    """One pruner per stage: a name or a factory is built with that stage's width ``dim`` (and ``num_classes`` where
    the pruner takes it), an instance is deep-copied, a mapping gives each stage its own."""
    if pruner is None:
        return {}
    if isinstance(pruner, Mapping):
        missing = [s for s in stages if s not in pruner and str(s) not in pruner]
        if missing:
            raise ValueError(f"the pruner mapping has no pruner for stage(s) {missing}")
        return {s: pruner[s] if s in pruner else pruner[str(s)] for s in stages}
    if isinstance(pruner, TokenPruner):
        return {s: copy.deepcopy(pruner) for s in stages}
    if not isinstance(pruner, str) and not callable(pruner):
        raise TypeError(
            "pruner must be a TokenPruner, a registered name, a factory, a mapping or None, "
            f"got {type(pruner).__name__}"
        )
    return {s: build_pruner(pruner, pruner_kwargs, dims[s], num_classes) for s in stages}


class PrunedSwinUNETR(RegionDecodingMixin, PrunedNetworkMixin, SwinUNETR):
    """MONAI ``SwinUNETR`` that drops tokens at patch-merging outputs and skips windows with no live token;
    called as ``net(image, boxes=None)``. See the module docstring for stages, window skipping and filling.

    Args:
        pruner: a :class:`TokenPruner` (deep-copied to every pruned stage: it must accept every stage's width), a
            registered pruner name or a factory (built per stage with ``pruner_kwargs`` and that stage's ``dim =
            feature_size * 2^s``), a mapping ``{stage: TokenPruner}``, or ``None`` for the unpruned baseline.
        prune_stages: patch-merging outputs to prune at, a subset of ``(1, 2, 3)``; default ``(1, 2)``.
        executor: ``"gather"`` (live tokens only, window skipping; ``"padded"`` is accepted as an alias since the flat
            token list handles any count per image) or ``"attention_mask"`` (full grid, pruned keys masked: the
            reference; saves nothing). A pruner's ``train_executor`` is honoured the same way while training.
        fill: pruned positions in restored grids: ``"carry"`` (value when pruned) or ``"zero"``.
        pruner_kwargs: keyword arguments for a pruner given by name.
        decode_region: ``"full"`` or ``"box"``: run the convolutional encoders and decoders only over the prompt
            boxes plus ``decode_margin`` voxels (snapped to the deepest map's 32-voxel cells), background outside
            (docs/design.md §6.1); the Swin transformer still sees the whole image.
        decode_margin: voxels added around the boxes' union for ``decode_region="box"``.
        completion: a learned fill of the pruned positions for the decoder (STP's MTA), one per tap that reads pruned
            positions (``x_t`` for ``t`` after the first pruned stage, merged from grid ``t - 1`` of width
            ``feature_size * 2^(t-1)``): a factory called as ``completion(dim=width, taps=(t,))`` or a mapping
            ``{t: module}``; each runs as ``module(grid [B, N, C], PrunedGrid, t)`` on the restored grid before the
            patch merging that feeds tap ``t`` (the next Swin layer still merges the carried grid, as the original
            MTA only feeds the decoder).
        swin_kwargs: everything MONAI's ``SwinUNETR`` takes (``in_channels``, ``out_channels``, ``feature_size``,
            ``spatial_dims``, ``depths``, ``num_heads``, ``window_size`` ...).

    After each forward pass, :attr:`token_report` lists per pruned stage the tokens in and kept per image,
    :attr:`block_report` per Swin block (all four layers) the live tokens it ran on (the token sparsity,
    :meth:`kept_fraction`), :attr:`window_report` the windows attended per block of the pruned Swin layers,
    :attr:`aux_loss` and :attr:`aux_logits` the pruners' side terms, and :attr:`num_tokens` the grid size of the
    last pruned stage.
    """

    def __init__(
        self,
        *,
        pruner: TokenPruner | str | Mapping[int, TokenPruner] | None = None,
        prune_stages: Sequence[int] = (1, 2),
        executor: str = "gather",
        fill: str = "carry",
        pruner_kwargs: Mapping | None = None,
        decode_region: str = "full",
        decode_margin: int = 16,
        completion=None,
        **swin_kwargs,
    ) -> None:
        super().__init__(**swin_kwargs)
        self._setup_pruning(pruner, prune_stages, executor, fill, pruner_kwargs, completion)
        self._setup_decoding(decode_region, decode_margin)

    def _setup_pruning(
        self, pruner, prune_stages: Sequence[int], executor: str, fill: str, pruner_kwargs=None, completion=None
    ) -> None:
        stages = pruned_stages("SwinUNETR", pruner, prune_stages, SWIN_STAGES)  # the first three merging outputs
        executor = "gather" if executor == "padded" else executor  # the flat live-token list takes any count
        check_executor(executor, fill, SWIN_EXECUTORS)
        vit = self.swinViT
        if stages and (vit.use_v2 or any(getattr(vit, "_per_stage_hyena", []))):
            raise ValueError("pruned SwinUNETR supports MONAI's default Swin blocks (use_v2=False, use_hyena=False)")
        dims = {s: int(vit.embed_dim * 2**s) for s in SWIN_STAGES}
        pruners = _build_pruners(pruner, pruner_kwargs, stages, dims, self.out.conv.conv.out_channels)
        for stage, module in pruners.items():
            check_stage_pruner("SwinUNETR", stage, module)
        self._install_pruners(pruners, executor, fill, SWIN_EXECUTORS)
        # tap t is merged from grid t - 1 (width embed_dim * 2^(t-1)); it reads pruned positions after the first stage
        taps = range(stages[0] + 1, len(SWIN_STAGES) + 2) if stages else ()
        self.completion = build_completions(completion, {t: int(vit.embed_dim * 2 ** (t - 1)) for t in taps})
        self.in_channels = vit.patch_embed.proj.in_channels
        self.spatial_dims = len(vit.window_size)
        self.window_report: list[WindowReport] = []
        self.num_tokens = 1
        self._layouts: dict = {}  # WindowLayout per (grid, window, shift, device): fixed for a given input size

    # ------------------------------------------------------------------ forward
    def forward(self, x_in: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        dims = self.spatial_dims
        if x_in.ndim != dims + 2:
            raise ValueError(
                f"expected an image of shape [B, C, {', '.join('*' * dims)}] ({dims}D), got {tuple(x_in.shape)}"
            )
        if x_in.shape[1] != self.in_channels:
            raise ValueError(f"the network expects {self.in_channels} input channel(s), got {x_in.shape[1]}")
        self._check_input_size(tuple(x_in.shape[2:]))
        boxes = check_network_boxes(boxes, x_in.shape[0], tuple(x_in.shape[2:]))
        hidden_states_out = self._encode(x_in, boxes)
        size = tuple(x_in.shape[2:])
        strides = [tuple(s // h for s, h in zip(size, tap.shape[2:])) for tap in hidden_states_out]
        window = self._decode_window(boxes, size, strides[-1])
        return run_decoder(window, self._decode, [x_in, *hidden_states_out], [1, *strides])

    def _decode(self, x_in: torch.Tensor, *taps: torch.Tensor) -> torch.Tensor:
        """MONAI's convolutional encoders and decoders on the image and the five taps ``x0 .. x4``."""
        enc0 = self.encoder1(x_in)
        enc1 = self.encoder2(taps[0])
        enc2 = self.encoder3(taps[1])
        enc3 = self.encoder4(taps[2])
        dec4 = self.encoder10(taps[4])
        dec3 = self.decoder5(dec4, taps[3])
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        dec0 = self.decoder2(dec1, enc1)
        return self.out(self.decoder1(dec0, enc0))

    def _mode(self) -> str:
        if self.training and self.prune_stages:
            mode = self.pruners[str(self.prune_stages[0])].train_executor
            if mode is not None:
                return "attention_mask" if mode in ("attention_mask", "mask") else "gather"
        return self.executor

    def _encode(self, x_in: torch.Tensor, boxes: torch.Tensor | None) -> list[torch.Tensor]:
        """MONAI's ``SwinTransformer.forward`` with pruning: the five decoder taps ``x0 .. x4`` (channel first)."""
        vit = self.swinViT
        batch = x_in.shape[0]
        run = _Pass(self._mode(), boxes)
        x = vit.pos_drop(vit.patch_embed(x_in))
        outs = [vit.proj_out(x, self.normalize)]
        live: _Live | None = None
        layers = [vit.layers1[0], vit.layers2[0], vit.layers3[0], vit.layers4[0]]
        for number, layer in enumerate(layers, start=1):
            run.blocks += self._block_reports(layer, x, live)
            if live is None and self._wants_attention(number):  # run the unpruned layer on the live-token path
                flat = x.flatten(2).transpose(1, 2).reshape(-1, x.shape[1])
                live = _Live(flat, torch.arange(flat.shape[0], device=x.device))
            if live is None:
                x = tap = layer(x.contiguous())  # nothing pruned yet: MONAI's own layer
            else:
                x, tap, live = self._pruned_layer(number, layer, x, live, run)
            outs.append(vit.proj_out(tap, self.normalize))
            if number in self.prune_stages:
                live = self._prune(number, x, live, run)
        self.token_report, self.block_report, self.window_report = run.reports, run.blocks, run.windows
        self.aux_loss = torch.stack(run.aux_losses).sum() if run.aux_losses else None
        self.aux_logits = run.aux_logits
        return outs

    def _wants_attention(self, number: int) -> bool:
        """Whether the blocks of layer ``number`` return their window attention: the next pruned stage (the
        merging output ``s >= number``) has a pruner that needs attention maps."""
        upcoming = next((s for s in self.prune_stages if s >= number), None)
        return upcoming is not None and self.pruners[str(upcoming)].needs_attention

    def _placeholder_weights(self, number: int, alive: torch.Tensor, grid, run: _Pass, dtype):
        """``[B, N]`` weights of the representative token of layer ``number``'s pruned tokens (``~alive``, ``[B * N]``):
        the fast path of the pruner of the last pruned stage before the layer
        (:meth:`TokenPruner.placeholder_weights`), or ``None``."""
        stage = max((s for s in self.prune_stages if s < number), default=None)
        if stage is None:
            return None
        placeholders = ~alive.view(-1, math.prod(grid))
        return self.pruners[str(stage)].placeholder_weights(run.memory, grid, placeholders, dtype)

    @staticmethod
    def _alive(live: _Live, batch: int, grid) -> torch.Tensor:
        """``[B * N]`` bool: the cells of ``grid`` whose token is live."""
        alive = torch.zeros(batch * math.prod(grid), dtype=torch.bool, device=live.index.device)
        return alive.index_fill(0, live.index, True)

    @staticmethod
    def _block_reports(layer, x: torch.Tensor, live: _Live | None) -> list[BlockReport]:
        """What the blocks of ``layer`` run on for grid ``x`` ``[B, C, *G]``: every cell, or the live tokens (their
        norms, ``qkv``, projection and MLP; window attention also holds the masked pruned slots of kept windows,
        counted in :attr:`window_report`)."""
        batch, num_cells = x.shape[0], math.prod(x.shape[2:])
        if live is None:
            counts = torch.full((batch,), float(num_cells), device=x.device)
        else:
            image = torch.div(live.index, num_cells, rounding_mode="floor")
            counts = torch.zeros(batch, device=x.device).index_add_(0, image, torch.ones(image.shape, device=x.device))
        return [BlockReport(counts, num_cells) for _ in layer.blocks]

    def _prune(self, stage: int, x: torch.Tensor, live: _Live | None, run: _Pass) -> _Live:
        """Run the stage's pruner over the live tokens of grid ``x`` ``[B, C, *G]``; returns the kept tokens."""
        batch, channels, grid = x.shape[0], x.shape[1], tuple(x.shape[2:])
        num_cells = math.prod(grid)
        flat = x.flatten(2).transpose(1, 2).reshape(batch * num_cells, channels)
        if live is None:
            index, tokens = torch.arange(batch * num_cells, device=x.device), flat
            counts = torch.full((batch,), num_cells, device=x.device)
        else:
            index = live.index
            tokens = flat[index]
            image = torch.div(index, num_cells, rounding_mode="floor")  # (not bincount: its length is data-dependent)
            counts = torch.zeros(batch, dtype=torch.long, device=x.device).index_add_(0, image, torch.ones_like(index))
        exporting = torch.compiler.is_exporting()
        if live is None:
            width = num_cells
        elif exporting:  # a data-dependent size: torch.export traces it as an unbacked symbol
            width = counts.max().item()
            torch._check(width >= 0)
            torch._check(width <= num_cells)
        else:
            width = int(counts.max())
        if live is None or (not exporting and bool((counts == width).all())):  # same count everywhere: a reshape
            padded, valid = tokens.view(batch, width, channels), None
            token_index = (index % num_cells).view(batch, width)
            rows = None
        else:  # variable counts: pad every image to the batch maximum
            image = torch.div(index, num_cells, rounding_mode="floor")
            rank = torch.arange(index.numel(), device=x.device) - (counts.cumsum(0) - counts)[image]
            rows = (image, rank)
            padded = tokens.new_zeros(batch, width, channels).index_put(rows, tokens)
            token_index = torch.full((batch, width), num_cells, dtype=torch.long, device=x.device)
            token_index = token_index.index_put(rows, index - image * num_cells)
            valid = torch.zeros(batch, width, dtype=torch.bool, device=x.device)
            valid = valid.index_put(rows, torch.tensor(True, device=x.device))
        inputs = StageInput(
            tokens=padded,
            token_index=token_index,
            valid=valid,
            grid_shape=grid,
            stride=tuple(float(self.patch_size * 2**stage) for _ in grid),
            boxes=run.boxes,
            stage=stage,
            feature_map=lambda: x,
            attentions=run.attentions,
            memory=run.memory,
        )
        run.attentions = []
        selection: TokenSelection = self.pruners[str(stage)](inputs)
        self.num_tokens = num_cells
        keep = selection.keep_mask if valid is None else selection.keep_mask & valid
        run.reports.append(StageReport(stage, counts.float().detach(), keep.sum(1).float().detach()))
        if selection.aux_loss is not None:
            run.aux_losses.append(selection.aux_loss)
        if selection.aux_logits is not None:
            run.aux_logits.append(selection.aux_logits)
        def per_token(value: torch.Tensor) -> torch.Tensor:  # [B, width] -> [T], aligned with ``tokens``
            return value.reshape(-1) if rows is None else value[rows]

        if selection.scores is not None and selection.scores.requires_grad and torch.is_grad_enabled():
            tokens = tokens * per_token(straight_through(keep, selection.scores)).unsqueeze(-1)
        kept = per_token(keep)
        if self.completion is not None:  # where each cell of this grid was pruned, for the completion
            stage_of = run.stage_of if run.stage_of is not None else torch.zeros_like(flat[:, 0], dtype=torch.long)
            run.stage_of = stage_of.index_fill(0, index[~kept], stage)
        return _Live(tokens[kept], index[kept])

    def _pruned_layer(self, number: int, layer, x: torch.Tensor, live: _Live, run: _Pass):
        """One Swin layer (its blocks and patch merging) on a pruned grid ``x`` ``[B, C, *G]``: the merged grid that
        the next layer reads, the decoder tap (the same, or merged from the completed grid) and the next live
        tokens (the alive parents)."""
        batch, channels, grid = x.shape[0], x.shape[1], tuple(x.shape[2:])
        num_cells = math.prod(grid)
        carry = x.flatten(2).transpose(1, 2).reshape(batch * num_cells, channels)
        want = self._wants_attention(number)
        alive = self._alive(live, batch, grid)
        weights = self._placeholder_weights(number, alive, grid, run, carry.dtype)
        if weights is not None:  # the image of every cell, to hand each placeholder its image's residual
            image = torch.div(torch.arange(batch * num_cells, device=x.device), num_cells, rounding_mode="floor")
        plans: dict = {}

        def plan_of(block) -> WindowPlan:  # one plan per partition (shifted or not), shared by the layer's blocks
            key = (grid, tuple(block.window_size), tuple(block.shift_size), str(x.device))
            if key not in self._layouts:
                self._layouts[key] = block_layout(block, grid, x.device)
            if key not in plans:
                plans[key] = plan_windows(live.index, grid, batch, self._layouts[key])
            return plans[key]

        gather = run.mode == "gather"
        tokens = live.tokens
        h = None if gather else carry.index_copy(0, live.index, live.tokens)  # the reference runs on the full grid
        for block_number, block in enumerate(layer.blocks):
            values = carry if gather else h  # placeholders: the cells that are not live
            rep = None if weights is None else torch.einsum("bn,bnc->bc", weights, values.view(batch, num_cells, -1))
            if gather:
                plan = plan_of(block)
                run.windows.append(WindowReport(number, block_number, plan.num_kept, plan.num_windows))
                out = swin_block_run(block, tokens, live.index, grid, batch, plan, want, rep)
                tokens = out.tokens
            else:
                out = None
                if want or rep is not None:  # attention and representative from the live tokens, as in gather
                    out = swin_block_run(block, h[live.index], live.index, grid, batch, plan_of(block), want, rep)
                h = swin_block_forward_masked(block, h.view(batch, *grid, channels), alive.view(batch, *grid))
                h = h.reshape(batch * num_cells, channels)
            if want:
                run.attentions.append(out.attention)
            if rep is not None:  # Evo-ViT's fast path: every placeholder moves by the representative's residual
                update = (~alive).unsqueeze(-1).to(values.dtype) * (out.representative - rep)[image]
                if gather:
                    carry = carry + update
                else:
                    h = h + update
        if gather:
            base = carry if self.fill == "carry" else torch.zeros_like(carry)
            restored = base.index_copy(0, live.index, tokens)
        else:
            restored = h if self.fill == "carry" else torch.where(alive.unsqueeze(-1), h, torch.zeros_like(h))
        merged = layer.downsample(restored.view(batch, *grid, channels))  # [B, *G', C'] on the restored grid
        merged = merged.movedim(-1, 1)  # a channels-last view, as MONAI's own layers return it (no copy)
        next_index = _parents(live.index, grid, batch)
        tap = merged
        if self.completion is not None and str(number) in self.completion and run.stage_of is not None:
            history = PrunedGrid(grid, run.stage_of.view(batch, num_cells), tuple(r.stage for r in run.reports))
            completed = self.completion[str(number)](restored.view(batch, num_cells, channels), history, number)
            tap = layer.downsample(completed.view(batch, *grid, channels)).movedim(-1, 1)
        elif self.fill == "zero":  # parents with no alive child
            parents = torch.zeros(merged.shape[0] * math.prod(merged.shape[2:]), dtype=torch.bool, device=x.device)
            tap = merged * parents.index_fill(0, next_index, True).view(batch, 1, *merged.shape[2:]).to(merged.dtype)
        if run.stage_of is not None:
            run.stage_of = _parent_stages(run.stage_of, grid, next_index, batch)
        flat = merged.flatten(2).transpose(1, 2).reshape(-1, merged.shape[1])
        return merged, tap, _Live(flat[next_index], next_index)

    # ------------------------------------------------------------------ reports and weights
def patch_swin_unetr(
    model: SwinUNETR,
    pruner: TokenPruner | str | Mapping[int, TokenPruner] | None,
    prune_stages: Sequence[int] = (1, 2),
    executor: str = "gather",
    fill: str = "carry",
    pruner_kwargs: Mapping | None = None,
    decode_region: str = "full",
    decode_margin: int = 16,
    completion=None,
) -> PrunedSwinUNETR:
    """Turn an existing MONAI ``SwinUNETR`` (weights and all) into a :class:`PrunedSwinUNETR` in place."""
    if not isinstance(model, SwinUNETR):
        raise TypeError(f"patch_swin_unetr expects a monai SwinUNETR, got {type(model).__name__}")
    model.__class__ = PrunedSwinUNETR
    model._setup_pruning(pruner, prune_stages, executor, fill, pruner_kwargs, completion)
    model._setup_decoding(decode_region, decode_margin)
    return model
