"""A trained checkpoint records the network settings it was built with; evaluation, inference, export and the
MONAI Label segmenter rebuild that network without the training overrides, and contradicting overrides are named."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest
import torch
from conftest import ROOT, error_text, read_json, run_bundle

import prato_components.bundle
from prato_components.bundle import override_keys, resolved_settings, trained_bundle_config
from prato_components.engine import differing_settings, load_weights, trained_settings
from prato_components.verification import acdc_inference_inputs, export, run_config

BUNDLE = os.path.join(ROOT, "bundles", "unetr_prato")


@pytest.fixture(scope="module")
def trained(acdc_dir, tmp_path_factory) -> str:
    """unetr_prato trained for one iteration at 32 x 32 with a small ViT (far from the 224 / ViT-B defaults)."""
    root = str(tmp_path_factory.mktemp("trained"))
    run_bundle("unetr_prato", "train", root, dataset_dir=acdc_dir, epochs=1, keep_ratio=0.5,
               **{"train#trainer#epoch_length": 1})
    return root


def test_every_checkpoint_records_the_settings(trained):
    for name in ("model.pt", "model_final.pt", "last.pt"):
        settings = trained_settings(os.path.join(trained, "models", name))
        assert settings["image_size"] == 32 and settings["hidden_size"] == 32 and settings["num_heads"] == 2
        assert settings["keep_ratio"] == 0.5 and settings["prune_stages"] == [1, 2]
        assert settings["in_channels"] == 1 and settings["out_channels"] == 4
    state, settings = load_weights(os.path.join(trained, "models", "model.pt"))
    assert "vit.patch_embedding.position_embeddings" in state and settings["feature_size"] == 8


def test_load_weights_reads_every_format(tmp_path):
    net = torch.nn.Linear(2, 3)
    for content in (net.state_dict(), {"network": net.state_dict(), "optimizer": {}},
                    {"model": net.state_dict(), "network_settings": {"image_size": 64}}):
        torch.save(content, tmp_path / "w.pt")
        state, settings = load_weights(str(tmp_path / "w.pt"))
        assert set(state) == {"weight", "bias"}
        assert settings == ({"image_size": 64} if "model" in content else {})
    assert trained_settings(str(tmp_path / "missing.pt")) == {}


def test_run_time_settings_may_differ_shape_settings_may_not():
    trained = {"image_size": 96, "keep_ratio": 0.75, "executor": "gather", "prune_stages": [1, 2]}
    assert differing_settings(trained, {"image_size": 96, "keep_ratio": 1.0, "executor": "mask",
                                        "prune_stages": (1, 2)}) == {}
    assert differing_settings(trained, {"image_size": 64, "prune_stages": [1]}) == {"image_size": (96, 64),
                                                                                   "prune_stages": ([1, 2], [1])}


def test_evaluate_and_infer_without_the_training_overrides(trained, acdc_dir, tmp_path):
    plain = {"num_workers": 0}  # no image_size, widths or heads: they come from models/model.pt
    run_config(BUNDLE, "evaluate", trained, dataset_dir=acdc_dir, latency_repeats=0, batch_size=4, **plain)
    metrics = read_json(os.path.join(trained, "eval", "metrics.json"))
    assert metrics["tokens"]["kept_fraction/stage1"] == pytest.approx(0.5)  # the trained keep_ratio
    images = acdc_inference_inputs(acdc_dir, str(tmp_path / "inputs"), count=1)
    run_config(BUNDLE, "inference", trained, dataset="acdc", input_dir=str(tmp_path / "inputs"),
               output_dir=str(tmp_path / "out"), **plain)
    stem = os.path.basename(images[0])[: -len(".nii.gz")]
    assert os.path.isfile(tmp_path / "out" / f"{stem}_seg.nii.gz")
    # a run-time setting may still be changed: evaluation without pruning
    run_config(BUNDLE, "evaluate", trained, dataset_dir=acdc_dir, latency_repeats=0, batch_size=4, keep_ratio=1.0,
               output_dir=str(tmp_path / "keep1"), **plain)
    assert read_json(os.path.join(tmp_path, "keep1", "metrics.json"))["tokens"]["token_sparsity"] == 0.0


def test_export_and_segmenter_build_the_trained_network(trained, acdc_dir, tmp_path):
    from prato_components.export import load_exported
    from prato_components.interactive import BoxPromptSegmenter

    weights = os.path.join(trained, "models", "model.pt")
    path = export(BUNDLE, weights, str(tmp_path / "net.pt2"))
    module, files = load_exported(path, ("export.json",))
    assert files["export.json"]["image_size"] == 32
    logits = module(torch.rand(1, 1, 32, 32), torch.tensor([[[4.0, 4.0, 20.0, 20.0]]]))
    assert logits.shape == (1, 4, 32, 32)
    segmenter = BoxPromptSegmenter(BUNDLE, checkpoint=weights)
    image = acdc_inference_inputs(acdc_dir, str(tmp_path / "inputs"), count=1)[0]
    label, _, _ = segmenter(image, [[2, 2, 0, 40, 40, 3]])
    assert label.shape == segmenter.image_shape(image)


def test_contradicting_overrides_are_named_with_the_fix(trained, acdc_dir):
    with pytest.raises(Exception) as caught:
        run_config(BUNDLE, "evaluate", trained, dataset_dir=acdc_dir, num_workers=0, image_size=64, hidden_size=48)
    text = error_text(caught.value)
    assert "holds a network trained with image_size=32 (this run: 64), hidden_size=32 (this run: 48)" in text
    assert "pass --image_size 32 --hidden_size 32" in text
    with pytest.raises(Exception) as caught:  # trained on 1-channel ACDC, asked to segment 3-channel ISIC
        run_config(BUNDLE, "inference", trained, dataset="isic", input_dir=acdc_dir, num_workers=0)
    assert "in_channels=1 (this run: 3), out_channels=4 (this run: 2)" in error_text(caught.value)


def test_resuming_with_other_shapes_is_refused(trained, acdc_dir):
    with pytest.raises(Exception) as caught:
        run_bundle("unetr_prato", "train", trained, dataset_dir=acdc_dir, epochs=2, hidden_size=48,
                   **{"train#trainer#epoch_length": 1})
    assert "last.pt was written by a run with hidden_size=32 (this run: 48)" in error_text(caught.value)


@pytest.mark.parametrize("content", [b"this is not a torch checkpoint", b""])
def test_a_corrupt_checkpoint_is_named(tmp_path, content):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    for read in (load_weights, trained_settings):
        with pytest.raises(ValueError, match=f"checkpoint {path} is not a readable torch checkpoint"):
            read(str(path))


def _decode_region_of(ckpt_path: str, bundle: str = BUNDLE, key: str = "decode_region"):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    configs = os.path.join(bundle, "configs")
    parser.read_config([os.path.join(configs, "train.json"), os.path.join(configs, "evaluate.json")])
    parser["ckpt_path"] = ckpt_path
    return parser.get_parsed_content("network_settings")[key]


def test_decode_region_follows_the_checkpoint_and_legacy_checkpoints_decode_whole(trained, tmp_path):
    path = os.path.join(trained, "models", "model.pt")
    assert trained_settings(path)["decode_region"] == "guided"  # the PrATo bundle's default, recorded
    assert _decode_region_of(path) == "guided" and _decode_region_of(path, key="coarse_head") is True
    state, settings = load_weights(path)
    settings.pop("decode_region")
    torch.save({"model": state, "network_settings": settings}, tmp_path / "legacy.pt")
    assert _decode_region_of(str(tmp_path / "legacy.pt")) == "full"  # trained before box decoding existed
    assert _decode_region_of(str(tmp_path / "missing.pt")) == "guided"  # no checkpoint: the bundle's default
    # trained with box decoding, before the coarse head existed: no head, box decoding, and its weights load
    box_state = {k: v for k, v in state.items() if not k.startswith("coarse_head.")}
    box_settings = {**{k: v for k, v in settings.items() if k != "coarse_head"}, "decode_region": "box"}
    torch.save({"model": box_state, "network_settings": box_settings}, tmp_path / "box.pt")
    assert _decode_region_of(str(tmp_path / "box.pt")) == "box"
    assert _decode_region_of(str(tmp_path / "box.pt"), key="coarse_head") is False
    assert _decode_region_of(str(tmp_path / "missing.pt"), os.path.join(ROOT, "bundles", "unetr_baseline")) == "full"


def test_a_checkpoint_from_before_click_prompts_evaluates_with_the_click_encoder_at_zero(trained, acdc_dir,
                                                                                        tmp_path):
    state, settings = load_weights(os.path.join(trained, "models", "model.pt"))
    assert settings["click_prompts"] is True and any(k.startswith("click_encoder.") for k in state)
    old_state = {k: v for k, v in state.items() if not k.startswith("click_encoder.")}
    old_settings = {k: v for k, v in settings.items() if k != "click_prompts"}
    legacy = str(tmp_path / "before_clicks.pt")
    torch.save({"model": old_state, "network_settings": old_settings}, legacy)
    assert _decode_region_of(legacy, key="click_prompts") is True  # built with the encoder, which stays zero
    run_config(BUNDLE, "evaluate", trained, dataset_dir=acdc_dir, latency_repeats=0, batch_size=4, num_workers=0,
               ckpt_path=legacy, output_dir=str(tmp_path / "eval"))
    assert 0.0 <= read_json(os.path.join(tmp_path, "eval", "metrics.json"))["metrics"]["mean_dice"]["mean"] <= 1.0


def test_resolved_settings_take_an_override_then_the_checkpoint_then_the_default():
    given = {"in_channels": 3, "image_size": 224, "keep_ratio": 0.75, "decode_region": "box", "hidden_size": 768}
    trained = {"in_channels": 1, "image_size": 32, "keep_ratio": 0.5, "hidden_size": 32}
    assert resolved_settings(given) == resolved_settings(given, {}, ["image_size"]) == given  # training, no checkpoint
    assert resolved_settings(given, trained) == {  # channels follow the data; a setting the checkpoint predates is
        "in_channels": 3, "image_size": 32, "keep_ratio": 0.5, "decode_region": "full", "hidden_size": 32}  # legacy
    assert resolved_settings(given, trained, ["keep_ratio", "image_size", "epochs"]) == {
        "in_channels": 3, "image_size": 224, "keep_ratio": 0.75, "decode_region": "full", "hidden_size": 32}
    assert resolved_settings({"image_size": 224, "depths": [2, 2]}, {"image_size": 32})["depths"] == [2, 2]


def test_override_keys_are_the_runs_or_monai_command_lines(monkeypatch, tmp_path):
    assert override_keys() == []  # pytest: neither a bundle run nor MONAI's command line
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", types.SimpleNamespace(name="monai.bundle.__main__"))
    monkeypatch.setattr(sys, "argv", ["monai", "run", "--config_file", "c.json", "--meta_file", "m.json",
                                      "--image_size", "64", "--keep-ratio=0.5", "--bundle_root", "."])
    assert override_keys() == ["image_size", "keep_ratio", "bundle_root"]  # not the workflow's own arguments
    args_file = tmp_path / "args.json"
    args_file.write_text('{"config_file": "c.json", "hidden_size": 32, "image_size": 96}')
    monkeypatch.setattr(sys, "argv", ["monai", "run", "--args_file", str(args_file), "--image_size", "64"])
    assert sorted(override_keys()) == ["hidden_size", "image_size"]
    seen = []
    monkeypatch.setattr(prato_components.bundle.monai.bundle, "run", lambda **kwargs: seen.append(override_keys()))
    prato_components.bundle.run(os.path.join(BUNDLE, "configs", "train.json"), meta_file="m.json", epochs=1)
    assert seen == [["epochs"]] and sorted(override_keys()) == ["hidden_size", "image_size"]  # the run's, then not


def test_an_override_wins_over_the_checkpoint_even_at_the_default(trained):
    weights = os.path.join(trained, "models", "model.pt")
    settings = trained_bundle_config(BUNDLE, weights).get_parsed_content("network_settings")
    assert (settings["keep_ratio"], settings["image_size"], settings["in_channels"]) == (0.5, 32, 1)
    explicit = trained_bundle_config(BUNDLE, weights, {"keep_ratio": 0.75})  # the bundle's default, asked for
    assert explicit.get_parsed_content("network_settings")["keep_ratio"] == 0.75
    assert explicit.get_parsed_content("network_def").pruners["1"].keep_ratio == 0.75
    with pytest.raises(ValueError, match=r"trained with image_size=32 \(this run: 224\); .* pass --image_size 32"):
        trained_bundle_config(BUNDLE, weights, {"image_size": 224})


def test_command_line_overrides_meet_the_checkpoint(trained, acdc_dir, tmp_path):
    """Through ``python -m monai.bundle run``: a run-time override is taken, a shape override that contradicts the
    checkpoint stops the run before anything is read or written."""
    inputs = str(tmp_path / "inputs")
    acdc_inference_inputs(acdc_dir, inputs, count=1)
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", os.path.join(BUNDLE, "configs",
               "inference.json"), "--bundle_root", trained, "--input_dir", inputs, "--num_workers", "0",
               "--output_dir", str(tmp_path / "out"), "--keep_ratio", "1.0", "--hidden_size", "48"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode != 0
    assert "holds a network trained with hidden_size=32 (this run: 48); drop those overrides" in done.stderr
    assert "keep_ratio" not in done.stderr.split("holds a network")[-1]  # a run-time setting may differ
    assert not os.path.exists(tmp_path / "out")
