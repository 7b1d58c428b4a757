"""PrATo and small structures: protect_boxes, the pruning warm-up, per-structure prompts through the bundles,
per-class reports."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import read_json, run_bundle
from ignite.engine import Engine, Events

from prato_components.engine import PerClassHistory, PruningWarmup, keep_ratio_schedule
from prato_components.networks import PrunedUNETR
from prato_components.prompts import BoxFromLabeld, padding_boxes
from prato_components.pruners import PrATo
from prato_components.tokens import TokenState


def _stage_input(seed: int, boxes: torch.Tensor | None, grid=(4, 4), dim: int = 16):
    torch.manual_seed(seed)
    tokens = torch.randn(2, grid[0] * grid[1], dim, requires_grad=True)
    return TokenState(tokens, grid).stage_input(1, (16.0, 16.0), boxes)


def test_protect_boxes_keeps_the_box_first_with_the_same_gradient():
    # box over the cells (0..1, 0..1) of a 4 x 4 grid of 16-voxel cells: 4 of the 16 tokens; image 1 gets padding only
    boxes = torch.stack([torch.tensor([[0.0, 0.0, 30.0, 30.0]]), padding_boxes(1, 2)])
    inside = torch.zeros(2, 16, dtype=torch.bool)
    inside[0, [0, 1, 4, 5]] = True  # row-major over (axis 0, axis 1)
    dropped_literal = 0
    for seed in range(8):
        inputs = _stage_input(seed, boxes)
        assert torch.equal(PrATo.inside_boxes(inputs), torch.cat([inside[:1], torch.ones(1, 16, dtype=torch.bool)]))
        torch.manual_seed(100 + seed)
        literal = PrATo(16, keep_ratio=0.5, protect_boxes=False)
        protect = PrATo(16, keep_ratio=0.5, protect_boxes=True)
        protect.load_state_dict(literal.state_dict())
        sel_l, sel_p = literal(inputs), protect(inputs)
        assert sel_p.keep_mask[0][inside[0]].all()  # every token in the box survives
        assert int(sel_p.keep_mask.sum(1).min()) == int(sel_l.keep_mask.sum(1).min()) == 8  # same budget
        assert torch.equal(sel_p.keep_mask[1], sel_l.keep_mask[1])  # no prompt: the whole image, literal ranking
        dropped_literal += int((~sel_l.keep_mask[0][inside[0]]).sum())
        # the same straight-through gradient: the protect offset is a constant
        grads = []
        for pruner, sel in ((literal, sel_l), (protect, sel_p)):
            pruner.zero_grad()
            (sel.scores * torch.arange(16.0)).sum().backward(retain_graph=True)
            grads.append(pruner.f1.weight.grad.clone())
        torch.testing.assert_close(grads[0], grads[1])
    assert dropped_literal > 0  # the literal rule does drop tokens inside the box for some random weights

    fixed = PrATo(16, threshold="fixed", tau=0.99, protect_boxes=True)
    sel = fixed(_stage_input(0, boxes))
    assert sel.keep_mask[0][inside[0]].all()


def test_protect_boxes_network_and_misleading_box():
    """A pruned UNETR with protect_boxes keeps the tokens under the prompt, so moving the box changes the tokens."""
    torch.manual_seed(0)
    net = PrunedUNETR(in_channels=1, out_channels=2, img_size=(64, 64), spatial_dims=2, hidden_size=32, mlp_dim=64,
                      num_heads=2, feature_size=8, pruner=PrATo(32, keep_ratio=0.5, protect_boxes=True)).eval()
    image = torch.rand(1, 1, 64, 64)
    kept = {}
    for name, box in (("tight", [0.0, 0.0, 16.0, 16.0]), ("misleading", [48.0, 48.0, 64.0, 64.0])):
        hooks = []
        seen = []
        hooks.append(net.pruners["1"].register_forward_hook(
            lambda m, a, o: seen.append(a[0].token_index.gather(1, o.keep_index))))
        net(image, boxes=torch.tensor([[box]]))
        hooks[0].remove()
        kept[name] = set(seen[0][0].tolist())
    assert 0 in kept["tight"] and 15 in kept["misleading"]  # the cell under each box survives stage 1


def test_keep_ratio_schedule_reaches_the_target_at_the_stated_epoch():
    target, warmup, ramp = 0.5, 2, 3
    values = [keep_ratio_schedule(e, target, warmup, ramp) for e in range(1, 9)]
    assert values[:2] == [1.0, 1.0]  # unpruned warm-up
    assert values[warmup + ramp - 1] == pytest.approx(target)  # epoch 5 = warmup + ramp: the target
    assert all(v == pytest.approx(target) for v in values[warmup + ramp - 1 :])
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone ramp
    assert 1.0 > values[2] > values[3] > target
    assert keep_ratio_schedule(1, target) == target  # no warm-up: the target from the start
    with pytest.raises(ValueError):
        PruningWarmup(torch.nn.Linear(1, 1), warmup_epochs=-1)


def test_pruning_warmup_handler_trains_with_the_schedule_and_validates_at_the_target():
    net = PrunedUNETR(in_channels=1, out_channels=2, img_size=(32, 32), spatial_dims=2, hidden_size=32, mlp_dim=64,
                      num_heads=2, feature_size=8, pruner=PrATo(32, keep_ratio=0.6))
    pruners = [net.pruners["1"], net.pruners["2"]]
    seen: dict[int, list[float]] = {}
    trainer = Engine(
        lambda engine, batch: seen.setdefault(engine.state.epoch, []).extend(p.keep_ratio for p in pruners))
    PruningWarmup(net, warmup_epochs=1, ramp_epochs=2).attach(trainer)
    between: list[float] = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: between.extend(p.keep_ratio for p in pruners))
    trainer.run([0, 1], max_epochs=4)
    assert seen[1] == pytest.approx([1.0] * 4) and seen[2] == pytest.approx([0.8] * 4)
    assert seen[3] == pytest.approx([0.6] * 4) and seen[4] == pytest.approx([0.6] * 4)
    assert set(between) == {0.6}  # validation (at epoch end) and checkpoints see the configured budget


def test_box_from_label_per_class_batches():
    label_a = torch.zeros(1, 8, 8, dtype=torch.long)
    label_a[0, 1:3, 1:3], label_a[0, 4:6, 4:6] = 1, 2
    label_b = torch.zeros(1, 8, 8, dtype=torch.long)
    label_b[0, 2:4, 2:5] = 3
    t = BoxFromLabeld("label", per_class=True, classes=[1, 2, 3])
    a, b = t({"label": label_a})["box"], t({"label": label_b})["box"]
    assert a.shape == b.shape == (3, 4)
    batch = torch.stack([a, b])
    torch.testing.assert_close(batch[0, 2], padding_boxes(1, 2)[0])  # absent class: the canonical padding row
    torch.testing.assert_close(batch[1, 2], torch.tensor([2.0, 2.0, 4.0, 5.0]))


def test_per_class_history(tmp_path):
    path = str(tmp_path / "hist.json")
    engine = Engine(lambda e, b: None)
    PerClassHistory(path, ["a", "b", "c"], "val_mean_dice").attach(engine)

    @engine.on(Events.EPOCH_COMPLETED)
    def _details(e):
        e.state.metric_details = {"val_mean_dice": torch.tensor([[0.5, float("nan"), 0.0], [1.0, float("nan"), 0.0]])}
        e.state.metrics["val_mean_dice"] = 0.375

    engine.run([0], max_epochs=1)
    rows = json.load(open(path))
    assert rows == [{"epoch": 1, "a": 0.75, "b": None, "c": 0.0, "mean": 0.375}]


def test_per_class_prompts_train_through_the_bundle(acdc_dir, tmp_path):
    """prompt_boxes='per_class': one padded row per structure batches (slices hold different numbers of structures)
    and trains, validates and evaluates through the bundle; warm-up keys, per-class history and num_present too."""
    root = str(tmp_path / "bundle")
    run_bundle("unetr_prato", "train", root, dataset="acdc", dataset_dir=acdc_dir, epochs=2, prompt_boxes="per_class",
               warmup_epochs=1, ramp_epochs=1)
    history = read_json(os.path.join(root, "models", "val_per_class.json"))
    assert [row["epoch"] for row in history] == [1, 2]
    assert set(history[0]) == {"epoch", "right_ventricle", "myocardium", "left_ventricle", "mean"}
    run_bundle("unetr_prato", "evaluate", root, dataset="acdc", dataset_dir=acdc_dir, prompt_boxes="per_class",
               prompt="misleading", latency_repeats=0)
    metrics = read_json(os.path.join(root, "eval", "metrics.json"))
    present = metrics["num_present"]
    assert set(present) == {"right_ventricle", "myocardium", "left_ventricle"}
    assert all(0 <= n <= metrics["num_images"] for n in present.values()) and present["myocardium"] > 0
    with open(os.path.join(root, "eval", "metrics.csv")) as f:
        assert "num_present" in f.read()
    with pytest.raises(Exception, match="prompt_boxes"):
        run_bundle("unetr_prato", "evaluate", root, dataset="acdc", dataset_dir=acdc_dir, prompt_boxes="each",
                   latency_repeats=0)
