"""Segmentation losses that also collect the pruners' side terms, without changing MONAI's trainer.

MONAI's ``SupervisedTrainer`` calls ``loss_function(pred, label)`` right after ``network(image, boxes=...)``,
so the wrapped loss reads what the pruned network stored in that forward pass: ``network.aux_loss``
(e.g. DynamicViT's ratio loss), ``network.aux_logits`` (e.g. DToP's auxiliary heads, supervised with the
label reduced to their token grid), ``network.coarse_logits`` (the coarse head of guided decoding, supervised the
same way; it reads detached features, so its term trains the head alone) and ``network.click_focus`` (where the
training forward's simulated clicks were, for the click-focused term).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn as nn
import torch.nn.functional as F

from prato_components.engine.checkpoint import load_weights
from prato_components.engine.distributed import unwrap

__all__ = ["DistillationLoss", "PrunedSegLoss", "click_focused_ce", "label_on_grid", "presence_on_grid"]


def label_on_grid(label: torch.Tensor, grid_shape: tuple[int, ...], num_classes: int) -> torch.Tensor:
    """Majority class of every grid cell: ``[B, 1, *spatial]`` index label -> ``[B, 1, *grid_shape]``."""
    return _class_fractions(label, grid_shape, num_classes).argmax(dim=1, keepdim=True)


def _class_fractions(label: torch.Tensor, grid_shape: tuple[int, ...], num_classes: int) -> torch.Tensor:
    """The share of every class in every grid cell ``[B, C, *grid_shape]`` of an index label ``[B, 1, *spatial]``."""
    one_hot = F.one_hot(label[:, 0].long().clamp(0, num_classes - 1), num_classes).movedim(-1, 1).float()
    pool = F.adaptive_avg_pool2d if len(grid_shape) == 2 else F.adaptive_avg_pool3d
    return pool(one_hot, grid_shape)


def presence_on_grid(label: torch.Tensor, grid_shape: tuple[int, ...], num_classes: int) -> torch.Tensor:
    """What every grid cell contains, as class probabilities ``[B, C, *grid_shape]`` from an index label
    ``[B, 1, *spatial]``: a cell holding any foreground is foreground (its foreground classes in proportion to their
    voxels, background 0), else background. The coarse head's target: it must *find* structures, also those that
    never fill half a cell (a majority label would call a small structure background everywhere)."""
    fractions = _class_fractions(label, grid_shape, num_classes)
    foreground = fractions[:, 1:].sum(1, keepdim=True)
    found = foreground > 0
    share = fractions[:, 1:] / foreground.clamp(min=1e-12)
    return torch.cat([(~found).float(), torch.where(found, share, torch.zeros_like(share))], 1)


def click_focused_ce(pred: torch.Tensor, label: torch.Tensor, focus: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``pred`` ``[B, K, *spatial]`` against the index ``label`` ``[B, 1, *spatial]``, averaged with
    the weights ``focus`` ``[B, *spatial]`` (:func:`~prato_components.networks.clicks.click_focus`: 1 at a click,
    falling with its Gaussian), so the voxels around the clicks count, whatever the size of the structure; 0 when
    ``focus`` is 0 everywhere (no image of the batch has a click). A single channel is read as binary logits."""
    if pred.shape[1] == 1:
        ce = F.binary_cross_entropy_with_logits(pred[:, 0].float(), (label[:, 0] > 0).float(), reduction="none")
    else:
        ce = F.cross_entropy(pred.float(), label[:, 0].long(), reduction="none")
    weights = focus.to(ce)
    return (weights * ce).sum() / weights.sum().clamp(min=1e-6)


