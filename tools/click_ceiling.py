"""What perfect corrective clicks could add to a trained network's box answer (docs/accuracy.md, "Corrective clicks").

The interactive protocol (:func:`~prato_components.engine.interactive_evaluation`: per structure its box, then clicks
at the centre of the largest error) with the clicks answered by :class:`ComponentOracle`: the network answers the
box, and each click then sets the error component it was placed in to the truth, and nothing else. The Dice after N
such clicks is the most that N clicks can add if each fixes what it points at; the network's own answers are in the
run's ``eval_*/metrics.json``. For a trained run of the experiment runner (2D bundles)::

    python tools/click_ceiling.py r/runs/small/acdc/s0/unetr_prato-<key> --clicks 5
"""

from __future__ import annotations

import glob
import json
import os
import sys
from types import SimpleNamespace

import fire
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from prato_components.engine import Click, InteractiveEvaluation, clicked_error  # noqa: E402


class ComponentOracle(nn.Module):
    """``network``'s answer to the box; each click then sets the error component under it (the false negatives of
    its class for a foreground click, the false positives for a background click, full connectivity) to ``label``.
    Set :attr:`label` (the image's class map ``[*spatial]``) before each image; called with batch 1, as the protocol
    calls."""

    def __init__(self, network: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.network, self.num_classes = network, num_classes
        self.label: torch.Tensor | None = None
        self.answer: torch.Tensor | None = None  # [*spatial] class map of the structure's last step

    def forward(self, image, boxes=None, points=None, point_labels=None, previous_mask=None, prompt_class=None):
        if points is None:
            self.answer = self.network(image, boxes=boxes).argmax(1)[0]
        else:
            structure = int(prompt_class[0])
            click = Click(tuple(int(v) for v in points[0, -1].floor()), int(point_labels[0, -1]))
            fixed = torch.from_numpy(clicked_error(self.answer == structure, self.label == structure, click))
            self.answer = torch.where(fixed.to(self.answer.device), self.label.to(self.answer), self.answer)
        return F.one_hot(self.answer[None], self.num_classes).movedim(-1, 1).float()


def click_ceiling(network: nn.Module, items, class_names: list[str], clicks: int = 5, inferer=None) -> dict:
    """:func:`~prato_components.engine.summarise_interactive` of the protocol on ``items`` (dicts with ``image``
    ``[C, *spatial]``, ``label`` ``[1, *spatial]``, ``box``), the clicks answered by :class:`ComponentOracle` of
    ``network``."""
    oracle = ComponentOracle(network, len(class_names) + 1)
    evaluation = InteractiveEvaluation(oracle, clicks, class_names, inferer, reuse=False)
    with torch.no_grad():
        for item in items:
            shape = tuple(torch.as_tensor(item["image"]).shape)
            if len(shape) != 3:
                raise ValueError("the ceiling takes 2D images [C, H, W] (a volume's clicks go through the sliding "
                                 f"window), got shape {shape}")
            oracle.label = torch.as_tensor(item["label"]).reshape(shape[1:])
            evaluation(SimpleNamespace(state=SimpleNamespace(batch=[item])))
    return evaluation.summary()


def main(run_folder: str, clicks: int = 5) -> str:
    """The ceiling of a trained run of ``tools/experiments.py`` on its test split, next to the network's own
    answers (its ``eval_*/metrics.json``), per class: Dice after the box and after each click."""
    from tools.experiments import Run, _evaluation_network, run_overrides

    with open(os.path.join(run_folder, "run.json")) as f:
        description = json.load(f)
    run = Run(**description["run"])
    parser, network = _evaluation_network(run, run_overrides(run, description["dataset_dir"]))
    names = list(parser.get_parsed_content("spec")["class_names"])
    ceiling = click_ceiling(network, parser.get_parsed_content("test#dataset"), names, clicks,
                            parser.get_parsed_content("inferer"))
    own = {}
    for path in sorted(glob.glob(os.path.join(run_folder, "eval_*", "metrics.json"))):
        with open(path) as f:
            own = json.load(f).get("interactive", {}).get("dice_per_step", own)
    lines = [f"{run_folder}: {ceiling['num_structures']} structures; Dice after the box, then after each click",
             "| class | answered by | " + " | ".join(["box", *(f"+{i}" for i in range(1, clicks + 1))]) + " |",
             "|---|---|" + "---|" * (clicks + 1)]
    for name in [*names, "mean"]:
        for who, steps in (("the network", own.get(name)), ("ceiling", ceiling["dice_per_step"].get(name))):
            if steps:
                lines.append(f"| {name} | {who} | " + " | ".join(f"{v:.3f}" for v in steps[: clicks + 1]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    fire.Fire(main)
