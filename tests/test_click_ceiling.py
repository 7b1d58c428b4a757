"""``tools/click_ceiling.py``: the interactive protocol with each click answered by an oracle that fixes the error
component it was placed in, and nothing else."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tools.click_ceiling import click_ceiling


class GuessNetwork(nn.Module):
    """Answers the box with channel 0 of the image (a class map), whatever the box; takes no clicks."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))  # where the evaluation finds the device

    def forward(self, image, boxes=None):
        return F.one_hot(image[:, 0].round().long(), 2).movedim(-1, 1).float()


def test_the_click_ceiling_fixes_the_clicked_error_component_and_nothing_else():
    truth = torch.zeros(16, 16)
    truth[2:8, 2:8] = 1
    truth[13:15, 0:2] = 1
    guess = truth.clone()
    guess[3:6, 3:6] = 0  # a 3x3 miss
    guess[13:15, 0:2] = 0  # a 2x2 miss
    guess[10:12, 10:12] = 1  # a 2x2 leak
    item = {"image": torch.stack([guess, truth]), "label": truth[None], "box": torch.tensor([[0.0, 0.0, 16.0, 16.0]])}
    summary = click_ceiling(GuessNetwork(), [item], ["a"], clicks=3)
    # box: 27 of 40 found, 4 leaked; click 1 fills the 3x3 miss, click 2 the 2x2 miss (a miss before a leak of its
    # size), click 3 removes the 2x2 leak: each click fixes exactly its own component
    assert summary["dice_per_step"]["a"] == pytest.approx([54 / 71, 72 / 80, 80 / 84, 1.0])
    assert summary["clicks_followed"]["a"] == 1.0
    with pytest.raises(ValueError, match="the ceiling takes 2D images"):
        click_ceiling(GuessNetwork(), [{**item, "image": item["image"][..., None]}], ["a"], clicks=1)
