"""Segmentation losses that also collect the pruners' side terms, without changing MONAI's trainer.

MONAI's ``SupervisedTrainer`` calls ``loss_function(pred, label)`` right after ``network(image, boxes=...)``,
so the wrapped loss reads what the pruned network stored in that forward pass: ``network.aux_loss``
(e.g. DynamicViT's ratio loss) and ``network.aux_logits`` (e.g. DToP's auxiliary heads, supervised with the
label reduced to their token grid).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["PrunedSegLoss", "label_on_grid"]


def label_on_grid(label: torch.Tensor, grid_shape: tuple[int, ...], num_classes: int) -> torch.Tensor:
    """Majority class of every grid cell: ``[B, 1, *spatial]`` index label -> ``[B, 1, *grid_shape]``."""
    one_hot = F.one_hot(label[:, 0].long().clamp(0, num_classes - 1), num_classes)
    one_hot = one_hot.movedim(-1, 1).float()
    pooled = F.adaptive_avg_pool2d(one_hot, grid_shape) if len(grid_shape) == 2 else F.adaptive_avg_pool3d(
        one_hot, grid_shape
    )
    return pooled.argmax(dim=1, keepdim=True)


class PrunedSegLoss(nn.Module):
    """``loss(pred, label) + aux_weight * network.aux_loss + logits_weight * mean_i loss(aux_logits_i, label_i)``.

    Args:
        loss: the segmentation loss, e.g. MONAI ``DiceCELoss(to_onehot_y=True, softmax=True)``.
        network: the (possibly DDP-wrapped) pruned network whose side terms are added.
        aux_weight: weight of ``network.aux_loss``.
        logits_weight: weight of the auxiliary segmentation losses.
    """

    def __init__(self, loss: nn.Module, network: nn.Module, aux_weight: float = 1.0, logits_weight: float = 0.4):
        super().__init__()
        self.loss = loss
        self._network = [network]  # a list, so the network is not registered as a submodule of the loss
        self.aux_weight, self.logits_weight = aux_weight, logits_weight

    @property
    def network(self) -> nn.Module:
        net = self._network[0]
        return getattr(net, "module", net)

    def forward(self, pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        total = self.loss(pred, label)
        aux_loss = getattr(self.network, "aux_loss", None)
        if aux_loss is not None and self.aux_weight:
            total = total + self.aux_weight * aux_loss
        aux_logits = getattr(self.network, "aux_logits", None) or []
        if aux_logits and self.logits_weight:
            terms = [self.loss(logits, label_on_grid(label, tuple(logits.shape[2:]), logits.shape[1])) for logits in aux_logits]
            total = total + self.logits_weight * torch.stack(terms).mean()
        return total
