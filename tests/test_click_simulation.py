"""Corrective clicks: the simulated click against hand-made error maps, the batched points, training with simulated
clicks (network calls counted) and the interactive evaluation protocol on a stand-in network whose output the
clicks change."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import ALL_BUNDLES, BUNDLES_DIR, read_json, run_bundle
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import PrepareBatchExtraInput
from scipy import ndimage

from prato_components.bundle import check_settings
from prato_components.engine import (
    Click,
    ClickTrainingBatch,
    EvaluationReport,
    PromptedInferer,
    StructureRecord,
    append_clicks,
    click_evaluation,
    clicked_error,
    clicks_to_reach,
    dice_auc,
    draw_dice_curve,
    error_masks,
    interactive_evaluation,
    next_click,
    sample_click,
    summarise_interactive,
)
from prato_components.engine import clicks as clicks_module
from prato_components.errors import InputError
from prato_components.networks import PrunedUNETR
from prato_components.prompts.boxes import box_is_padding


class ClickedOracle(nn.Module):
    """A stand-in for a network that takes clicks: channel 0 of the image is its guess (a class map), channel 1 the
    truth; every real click (label 0 or 1) replaces the guess by the truth in the voxels whose centres lie within
    ``radius`` of it, and
    outside the union of the boxes the answer is background. It records the points, point labels, answer and
    previous mask of every call (:attr:`calls`), its ``prompt_class`` (:attr:`classes`) and its ``boxes``
    (:attr:`boxes`)."""

    def __init__(self, num_classes: int = 2, radius: float = 1.5) -> None:
        super().__init__()
        self.num_classes, self.radius = num_classes, radius
        self.weight = nn.Parameter(torch.zeros(()))  # gives the output a gradient
        self.calls: list[tuple] = []
        self.classes: list = []
        self.boxes: list = []

    def forward(self, image, boxes=None, points=None, point_labels=None, previous_mask=None, prompt_class=None):
        guess, truth = image[:, 0].round().long().clone(), image[:, 1].round().long()
        grid = torch.stack(torch.meshgrid(*[torch.arange(s) for s in guess.shape[1:]], indexing="ij"), -1).float()
        grid = grid + 0.5  # voxel centres
        for b in range(guess.shape[0]):
            for point, label in zip(points[b] if points is not None else [], point_labels[b] if points is not None
                                    else []):
                if label >= 0:
                    near = (grid - point).norm(dim=-1) <= self.radius
                    guess[b][near] = truth[b][near]
            if boxes is not None:
                inside = torch.zeros(guess.shape[1:], dtype=torch.bool)
                rows = boxes[b].reshape(-1, 2 * (image.ndim - 2))
                for row in rows[~box_is_padding(rows)]:
                    dims = len(row) // 2
                    inside |= ((grid >= row[:dims]) & (grid < row[dims:])).all(-1)
                guess[b][~inside] = 0
        self.calls.append((points, point_labels, guess, previous_mask))
        self.classes.append(prompt_class)
        self.boxes.append(boxes)
        return F.one_hot(guess, self.num_classes).movedim(-1, 1).float() * 10 + self.weight


def _masks(shape, *blocks):
    mask = torch.zeros(shape, dtype=torch.bool)
    for block in blocks:
        mask[block] = True
    return mask


# ------------------------------------------------------------------------------------------------ click simulation
def test_next_click_is_at_the_centre_of_the_largest_miss_2d():
    label = _masks((12, 14), np.s_[1:8, 1:8], np.s_[9:11, 9:13])
    prediction = _masks((12, 14), np.s_[9:11, 9:13], np.s_[0:1, 10:14])  # misses the 7x7 block, leaks 1x4
    assert next_click(prediction, label) == Click((4, 4), 1)


def test_next_click_picks_the_largest_leak_over_a_smaller_miss_2d():
    label = _masks((12, 12), np.s_[0:2, 0:2])
    prediction = _masks((12, 12), np.s_[5:10, 4:9])  # misses 2x2, leaks 5x5
    assert next_click(prediction, label) == Click((7, 6), 0)


def test_next_click_largest_component_3d_and_the_image_edge_is_a_border():
    label = torch.zeros(10, 10, 10, dtype=torch.bool)
    prediction = label.clone()
    label[0:3, 0:3, 0:3] = True  # a miss of 27 voxels in the image's corner
    prediction[6:9, 6:9, 6:9] = True  # a leak of 27 voxels: a miss wins a tie
    assert next_click(prediction, label) == Click((1, 1, 1), 1)  # the middle, not the corner the edge would give
    prediction[5:10, 5:10, 5:10] = True  # the leak grows to 125 voxels
    assert next_click(prediction, label) == Click((7, 7, 7), 0)


def test_next_click_ties_go_to_the_first_component_and_voxel_in_scan_order():
    label = _masks((8, 8), np.s_[1:3, 1:3], np.s_[5:7, 5:7])
    assert next_click(torch.zeros(8, 8, dtype=torch.bool), label) == Click((1, 1), 1)
    assert next_click(label, torch.zeros(8, 8, dtype=torch.bool)) == Click((1, 1), 0)  # a miss and a leak alike


def test_next_click_region_and_no_error():
    label = _masks((8, 8), np.s_[0:3, 0:3], np.s_[5:8, 5:7])
    assert next_click(label.clone(), label) is None
    prediction = torch.zeros(8, 8, dtype=torch.bool)
    assert next_click(prediction, label, region=_masks((8, 8), np.s_[4:8, 4:8])) == Click((5, 5), 1)
    assert next_click(prediction, label, region=torch.zeros(8, 8, dtype=torch.bool)) is None
    missed, leaked = error_masks(prediction, label)
    assert missed.sum() == 15 and not leaked.any()
    with pytest.raises(ValueError, match=r"prediction \(8, 8\) and label \(8, 9\) must have the same shape"):
        next_click(prediction, torch.zeros(8, 9))
    with pytest.raises(ValueError, match="prediction must be a 2D or 3D mask"):
        next_click(torch.zeros(8), torch.zeros(8))


@pytest.mark.parametrize("shape", [(30, 26), (14, 12, 10)])
def test_the_depth_on_the_padded_bounding_box_equals_the_whole_image_distance_transform(shape):
    """The click's distance transform runs on the error's bounding box: the same as on the whole (padded) image."""
    generator = np.random.default_rng(0)
    for _ in range(5):
        mask = ndimage.binary_opening(generator.random(shape) > 0.45)  # blobs, some touching the image's edge
        reference = ndimage.distance_transform_edt(np.pad(mask, 1))[(slice(1, -1),) * len(shape)]
        np.testing.assert_allclose(clicks_module._depth(mask), reference, rtol=1e-6)
    assert not clicks_module._depth(np.zeros(shape, dtype=bool)).any()


def test_sample_click_lies_in_the_errors_with_their_label_and_is_reproducible():
    label = _masks((16, 16), np.s_[2:9, 2:9])
    prediction = _masks((16, 16), np.s_[2:9, 2:5], np.s_[12:15, 12:15])
    missed, leaked = error_masks(prediction, label)
    draws = [sample_click(prediction, label, generator=torch.Generator().manual_seed(s)) for s in range(60)]
    for click in draws:
        assert (missed if click.label == 1 else leaked)[click.point]
    assert {c.label for c in draws} == {0, 1}
    assert sample_click(prediction, label, generator=torch.Generator().manual_seed(3)) == draws[3]
    centre_share = sum(c.point[1] in (6, 7) for c in draws if c.label == 1) / sum(c.label == 1 for c in draws)
    assert centre_share > 2 / 4  # the miss's columns 5..8: its middle two weigh more than its border ones
    assert sample_click(label.clone(), label) is None


def test_clicked_error_is_the_error_component_holding_the_click():
    truth = _masks((8, 8), (slice(1, 5), slice(1, 5)))
    guess = _masks((8, 8), (slice(1, 5), slice(1, 2)), (slice(6, 8), slice(6, 8)), (slice(5, 6), slice(5, 6)))
    miss = clicked_error(guess, truth, Click((2, 3), 1))  # the missed 4x3 block, nothing else
    assert torch.equal(torch.from_numpy(miss), truth & ~guess)
    leak = clicked_error(guess, truth, Click((7, 7), 0))  # the leaks at (5, 5) and (6..7, 6..7) touch diagonally
    assert torch.equal(torch.from_numpy(leak), guess & ~truth) and leak.sum() == 5
    assert not clicked_error(guess, truth, Click((0, 0), 1)).any()  # not an error voxel
    assert not clicked_error(guess, truth, Click((2, 3), 0)).any()  # a miss is no leak


def test_append_clicks_pads_images_without_a_click():
    points, labels = append_clicks(None, None, [Click((3, 4), 1), None])
    assert points.tolist() == [[[3.5, 4.5]], [[0.0, 0.0]]] and labels.tolist() == [[1], [-1]]  # voxel centres
    points, labels = append_clicks(points, labels, [None, Click((5, 6), 0)])
    assert points.shape == (2, 2, 2) and points.dtype == torch.float32 and labels.dtype == torch.int64
    assert points[1].tolist() == [[0.0, 0.0], [5.5, 6.5]] and labels.tolist() == [[1, -1], [-1, 0]]
    points, labels = append_clicks(None, None, [None, None], spatial_dims=3)
    assert points.shape == (2, 1, 3) and labels.tolist() == [[-1], [-1]]
    with pytest.raises(ValueError, match="spatial_dims is needed when no image has a click yet"):
        append_clicks(None, None, [None])
    with pytest.raises(ValueError, match="must match the 3 clicks"):
        append_clicks(points, labels, [None] * 3)
    with pytest.raises(ValueError, match="every click must have 3 coordinates"):
        append_clicks(points, labels, [Click((1, 2), 1), None])


# ------------------------------------------------------------------------------------------- training with clicks
def _training_batch(batch: int = 2, size: int = 12) -> dict:
    """A guess that misses part of class 1 and leaks class 2, the truth, a box over the whole image."""
    truth = torch.zeros(batch, 1, size, size)
    truth[:, 0, 2:8, 2:8] = 1
    truth[:, 0, 9:11, 1:5] = 2
    guess = truth.clone()
    guess[:, 0, 3:7, 3:7] = 0  # 4x4 errors: three clicks (3x3 each) cannot fix one
    guess[:, 0, 0:4, 8:12] = 2
    box = torch.tensor([[[0.0, 0.0, size, size]]]).repeat(batch, 1, 1)
    return {"image": torch.cat([guess, truth], 1), "label": truth, "box": box}


def _hook(network, **kwargs) -> ClickTrainingBatch:
    return ClickTrainingBatch(PrepareBatchExtraInput({"boxes": "box"}), network, PromptedInferer(2), **kwargs)


@pytest.mark.parametrize("seed", range(4))
def test_click_training_adds_k_clicks_in_the_errors_and_calls_the_network_k_plus_one_times(seed):
    network = ClickedOracle(num_classes=3)
    batch = _training_batch()
    hook = _hook(network, probability=1.0, max_clicks=3, box="batch")  # the whole image
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=[batch], network=network,
                                optimizer=torch.optim.SGD(network.parameters(), lr=0.1),
                                loss_function=lambda pred, label: pred.mean(), inferer=PromptedInferer(2),
                                prepare_batch=hook)
    torch.manual_seed(seed)
    trainer.run()
    points, labels, *_ = network.calls[-1]
    clicks = points.shape[1]
    assert 1 <= clicks <= 3 and len(network.calls) == clicks + 1 and labels.shape == (2, clicks)
    assert network.training and network.weight.grad is not None  # the training forward is the last one
    truth = batch["label"][:, 0]
    for step, (given, _, guess, _) in enumerate(network.calls[:-1]):  # each round adds one click on its own errors
        assert (0 if given is None else given.shape[1]) == step
        assert torch.equal(points[:, : step], given if given is not None else points[:, :0])
        for b in range(2):
            point, label = tuple(int(v) for v in points[b, step].floor()), int(labels[b, step])
            assert label in (0, 1), "every image has an error to click"
            cls = int(truth[b][point]) if label == 1 else int(guess[b][point])
            assert cls > 0 and (guess[b][point] != cls if label == 1 else truth[b][point] != cls)
            assert int(network.classes[-1][b]) == cls  # the clicked structure's class goes with the clicks
    assert network.classes[0] is None and all(torch.equal(c, network.classes[-1]) for c in network.classes[1:])


def test_click_training_passes_the_previous_prediction_with_the_clicks():
    network = ClickedOracle(num_classes=3)
    hook = _hook(network, probability=1.0, max_clicks=3, previous_mask=True)
    torch.manual_seed(0)
    _, _, _, kwargs = hook(_training_batch())
    clicks = kwargs["points"].shape[1]
    assert len(network.calls) == clicks and network.calls[0][3] is None  # the first call has no clicks, no mask
    answers = [call[2] for call in network.calls] + [None]
    masks = [call[3] for call in network.calls[1:]] + [kwargs["previous_mask"]]
    for answer, mask in zip(answers, masks):  # each mask: the answer before it, for the structure clicked
        assert mask.shape == (2, 1, 12, 12) and set(mask.unique().tolist()) <= {0.0, 1.0}
        assert any(torch.equal(mask[b, 0], (answer[b] == c).float()) for b in range(2) for c in (1, 2))
    with pytest.raises(ValueError, match=r"click_training needs a network called as network\(image, boxes=..., "
                                         r"points=..., point_labels=..., previous_mask=...\); ClickConv is not"):
        _hook(ClickConv(2, 3), probability=1.0, previous_mask=True)


def test_click_training_centre_sampling_clicks_the_evaluation_click():
    network = ClickedOracle(num_classes=2)
    batch = _training_batch(batch=1)
    batch["label"] = (batch["label"] == 1).float()  # one structure: the hole in class 1 is the only miss
    batch["image"] = torch.cat([(batch["image"][:, :1] == 1).float(), batch["label"]], 1)
    image, label, _, kwargs = _hook(network, probability=1.0, max_clicks=1, sampling="centre", box="batch")(batch)
    assert kwargs["points"].tolist() == [[[4.5, 4.5]]] and kwargs["point_labels"].tolist() == [[1]]
    assert torch.equal(kwargs["boxes"], batch["box"]) and len(network.calls) == 1


@pytest.mark.parametrize("seed", range(3))
def test_click_training_structure_box_is_the_clicked_structures_box(seed):
    network = ClickedOracle(num_classes=3)
    batch = _training_batch()
    batch["label"][1] = 0  # the second image has no structure: the whole image, padding clicks
    torch.manual_seed(seed)
    _, _, _, kwargs = _hook(network, probability=1.0, max_clicks=2)(batch)  # box "structure", the default
    boxes, classes = kwargs["boxes"], kwargs["prompt_class"]
    assert boxes.shape == (2, 1, 4) and torch.equal(boxes[1, 0], torch.tensor([0.0, 0.0, 12.0, 12.0]))
    assert (kwargs["point_labels"][1] == -1).all()
    tight = {1: torch.tensor([2.0, 2.0, 8.0, 8.0]), 2: torch.tensor([9.0, 1.0, 11.0, 5.0])}[int(classes[0])]
    size = tight[2:] - tight[:2]
    assert ((boxes[0, 0] - tight).abs() <= 0.15 * size.repeat(2) + 1e-6).all()  # jittered by at most 0.1 + 0.05
    assert (boxes[0, 0, :2] >= 0).all() and (boxes[0, 0, 2:] <= 12).all()
    # every simulated call saw these boxes
    assert len(network.boxes) == 2 and all(torch.equal(given, boxes) for given in network.boxes)


def test_click_training_off_returns_the_batch_and_draws_nothing():
    batch = _training_batch()
    hook = _hook(nn.Conv2d(2, 3, 1), probability=0.0)  # a network without clicks is fine when off
    state = torch.get_rng_state()
    out = hook(batch)
    assert torch.equal(torch.get_rng_state(), state)
    expected = PrepareBatchExtraInput({"boxes": "box"})(batch)
    assert len(out) == 4 and all(torch.equal(a, b) for a, b in zip(out[:2], expected[:2]))
    assert out[2] == () and set(out[3]) == {"boxes"}


def test_click_training_bad_settings_are_named():
    with pytest.raises(InputError, match=r"click_training: probability must be a number in \[0, 1\], got 1.5; "
                                         r"max_clicks must be an integer >= 1, got 0; sampling must be one of "
                                         r"\['weighted', 'centre'\], got 'center'; "
                                         r"previous_mask must be true or false, got 'yes'; "
                                         r"box must be one of \['batch', 'structure'\], got 'tight'"):
        _hook(ClickedOracle(), probability=1.5, max_clicks=0, sampling="center", previous_mask="yes", box="tight")
    with pytest.raises(ValueError, match=r"click_training needs a network called as network\(image, boxes=..., "
                                         r"points=..., point_labels=...\); Conv2d is not "
                                         r"\(a network built with click_prompts is\)"):
        _hook(nn.Conv2d(2, 3, 1), probability=0.5)


# ------------------------------------------------------------------------------------------ interactive evaluation
def _one_structure(shape=(16, 16)):
    """Truth: a 6x6 square; the guess misses its 3x3 middle and leaks a 2x2 square elsewhere."""
    truth = torch.zeros(shape)
    truth[2:8, 2:8] = 1
    guess = truth.clone()
    guess[3:6, 3:6] = 0
    guess[10:12, 10:12] = 1
    return torch.stack([guess, truth])[None], truth


def test_interactive_evaluation_records_the_dice_after_every_step_2d():
    network = ClickedOracle()
    image, truth = _one_structure()
    box = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    (record,) = interactive_evaluation(network, image, truth, box, clicks=4)
    # box: 27 of 36 found, 4 leaked; click 1 (the miss's centre, fg) fills the hole; click 2 (the leak, bg) removes it
    assert record.dice == pytest.approx([54 / 67, 72 / 76, 1.0, 1.0, 1.0])
    assert record.clicks == [Click((4, 4), 1), Click((10, 10), 0)]
    assert record.followed == [True, True]  # each answer gives the clicked voxel the click's label
    assert len(network.calls) == 3 and len(record.seconds) == 3 and all(s >= 0 for s in record.seconds)
    assert network.calls[2][0].tolist() == [[[4.5, 4.5], [10.5, 10.5]]] and network.calls[2][1].tolist() == [[1, 0]]
    assert network.classes[0] is None and network.classes[2].tolist() == [1]  # the clicks are about class 1
    (box_only,) = interactive_evaluation(network, image, truth, box, clicks=0)
    assert box_only.dice == pytest.approx([54 / 67])
    (ignored,) = interactive_evaluation(ClickedOracle(radius=-1.0), image, truth, box, clicks=2)  # deaf to clicks
    assert ignored.clicks == [Click((4, 4), 1)] * 2 and ignored.followed == [False, False]


def test_interactive_evaluation_with_the_previous_mask():
    network = ClickedOracle()
    image, truth = _one_structure()
    box = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    (record,) = interactive_evaluation(network, image, truth, box, clicks=3, previous_mask=True)
    assert record.dice == pytest.approx([54 / 67, 72 / 76, 1.0, 1.0])
    assert network.calls[0][3] is None and torch.equal(network.calls[1][3], (network.calls[0][2] == 1)[:, None].float())
    with pytest.raises(ValueError, match="previous_mask=...\\); ClickConv is not"):
        interactive_evaluation(ClickConv(2, 2), image, truth, box, clicks=1, previous_mask=True)


def test_interactive_evaluation_reuses_work_between_the_clicks_of_a_structure():
    """A backbone of this package runs each structure's clicks as a session: the same Dice as calling it afresh,
    the image-only work once per structure (its patch embedding runs once per structure, not once per call)."""
    torch.manual_seed(0)
    network = PrunedUNETR(in_channels=1, out_channels=3, img_size=(32, 32), spatial_dims=2, hidden_size=32,
                          mlp_dim=64, num_heads=2, feature_size=8, norm_name="batch", pruner="prato",
                          click_prompts=True).eval()
    with torch.no_grad():
        for parameter in network.click_encoder.parameters():
            parameter.copy_(torch.randn(parameter.shape) * 0.5)
    truth = torch.zeros(32, 32, dtype=torch.long)
    truth[4:14, 4:14], truth[18:28, 16:30] = 1, 2
    image = truth[None, None].float() + 0.3 * torch.randn(1, 1, 32, 32)
    boxes = torch.tensor([[3.0, 3.0, 15.0, 15.0], [17.0, 15.0, 29.0, 31.0]])
    embeddings = []
    network.vit.patch_embedding.register_forward_hook(lambda *_: embeddings.append(1))
    fresh = interactive_evaluation(network, image, truth, boxes, clicks=3, reuse=False)
    calls_fresh, embeddings[:] = len(embeddings), []
    reused = interactive_evaluation(network, image, truth, boxes, clicks=3)
    assert [r.dice for r in reused] == [r.dice for r in fresh] and [r.clicks for r in reused] == [
        r.clicks for r in fresh]
    assert calls_fresh == sum(len(r.seconds) for r in fresh) > 2 and len(embeddings) == 2


def test_interactive_evaluation_3d_each_structure_with_its_own_box_and_clicks():
    truth = torch.zeros(10, 10, 10)
    truth[1:5, 1:5, 1:5] = 1
    truth[6:9, 6:9, 6:9] = 2
    guess = truth.clone()
    guess[2:4, 2:4, 2:4] = 0  # a 2x2x2 miss in class 1
    network = ClickedOracle(num_classes=3, radius=2.0)
    image = torch.stack([guess, truth])[None]
    boxes = torch.tensor([[1.0, 1, 1, 5, 5, 5], [6.0, 6, 6, 9, 9, 9]])
    records = interactive_evaluation(network, image, truth[None, None], boxes, clicks=2, inferer=PromptedInferer(3))
    assert [r.label for r in records] == [1, 2]
    assert records[0].dice == pytest.approx([2 * 56 / (56 + 64), 1.0, 1.0]) and records[0].clicks == [
        Click((2, 2, 2), 1)]
    assert records[1].dice == [1.0, 1.0, 1.0] and records[1].clicks == []
    assert [c[0] is None for c in network.calls] == [True, False, True]  # class 2 exact: no click, no call
    assert network.calls[0][2][0, 7, 7, 7] == 0  # class 1's box only: class 2 left outside it
    with pytest.raises(ValueError, match=r"boxes must have one row per structure \(2\) or one row, got 3"):
        interactive_evaluation(network, image, truth, torch.zeros(3, 6), clicks=1)
    with pytest.raises(ValueError, match="the interactive evaluation needs a network called as"):
        interactive_evaluation(nn.Conv3d(2, 3, 1), image, truth, boxes, clicks=1)


def test_dice_auc_and_clicks_to_reach_with_known_sequences():
    assert dice_auc([0.5, 0.7, 0.9]) == pytest.approx(0.7)
    assert dice_auc([0.0, 1.0]) == pytest.approx(0.5) and dice_auc([0.8]) == 0.8
    assert dice_auc([1.0] * 6) == pytest.approx(1.0)
    assert clicks_to_reach([0.5, 0.86, 0.95], 0.85) == 1 and clicks_to_reach([0.5, 0.86, 0.95], 0.90) == 2
    assert clicks_to_reach([0.9, 0.95], 0.85) == 0
    assert clicks_to_reach([0.5, 0.6, 0.7], 0.85) == 3  # not reached with 2 clicks: N + 1


def test_summarise_interactive_per_class_and_over_all_structures():
    records = [StructureRecord(1, [0.5, 0.86, 0.95], [2.0, 1.0, 0.5], followed=[True, True]),
               StructureRecord(2, [0.2, 0.4, 0.6], [2.0, 0.5], followed=[False, True]),
               StructureRecord(1, [0.9, 0.9, 0.9], [2.0])]
    summary = summarise_interactive(records, ["a", "b", "c"])
    assert summary["clicks"] == 2 and summary["num_structures"] == 3
    assert set(summary["dice_auc"]) == {"a", "b", "mean"}  # class c never evaluated
    assert summary["dice_per_step"]["a"] == pytest.approx([0.7, 0.88, 0.925])
    assert summary["dice_per_step"]["mean"] == pytest.approx([1.6 / 3, 2.16 / 3, 2.45 / 3])
    assert summary["final_dice"]["b"] == pytest.approx(0.6)
    assert summary["dice_auc"]["b"] == pytest.approx(0.4)
    assert summary["noc85"] == pytest.approx({"a": 0.5, "b": 3.0, "mean": 4 / 3})
    assert summary["noc90"] == pytest.approx({"a": 1.0, "b": 3.0, "mean": 5 / 3})
    assert summary["not_reached90"] == pytest.approx({"a": 0.0, "b": 1.0, "mean": 1 / 3})
    assert summary["seconds_first"] == 2.0 and summary["seconds_later"] == pytest.approx(2.0 / 3)
    assert summary["later_over_first"] == pytest.approx(1 / 3)
    assert summary["clicks_followed"] == pytest.approx({"a": 1.0, "b": 0.5, "mean": 0.75})


def _evaluate(report: EvaluationReport, batches: list[dict]) -> Engine:
    engine = Engine(lambda engine, batch: None)
    report.attach(engine)
    engine.run(batches, max_epochs=1)
    return engine


@pytest.mark.parametrize("decollated", [False, True])
def test_evaluation_report_with_clicks_writes_the_protocol_and_the_figure(decollated, tmp_path):
    image, truth = _one_structure()
    second = torch.stack([truth, truth])  # already exact
    batch = {"image": torch.stack([image[0], second]), "label": torch.stack([truth, truth])[:, None],
             "box": torch.tensor([[[0.0, 0.0, 16.0, 16.0]]] * 2)}
    if decollated:  # as MONAI's evaluators leave engine.state.batch
        batch = [{key: value[b] for key, value in batch.items()} for b in range(2)]
    report = EvaluationReport(str(tmp_path), ["square"], ["mean_dice"], network=ClickedOracle(), clicks=3,
                              inferer=PromptedInferer(2))
    _evaluate(report, [batch])
    metrics = read_json(str(tmp_path / "metrics.json"))["interactive"]
    assert metrics["clicks"] == 3 and metrics["num_structures"] == 2
    assert metrics["dice_per_step"]["square"] == pytest.approx([(54 / 67 + 1) / 2, (72 / 76 + 1) / 2, 1.0, 1.0])
    assert metrics["noc90"]["square"] == pytest.approx(0.5) and metrics["noc85"]["mean"] == pytest.approx(0.5)
    assert metrics["final_dice"]["mean"] == pytest.approx(1.0)
    with open(tmp_path / "metrics.csv") as f:
        rows = {row[0]: row[1:] for row in csv.reader(f)}
    assert [float(v) for v in rows["dice@click1"]] == pytest.approx([(72 / 76 + 1) / 2] * 2)
    assert {"dice@click0", "dice@click3", "dice_auc", "final_dice", "noc85", "noc90", "later_over_first"} <= set(rows)
    with open(tmp_path / "dice_vs_clicks.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_evaluation_report_uses_per_class_boxes_when_the_batch_has_them(tmp_path):
    image, truth = _one_structure()
    box = torch.tensor([[[4.0, 4.0, 16.0, 16.0]]])  # cuts the square's top-left corner off: never recovered
    report = EvaluationReport(str(tmp_path), ["square"], ["mean_dice"], network=ClickedOracle(), clicks=1)
    _evaluate(report, [{"image": image, "label": truth[None, None], "box": box}])
    assert report.summary["interactive"]["dice_per_step"]["square"][0] < 0.7
    report = EvaluationReport(str(tmp_path), ["square", "other"], ["mean_dice"], network=ClickedOracle(), clicks=1)
    _evaluate(report, [{"image": image, "label": truth[None, None], "box": box}])  # one row for two classes
    # its tight box from the label: the leak outside it is cut off
    assert report.summary["interactive"]["dice_per_step"]["square"][0] == pytest.approx(54 / 63)


def test_evaluation_report_without_clicks_is_unchanged(tmp_path):
    image, truth = _one_structure()
    network = ClickedOracle()
    report = EvaluationReport(str(tmp_path), ["square"], ["mean_dice"], network=network)
    engine = _evaluate(report, [{"image": image, "label": truth[None, None], "box": torch.zeros(1, 1, 4)}])
    assert report.interactive is None and network.calls == []
    assert not engine._event_handlers[Events.ITERATION_COMPLETED]
    assert "interactive" not in json.loads((tmp_path / "metrics.json").read_text())
    assert not os.path.exists(tmp_path / "dice_vs_clicks.png")
    with pytest.raises(ValueError, match="clicks must be an integer >= 0, got -1"):
        EvaluationReport(str(tmp_path), ["square"], ["mean_dice"], clicks=-1)


def test_bundle_keys_default_to_no_clicks():
    for bundle in ALL_BUNDLES:
        configs = os.path.join(BUNDLES_DIR, bundle, "configs")
        train, evaluate = (read_json(os.path.join(configs, f"{name}.json")) for name in ("train", "evaluate"))
        assert evaluate["clicks"] == 0 and train["click_training"]["probability"] == 0.0, bundle
        assert train["click_training"]["focus"] == 0.3 and train["loss"]["click_weight"] == "@click_training#focus"
        report = next(h for h in evaluate["handlers"] if h["_target_"].endswith("EvaluationReport"))
        assert report["clicks"] == "@clicks" and report["inferer"] == evaluate["evaluator"]["inferer"], bundle
        assert train["train"]["trainer"]["prepare_batch"] == "@train#prepare_batch"
        assert train["train"]["prepare_batch"]["prepare_batch"] == "@prepare_batch"
    with pytest.raises(InputError, match="clicks must be an integer >= 0"):
        check_settings({"clicks": -2})



class ClickConv(nn.Module):
    """A bundle-sized stand-in that takes clicks: a 3x3 convolution plus, per output channel, a learned weight times
    +1 within 3 pixels of each foreground click and -1 within 3 pixels of each background click. ``calls`` (shared
    by every instance: the bundle builds its own) records the number of clicks of every call (``None``: no points)."""

    calls: list[int | None] = []

    def __init__(self, in_channels: int, out_channels: int, **unused) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.click_weight = nn.Parameter(torch.linspace(-1.0, 1.0, out_channels))

    def forward(self, image, boxes=None, points=None, point_labels=None, prompt_class=None):
        type(self).calls.append(None if points is None else points.shape[1])
        logits = self.conv(image)
        if points is None:
            return logits
        grid = torch.stack(torch.meshgrid(*[torch.arange(s) for s in image.shape[2:]], indexing="ij"), -1) + 0.5
        guidance = torch.zeros(image.shape[0], *image.shape[2:], device=image.device)
        for b in range(image.shape[0]):
            for point, label in zip(points[b], point_labels[b]):
                if label >= 0:
                    near = (grid.to(point) - point).norm(dim=-1) <= 3
                    guidance[b] += near * (1.0 if label == 1 else -1.0)
        return logits + self.click_weight.view(1, -1, 1, 1) * guidance[:, None]


def test_a_bundle_trains_and_evaluates_with_clicks(acdc_dir, tmp_path):
    """``click_training`` reaches the trainer and ``clicks`` the evaluation report (a bundle with a stand-in network
    that takes clicks): one training iteration with 1..2 simulated clicks, then the interactive protocol."""
    root = str(tmp_path / "bundle")
    network = {"network_def": {"_target_": "test_click_simulation.ClickConv", "in_channels": "@in_channels",
                               "out_channels": "@out_channels"}}
    ClickConv.calls.clear()
    run_bundle("unetr_prato", "train", root, dataset_dir=acdc_dir, epochs=1, **network,
               **{"train#trainer#epoch_length": 1, "click_training#probability": 1.0, "click_training#max_clicks": 2})
    clicks = max(c for c in ClickConv.calls if c is not None)
    assert clicks in (1, 2) and ClickConv.calls[: clicks + 1] == [None, *range(1, clicks + 1)]
    assert set(ClickConv.calls[clicks + 1 :]) == {None}  # validation: the box only
    run_bundle("unetr_prato", "evaluate", root, dataset_dir=acdc_dir, latency_repeats=0, clicks=2, **network)
    metrics = read_json(os.path.join(root, "eval", "metrics.json"))
    interactive = metrics["interactive"]
    assert interactive["clicks"] == 2 and len(interactive["dice_per_step"]["mean"]) == 3
    assert interactive["num_structures"] >= metrics["num_present"]["left_ventricle"] > 0
    assert 0.0 <= interactive["dice_auc"]["mean"] <= 1.0 and 0 <= interactive["noc90"]["mean"] <= 3
    assert os.path.isfile(os.path.join(root, "eval", "dice_vs_clicks.png"))


def test_the_bundle_network_itself_trains_and_evaluates_with_clicks(acdc_dir, tmp_path):
    """The same with the bundle's own network (its click encoder): clicks reach it in training and evaluation, the
    encoder gets a gradient, and the report is written."""
    root = str(tmp_path / "bundle")
    run_bundle("unetr_prato", "train", root, dataset_dir=acdc_dir, epochs=1,
               **{"train#trainer#epoch_length": 1, "click_training#probability": 1.0, "click_training#max_clicks": 2})
    weights = torch.load(os.path.join(root, "models", "model_final.pt"), map_location="cpu", weights_only=True)
    weights = weights.get("model", weights)
    encoder = [v for k, v in weights.items() if k.startswith("click_encoder.")]
    assert encoder and any(float(v.abs().max()) > 0 for v in encoder)  # moved from its zero start by the clicks
    run_bundle("unetr_prato", "evaluate", root, dataset_dir=acdc_dir, latency_repeats=0, clicks=2)
    interactive = read_json(os.path.join(root, "eval", "metrics.json"))["interactive"]
    assert interactive["clicks"] == 2 and len(interactive["dice_per_step"]["mean"]) == 3
    assert 0.0 <= interactive["clicks_followed"]["mean"] <= 1.0


def test_the_figure_is_skipped_with_a_warning_without_matplotlib(tmp_path, monkeypatch, caplog):
    summary = summarise_interactive([StructureRecord(1, [0.5, 0.9], [1.0, 1.0])], ["a"])
    assert draw_dice_curve(summary, str(tmp_path / "drawn.png")) and os.path.getsize(tmp_path / "drawn.png") > 0
    monkeypatch.setattr(click_evaluation, "optional_import", lambda *args, **kwargs: (None, False))
    assert not draw_dice_curve(summary, str(tmp_path / "skipped.png"))
    assert "needs matplotlib" in caplog.text and not os.path.exists(tmp_path / "skipped.png")
