"""Override keys of ``python -m monai.bundle run``: unknown keys stop the run with a suggestion; known ones work."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

import monai.bundle
import pytest
from conftest import ROOT, error_text, read_json, run_bundle

from prato_components.bundle import (
    WORKFLOW_ARGUMENTS,
    check_overrides,
    check_settings,
    command_line_arguments,
    default_num_workers,
    unknown_override_keys,
)

TRAIN = os.path.join(ROOT, "bundles", "unetr_prato", "configs", "train.json")


def test_unknown_top_level_key_suggests_the_closest():
    config = read_json(TRAIN)
    assert unknown_override_keys(config, ["epoch"])[0].startswith("unknown override key 'epoch'; did you mean 'epochs'")
    assert unknown_override_keys(config, ["kep_ratio"])[0].endswith("did you mean 'keep_ratio'?")
    assert unknown_override_keys(config, ["no_such_thing_at_all"]) == ["unknown override key 'no_such_thing_at_all'"]


def test_known_keys_new_component_arguments_and_meta_pass():
    config = read_json(TRAIN)
    assert unknown_override_keys(config, [
        "epochs", "image_size", "train#handlers#0#_disabled_",  # an existing key, and a new leaf of a component
        "network_def#dropout_rate", "_meta_#version",
    ]) == []


def test_nested_typo_names_the_level():
    messages = unknown_override_keys(read_json(TRAIN), ["train#dataloder#batch_size", "train#handlers#99#x"])
    assert messages[0].startswith("unknown override key 'train#dataloder#batch_size'; did you mean 'train#dataloader'")
    assert messages[1] == "unknown override key 'train#handlers#99#x'"


def test_in_process_run_rejects_a_misspelled_key_before_training(tmp_path, acdc_dir):
    with pytest.raises(Exception) as caught:
        run_bundle("unetr_prato", "train", str(tmp_path / "run"), dataset="acdc", dataset_dir=acdc_dir, epoch=1)
    assert "unknown override key 'epoch'; did you mean 'epochs'" in error_text(caught.value)
    assert not os.path.exists(tmp_path / "run" / "models")  # stopped before anything was written


def test_command_line_rejects_a_misspelled_key_and_keeps_monai_arguments(tmp_path):
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", TRAIN,
               "--meta_file", os.path.join(os.path.dirname(TRAIN), "metadata.json"), "--tracking", "mlflow",
               "--bundle_root", str(tmp_path), "--tracking_uri", f"sqlite:///{tmp_path}/mlruns.db", "--epoch", "1"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode != 0
    assert "unknown override key 'epoch'; did you mean 'epochs'" in done.stderr
    reported = done.stderr.split("ValueError: ")[-1]
    assert "meta_file" not in reported and "tracking" not in reported  # MONAI's own arguments and tracking keys


def test_command_line_reads_as_python_fire_does():
    arguments = command_line_arguments([
        "--config_file", "['a.json','b.json']", "--epoch=1", "--resume", "--keep-ratio", "0.5", "--device", "cpu",
        "--decode_margin", "-8", "stray"])
    assert arguments == {"config_file": ["a.json", "b.json"], "epoch": 1, "resume": True, "keep_ratio": 0.5,
                         "device": "cpu", "decode_margin": -8}


def test_workflow_arguments_are_those_of_the_pinned_monai():
    """The arguments ``monai.bundle.run`` and ``ConfigWorkflow`` take themselves are not overrides (MONAI 1.6.1)."""
    assert {"config_file", "meta_file", "logging_file", "tracking", "args_file", "workflow_name", "run_id",
            "init_id", "final_id", "workflow_type", "properties_path"} == WORKFLOW_ARGUMENTS
    assert set(WORKFLOW_ARGUMENTS) <= set(inspect.signature(monai.bundle.run).parameters) | set(
        inspect.signature(monai.bundle.ConfigWorkflow.__init__).parameters) | {"workflow_name", "args_file"}


def test_check_overrides_names_typos_given_explicitly_and_ignores_workflow_arguments():
    with pytest.raises(ValueError, match=r"unknown override key 'keep_ratoi'; did you mean 'keep_ratio'\?"):
        check_overrides(TRAIN, {"keep_ratoi": 0.5, "meta_file": "m.json", "epochs": 1})
    check_overrides(TRAIN, {"keep_ratio": 0.5, "meta_file": "m.json", "tracking_uri": "x"}, tracking="mlflow")
    check_overrides()  # not MONAI's command line (pytest): nothing to check


def test_command_line_args_file_overrides_are_checked(tmp_path):
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"config_file": TRAIN, "bundle_root": str(tmp_path), "keep_ratoi": 0.5}))
    done = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--args_file", str(args_file)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode != 0
    assert "unknown override key 'keep_ratoi'; did you mean 'keep_ratio'" in done.stderr


def test_default_num_workers_never_exceeds_the_cpus():
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert default_num_workers() == min(4, cpus)
    assert default_num_workers(1) == 1
    assert default_num_workers(0) == 0


@pytest.mark.parametrize("key, value, expected", [
    ("image_size", [96, 96], "image_size must be one integer >= 16"),
    ("image_size", 8, "image_size must be one integer >= 16"),
    ("image_size", True, "image_size must be one integer >= 16"),
    ("epochs", 0, "epochs must be an integer >= 1"),
    ("epochs", 2.5, "epochs must be an integer >= 1"),
    ("batch_size", "8", "batch_size must be an integer >= 1"),
    ("learning_rate", -1e-4, "learning_rate must be a number in (0, 1]"),
    ("learning_rate", float("nan"), "learning_rate must be a number in (0, 1]"),
    ("keep_ratio", 0.0, "keep_ratio must be a number in (0, 1]"),
    ("keep_ratio", 1.5, "keep_ratio must be a number in (0, 1]"),
    ("prune_stages", 1, "prune_stages must be a list of distinct stage numbers"),
    ("prune_stages", [1, 1], "prune_stages must be a list of distinct stage numbers"),
    ("executor", "sparse", "executor must be one of ['gather', 'padded', 'mask', 'attention_mask']"),
    ("fill", "mean", "fill must be one of ['zero', 'carry']"),
    ("decode_region", "crop", "decode_region must be one of ['full', 'box', 'guided']"),
    ("decode_margin", -8, "decode_margin must be an integer >= 0"),
    ("dataset", "brats", "dataset must be one of ['acdc', 'isic', 'decathlon', 'btcv']"),
    ("dataset_dir", "", "dataset_dir must be a folder path"),
])
def test_bad_setting_values_are_named(key, value, expected):
    with pytest.raises(ValueError) as caught:
        check_settings({key: value})
    assert str(caught.value).startswith(expected) and str(caught.value).endswith(f"got {value!r}")


def test_good_settings_pass():
    check_settings({"image_size": 96, "epochs": 1, "batch_size": 8, "learning_rate": 3e-4, "keep_ratio": 1,
                    "prune_stages": [1, 2], "executor": "gather", "fill": "carry", "dataset": "ACDC",
                    "dataset_dir": "/data", "num_workers": 0, "val_interval": 1, "not_a_rule": object()})


@pytest.mark.parametrize("config", ["train", "evaluate", "inference"])
def test_a_run_names_a_bad_value_before_reading_data(tmp_path, config):
    missing = str(tmp_path / "missing")
    inputs = {"input_dir": missing} if config == "inference" else {}
    with pytest.raises(Exception) as caught:
        run_bundle("unetr_prato", config, str(tmp_path / "run"), dataset_dir=missing, image_size=[96, 96], **inputs)
    assert "image_size must be one integer >= 16, the side of the square network input, got [96, 96]" in \
        error_text(caught.value)
