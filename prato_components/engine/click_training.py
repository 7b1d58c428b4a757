"""Training with simulated corrective clicks, as DeepEdit and VISTA3D train (docs/design.md §9, "Corrective clicks").

:class:`ClickTrainingBatch` wraps the trainer's ``prepare_batch``: for a fraction of the batches it runs the network
without gradients a few times, each time adding one click per image sampled from the errors of its own prediction
(:func:`~prato_components.engine.clicks.sample_click`), and hands the clicks to the training forward as
``points`` / ``point_labels``. The bundles' ``click_training`` key sets it; its default (``probability`` 0) returns
the batch untouched and draws no random number, so training without clicks is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from monai.engines.utils import PrepareBatch
from monai.inferers import Inferer

from prato_components.engine.clicks import append_clicks, check_takes_clicks, next_click, sample_click
from prato_components.errors import InputError
from prato_components.prompts.boxes import boxes_from_label, clip_boxes, jitter_boxes, whole_image_boxes

__all__ = ["CLICK_BOXES", "CLICK_SAMPLING", "ClickTrainingBatch", "check_click_training"]

CLICK_SAMPLING = ("weighted", "centre")
CLICK_BOXES = ("batch", "structure")
STRUCTURE_BOX_JITTER = 0.1  # shift and per-side scale fractions of a clicked structure's box (the training prompt's)


def check_click_training(probability: float, max_clicks: int, sampling: str, previous_mask: bool = False,
                         box: str = "structure") -> None:
    """``InputError`` naming each bad ``click_training`` value."""
    wrong = []
    if isinstance(probability, bool) or not isinstance(probability, (int, float)) or not 0 <= probability <= 1:
        wrong.append(f"probability must be a number in [0, 1], got {probability!r}")
    if isinstance(max_clicks, bool) or not isinstance(max_clicks, int) or max_clicks < 1:
        wrong.append(f"max_clicks must be an integer >= 1, got {max_clicks!r}")
    if sampling not in CLICK_SAMPLING:
        wrong.append(f"sampling must be one of {list(CLICK_SAMPLING)}, got {sampling!r}")
    if not isinstance(previous_mask, bool):
        wrong.append(f"previous_mask must be true or false, got {previous_mask!r}")
    if box not in CLICK_BOXES:
        wrong.append(f"box must be one of {list(CLICK_BOXES)}, got {box!r}")
    if wrong:
        raise InputError("click_training: " + "; ".join(wrong))


class ClickTrainingBatch(PrepareBatch):
    """A ``prepare_batch`` that adds simulated corrective clicks to a fraction of the training batches.

    With probability ``probability`` a batch gets ``k`` clicks per image, ``k`` uniform in ``1..max_clicks``: the
    network (eval mode, no gradients, autocast with ``amp``) segments the batch ``k`` times through ``inferer``,
    each time with the clicks so far, and each image gets one more click on the errors of its prediction for one
    structure (a class drawn once per batch among those in its label, else among those predicted; an image with
    neither gets padding rows), and that structure's class goes with the clicks as ``prompt_class``. ``sampling``:
    ``"weighted"`` (:func:`sample_click`) or ``"centre"`` (:func:`next_click`, the evaluation's click). The
    training forward then runs with the ``k`` clicks, so the network is called ``k + 1`` times. With
    ``previous_mask`` every call with clicks also gets the previous prediction of the clicked structure
    (``[B, 1, *spatial]``, 0 / 1) as ``previous_mask``. ``box``: ``"batch"``, the batch's boxes; ``"structure"``,
    each image's box becomes the tight box of the clicked structure's label (jittered as the training prompt is,
    :data:`STRUCTURE_BOX_JITTER`; the whole image for an image without foreground), as the interactive
    evaluation and an annotator box one structure. Draws use torch's global generator (recorded by the training
    checkpoint).

    Args:
        prepare_batch: the trainer's own ``prepare_batch`` (``PrepareBatchExtraInput`` with the boxes).
        network: the trained network (DDP-wrapped is fine).
        inferer: the trainer's inferer; it passes ``points`` / ``point_labels`` to the network.
        probability: fraction of batches trained with clicks; 0 turns click training off.
        max_clicks: most clicks per image.
        sampling: ``"weighted"`` or ``"centre"``.
        amp: run the simulation under autocast (as the trainer runs the training forward).
        previous_mask: pass the previous prediction of the clicked structure with the clicks.
        box: ``"batch"`` or ``"structure"``: the boxes of the batches with clicks.
    """

    def __init__(self, prepare_batch: Callable, network: nn.Module, inferer: Inferer | Callable,
                 probability: float = 0.0, max_clicks: int = 3, sampling: str = "weighted", amp: bool = False,
                 previous_mask: bool = False, box: str = "structure") -> None:
        check_click_training(probability, max_clicks, sampling, previous_mask, box)
        if probability > 0:
            check_takes_clicks(network, "click_training", previous_mask)
        self.prepare_batch, self.network, self.inferer = prepare_batch, network, inferer
        self.probability, self.max_clicks, self.sampling, self.amp = float(probability), max_clicks, sampling, amp
        self.previous_mask, self.box = previous_mask, box

    def __call__(self, batchdata: Mapping, device: str | torch.device | None = None, non_blocking: bool = False,
                 **kwargs: Any) -> tuple:
        batch = self.prepare_batch(batchdata, device, non_blocking, **kwargs)
        if self.probability <= 0 or float(torch.rand(())) >= self.probability:
            return batch
        image, label, args, network_kwargs = batch if len(batch) == 4 else (*batch, (), {})
        clicks = int(torch.randint(1, self.max_clicks + 1, ()))
        return image, label, args, {**network_kwargs, **self.simulate(image, label, args, network_kwargs, clicks)}

    def simulate(self, image: torch.Tensor, label: torch.Tensor, args: tuple, kwargs: dict, clicks: int
                 ) -> dict[str, torch.Tensor]:
        """``clicks`` rounds of segment-then-click on the batch; returns the training forward's ``points``
        ``[B, clicks, D]``, ``point_labels`` ``[B, clicks]``, ``prompt_class`` ``[B]`` (and ``previous_mask``; with
        ``box`` ``"structure"`` the ``boxes`` ``[B, 1, 2D]`` of the clicked structures)."""
        was_training = self.network.training
        self.network.eval()
        given: dict[str, torch.Tensor] = {}
        classes: list[int | None] | None = None
        if self.box == "structure":
            classes = [_pick_class(label[b, 0]) for b in range(image.shape[0])]
            kwargs = {**kwargs, "boxes": _structure_boxes(label, classes)}
        click = sample_click if self.sampling == "weighted" else next_click
        try:
            with torch.no_grad(), torch.autocast(image.device.type, enabled=self.amp):
                for _ in range(clicks):
                    prediction = self.inferer(image, self.network, *args, **kwargs, **given).argmax(1)
                    if classes is None:
                        classes = [_pick_class(label[b, 0], prediction[b]) for b in range(image.shape[0])]
                    found = [None if c is None else click(prediction[b] == c, label[b, 0] == c)
                             for b, c in enumerate(classes)]
                    points, point_labels = append_clicks(given.get("points"), given.get("point_labels"), found,
                                                         image.ndim - 2, image.device)
                    given = {"points": points, "point_labels": point_labels,
                             "prompt_class": torch.tensor([c or 1 for c in classes], device=image.device)}
                    if self.previous_mask:
                        given["previous_mask"] = torch.stack([
                            prediction[b] == c if c is not None else torch.zeros_like(prediction[b], dtype=torch.bool)
                            for b, c in enumerate(classes)])[:, None].float()
        finally:
            self.network.train(was_training)
        return {**given, "boxes": kwargs["boxes"]} if self.box == "structure" else given


def _structure_boxes(label: torch.Tensor, classes: list[int | None]) -> torch.Tensor:
    """``[B, 1, 2D]``: per image of ``label`` ``[B, 1, *spatial]`` the tight box of class ``classes[b]``, jittered
    by :data:`STRUCTURE_BOX_JITTER` (a stream seeded from torch's global generator) and clipped to the image; the
    whole image for ``None``."""
    spatial = tuple(label.shape[2:])
    whole = whole_image_boxes(spatial)
    rows = torch.cat([whole if c is None else
                      boxes_from_label(label[b, 0], per_class=True, classes=[c], spatial_dims=len(spatial)).cpu()
                      for b, c in enumerate(classes)])
    rng = np.random.default_rng(int(torch.randint(2**31, ())))
    rows = clip_boxes(jitter_boxes(rows, STRUCTURE_BOX_JITTER, STRUCTURE_BOX_JITTER, rng), spatial)
    empty = torch.tensor([c is None for c in classes])
    return torch.where(empty[:, None], whole, rows).to(label.device)[:, None]


def _pick_class(*sources: torch.Tensor) -> int | None:
    """A class drawn uniformly among the foreground classes of the first of ``sources`` (class maps) that has one;
    ``None`` if all are background."""
    for source in sources:
        present = [int(c) for c in torch.unique(source) if c > 0]
        if present:
            return present[int(torch.randint(len(present), ()))]
    return None
