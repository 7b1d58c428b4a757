"""The evaluation report: per-class accuracy, token sparsity and efficiency, written atomically.

The accuracy numbers come from MONAI's metric handlers (``MeanDice``, ``MeanIoUHandler``,
``HausdorffDistance`` with ``save_details=True``); this handler reduces their per-image, per-class details
(a class's mean is over the images in which it is present; ``num_present`` counts them, so a class that is never
found shows as 0 over a stated number of images rather than hiding in the mean),
adds the token sparsity collected by :class:`~prato_components.engine.handlers.TokenSparsityHandler` and the
network's GFLOPs and CPU latency on one input of the network's size, writes ``metrics.json`` and
``metrics.csv`` to ``output_dir`` and prints a table. An evaluation of several box qualities (``prompts``, the
data evaluated once per quality, in that order) adds the paper's Table VI: per quality the metrics, and the ratio of
the misleading to the tight box's mean Dice. With ``clicks`` > 0 it also runs the interactive protocol
(:class:`~prato_components.engine.click_evaluation.InteractiveEvaluation`) on every image and adds its numbers
(``interactive``) and a Dice-vs-clicks figure (``dice_vs_clicks.png``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Sequence

import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction

from prato_components.atomic import atomic_write_text
from prato_components.efficiency import count_flops, measure_latency
from prato_components.engine.click_evaluation import InteractiveEvaluation, draw_dice_curve
from prato_components.engine.distributed import unwrap

__all__ = ["EvaluationReport"]

logger = logging.getLogger(__name__)


def _nanmean(values: torch.Tensor) -> float:
    values = values[~torch.isnan(values) & ~torch.isinf(values)]
    return float(values.mean()) if values.numel() else float("nan")


def _ratio(prompts: dict, numerator: str, denominator: str, metric: str = "mean_dice") -> float:
    """``prompts[numerator][metric]["mean"] / prompts[denominator][metric]["mean"]`` (NaN when either is missing)."""
    try:
        return prompts[numerator][metric]["mean"] / prompts[denominator][metric]["mean"]
    except (KeyError, ZeroDivisionError):
        return float("nan")


class EvaluationReport:
    """Summarise an evaluation run.

    Args:
        output_dir: where ``metrics.json`` / ``metrics.csv`` go.
        class_names: names of the foreground classes, in label order (1, 2, ...).
        metric_names: the evaluator metric names whose ``metric_details`` ([images, classes]) are reported.
        network: the evaluated network, for GFLOPs and latency (``None`` skips them).
        input_shape: ``[C, *spatial]`` of one network input (batch 1) for GFLOPs and latency.
        box_fraction: the central box used for the efficiency measurement.
        latency_repeats: timed repeats (median); 0 skips latency.
        threads: torch threads during the latency measurement.
        prompts: the box qualities the data was evaluated with, in order (``evaluate.json``'s ``prompts``); with
            more than one, the images are that many equal runs of the data, one per quality.
        clicks: corrective clicks per structure of the interactive protocol; 0 (the default) skips it.
        inferer: the evaluator's inferer, through which the interactive protocol calls the network.
        previous_mask: the interactive protocol also passes each structure's previous prediction.
        click_reuse: the interactive protocol reuses work between the clicks on one structure, as an interactive
            session does (:func:`~prato_components.engine.click_evaluation.interactive_evaluation`).
    """

    def __init__(
        self,
        output_dir: str,
        class_names: Sequence[str],
        metric_names: Sequence[str],
        network: nn.Module | None = None,
        input_shape: Sequence[int] | None = None,
        box_fraction: float = 0.4,
        latency_repeats: int = 5,
        threads: int = 2,
        prompts: Sequence[str] | None = None,
        clicks: int = 0,
        inferer: object | None = None,
        previous_mask: bool = False,
        click_reuse: bool = True,
    ) -> None:
        self.output_dir, self.class_names, self.metric_names = output_dir, list(class_names), list(metric_names)
        self.network, self.input_shape = network, list(input_shape) if input_shape else None
        self.box_fraction, self.latency_repeats, self.threads = box_fraction, latency_repeats, threads
        self.prompts = list(prompts or [])
        self.interactive = (InteractiveEvaluation(network, clicks, class_names, inferer, previous_mask, click_reuse)
                            if clicks else None)
        self.summary: dict = {}

    def attach(self, engine: Engine) -> None:
        if self.interactive is not None:
            self.interactive.attach(engine)
        engine.add_event_handler(Events.COMPLETED, self)

    def efficiency(self) -> dict[str, float]:
        """GFLOPs (and latency) of the network on one input of ``input_shape`` with a central box."""
        if self.network is None or self.input_shape is None:
            return {}
        net = unwrap(self.network)
        device = next(net.parameters()).device
        spatial = self.input_shape[1:]
        image = torch.randn(1, *self.input_shape, device=device)
        lo = [s * (1 - self.box_fraction) / 2 for s in spatial]
        boxes = torch.tensor([lo + [s - x for s, x in zip(spatial, lo)]], device=device)
        was_training = net.training
        net.eval()
        try:
            result = {"gflops": count_flops(net, image, boxes=boxes) / 1e9}
            if self.latency_repeats > 0:
                seconds = measure_latency(lambda: net(image, boxes=boxes), warmup=2, repeats=self.latency_repeats,
                                          threads=self.threads)
                result["latency_ms"] = seconds * 1e3
        finally:
            net.train(was_training)
        return result

    def __call__(self, engine: Engine) -> None:
        details = getattr(engine.state, "metric_details", {}) or {}
        per_class: dict[str, dict[str, float]] = {}
        for name in self.metric_names:
            if name not in details:
                continue
            values = torch.as_tensor(details[name], dtype=torch.float64)
            if values.ndim == 1:
                values = values[:, None]
            per_class[name] = {cls: _nanmean(values[:, i]) for i, cls in enumerate(self.class_names[: values.shape[1]])}
            per_class[name]["mean"] = float(engine.state.metrics.get(name, _nanmean(values)))
        present: dict[str, int] = {}
        for name in self.metric_names:  # Dice is NaN where a class is absent from the label (MONAI ignore_empty)
            if name in details and "dice" in name:
                values = torch.as_tensor(details[name], dtype=torch.float64)
                values = values[:, None] if values.ndim == 1 else values
                present = {cls: int(torch.isfinite(values[:, i]).sum())
                           for i, cls in enumerate(self.class_names[: values.shape[1]])}
                break
        summary = {
            "num_images": int(next(iter(details.values())).shape[0]) if details else 0,
            "num_present": present,
            "metrics": per_class,
            "tokens": {k: float(v) for k, v in engine.state.metrics.items() if "kept_fraction" in k or "sparsity" in k},
        }
        if len(self.prompts) > 1:
            summary["prompts"] = self.by_prompt(details)
            summary["misleading_over_tight"] = _ratio(summary["prompts"], "misleading", "tight")
        windows = {k: float(v) for k, v in engine.state.metrics.items() if k.startswith("windows_")}
        if windows:  # sliding-window evaluation (3D bundles): windows computed / skipped over the test images
            summary["windows"] = windows
        if self.interactive is not None:
            summary["interactive"] = self.interactive.summary()
            if len(self.prompts) > 1:
                summary["interactive_by_prompt"] = dict(zip(self.prompts, self.interactive.summary(len(self.prompts))))
            draw_dice_curve(summary["interactive"], os.path.join(self.output_dir, "dice_vs_clicks.png"))
        summary.update(self.efficiency())
        self.summary = summary
        atomic_write_text(json.dumps(summary, indent=2, default=float), os.path.join(self.output_dir, "metrics.json"))
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["metric", *self.class_names, "mean"])
        for name, values in per_class.items():
            writer.writerow([name, *[values.get(c, float("nan")) for c in self.class_names], values["mean"]])
        if present:
            writer.writerow(["num_present", *[present.get(c, 0) for c in self.class_names], summary["num_images"]])
        for prompt, metrics in summary.get("prompts", {}).items():
            for name, values in metrics.items():
                writer.writerow([f"{name}@{prompt}", *[values.get(c, float("nan")) for c in self.class_names],
                                 values["mean"]])
        if "interactive" in summary:
            writer.writerows(self.interactive_rows(summary["interactive"]))
        atomic_write_text(buffer.getvalue(), os.path.join(self.output_dir, "metrics.csv"))
        print(self.format(summary), flush=True)

    def by_prompt(self, details: dict) -> dict[str, dict[str, dict[str, float]]]:
        """``{quality: {metric: {class: mean, "mean": mean}}}`` from the per-image details, whose rows are the data
        once per quality of :attr:`prompts`, in order."""
        out: dict[str, dict[str, dict[str, float]]] = {prompt: {} for prompt in self.prompts}
        for name in self.metric_names:
            if name not in details:
                continue
            values = torch.as_tensor(details[name], dtype=torch.float64)
            values = values[:, None] if values.ndim == 1 else values
            if values.shape[0] % len(self.prompts):
                raise ValueError(f"{values.shape[0]} evaluated images are not {len(self.prompts)} equal runs of the "
                                 f"data, one per box quality {self.prompts}")
            for prompt, chunk in zip(self.prompts, values.chunk(len(self.prompts))):
                classes = self.class_names[: chunk.shape[1]]
                out[prompt][name] = {cls: _nanmean(chunk[:, i]) for i, cls in enumerate(classes)}
                out[prompt][name]["mean"] = float(do_metric_reduction(chunk.clone(), MetricReduction.MEAN)[0])
        return out

    def interactive_rows(self, interactive: dict) -> list[list]:
        """The CSV rows of the interactive protocol: the Dice after each step, its AUC, the final Dice, NoC and the
        not-reached fractions per class and over all structures; the seconds (over all structures) under "mean"."""
        nan = float("nan")
        per_step = interactive["dice_per_step"]
        rows = [[f"dice@click{step}", *[per_step.get(c, [nan] * (step + 1))[step] for c in self.class_names],
                 per_step["mean"][step]] for step in range(len(per_step["mean"]))]
        for key in ("dice_auc", "final_dice", "noc85", "noc90", "not_reached85", "not_reached90", "clicks_followed"):
            rows.append([key, *[interactive[key].get(c, nan) for c in self.class_names], interactive[key]["mean"]])
        for key in ("seconds_first", "seconds_later", "later_over_first"):
            rows.append([key, *[""] * len(self.class_names), interactive[key]])
        return rows

    def format(self, summary: dict) -> str:
        """A plain-text table of the summary."""
        width = max([len(c) for c in self.class_names] + [8])
        lines = [f"{'metric':<10}" + "".join(f"{c:>{width + 2}}" for c in self.class_names + ["mean"])]
        for name, values in summary["metrics"].items():
            cells = [values.get(c, float("nan")) for c in self.class_names] + [values["mean"]]
            values = (f"{v:>{width + 2}.4f}" if not math.isnan(v) else f"{'nan':>{width + 2}}" for v in cells)
            lines.append(f"{name:<10}" + "".join(values))
        if summary.get("num_present"):
            counts = [summary["num_present"].get(c, 0) for c in self.class_names] + [summary["num_images"]]
            lines.append(f"{'present':<10}" + "".join(f"{n:>{width + 2}d}" for n in counts))
        if summary.get("prompts"):
            names = [n for n in self.metric_names if any(n in m for m in summary["prompts"].values())]
            lines.append(f"{'prompt':<12}" + "".join(f"{n:>12}" for n in names))
            for prompt, metrics in summary["prompts"].items():
                lines.append(f"{prompt:<12}" + "".join(f"{metrics[n]['mean']:>12.4f}" for n in names))
            lines.append(f"misleading / tight mean_dice: {summary['misleading_over_tight']:.4f}")
        for key, value in {**summary["tokens"], **summary.get("windows", {})}.items():
            lines.append(f"{key}: {value:.4f}")
        if "interactive" in summary:
            clicks = summary["interactive"]
            lines.append(f"interactive ({clicks['clicks']} clicks, {clicks['num_structures']} structures): "
                         f"Dice per step {' '.join(f'{v:.4f}' for v in clicks['dice_per_step']['mean'])}, "
                         f"AUC {clicks['dice_auc']['mean']:.4f}, final {clicks['final_dice']['mean']:.4f}, "
                         f"NoC@85 {clicks['noc85']['mean']:.2f}, NoC@90 {clicks['noc90']['mean']:.2f}, "
                         f"clicks followed {clicks['clicks_followed']['mean']:.2f}, "
                         f"later / first interaction time {clicks['later_over_first']:.3f}")
        for key in ("gflops", "latency_ms"):
            if key in summary:
                lines.append(f"{key}: {summary[key]:.3f}")
        lines.append(f"images: {summary['num_images']}")
        return "\n".join(lines)
