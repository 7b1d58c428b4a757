"""Training runs through ``monai.bundle`` (tiny sizes): a resumed run equals an uninterrupted one, a new run never
leaves an older run's weights beside its own, checkpoints keep the weights under one key, and an unreadable
checkpoint is named with the way out."""

from __future__ import annotations

import glob
import json
import logging
import os

import pytest
import torch
from conftest import error_text, read_json, run_bundle
from ignite.engine import Engine

from prato_components.engine import BestModelSaver, load_weights, trained_settings
from prato_components.engine.checkpoint import set_aside_previous_run
from prato_components.errors import UserError

EPOCHS = 4


def _dice(root: str) -> list[float]:
    return [row["mean"] for row in read_json(os.path.join(root, "models", "val_per_class.json"))]


def _user_error(error: BaseException | None) -> UserError:
    while error is not None and not isinstance(error, UserError):
        error = error.__cause__ or error.__context__
    assert error is not None, "no UserError in the chain"
    return error


def _last(root: str) -> dict:
    return torch.load(os.path.join(root, "models", "last.pt"), weights_only=False)


@pytest.fixture(scope="module")
def uninterrupted(acdc_dir, tmp_path_factory) -> str:
    """unetr_prato trained for four epochs in one go."""
    root = str(tmp_path_factory.mktemp("uninterrupted"))
    run_bundle("unetr_prato", "train", root, dataset_dir=acdc_dir, epochs=EPOCHS)
    return root


def _assert_resumed_equals_whole(bundle: str, whole: str, root: str, acdc_dir: str, stop: int, epochs: int):
    """Train ``bundle`` in ``root`` stopped after epoch ``stop`` of ``epochs`` (the schedule of the whole run), resume
    it in a new run, and compare the validation Dice per epoch and the final weights with the run in ``whole``."""
    run_bundle(bundle, "train", root, dataset_dir=acdc_dir, epochs=stop, **{"lr_scheduler#T_max": epochs})
    run_bundle(bundle, "train", root, dataset_dir=acdc_dir, epochs=epochs)
    assert len(_dice(root)) == epochs
    assert _dice(root) == pytest.approx(_dice(whole), abs=1e-6)
    resumed, uninterrupted = _last(root)["model"], _last(whole)["model"]
    assert set(resumed) == set(uninterrupted)
    for key in uninterrupted:
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=0, atol=1e-6)


def test_a_resumed_run_equals_the_uninterrupted_one(uninterrupted, acdc_dir, tmp_path):
    _assert_resumed_equals_whole("unetr_prato", uninterrupted, str(tmp_path / "resumed"), acdc_dir, 2, EPOCHS)


def test_a_resumed_random_pruner_draws_what_the_uninterrupted_one_draws(acdc_dir, tmp_path):
    """RandomPruner seeds each training draw from a count of its calls, which the resume restores too."""
    whole = str(tmp_path / "whole")
    run_bundle("unetr_random", "train", whole, dataset_dir=acdc_dir, epochs=3)
    _assert_resumed_equals_whole("unetr_random", whole, str(tmp_path / "resumed"), acdc_dir, 1, 3)


def test_checkpoints_keep_the_weights_under_one_key(uninterrupted):
    models = os.path.join(uninterrupted, "models")
    for name in ("last.pt", "model.pt", "model_final.pt"):
        checkpoint = torch.load(os.path.join(models, name), weights_only=False)
        assert "model" in checkpoint and "network" not in checkpoint, name
    assert {"optimizer", "lr_scheduler", "trainer", "random_state", "run_id"} <= set(_last(uninterrupted))


@pytest.mark.parametrize("keys", [("network",), ("network", "model")])
def test_older_checkpoints_with_the_network_key_still_load(uninterrupted, acdc_dir, tmp_path, keys):
    old = _last(uninterrupted)
    weights = old.pop("model")
    for name in ("random_state", "run_id"):  # written before random states and run ids were recorded
        old.pop(name)
    old.update({key: weights for key in keys})
    root = tmp_path / "old"
    os.makedirs(root / "models")
    torch.save(old, root / "models" / "last.pt")
    state, settings = load_weights(str(root / "models" / "last.pt"))
    assert set(state) == set(weights) and settings["image_size"] == 32
    run_bundle("unetr_prato", "train", str(root), dataset_dir=acdc_dir, epochs=EPOCHS)  # all epochs done: no step
    assert _last(str(root))["trainer"]["iteration"] == old["trainer"]["iteration"]
    final, _ = load_weights(str(root / "models" / "model_final.pt"))  # the network as resumed from the old file
    assert all(torch.equal(final[k], weights[k]) for k in weights)
    assert not glob.glob(str(root / "models" / "previous-*"))  # a resume moves nothing


def _old_run(models: str) -> dict[str, bytes]:
    """The outputs of an earlier run at 64 x 64 that reached a perfect validation Dice."""
    os.makedirs(models, exist_ok=True)
    weights = {"model": {"w": torch.zeros(1)}, "network_settings": {"image_size": 64}}
    for name in ("last.pt", "model.pt", "model_final.pt"):
        torch.save(weights, os.path.join(models, name))
    with open(os.path.join(models, "best_metric.txt"), "w") as f:
        f.write("1.0\n")
    with open(os.path.join(models, "val_per_class.json"), "w") as f:
        json.dump([{"epoch": 1, "mean": 1.0}], f)
    return {name: open(os.path.join(models, name), "rb").read() for name in os.listdir(models)
            if os.path.isfile(os.path.join(models, name))}