class PrunedSegLoss(nn.Module):
    """``loss(pred, label) + aux_weight * network.aux_loss + logits_weight * mean_i loss(aux_logits_i, label_i)
    + coarse_weight * CE(coarse_logits, what each cell of their grid contains)`` (:func:`presence_on_grid`)
    ``+ click_weight * click_focused_ce(pred, label, network.click_focus)`` (:func:`click_focused_ce`).

    Args:
        loss: the segmentation loss, e.g. MONAI ``DiceCELoss(to_onehot_y=True, softmax=True)``.
        network: the (possibly DDP-wrapped) pruned network whose side terms are added.
        aux_weight: weight of ``network.aux_loss``.
        logits_weight: weight of the auxiliary segmentation losses.
        coarse_weight: weight of the coarse head's loss (a network without a coarse head has none).
        click_weight: weight of the cross-entropy around the training forward's clicks (the bundles'
            ``click_training#focus``; a forward without clicks has none).
    """

    def __init__(self, loss: nn.Module, network: nn.Module, aux_weight: float = 1.0, logits_weight: float = 0.4,
                 coarse_weight: float = 1.0, click_weight: float = 0.0):
        super().__init__()
        if isinstance(click_weight, bool) or not isinstance(click_weight, (int, float)) or not click_weight >= 0:
            raise ValueError(f"click_weight (the bundles' click_training#focus) must be a number >= 0, got "
                             f"{click_weight!r}")
        self.loss = loss
        self._network = [network]  # a list, so the network is not registered as a submodule of the loss
        self.aux_weight, self.logits_weight, self.coarse_weight = aux_weight, logits_weight, coarse_weight
        self.click_weight = float(click_weight)

    @property
    def network(self) -> nn.Module:
        return unwrap(self._network[0])

    def forward(self, pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        total = self.loss(pred, label)
        aux_loss = getattr(self.network, "aux_loss", None)
        if aux_loss is not None and self.aux_weight:
            total = total + self.aux_weight * aux_loss
        aux_logits = getattr(self.network, "aux_logits", None) or []
        if aux_logits and self.logits_weight:
            terms = [self._on_grid(logits, label) for logits in aux_logits]
            total = total + self.logits_weight * torch.stack(terms).mean()
        coarse = getattr(self.network, "coarse_logits", None)
        if coarse is not None and self.coarse_weight:
            total = total + self.coarse_weight * self._coarse_term(coarse, label)
        focus = getattr(self.network, "click_focus", None)
        if focus is not None and self.click_weight:
            total = total + self.click_weight * click_focused_ce(pred, label, focus)
        return total

    @staticmethod
    def _coarse_term(coarse: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the coarse head's logits against :func:`presence_on_grid` (a single channel: binary
        cross-entropy against "the cell holds foreground")."""
        if coarse.shape[1] == 1:
            target = presence_on_grid(label, tuple(coarse.shape[2:]), 2)[:, 1:]
            return F.binary_cross_entropy_with_logits(coarse.float(), (target > 0).float())
        target = presence_on_grid(label, tuple(coarse.shape[2:]), coarse.shape[1])
        return F.cross_entropy(coarse.float(), target)

    def _on_grid(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """The segmentation loss of logits on a coarser grid against the label reduced to it."""
        return self.loss(logits, label_on_grid(label, tuple(logits.shape[2:]), logits.shape[1]))


class DistillationLoss(nn.Module):
    """``loss(pred, label) + weight * D(pred, teacher(image, boxes))``: distillation from a frozen unpruned network.

    DynamicViT's optional distillation, for segmentation: the pruned (student) network's logits are pulled towards
    those of a frozen teacher on the same input, voxel by voxel. MONAI's trainer calls ``loss_function(pred, label)``
    only, so a forward pre-hook on the student records its last input (``image`` and ``boxes``) and the teacher
    runs on it here, under ``torch.no_grad()``. Wrap a :class:`PrunedSegLoss` to keep the pruners' side terms::

        loss = DistillationLoss(PrunedSegLoss(DiceCELoss(to_onehot_y=True, softmax=True), net), net, teacher,
                                teacher_checkpoint="unetr_baseline/models/model.pt")

    Args:
        loss: the loss of the student's prediction and the label.
        network: the student network (DDP-wrapped is fine).
        teacher: the unpruned network (e.g. ``PrunedUNETR(pruner=None, ...)`` or MONAI's ``UNETR`` with the same
            configuration); frozen and kept in eval mode. Called with ``boxes=`` only if its ``forward`` takes them.
        teacher_checkpoint: optional path of the teacher's state dict (a dict holding it under ``"network"``,
            ``"model"`` or ``"state_dict"`` is unwrapped; a plain UNETR state dict also loads into a ``PrunedUNETR``).
        weight: weight of the distillation term.
        kind: ``"kl"``: ``T^2 * KL(softmax(teacher / T) || softmax(pred / T))`` over the channels, averaged over
            voxels; ``"mse"``: mean squared difference of the logits.
        temperature: ``T`` of ``"kl"``.
    """

    def __init__(
        self,
        loss: nn.Module,
        network: nn.Module,
        teacher: nn.Module,
        teacher_checkpoint: str | None = None,
        weight: float = 1.0,
        kind: str = "kl",
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if kind not in ("kl", "mse"):
            raise ValueError(f"kind must be 'kl' or 'mse', got {kind!r}")
        if temperature <= 0 or weight < 0:
            raise ValueError(f"temperature must be > 0 and weight >= 0, got {temperature} and {weight}")
        self.loss, self.teacher = loss, teacher
        self.weight, self.kind, self.temperature = weight, kind, temperature
        if teacher_checkpoint is not None:
            self._load_teacher(teacher_checkpoint)
        self.teacher.requires_grad_(False).eval()
        student = unwrap(network)
        self._inputs: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._hook = student.register_forward_pre_hook(self._record_inputs, with_kwargs=True)
        self._teacher_takes_boxes = "boxes" in inspect.signature(teacher.forward).parameters

    def _load_teacher(self, path: str) -> None:
        state = load_weights(path)[0]
        if hasattr(self.teacher, "load_unpruned_state_dict"):  # a PrunedUNETR teacher takes a plain UNETR state dict
            self.teacher.load_unpruned_state_dict(state)
        else:
            self.teacher.load_state_dict(state)

    def _record_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        image = args[0] if args else kwargs.get("x_in", kwargs.get("image"))
        boxes = args[1] if len(args) > 1 else kwargs.get("boxes")
        self._inputs = (image, boxes)

    def train(self, mode: bool = True) -> DistillationLoss:
        super().train(mode)
        self.teacher.eval()  # the teacher stays frozen in eval mode
        return self

    def teacher_logits(self, like: torch.Tensor) -> torch.Tensor:
        """The teacher's logits on the student's last input, shaped and placed like ``like``."""
        if self._inputs is None:
            raise ValueError("DistillationLoss has no student input: call the student network before the loss")
        image, boxes = self._inputs
        self._inputs = None
        self.teacher.to(like.device).eval()
        with torch.no_grad():
            target = self.teacher(image, boxes=boxes) if self._teacher_takes_boxes else self.teacher(image)
        if target.shape != like.shape:
            raise ValueError(f"teacher logits {tuple(target.shape)} do not match the prediction {tuple(like.shape)}")
        return target.to(like.dtype)

    def distillation(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The distillation term between student logits ``pred`` and teacher logits ``target``."""
        if self.kind == "mse":
            return F.mse_loss(pred, target)
        t = self.temperature
        student, teacher = F.log_softmax(pred / t, dim=1), F.log_softmax(target / t, dim=1)
        divergence = F.kl_div(student, teacher, reduction="none", log_target=True)
        return divergence.sum(dim=1).mean() * t * t

    def forward(self, pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        total = self.loss(pred, label)
        if not self.weight:
            self._inputs = None
            return total
        return total + self.weight * self.distillation(pred, self.teacher_logits(pred))
