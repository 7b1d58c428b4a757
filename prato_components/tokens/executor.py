"""The executor: applies a :class:`TokenSelection` to the live tokens and restores the full grid.

Modes (``TokenState(mode=...)``):

- ``"gather"``: kept tokens are gathered (``torch.gather``) and later blocks run on ``[B, K, C]``. Needs a
  selection with the same ``K`` in every image (top-k). This is where the speed comes from.
- ``"padded"``: variable ``K`` per image (fixed threshold) gathered to the batch maximum; padding rows are
  excluded from attention by a key mask (:attr:`TokenState.key_mask`).
- ``"mask"``: the paper's literal ``beta * Y``: tokens are multiplied by the 0/1 keep mask and the full
  length is kept. A reference; it saves nothing.
- ``"attention_mask"``: the full length is kept and pruned tokens are masked out of attention as keys, so kept
  tokens compute exactly what ``gather`` computes for them (the correctness anchor). With a differentiable
  selection in training the key mask is a straight-through float policy (DynamicViT's training mode).

A hierarchical encoder continues a forward pass on its next, coarser grid with :meth:`TokenState.next_grid`: the
new grid starts with the tokens still alive there (Swin UNETR: the patch-merging parents of live tokens) and shares
the pass's reports, side terms and memory.

Restoring the grid (for dense decoders) scatters the live tokens back; pruned positions are filled by
``fill="zero"`` (the literal ``beta * Y``) or ``fill="carry"`` (the value the token had when pruned).

Token sparsity, one definition for every backbone (:func:`kept_token_work`): every transformer block of the
encoder reports the tokens it ran on (:class:`BlockReport`), and the sparsity is the fraction of that token-block
work the pruning removed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from prato_components.tokens.stage import StageInput, TokenSelection, scatter_to_grid, straight_through, tracing

__all__ = [
    "EXECUTOR_MODES",
    "FILL_POLICIES",
    "BlockReport",
    "StageReport",
    "TokenState",
    "check_executor",
    "kept_token_work",
]

EXECUTOR_MODES = ("gather", "padded", "mask", "attention_mask")
FILL_POLICIES = ("zero", "carry")


def check_executor(mode: str | None, fill: str, modes: tuple[str, ...] = EXECUTOR_MODES) -> None:
    """Raise ``ValueError`` for an unknown executor mode (``None`` skips the check) or fill policy."""
    if mode is not None and mode not in modes:
        raise ValueError(f"unknown executor mode {mode!r}; choose one of {modes}")
    if fill not in FILL_POLICIES:
        raise ValueError(f"unknown fill policy {fill!r}; choose one of {FILL_POLICIES}")


@dataclass
class StageReport:
    """Tokens entering and kept at one stage boundary, per image (``[B]`` float tensors)."""

    stage: int
    tokens_in: torch.Tensor
    tokens_kept: torch.Tensor

    @property
    def kept_fraction(self) -> float:
        return float(self.tokens_kept.sum() / self.tokens_in.sum().clamp(min=1))


@dataclass
class BlockReport:
    """The tokens one transformer block of the encoder ran on in a forward pass: ``tokens`` per image (``[B]``
    float), out of ``grid_tokens``, the tokens of its grid (what it runs on unpruned)."""

    tokens: torch.Tensor
    grid_tokens: int


def kept_token_work(blocks: Sequence[BlockReport]) -> torch.Tensor:
    """``[B]``: per image, the tokens all transformer blocks of the encoder ran on over the tokens they run on
    unpruned, ``sum_b tokens_b / sum_b grid_tokens_b``; **token sparsity** is ``1 -`` this (ones when nothing was
    reported).

    The one definition of token sparsity, the same for every backbone: the fraction of the transformer's
    token-block work (each block's norms, projections and MLP are computed once per token) that pruning removed.
    A block before the first pruned boundary counts with all its tokens, so pruning earlier removes more, and the
    blocks of a hierarchical encoder (SegFormer's MiT stages, Swin's layers) each count on their own grid. The
    kept fraction of the last pruned stage alone is not comparable across backbones: in a plain ViT keep ratios
    compound (0.75 at stages 1 and 2 leave 0.5625 of the grid), in SegFormer each stage decides afresh on its own
    grid (0.75), and neither says how many blocks ran pruned. Counts are the tokens the pruning decisions leave alive
    (what the ``gather`` executor computes; the full-length reference executors model the same decisions, so they
    report the same); helper tokens a pruner adds (Evo-ViT's representative token) are not counted. Tokens are not
    FLOPs: the blocks of different stages differ in width, and attention grows with the square of the tokens;
    ``tools/benchmark.py`` measures FLOPs.
    """
    if not blocks:
        return torch.ones(1)
    done = torch.stack([block.tokens.detach().float().cpu() for block in blocks]).sum(0)
    return done / float(sum(block.grid_tokens for block in blocks))


def _flat_rows(index: torch.Tensor, num_rows: int) -> torch.Tensor:
    """``[B, K]`` row indices into ``[B, num_rows, ...]`` as ``[B * K]`` indices into ``[B * num_rows, ...]``."""
    offsets = torch.arange(index.shape[0], device=index.device).unsqueeze(1) * num_rows
    return (index + offsets).reshape(-1)


def _gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b, i]]`` for ``x`` of shape ``[B, n, ...]`` and ``index`` ``[B, K]``.

    Whole rows are copied with ``index_select`` on the flattened batch (several times faster on CPU than ``gather``
    with an index expanded over the channels, and the same values).
    """
    if x.ndim == 2:
        return x.gather(1, index)
    batch, num = x.shape[:2]
    rows = x.reshape(batch * num, *x.shape[2:]).index_select(0, _flat_rows(index, num))
    return rows.view(batch, index.shape[1], *x.shape[2:])


class TokenState:
    """The live tokens of one forward pass and the executor that prunes them.

    Args:
        tokens: the full token sequence ``[B, N, C]`` on ``grid_shape``.
        grid_shape: token grid, ``prod(grid_shape) == N``.
        mode: one of :data:`EXECUTOR_MODES`.
        fill: one of :data:`FILL_POLICIES`, used by :meth:`restore`.
        alive: ``[B, N]`` bool, for a grid that starts with tokens already pruned (on a finer grid before it, see
            :meth:`next_grid`): the tokens still alive. ``tokens`` are then also the values the others carry. The live
            tokens are gathered (padded to the batch maximum, like ``"padded"``, in ``gather`` and ``padded`` mode).
        pruned_before: ``[B, N]`` long, with ``alive``: the stage at which each position was pruned (0: alive), for
            :meth:`pruned_at`; only needed when something reads it (a learned completion).
    """

    def __init__(
        self,
        tokens: torch.Tensor,
        grid_shape: tuple[int, ...],
        mode: str = "gather",
        fill: str = "carry",
        alive: torch.Tensor | None = None,
        pruned_before: torch.Tensor | None = None,
    ):
        check_executor(mode, fill)
        if tokens.shape[1] != math.prod(grid_shape):
            raise ValueError(f"{tokens.shape[1]} tokens do not fill a grid of shape {tuple(grid_shape)}")
        self.mode, self.fill = mode, fill
        self.grid_shape = tuple(grid_shape)
        self.grid_tokens = tokens.shape[1]
        self.tokens = tokens
        self.token_index: torch.Tensor | None = None  # [B, n] grid positions; None while nothing is pruned
        self.valid: torch.Tensor | None = None  # [B, n] padded mode: False on padding rows
        self.alive: torch.Tensor | None = None  # [B, N] full-length modes: tokens not yet pruned
        self.policy: torch.Tensor | None = None  # [B, N] attention_mask mode: differentiable key policy
        self._kept: list[tuple[int, torch.Tensor]] = []  # (stage, alive mask or live grid positions after it)
        self._flat_index: torch.Tensor | None = None  # [B * n] rows of the flattened grid, gather without padding
        self._source_rows: tuple[torch.Tensor, torch.Tensor] | None = None  # gather mode: see _grid_sources
        self.carry: torch.Tensor | None = None  # [B, N, C] value of each token when it was pruned
        self.reports: list[StageReport] = []
        self.block_reports: list[BlockReport] = []
        self._live_counts: torch.Tensor | None = None  # [B] live tokens per image, until the next apply
        self.aux_losses: list[torch.Tensor] = []
        self.aux_logits: list[torch.Tensor] = []
        self.memory: dict = {}
        self._alive_before = alive  # [B, N] the tokens alive when this grid started, None: all
        self._pruned_before = pruned_before
        if alive is not None:
            self._start_pruned(alive)

    def _start_pruned(self, alive: torch.Tensor) -> None:
        """Start with only the ``alive`` tokens live; the others carry their value in :attr:`tokens`."""
        self.carry = self.tokens
        if self.mode in ("mask", "attention_mask"):
            self.alive = alive
            if self.mode == "mask":
                self.tokens = self.tokens * alive.unsqueeze(-1).to(self.tokens.dtype)
        else:
            index = torch.arange(self.grid_tokens, device=alive.device).expand(alive.shape[0], -1)
            order, valid = self._compact(alive)
            self._apply_gather(order, valid, None, index)

    def next_grid(
        self,
        tokens: torch.Tensor,
        grid_shape: tuple[int, ...],
        alive: torch.Tensor | None = None,
        pruned_before: torch.Tensor | None = None,
    ) -> TokenState:
        """The state of the next (coarser) grid of a hierarchical encoder, continuing this forward pass: the same
        mode and fill, and the same :attr:`reports`, :attr:`block_reports`, side terms and :attr:`memory` (lists and
        dict shared, so the last grid's state holds the whole pass). ``alive`` and ``pruned_before`` as in the
        constructor (``alive=None``: every token of the new grid is live)."""
        state = TokenState(tokens, grid_shape, self.mode, self.fill, alive, pruned_before)
        state.reports, state.block_reports, state.memory = self.reports, self.block_reports, self.memory
        state.aux_losses, state.aux_logits = self.aux_losses, self.aux_logits
        return state

    @property
    def pruned(self) -> bool:
        return self.token_index is not None or self.alive is not None

    def live_counts(self) -> torch.Tensor:
        """``[B]`` float: tokens still alive per image (padding rows and pruned tokens excluded)."""
        if self._live_counts is None:
            if self.alive is not None:
                self._live_counts = self.alive.sum(1, dtype=torch.float32)
            elif self.valid is not None:
                self._live_counts = self.valid.sum(1, dtype=torch.float32)
            else:
                batch, live = self.tokens.shape[:2]
                self._live_counts = torch.full((batch,), float(live), device=self.tokens.device)
        return self._live_counts

    def record_block(self) -> None:
        """Report a transformer block that just ran on the live tokens (:class:`BlockReport`, for the sparsity)."""
        self.block_reports.append(BlockReport(self.live_counts(), self.grid_tokens))

    @property
    def key_mask(self) -> torch.Tensor | None:
        """``[B, n]`` key mask for attention (``True``/1 attends): padding rows in ``padded`` mode, pruned
        tokens in ``attention_mask`` mode (a float policy when it carries a gradient); ``None`` otherwise."""
        if self.mode == "attention_mask":
            return self.policy if self.policy is not None else self.alive
        return self.valid

    def _on_grid(self, live: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` bool alive grid from a full-length alive mask (returned as is) or the live tokens' grid
        positions (padding rows, at position ``N``, are dropped)."""
        if live.dtype == torch.bool:
            return live
        return scatter_to_grid(live, torch.ones_like(live, dtype=torch.bool), self.grid_tokens)

    def alive_grid(self) -> torch.Tensor:
        """``[B, N]`` bool: grid positions whose token is still alive."""
        if self.alive is None and self.token_index is None:
            return torch.ones(self.tokens.shape[0], self.grid_tokens, dtype=torch.bool, device=self.tokens.device)
        return self._on_grid(self.alive if self.alive is not None else self.token_index)

    @property
    def pruned_stages(self) -> tuple[int, ...]:
        """The stages at which tokens were pruned so far in this forward pass (on earlier grids too), in order."""
        return tuple(report.stage for report in self.reports)

    def row_positions(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Grid positions ``[B, n]`` of the rows of :attr:`tokens` and which rows are live tokens (``None``: all);
        padding rows hold ``N``. In the full-length modes the rows are the whole grid and the live ones are alive."""
        if self.alive is not None:
            return torch.arange(self.grid_tokens, device=self.alive.device).expand(self.alive.shape[0], -1), self.alive
        if self.token_index is None:
            batch = self.tokens.shape[0]
            return torch.arange(self.grid_tokens, device=self.tokens.device).expand(batch, -1), None
        return self.token_index, self.valid

    @property
    def kept_grids(self) -> list[tuple[int, torch.Tensor]]:
        """``(stage, [B, N] bool alive after that stage)`` per pruned stage, built on request (inference never
        needs them, so the forward pass does not pay for the scatters)."""
        return [(stage, self._on_grid(live)) for stage, live in self._kept]

    def pruned_at(self) -> torch.Tensor:
        """``[B, N]`` long: the stage at which each grid position was pruned, 0 where still alive."""
        if self._alive_before is not None and self._pruned_before is None:
            raise ValueError("this grid started with tokens pruned before it, and without pruned_before")
        if self._pruned_before is not None:
            stage_of = self._pruned_before
        else:
            stage_of = torch.zeros(self.tokens.shape[0], self.grid_tokens, dtype=torch.long, device=self.tokens.device)
        previous = self._alive_before
        for stage, alive in self.kept_grids:
            dropped = ~alive if previous is None else previous & ~alive
            stage_of = stage_of.masked_fill(dropped, stage)
            previous = alive
        return stage_of

    # ------------------------------------------------------------------ stage boundary
    def stage_input(
        self,
        stage: int,
        stride: tuple[float, ...],
        boxes: torch.Tensor | None,
        attentions: list[torch.Tensor] | None = None,
    ) -> StageInput:
        """Describe the live tokens to a pruner."""
        tokens, index, valid = self.tokens, self.token_index, self.valid
        if self.alive is not None:  # full-length modes: show the pruner only the tokens still alive
            index, valid = self._compact(self.alive)
            tokens = _gather_rows(self.tokens, index.clamp(max=self.grid_tokens - 1))
        if index is None:
            index = torch.arange(self.grid_tokens, device=tokens.device).expand(tokens.shape[0], -1)
        return StageInput(
            tokens=tokens,
            token_index=index,
            valid=valid,
            grid_shape=self.grid_shape,
            stride=tuple(float(s) for s in stride),
            boxes=boxes,
            stage=stage,
            feature_map=lambda: self.feature_map(),
            attentions=list(attentions or []),
            memory=self.memory,
        )

    def prune(
        self,
        pruner: Callable[[StageInput], TokenSelection],
        stage: int,
        stride: Sequence[float],
        boxes: torch.Tensor | None,
        attentions: list | None = None,
    ) -> None:
        """The one pruning step of every backbone at a pruned stage boundary: describe the live tokens to ``pruner``
        (:meth:`stage_input`) and :meth:`apply` its selection."""
        inputs = self.stage_input(stage, tuple(stride), boxes, attentions)
        self.apply(pruner(inputs), stage, inputs)

    # ------------------------------------------------------------------ Evo-ViT's representative token
    def representative(self, weights: torch.Tensor) -> torch.Tensor:
        """``[B, 1, C]``: the representative token of the pruned tokens, their carried values weighted by ``weights``
        ``[B, N]`` (a pruner's :meth:`~prato_components.pruners.TokenPruner.placeholder_weights`, 0 on live cells)."""
        return torch.einsum("bn,bnc->bc", weights, self.carry).unsqueeze(1)

    def evolve_placeholders(self, placeholders: torch.Tensor, before: torch.Tensor, after: torch.Tensor) -> None:
        """Move every pruned token (``placeholders`` ``[B, N]`` bool) by the residual a block added to the
        representative token (``after - before``, ``[B, 1, C]``): Evo-ViT's fast path, the same in every backbone."""
        residual = after - before
        self.carry = self.carry + placeholders.unsqueeze(-1).to(residual.dtype) * residual

    def apply(self, selection: TokenSelection, stage: int, inputs: StageInput) -> None:
        """Prune the live tokens according to ``selection`` (made over ``inputs``)."""
        keep = selection.keep_mask if inputs.valid is None else selection.keep_mask & inputs.valid
        kept = keep.detach().sum(1, dtype=torch.float32)
        if inputs.valid is None:
            tokens_in = kept.new_full(kept.shape, keep.shape[1])
        else:
            tokens_in = inputs.valid.sum(1, dtype=torch.float32)
        self.reports.append(StageReport(stage, tokens_in, kept))
        if selection.aux_loss is not None:
            self.aux_losses.append(selection.aux_loss)
        if selection.aux_logits is not None:
            self.aux_logits.append(selection.aux_logits)
        weights = None
        if selection.scores is not None and selection.scores.requires_grad and torch.is_grad_enabled():
            weights = straight_through(keep, selection.scores)
        self.carry = self.restore(fill="carry")  # value of every token now, kept for those pruned here
        self._live_counts = None
        if self.mode in ("mask", "attention_mask"):
            self._apply_mask(keep, weights, inputs)
        elif self.mode == "gather":
            if selection.keep_index is None:
                raise ValueError(
                    "executor mode 'gather' needs a selection with the same number of tokens in every image "
                    "(top-k or percentile threshold); a fixed threshold keeps a variable number: use mode 'padded' "
                    "or 'mask'"
                )
            self._apply_gather(selection.keep_index, None, weights, inputs.token_index)
        else:
            order, valid = self._compact(keep)
            self._apply_gather(order, valid, weights, inputs.token_index)
        self._kept.append((stage, self.alive if self.alive is not None else self.token_index))

    def _compact(self, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Indices of kept rows first (in ascending order) cut to the batch maximum, and their validity (``None``:
        all valid; while ``torch.export`` traces, always given, and the maximum is an unbacked size)."""
        counts = keep.sum(1)
        exporting = torch.compiler.is_exporting()
        if exporting:
            k_max = counts.max().item()
            torch._check(k_max >= 0)
            torch._check(k_max <= keep.shape[1])
        elif tracing():  # torch.compile: no data-dependent size; every row, the pruned ones marked invalid
            k_max = keep.shape[1]
        else:
            k_max = int(counts.max())
        order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :k_max]
        valid = _gather_rows(keep, order)
        if not tracing() and bool(valid.all()):
            return order, None
        return order.masked_fill(~valid, keep.shape[1]), valid

    def _apply_gather(self, rows, valid, weights, token_index: torch.Tensor) -> None:
        """Keep ``rows`` of :attr:`tokens` (whose grid positions are ``token_index``); ``valid``: which are real."""
        rows_safe = rows if valid is None else rows.clamp(max=self.tokens.shape[1] - 1)
        tokens = _gather_rows(self.tokens, rows_safe)
        if weights is not None:
            tokens = tokens * _gather_rows(weights, rows_safe).unsqueeze(-1)
        index = _gather_rows(token_index, rows_safe)
        if valid is not None:
            index = index.masked_fill(~valid, self.grid_tokens)
        self.tokens, self.token_index, self.valid = tokens, index, valid
        flat = _flat_rows(index, self.grid_tokens) if valid is None else None
        if hasattr(flat, "as_tensor"):  # a MONAI MetaTensor (a collated image's metadata): keep index arithmetic plain
            flat = flat.as_tensor()
        self._flat_index, self._source_rows = flat, None

    def _apply_mask(self, keep, weights, inputs) -> None:
        self.alive = scatter_to_grid(inputs.token_index, keep, self.grid_tokens)
        factor = None
        if weights is not None:  # straight-through keep weights on the grid (0 where dead)
            factor = scatter_to_grid(inputs.token_index, weights * keep, self.grid_tokens)
            if self.policy is not None:
                factor = factor * self.policy
        if self.mode == "attention_mask":
            self.policy = factor
        else:
            self.tokens = self.tokens * (self.alive.to(self.tokens.dtype) if factor is None else factor).unsqueeze(-1)

    # ------------------------------------------------------------------ restoring the grid
    def _grid_sources(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``gather`` mode, built once per selection: the flattened grid's pruned rows ``[B * (N - K)]`` (ascending),
        and for every grid row ``[B * N]`` the row to read it from in ``cat([live [B * K], pruned [B * (N - K)]])``."""
        if self._source_rows is None:
            flat, device = self._flat_index, self._flat_index.device
            live, total = flat.numel(), self.tokens.shape[0] * self.grid_tokens
            is_live = torch.zeros(total, dtype=torch.uint8, device=device).index_fill_(0, flat, 1)
            pruned = torch.sort(is_live, stable=True).indices[: total - live]
            sources = torch.empty(total, dtype=torch.long, device=device)
            sources.index_copy_(0, flat, torch.arange(live, device=device))
            sources.index_copy_(0, pruned, torch.arange(live, total, device=device))
            self._source_rows = (pruned, sources)
        return self._source_rows

    def _scatter(
        self, tokens: torch.Tensor, base: torch.Tensor | None, transform: Callable | None = None
    ) -> torch.Tensor:
        """``base`` (``None``: zeros; else ``[B, N, C]``, with ``transform`` applied row by row to the rows it
        supplies) with ``tokens`` at the live tokens' grid positions (padding rows dropped).

        Without padding the grid is *gathered*: one ``index_select`` of whole rows from the live rows followed by
        the base's pruned rows (or one zero row), each grid row read from where it lives (:meth:`_grid_sources`): on
        CPU faster than writing the live rows into a copy of the base with ``index_copy_``, the base is never
        written, and ``transform`` (a norm) runs on the pruned rows only (docs/design.md §5)."""
        batch, num, channels = tokens.shape[0], self.grid_tokens, tokens.shape[2]
        rows = tokens.reshape(-1, channels)
        if self.valid is None:
            pruned, sources = self._grid_sources()
            if base is None:  # every pruned row reads the one zero row after the live rows
                fill, sources = rows.new_zeros(1, channels), sources.clamp(max=rows.shape[0])
            else:
                fill = base.reshape(batch * num, channels).index_select(0, pruned)
                fill = fill if transform is None else transform(fill)
            return torch.cat([rows, fill]).index_select(0, sources).view(batch, num, channels)
        if base is not None and transform is not None:
            base = transform(base)
        # padding rows point at an extra row N, cut off afterwards (the concatenation is a new tensor)
        extra = tokens.new_zeros(batch, 1, channels)
        base = extra.new_zeros(batch, num + 1, channels) if base is None else torch.cat([base, extra], dim=1)
        flat = base.reshape(batch * (num + 1), channels).index_copy_(0, _flat_rows(self.token_index, num + 1), rows)
        return flat.view(batch, num + 1, channels)[:, :num]

    def live_rows(self, grid: torch.Tensor) -> torch.Tensor:
        """The rows of a full grid ``[B, N, C]`` at the live tokens' positions, aligned with :attr:`tokens`; the
        grid itself while nothing is gathered (unpruned or a full-length mode)."""
        if self.token_index is None:
            return grid
        batch, num, channels = grid.shape
        if self.valid is None:
            rows = self._flat_index
        else:  # padding rows read a real row; their result is unused
            rows = _flat_rows(self.token_index.clamp(max=num - 1), num)
        return grid.reshape(batch * num, channels).index_select(0, rows).view(batch, -1, channels)

    def restore(
        self,
        tokens: torch.Tensor | None = None,
        fill: str | None = None,
        carry_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The live tokens (or ``tokens`` aligned with them) on the full grid, ``[B, N, C]``.

        Args:
            tokens: values aligned with the live tokens (e.g. after a final norm); default the live tokens.
            fill: override of the fill policy.
            carry_transform: applied row by row to the carried values (e.g. the same final norm), ``carry`` fill
                only.
        """
        tokens = self.tokens if tokens is None else tokens
        fill = self.fill if fill is None else fill
        if not self.pruned:
            return tokens
        base = self.carry if fill == "carry" else None  # None: zeros
        if self.alive is not None:
            if base is not None and carry_transform is not None:
                base = carry_transform(base)
            return torch.where(self.alive.unsqueeze(-1), tokens, 0.0 if base is None else base)
        return self._scatter(tokens, base, carry_transform)

    def feature_map(self) -> torch.Tensor:
        """The restored grid as a channel-first map ``[B, C, *grid_shape]`` (carry fill; a channels-last view)."""
        grid = self.restore(fill="carry")
        return grid.view(grid.shape[0], *self.grid_shape, grid.shape[2]).movedim(-1, 1)

    @property
    def aux_loss(self) -> torch.Tensor | None:
        """Sum of the side losses the pruners returned in this forward pass."""
        return torch.stack(self.aux_losses).sum() if self.aux_losses else None
