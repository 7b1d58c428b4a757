"""The interactive evaluation protocol of SEGFM3D: per structure a box, then corrective clicks (docs/design.md §9,
"Corrective clicks").

:func:`interactive_evaluation` segments each structure of one image with its own box, then adds up to ``clicks``
clicks, each at :func:`~prato_components.engine.clicks.next_click` of the current prediction, and records the Dice
and the seconds of every step. :func:`summarise_interactive` reduces the records of many images:
Dice per step, the area under the Dice-vs-clicks curve, the final Dice, NoC@85 / NoC@90 and the time of the later
interactions as a ratio to the first. :class:`InteractiveEvaluation` runs the protocol on every image an evaluator
sees (``evaluate.json``'s ``clicks``) and :func:`draw_dice_curve` draws the curve.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from monai.metrics import compute_dice
from monai.utils import optional_import

from prato_components.atomic import atomic_open
from prato_components.engine.clicks import FOREGROUND, Click, append_clicks, check_takes_clicks, next_click
from prato_components.engine.distributed import unwrap
from prato_components.networks.clicks import ClickPromptMixin, SessionNetwork
from prato_components.prompts.boxes import boxes_from_label

__all__ = [
    "NOC_THRESHOLDS", "InteractiveEvaluation", "StructureRecord", "clicks_to_reach", "dice_auc", "draw_dice_curve",
    "interactive_evaluation", "summarise_interactive",
]

logger = logging.getLogger(__name__)

NOC_THRESHOLDS = (0.85, 0.90)  # NoC@85, NoC@90


@dataclass
class StructureRecord:
    """One structure of one image: its class, the Dice after the box (``dice[0]``) and after each click, the seconds
    of each network call (a step whose prediction was already exact calls nothing and keeps its Dice), the
    clicks, and per click whether the answer to it gives the clicked voxel the click's label (``followed``)."""

    label: int
    dice: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    clicks: list[Click] = field(default_factory=list)
    followed: list[bool] = field(default_factory=list)


def dice_auc(dice: Sequence[float]) -> float:
    """Area under the Dice-vs-clicks curve (steps 0..N, trapezoid), divided by N so that it lies in [0, 1]; with no
    click it is the box's Dice."""
    if len(dice) == 1:
        return float(dice[0])
    return sum((a + b) / 2 for a, b in zip(dice[:-1], dice[1:])) / (len(dice) - 1)


def clicks_to_reach(dice: Sequence[float], threshold: float) -> int:
    """NoC@threshold: the clicks needed to reach Dice >= ``threshold`` (0: the box alone did); ``len(dice)`` = N + 1
    when N clicks never reached it (the "not reached" convention)."""
    return next((step for step, value in enumerate(dice) if value >= threshold), len(dice))


def _segmenter(network: nn.Module, inferer: Callable | None, reuse: bool, image: torch.Tensor,
               box: torch.Tensor) -> Callable[..., torch.Tensor]:
    """``segment(**clicks)`` -> logits for one structure: ``inferer(image, network, boxes=box, ...)``, or without an
    inferer ``network(image, boxes=box, ...)``; with ``reuse`` (and a backbone of this package) the network is a
    :class:`~prato_components.networks.SessionNetwork` of this structure's clicks."""
    if reuse and isinstance(unwrap(network), ClickPromptMixin):
        network = SessionNetwork(unwrap(network))
    if inferer is not None:
        return lambda **clicks: inferer(image, network, boxes=box, **clicks)
    return lambda **clicks: network(image, boxes=box, **clicks)