@pytest.mark.parametrize("resume", [False, True])
def test_a_new_run_moves_the_previous_runs_outputs_aside(acdc_dir, tmp_path, resume):
    models = str(tmp_path / "bundle" / "models")
    old = _old_run(models)
    if resume:  # resuming with no last.pt starts a new run too
        os.remove(os.path.join(models, "last.pt"))
        old.pop("last.pt")
    run_bundle("unetr_prato", "train", str(tmp_path / "bundle"), dataset_dir=acdc_dir, epochs=1, resume=resume,
               **{"train#trainer#epoch_length": 1})
    for name in ("model.pt", "model_final.pt", "last.pt"):  # the new run's, at its own size
        assert trained_settings(os.path.join(models, name))["image_size"] == 32, name
    run = read_json(os.path.join(models, "training_run.json"))["run_id"]
    with open(os.path.join(models, "best_metric.txt")) as f:
        value, recorded = f.read().split()
    assert recorded == run and float(value) == _dice(str(tmp_path / "bundle"))[0] < 1.0
    assert [row["epoch"] for row in read_json(os.path.join(models, "val_per_class.json"))] == [1]
    (previous,) = glob.glob(os.path.join(models, "previous-*"))
    assert {name: open(os.path.join(previous, name), "rb").read() for name in os.listdir(previous)} == old
    assert os.path.isfile(os.path.join(models, "datalist_acdc.json"))  # the split is shared by every run


def test_set_aside_logs_where_and_keeps_earlier_sets(tmp_path, caplog, monkeypatch):
    models = str(tmp_path)
    old = _old_run(models)
    with caplog.at_level(logging.WARNING, logger="prato_components.engine.checkpoint"):
        first = set_aside_previous_run(models)
    assert os.path.basename(first).startswith("previous-") and sorted(os.listdir(first)) == sorted(old)
    assert (f"a new run starts in {models}: the previous run's outputs (last.pt, model.pt, model_final.pt, "
            f"best_metric.txt, val_per_class.json) were moved to {first}") in caplog.text
    assert set_aside_previous_run(models) is None  # nothing left to move
    _old_run(models)
    second = set_aside_previous_run(models)  # in the same second: another folder, the first untouched
    assert second != first and sorted(os.listdir(first)) == sorted(os.listdir(second)) == sorted(old)
    _old_run(models)

    def refuse(source, target):
        raise PermissionError(13, "Permission denied", source)

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(UserError) as caught:
        set_aside_previous_run(models)
    assert caught.value.message.startswith(f"a new run cannot move the previous run's outputs in {models} (last.pt, ")
    assert caught.value.fix == "move or delete them yourself, or train into another folder (--bundle_root)"
    assert all(os.path.isfile(os.path.join(models, name)) for name in old)  # nothing lost


def test_a_best_metric_of_another_run_is_not_compared_against(tmp_path):
    network = torch.nn.Linear(2, 2)
    with open(tmp_path / "training_run.json", "w") as f:
        json.dump({"run_id": "this-run"}, f)
    with open(tmp_path / "best_metric.txt", "w") as f:
        f.write("0.9 an-older-run\n")
    saver = BestModelSaver(str(tmp_path), network, "val_mean_dice")
    engine = Engine(lambda e, b: None)
    engine.state.metrics = {"val_mean_dice": 0.1}
    saver(engine)
    assert os.path.isfile(tmp_path / "model.pt")
    assert (tmp_path / "best_metric.txt").read_text() == "0.1 this-run\n"
    engine.state.metrics = {"val_mean_dice": 0.05}  # worse than this run's best: kept
    saver(engine)
    assert (tmp_path / "best_metric.txt").read_text() == "0.1 this-run\n"


def test_a_truncated_checkpoint_is_named_with_the_way_out(uninterrupted, acdc_dir, tmp_path):
    root = tmp_path / "bundle"
    os.makedirs(root / "models")
    whole = open(os.path.join(uninterrupted, "models", "last.pt"), "rb").read()
    last = root / "models" / "last.pt"
    last.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(Exception) as caught:
        run_bundle("unetr_prato", "train", str(root), dataset_dir=acdc_dir, epochs=EPOCHS)
    error = _user_error(caught.value)  # MONAI raises it from the config expression that ran the trainer
    assert error.message.startswith(f"resume checkpoint {last} is not a readable torch checkpoint")
    assert error.fix == (f"delete {last} to train from the start, or pass --resume False (the previous run's "
                                "files are then moved to models/previous-<time>/)")
    # the way out: a new run, which keeps the truncated file aside
    run_bundle("unetr_prato", "train", str(root), dataset_dir=acdc_dir, epochs=1, resume=False,
               **{"train#trainer#epoch_length": 1})
    assert _last(str(root))["trainer"]["iteration"] == 1
    (previous,) = glob.glob(str(root / "models" / "previous-*"))
    assert open(os.path.join(previous, "last.pt"), "rb").read() == whole[: len(whole) // 2]
    model = root / "models" / "model.pt"
    model.write_bytes(model.read_bytes()[:100])
    for read in (load_weights, trained_settings):
        with pytest.raises(UserError) as caught:
            read(str(model))
        assert caught.value.message.startswith(f"checkpoint {model} is not a readable torch checkpoint")
        assert caught.value.fix.startswith(f"delete or replace {model}")
    assert "PytorchStreamReader" in error_text(caught.value)  # torch's own words stay in the message
