"""Override keys of ``python -m monai.bundle run``: unknown keys stop the run with a suggestion; known ones work."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT, error_text, read_json, run_bundle

from prato_components.bundle import default_num_workers, unknown_override_keys

TRAIN = os.path.join(ROOT, "bundles", "unetr_prato", "configs", "train.json")


def test_unknown_top_level_key_suggests_the_closest():
    config = read_json(TRAIN)
    assert unknown_override_keys(config, ["epoch"]) == ["unknown override key 'epoch'; did you mean 'epochs'?"]
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
    assert "unknown override key 'epoch'; did you mean 'epochs'?" in error_text(caught.value)
    assert not os.path.exists(tmp_path / "run" / "models")  # stopped before anything was written


def test_command_line_rejects_a_misspelled_key_and_keeps_monai_arguments(tmp_path):
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", TRAIN,
               "--meta_file", os.path.join(os.path.dirname(TRAIN), "metadata.json"), "--tracking", "mlflow",
               "--bundle_root", str(tmp_path), "--tracking_uri", f"sqlite:///{tmp_path}/mlruns.db", "--epoch", "1"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode != 0
    assert "unknown override key 'epoch'; did you mean 'epochs'?" in done.stderr
    reported = done.stderr.split("ValueError: ")[-1]
    assert "meta_file" not in reported and "tracking" not in reported  # MONAI's own arguments and tracking keys


def test_default_num_workers_never_exceeds_the_cpus():
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert default_num_workers() == min(4, cpus)
    assert default_num_workers(1) == 1
    assert default_num_workers(0) == 0