def _timed(segment: Callable[..., torch.Tensor], cuda: bool, **clicks: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The class map ``[*spatial]`` of one call and its seconds (CUDA synchronised)."""
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    logits = segment(**clicks)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return logits.argmax(1)[0], seconds


def _dice(prediction: torch.Tensor, truth: torch.Tensor) -> float:
    return float(compute_dice(prediction[None, None].float(), truth[None, None].float(), include_background=True))


def interactive_evaluation(network: nn.Module, image: torch.Tensor, label: torch.Tensor, boxes: torch.Tensor,
                           clicks: int = 5, classes: Sequence[int] | None = None, inferer: Callable | None = None,
                           previous_mask: bool = False, reuse: bool = True) -> list[StructureRecord]:
    """SEGFM3D's protocol on one image: per structure, its box alone, then ``clicks`` corrective clicks.

    Each structure (class ``c``) is segmented on its own: ``network(image, boxes=its box)``, the prediction being
    the voxels whose argmax is ``c``; then each click is :func:`next_click` of that prediction against
    ``label == c`` and the network runs again with all the structure's clicks so far (``points`` ``[1, n, D]``,
    ``point_labels`` ``[1, n]``, ``prompt_class`` ``[c]``: the clicks are about structure ``c``). When the
    prediction is exact, the remaining steps keep its Dice without a call.

    Args:
        network: called as ``network(image, boxes=..., points=..., point_labels=..., prompt_class=...)`` (in eval
            mode, no gradients); with ``clicks`` 0 it needs no clicks.
        image: ``[1, C, *spatial]``, on the network's device.
        label: the class map ``[1, 1, *spatial]``, ``[1, *spatial]`` or ``[*spatial]``.
        boxes: ``[len(classes), 2*D]`` (a row per structure, in ``classes`` order) or ``[1, 2*D]`` (one box for every
            structure); a leading batch dim of 1 is allowed.
        clicks: corrective clicks per structure.
        classes: the structures (class values); default the foreground classes in ``label``. A class absent from
            the label is skipped (its Dice is undefined).
        inferer: called as ``inferer(image, network, boxes=..., points=..., point_labels=...)``; default the
            network itself.
        previous_mask: also pass the structure's current prediction (``[1, 1, *spatial]``, 0 / 1) as
            ``previous_mask`` with the clicks.
        reuse: reuse work between the calls on one structure, as an interactive session does
            (:class:`~prato_components.networks.SessionNetwork`: the image-only work once; through a sliding window,
            the windows a click does not touch keep their answer); a network of another package is called as is.

    Returns one :class:`StructureRecord` per structure present, with ``clicks + 1`` Dice values.
    """
    if image.ndim < 4 or image.shape[0] != 1:
        raise ValueError(f"image must be one image [1, C, *spatial], got shape {tuple(image.shape)}")
    spatial = tuple(image.shape[2:])
    truth = label.reshape(spatial) if label.numel() == math.prod(spatial) else None
    if truth is None:
        raise ValueError(f"label of shape {tuple(label.shape)} is not one class map of the image's size {spatial}")
    if clicks > 0:
        check_takes_clicks(network, "the interactive evaluation", previous_mask)
    classes = [int(c) for c in torch.unique(truth) if c > 0] if classes is None else [int(c) for c in classes]
    rows = boxes.reshape(-1, boxes.shape[-1]).to(image.device)
    if rows.shape[0] not in (1, len(classes)):
        raise ValueError(f"boxes must have one row per structure ({len(classes)}) or one row, got {rows.shape[0]}")
    net = unwrap(network)
    was_training = net.training
    net.eval()
    records = []
    cuda = image.device.type == "cuda"
    try:
        with torch.no_grad():
            for i, c in enumerate(classes):
                target = truth == c
                if not target.any():
                    continue
                segment = _segmenter(network, inferer, reuse, image, rows[i if rows.shape[0] > 1 else 0][None, None])
                prediction, seconds = _timed(segment, cuda)
                record = StructureRecord(c, [_dice(prediction == c, target)], [seconds])
                points = point_labels = None
                for _ in range(clicks):
                    click = next_click(prediction == c, target)
                    if click is None:
                        record.dice.append(record.dice[-1])
                        continue
                    record.clicks.append(click)
                    points, point_labels = append_clicks(points, point_labels, [click], device=image.device)
                    given = {"points": points, "point_labels": point_labels,
                             "prompt_class": torch.tensor([c], device=image.device)}
                    if previous_mask:
                        given["previous_mask"] = (prediction == c)[None, None].float()
                    prediction, seconds = _timed(segment, cuda, **given)
                    record.followed.append(bool(prediction[click.point] == c) == (click.label == FOREGROUND))
                    record.dice.append(_dice(prediction == c, target))
                    record.seconds.append(seconds)
                records.append(record)
    finally:
        net.train(was_training)
    return records


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def summarise_interactive(records: Sequence[StructureRecord], class_names: Sequence[str]) -> dict:
    """The protocol's numbers over ``records`` (any images; class ``c`` is ``class_names[c - 1]``): per class and
    over all structures (``"mean"``), the mean Dice per step (``dice_per_step``), ``dice_auc``, ``final_dice``,
    ``noc85`` / ``noc90`` (N + 1 when not reached) and the fraction of structures that did not reach them
    (``not_reached85`` / ``not_reached90``), the share of clicks whose answer gives the clicked voxel the click's
    label (``clicks_followed``); the mean seconds of the first interaction (the box) and of the later
    ones (the clicks) over all structures, and ``later_over_first``, their ratio."""
    groups: dict[str, list[StructureRecord]] = {name: [r for r in records if r.label == i + 1]
                                                for i, name in enumerate(class_names)}
    groups = {name: group for name, group in groups.items() if group}
    groups["mean"] = list(records)
    steps = max((len(r.dice) for r in records), default=0)
    summary: dict = {"clicks": max(steps - 1, 0), "num_structures": len(records),
                     "dice_per_step": {name: [_mean([r.dice[s] for r in group]) for s in range(steps)]
                                       for name, group in groups.items()},
                     "dice_auc": {name: _mean([dice_auc(r.dice) for r in group]) for name, group in groups.items()},
                     "final_dice": {name: _mean([r.dice[-1] for r in group]) for name, group in groups.items()}}
    for threshold in NOC_THRESHOLDS:
        key = f"{round(threshold * 100)}"
        summary[f"noc{key}"] = {name: _mean([clicks_to_reach(r.dice, threshold) for r in group])
                                for name, group in groups.items()}
        summary[f"not_reached{key}"] = {name: _mean([float(clicks_to_reach(r.dice, threshold) == len(r.dice))
                                                     for r in group]) for name, group in groups.items()}
    summary["clicks_followed"] = {name: _mean([float(f) for r in group for f in r.followed])
                                  for name, group in groups.items()}
    first = _mean([r.seconds[0] for r in records])
    later = _mean([s for r in records for s in r.seconds[1:]])
    summary.update({"seconds_first": first, "seconds_later": later,
                    "later_over_first": later / first if first > 0 else float("nan")})
    return summary


class InteractiveEvaluation:
    """Runs :func:`interactive_evaluation` on every image of every batch an evaluator sees (after its own
    iteration), from the batch's ``image``, ``label`` and ``box``.

    Each image's foreground classes ``1..len(class_names)`` are its structures. Their boxes are the batch's boxes
    when it has one row per class (``prompt_boxes: per_class``, so the evaluated box quality applies); otherwise
    (one box around all structures) each structure gets the tight box of its label, as SEGFM3D boxes each
    structure.

    Args:
        network: the evaluated network (on its device).
        clicks: corrective clicks per structure.
        class_names: the foreground class names, in label order.
        inferer: the evaluator's inferer (it passes the clicks to the network); default the network itself.
        previous_mask: pass each structure's current prediction as ``previous_mask`` with the clicks.
        reuse: reuse work between the clicks on one structure (:func:`interactive_evaluation`).
    """

    def __init__(self, network: nn.Module, clicks: int, class_names: Sequence[str], inferer: Callable | None = None,
                 previous_mask: bool = False, reuse: bool = True) -> None:
        if isinstance(clicks, bool) or not isinstance(clicks, int) or clicks < 0:
            raise ValueError(f"clicks must be an integer >= 0, got {clicks!r}")
        if clicks:
            check_takes_clicks(network, "the interactive evaluation", previous_mask)
        self.network, self.clicks, self.class_names, self.inferer = network, clicks, list(class_names), inferer
        self.previous_mask, self.reuse = previous_mask, reuse
        self.records: list[list[StructureRecord]] = []  # per image, in the order evaluated

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self.records = []

    def __call__(self, engine: Engine) -> None:
        batch = engine.state.batch  # a collated dict, or the items MONAI's evaluators decollate it into
        items = batch if isinstance(batch, Sequence) else [{k: batch[k][b] for k in ("image", "label", "box")}
                                                            for b in range(len(batch["image"]))]
        device = next(unwrap(self.network).parameters()).device
        classes = list(range(1, len(self.class_names) + 1))
        for item in items:
            image = torch.as_tensor(item["image"])[None].to(device)
            label = torch.as_tensor(item["label"]).to(device)
            boxes = torch.as_tensor(item["box"]).reshape(-1, 2 * (image.ndim - 2))
            if boxes.shape[0] != len(classes):
                boxes = boxes_from_label(label, per_class=True, classes=classes, on_empty="pad")
            self.records.append(interactive_evaluation(self.network, image, label, boxes, self.clicks, classes,
                                                       self.inferer, self.previous_mask, self.reuse))

    def summary(self, runs: int = 1) -> dict | list[dict]:
        """:func:`summarise_interactive` over every image; with ``runs`` > 1 (the data evaluated once per box
        quality, in order), one summary per run."""
        if runs <= 1:
            return summarise_interactive([r for image in self.records for r in image], self.class_names)
        size = len(self.records) // runs
        return [summarise_interactive([r for image in self.records[i * size : (i + 1) * size] for r in image],
                                      self.class_names) for i in range(runs)]


def draw_dice_curve(summary: dict, path: str, title: str = "") -> bool:
    """The mean Dice after the box and after each click (``summary["dice_per_step"]``), per class and over all
    structures, as a PNG at ``path`` (written atomically). Returns False, with a warning, without matplotlib."""
    figure, found = optional_import("matplotlib.figure", name="Figure")  # the "report" extra
    if not found:
        logger.warning('the Dice-vs-clicks figure needs matplotlib (pip install -e ".[report]"); not drawn')
        return False
    fig = figure(figsize=(5, 3.5), dpi=80)
    ax = fig.subplots()
    for name, values in summary["dice_per_step"].items():
        bold = name == "mean"
        ax.plot(range(len(values)), values, marker="o", linewidth=2.5 if bold else 1, color="black" if bold else None,
                label=name, zorder=3 if bold else 2)
    ax.set_xlabel("corrective clicks (0: box only)")
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(range(summary["clicks"] + 1))
    ax.set_title(title or f"Dice AUC {summary['dice_auc']['mean']:.3f}, final Dice {summary['final_dice']['mean']:.3f}",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    return True
