"""The pruning every backbone shares (docs/design.md §5): its settings, building the pruners, and the stage loop.

:class:`PruningSettings` carries the pruning parameters every constructor takes. :class:`PrunedNetworkMixin` is the
one place where pruning happens inside a network: the set-up (:meth:`~PrunedNetworkMixin._install_pruners`), the
stage loop (:meth:`~PrunedNetworkMixin._run_stages`: layers, stage boundaries, :meth:`TokenState.prune`), the pruner
hooks (which blocks return attention maps, which pruner runs the blocks after its stage, Evo-ViT's fast path) and the
reports. A backbone says where its stages are (a plain ViT: ``{stage: block index}``, :func:`vit_layers`) and how one
layer's blocks run.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Union

import torch
import torch.nn as nn

from prato_components.pruners.base import TokenPruner
from prato_components.pruners.registry import PRUNERS, create_pruner
from prato_components.tokens.blocks import transformer_block_forward
from prato_components.tokens.executor import EXECUTOR_MODES, TokenState, check_executor, kept_token_work

__all__ = [
    "PrunedNetworkMixin",
    "PrunerSpec",
    "PruningSettings",
    "build_completion",
    "build_completions",
    "build_pruner",
    "check_stage_pruner",
    "executor_mode",
    "own_random_stream",
    "patched_class",
    "pruned_stages",
    "stage_pruners",
    "vit_layers",
]


PrunerSpec = Union[TokenPruner, str, Callable[..., TokenPruner], Mapping[int, TokenPruner], None]


@dataclass(frozen=True)
class PruningSettings:
    """The pruning parameters every backbone takes, under the same names and in the same order in each constructor
    (and in ``patch_unetr`` / ``patch_swin_unetr``); carried as one object inside the network.

    Attributes:
        pruner: ``None`` (the unpruned baseline), a :class:`TokenPruner`, a registered name, a factory or a mapping
            ``{stage: pruner}`` (:func:`stage_pruners`).
        prune_stages: the stage boundaries to prune at (the paper's default ``(1, 2)``).
        executor: the :class:`~prato_components.tokens.TokenState` mode (docs/design.md §5; a backbone may alias
            modes, :attr:`PrunedNetworkMixin.executor_aliases`).
        fill: pruned positions of restored grids: ``"carry"`` or ``"zero"``.
        pruner_kwargs: keyword arguments for a pruner given by name or factory.
        completion: a learned fill of the pruned positions for the decoder (STP's MTA), or ``None``.
        decode_region: ``"full"``, ``"box"`` or ``"guided"`` (docs/design.md §6.1).
        decode_margin: input voxels added around the boxes' union for ``decode_region="box"`` / ``"guided"``.
        coarse_head: build the coarse head that ``decode_region="guided"`` reads (trained on detached features).
        coarse_threshold: the foreground probability from which a coarse cell outside the box window widens what
            ``decode_region="guided"`` decodes (docs/design.md §6.1).
        click_prompts: build the click encoder (``networks.clicks``, docs/design.md §6.2) so the network takes
            ``points`` and ``point_labels``.
    """

    pruner: PrunerSpec = None
    prune_stages: Sequence[int] = (1, 2)
    executor: str = "gather"
    fill: str = "carry"
    pruner_kwargs: Mapping | None = None
    completion: object = None
    decode_region: str = "full"
    decode_margin: int = 16
    coarse_head: bool = False
    coarse_threshold: float = 0.4
    click_prompts: bool = False


class PrunedNetworkMixin:
    """What every pruned backbone offers: the kept fraction of the last forward pass and loading the state dict of
    its unpruned counterpart. A backbone sets, in each forward pass, :attr:`token_report` (per pruned stage: tokens
    in and kept, :class:`~prato_components.tokens.StageReport`) and :attr:`block_report` (per transformer
    block of the encoder, pruned or not: the tokens it ran on, :class:`~prato_components.tokens.BlockReport`)."""

    token_report: list
    block_report: list
    #: how this backbone runs a mode it does not run as named, ``{asked: run}`` (docs/design.md §5); applied to the
    #: network's ``executor`` and to a pruner's ``train_executor`` alike
    executor_aliases: ClassVar[Mapping[str, str]] = {}

    def _install_pruners(
        self, pruners: Mapping[int, TokenPruner], executor: str, fill: str, executors: tuple[str, ...] = EXECUTOR_MODES
    ) -> None:
        """The one pruning set-up of every backbone: check the executor and fill, register ``pruners`` (built by
        :func:`stage_pruners`) by stage under ``pruners.<stage>``, and reset the per-forward reports
        (docs/design.md §5, §6)."""
        check_executor(executor, fill, executors)
        self.prune_stages = tuple(sorted(pruners))
        self.executor, self.fill = executor, fill
        self.pruners = nn.ModuleDict({str(stage): pruners[stage] for stage in self.prune_stages})
        self.token_report, self.block_report = [], []
        self.aux_loss, self.aux_logits = None, []

    def _take_reports(self, *states: TokenState) -> None:
        """Keep what this forward pass's executor state(s) recorded, in order (one state per pass; SegFormer has one
        per MiT stage): :attr:`token_report`, :attr:`block_report`, :attr:`aux_logits` and :attr:`aux_loss`, the sum
        of the pruners' side losses (``None`` without one)."""
        self.token_report = [report for state in states for report in state.reports]
        self.block_report = [report for state in states for report in state.block_reports]
        self.aux_logits = [logits for state in states for logits in state.aux_logits]
        losses = [loss for state in states for loss in state.aux_losses]
        self.aux_loss = torch.stack(losses).sum() if losses else None

    def _upcoming_pruner(self, stage: int) -> TokenPruner | None:
        """The pruner of the first pruned stage boundary at or after ``stage`` (``None`` if there is none)."""
        upcoming = next((s for s in self.prune_stages if s >= stage), None)
        return None if upcoming is None else self.pruners[str(upcoming)]

    def _wants_attention(self, stage: int) -> bool:
        """Whether the blocks before stage boundary ``stage`` (Swin layer / MiT stage ``stage``) return their
        attention maps: the next pruned boundary's pruner ``needs_attention``."""
        upcoming = self._upcoming_pruner(stage)
        return upcoming is not None and upcoming.needs_attention

    def _evolving_pruner(self, number: int) -> TokenPruner | None:
        """The pruner of the last pruned stage boundary before layer ``number``: it says how the pruned tokens evolve
        through the layer's blocks (:meth:`TokenPruner.run_block`, :meth:`TokenPruner.placeholder_weights`)."""
        earlier = [s for s in self.prune_stages if s < number]  # max(..., default=) does not compile
        return self.pruners[str(max(earlier))] if earlier else None

    def _placeholder_weights(self, number: int, state: TokenState) -> tuple[torch.Tensor, torch.Tensor] | None:
        """For the blocks of layer ``number`` of a hierarchical backbone on ``state``: the pruned cells ``[B, N]`` and
        their representative token's weights ``[B, N]`` from the fast path of :meth:`_evolving_pruner`
        (:meth:`TokenPruner.placeholder_weights`, Evo-ViT); ``None`` while ``state`` has nothing pruned or without a
        fast path. The blocks then run the representative (:meth:`TokenState.representative`) and move the pruned
        tokens by its residual (:meth:`TokenState.evolve_placeholders`)."""
        pruner = self._evolving_pruner(number)
        if pruner is None or not state.pruned:
            return None
        placeholders = ~state.alive_grid()
        weights = pruner.placeholder_weights(state.memory, state.grid_shape, placeholders, state.tokens.dtype)
        return None if weights is None else (placeholders, weights)

    def _run_stages(
        self,
        state: TokenState,
        num_layers: int,
        run_layer: Callable[[int, TokenState, list], object],
        next_grid: Callable[[int, TokenState, object], TokenState],
        stride: Callable[[int, TokenState], Sequence[float]],
        boxes: torch.Tensor | None,
    ) -> TokenState:
        """The one stage loop of every backbone (docs/design.md §5); returns the last layer's state.

        Layer ``number`` (1 .. ``num_layers``) runs its blocks on ``state``: ``run_layer(number, state, attentions)``
        (appending its blocks' attention maps to ``attentions`` when :meth:`_wants_attention`; its return value goes
        to ``next_grid``). Stage boundary ``number`` follows every layer but the last: ``next_grid(number, state,
        output)`` is the state the next layer runs on (the same one in a ViT, the merged grid in Swin UNETR, the
        next stage's embedding in SegFormer), and at a pruned boundary that state is pruned by the boundary's pruner
        (:meth:`TokenState.prune`, with ``stride(number, state)`` and the attention maps since the last pruned
        boundary)."""
        attentions: list = []
        for number in range(1, num_layers + 1):
            output = run_layer(number, state, attentions)
            if number == num_layers:
                break
            state = next_grid(number, state, output)
            if number in self.prune_stages:
                prompt = boxes if not hasattr(self, "_pruning_boxes") else self._pruning_boxes(boxes)  # §6.1 guided
                state.prune(self.pruners[str(number)], number, stride(number, state), prompt, attentions)
                attentions.clear()
        return state

    def _run_vit_blocks(self, blocks: Sequence[nn.Module], number: int, state: TokenState, attentions: list) -> None:
        """Layer ``number`` of a plain ViT (MONAI ``TransformerBlock``s, :func:`vit_layers`) on the live tokens of
        ``state``: the blocks themselves before the first pruned stage, then through the :meth:`_evolving_pruner`
        (:meth:`TokenPruner.run_block`, e.g. Evo-ViT's representative token)."""
        pruner, want = self._evolving_pruner(number), self._wants_attention(number)
        for block in blocks:
            if pruner is None:
                state.tokens, attention = transformer_block_forward(block, state.tokens, state.key_mask, want)
            else:
                state.tokens, attention = pruner.run_block(block, state, want)
            state.record_block()
            if attention is not None:
                attentions.append(attention)

    def executor_mode(self) -> str:
        """The :class:`~prato_components.tokens.TokenState` mode of this forward pass, chosen here for every backbone
        (docs/design.md §5): the network's ``executor``, or while training the first pruned stage's
        ``train_executor`` if it has one, read through :attr:`executor_aliases`."""
        first = self.pruners[str(self.prune_stages[0])] if self.prune_stages else None
        mode = executor_mode(first, self.executor, self.training)
        return self.executor_aliases.get(mode, mode)

    def kept_fraction(self) -> float:
        """Kept token-block work of the last forward pass, mean over its images: ``1 - token sparsity`` (the one
        definition, :func:`~prato_components.tokens.kept_token_work`); 1 before any forward pass."""
        return float(kept_token_work(getattr(self, "block_report", [])).mean())

    def load_unpruned_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load the state dict of the unpruned network; pruners and completion keep their own (fresh) weights."""
        result = self.load_state_dict(state_dict, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith(("pruners.", "completion."))]
        if missing or result.unexpected_keys:
            name = type(self).__name__.removeprefix("Pruned")
            raise KeyError(f"not a {name} state dict: missing {missing}, unexpected {result.unexpected_keys}")


@functools.lru_cache(maxsize=None)
def patched_class(model_class: type, pruned: type) -> type:
    """The class a model patched in place takes (``patch_unetr``, ``patch_swin_unetr``): ``pruned`` for the plain
    MONAI class, the model's own class if it already is a ``pruned``, else a class built from the model's own class
    (``Pruned<Name>``, deriving from ``pruned`` and the model's class), so a user's subclass keeps its methods and
    ``isinstance`` checks. One class per pair."""
    if issubclass(model_class, pruned):
        return model_class
    if model_class in pruned.__bases__:
        return pruned
    return type(f"Pruned{model_class.__name__}", (pruned, model_class), {"__module__": model_class.__module__})


def pruned_stages(
    network: str, pruner: object | None, prune_stages: Sequence[int], boundaries: Sequence[int]
) -> list[int]:
    """The sorted stages to prune at (none without a pruner); ``ValueError`` unless they are stage boundaries."""
    stages = sorted({int(s) for s in prune_stages}) if pruner is not None else []
    if any(s not in boundaries for s in stages):
        raise ValueError(f"{network} prune_stages must be a subset of {tuple(boundaries)}, got {list(prune_stages)}")
    return stages


def _bound_keywords(factory: Callable) -> dict:
    """The keyword arguments a factory already binds (a ``functools.partial``, e.g. a bundle's ``_mode_: callable``
    block with options); ``{}`` for a plain class or function."""
    return dict(getattr(factory, "keywords", None) or {})


def build_pruner(
    pruner: TokenPruner | str | Callable[..., TokenPruner] | None,
    pruner_kwargs: Mapping | None,
    dim: int,
    num_classes: int | None = None,
) -> TokenPruner | None:
    """``pruner`` itself, or a pruner built with ``pruner_kwargs`` from a registered name or a factory (a callable
    such as a bundle's ``_mode_: callable`` pruner class): ``dim`` and, when given, ``num_classes`` (e.g. for
    DToP's auxiliary heads) are filled in when the pruner takes them and the factory has not bound them."""
    if pruner is None or isinstance(pruner, TokenPruner):
        return pruner
    kwargs = dict(pruner_kwargs or {})
    if callable(pruner):
        factory, parameters, bound = pruner, inspect.signature(pruner).parameters, _bound_keywords(pruner)
    else:
        key = pruner.lower()
        factory = functools.partial(create_pruner, pruner)
        parameters, bound = (inspect.signature(PRUNERS[key]).parameters if key in PRUNERS else {}), {}
    if "dim" in parameters and "dim" not in bound:
        kwargs.setdefault("dim", dim)
    if num_classes is not None and "num_classes" in parameters and "num_classes" not in bound:
        kwargs.setdefault("num_classes", num_classes)
    return factory(**kwargs)


@contextlib.contextmanager
def own_random_stream() -> Iterator[None]:
    """Build modules (pruners, completions) on a random stream of their own: seeded from the global CPU generator's
    state without advancing it, which is restored afterwards. A pruned network therefore leaves the global stream
    where its unpruned backbone does, so at one seed both get the same initial backbone weights *and* draw the same
    data order and augmentations afterwards (a paired comparison; docs/design.md §5)."""
    seed = zlib.crc32(torch.random.get_rng_state().numpy().tobytes())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def stage_pruners(
    network: str,
    pruner: TokenPruner | str | Callable[..., TokenPruner] | Mapping | None,
    pruner_kwargs: Mapping | None,
    prune_stages: Sequence[int],
    widths: Mapping[int, int],
    num_classes: int | None = None,
    hierarchical: bool = False,
) -> dict[int, TokenPruner]:
    """The one way every backbone builds its pruners: ``{stage: pruner}`` for the pruned stages.

    Args:
        network: the backbone's name, for error messages.
        pruner: ``None`` (no pruning), a :class:`TokenPruner` (deep-copied per stage), a registered name or a factory
            (built by :func:`build_pruner` once per stage width, on :func:`own_random_stream`, and deep-copied to the
            other stages of that width, so stages of one width start from the same weights), or a mapping
            ``{stage: pruner}``.
        pruner_kwargs: keyword arguments for a name or a factory.
        prune_stages: the stages to prune at; ``ValueError`` unless they are keys of ``widths``.
        widths: ``{stage: token width}`` for every stage boundary of the backbone.
        num_classes: the network's output channels, filled in for pruners that take it (e.g. DToP).
        hierarchical: the backbone's blocks are not ViT blocks (Swin UNETR, SegFormer): each pruner must pass
            :func:`check_stage_pruner`.
    """
    stages = pruned_stages(network, pruner, prune_stages, tuple(widths))
    if isinstance(pruner, Mapping):
        missing = [s for s in stages if s not in pruner and str(s) not in pruner]
        if missing:
            raise ValueError(f"the pruner mapping has no pruner for stage(s) {missing}")
        pruners = {s: pruner[s] if s in pruner else pruner[str(s)] for s in stages}
    elif isinstance(pruner, TokenPruner):
        pruners = {s: copy.deepcopy(pruner) for s in stages}
    elif pruner is None or isinstance(pruner, str) or callable(pruner):
        pruners, by_width = {}, {}
        with own_random_stream():
            for s in stages:
                width = int(widths[s])
                if width in by_width:
                    pruners[s] = copy.deepcopy(by_width[width])
                else:
                    pruners[s] = by_width[width] = build_pruner(pruner, pruner_kwargs, width, num_classes)
    else:
        raise TypeError(
            "pruner must be a TokenPruner, a registered name, a factory, a mapping or None, got "
            f"{type(pruner).__name__}"
        )
    if hierarchical:
        for stage, module in pruners.items():
            check_stage_pruner(network, stage, module)
    return pruners


def check_stage_pruner(network: str, stage: int, pruner: object) -> None:
    """Raise unless ``pruner`` can prune a hierarchical backbone (Swin UNETR, SegFormer), whose blocks are not ViT
    blocks: a :class:`TokenPruner` that does not run ViT blocks itself (:meth:`TokenPruner.run_block`) unless it also
    says how its pruned tokens evolve in any block (:meth:`TokenPruner.placeholder_weights`, Evo-ViT's fast path)."""
    if not isinstance(pruner, TokenPruner):
        raise TypeError(f"pruner for stage {stage} must be a TokenPruner, got {type(pruner).__name__}")
    cls = type(pruner)
    if cls.run_block is not TokenPruner.run_block and cls.placeholder_weights is TokenPruner.placeholder_weights:
        raise ValueError(
            f"{cls.__name__} runs ViT blocks itself (run_block) and has no placeholder_weights; {network}'s blocks are "
            "not ViT blocks"
        )


def build_completion(completion: nn.Module | Callable[..., nn.Module] | None, dim: int) -> nn.Module | None:
    """The learned completion of a ViT backbone (UNETR, TransUNet), one module for every tap at the token width
    ``dim``: ``completion`` itself, or a factory (e.g. ``MultiLayerTokenAssembly`` with MONAI's
    ``"_mode_": "callable"``) built on :func:`own_random_stream` with ``dim`` filled in unless the factory bound it."""
    if completion is None or isinstance(completion, nn.Module):
        return completion
    if not callable(completion):
        raise TypeError(f"completion must be a module, a factory or None, got {type(completion).__name__}")
    with own_random_stream():
        return completion(**({} if "dim" in _bound_keywords(completion) else {"dim": int(dim)}))


def build_completions(completion, widths: Mapping[int, int]) -> nn.ModuleDict | None:
    """The learned completions of a hierarchical backbone, one per tap at that tap's width (``widths``
    ``{tap: channels}``, the taps that can read pruned positions): ``completion`` is a mapping ``{tap: module}`` or a
    factory called as ``completion(dim=width, taps=(tap,))`` (e.g. ``MultiLayerTokenAssembly`` with MONAI's
    ``"_mode_": "callable"``, built on :func:`own_random_stream`); ``None`` without a completion or without pruned
    taps."""
    if completion is None or not widths:
        return None
    if isinstance(completion, Mapping):
        missing = [t for t in widths if t not in completion and str(t) not in completion]
        if missing:
            raise ValueError(f"the completion mapping has no module for tap(s) {missing}")
        return nn.ModuleDict({str(t): completion[t] if t in completion else completion[str(t)] for t in widths})
    if isinstance(completion, nn.Module) or not callable(completion):
        raise TypeError(
            "a hierarchical backbone needs one completion per tap width: give a factory called as "
            f"factory(dim=..., taps=(tap,)) or a mapping {{tap: module}} for taps {sorted(widths)}, got "
            f"{type(completion).__name__}"
        )
    with own_random_stream():
        return nn.ModuleDict({str(t): completion(dim=int(w), taps=(t,)) for t, w in widths.items()})


def executor_mode(first_pruner: TokenPruner | None, executor: str, training: bool) -> str:
    """The rule of :meth:`PrunedNetworkMixin.executor_mode` (which every backbone calls): the first pruner's
    ``train_executor`` while training, if it has one, else ``executor``."""
    if first_pruner is not None and training and first_pruner.train_executor:
        return first_pruner.train_executor
    return executor


def vit_layers(blocks: Sequence[nn.Module], boundaries: Mapping[int, int]) -> list[Sequence[nn.Module]]:
    """A plain ViT's blocks as the layers of :meth:`PrunedNetworkMixin._run_stages`: stage boundary ``s`` (1, 2 ...)
    sits after block ``boundaries[s]`` (0-based), so layer ``s`` ends there and the last layer runs to the end."""
    ends = [boundaries[stage] for stage in sorted(boundaries)]
    starts = [0, *(end + 1 for end in ends)]
    return [blocks[start : end + 1] for start, end in zip(starts, ends)] + [blocks[starts[-1] :]]
