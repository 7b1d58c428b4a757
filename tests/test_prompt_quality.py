"""Evaluating the four box qualities of the paper's Table VI in one run (``evaluate.json --prompt all``)."""

import os

import pytest
import torch
from conftest import error_text, read_json, run_bundle
from ignite.engine import Engine

from prato_components.bundle import TABLE_VI_PROMPTS, prompt_qualities
from prato_components.engine import EvaluationReport, load_weights


def test_prompt_qualities_reads_all_a_name_or_a_list():
    assert prompt_qualities("all") == ["tight", "partial", "oversized", "misleading"] == list(TABLE_VI_PROMPTS)
    assert prompt_qualities("misleading") == ["misleading"]
    assert prompt_qualities(["tight", "misleading"]) == ["tight", "misleading"]
    for bad in ("wrong", ["tight", "tight"], []):
        with pytest.raises(ValueError, match="prompt must be one of .* 'all' or a list of distinct ones"):
            prompt_qualities(bad)


def test_the_report_gives_each_quality_its_rows_and_the_misleading_to_tight_ratio(tmp_path):
    # two images per quality, two classes; the rows are the data once per quality, in order
    dice = torch.tensor([[0.8, 0.6], [1.0, float("nan")], [0.5, 0.5], [0.7, 0.3],
                         [0.9, 0.7], [0.8, 0.6], [0.4, 0.2], [0.2, float("nan")]])
    engine = Engine(lambda e, b: None)
    engine.state.metric_details = {"mean_dice": dice, "mean_iou": dice / 2}
    engine.state.metrics = {"mean_dice": 0.0}
    report = EvaluationReport(str(tmp_path), ["a", "b"], ["mean_dice", "mean_iou"], latency_repeats=0,
                              prompts=TABLE_VI_PROMPTS)
    report(engine)
    rows = read_json(os.path.join(tmp_path, "metrics.json"))["prompts"]
    assert list(rows) == ["tight", "partial", "oversized", "misleading"]
    assert rows["tight"]["mean_dice"] == pytest.approx({"a": 0.9, "b": 0.6, "mean": (0.7 + 1.0) / 2})
    # "mean" as MONAI reduces it: per image over its classes, then over the images
    assert rows["misleading"]["mean_dice"] == pytest.approx({"a": 0.3, "b": 0.2, "mean": (0.3 + 0.2) / 2})
    assert rows["partial"]["mean_iou"]["mean"] == pytest.approx(0.25)  # (0.5 / 2 + 0.5 / 2) / 2
    assert report.summary["misleading_over_tight"] == pytest.approx(0.25 / 0.85)
    csv_text = open(os.path.join(tmp_path, "metrics.csv")).read()
    assert "mean_dice@misleading" in csv_text
    assert "misleading / tight mean_dice: 0.2941" in report.format(report.summary)


def test_the_report_refuses_details_that_are_not_one_run_per_quality(tmp_path):
    engine = Engine(lambda e, b: None)
    engine.state.metric_details, engine.state.metrics = {"mean_dice": torch.rand(5, 2)}, {}
    report = EvaluationReport(str(tmp_path), ["a", "b"], ["mean_dice"], prompts=["tight", "misleading"])
    with pytest.raises(ValueError, match="5 evaluated images are not 2 equal runs of the data"):
        report(engine)


def test_evaluate_all_prompts_in_one_run_matches_single_prompt_runs(acdc_dir, tmp_path):
    root = str(tmp_path / "bundle")
    run_bundle("unetr_prato", "train", root, dataset_dir=acdc_dir, epochs=1, **{"train#trainer#epoch_length": 2})
    run_bundle("unetr_prato", "evaluate", root, dataset_dir=acdc_dir, latency_repeats=0, prompt="all",
               output_dir=str(tmp_path / "all"))
    table = read_json(str(tmp_path / "all" / "metrics.json"))
    assert list(table["prompts"]) == list(TABLE_VI_PROMPTS)
    for prompt in ("tight", "misleading"):
        run_bundle("unetr_prato", "evaluate", root, dataset_dir=acdc_dir, latency_repeats=0, prompt=prompt,
                   output_dir=str(tmp_path / prompt))
        single = read_json(str(tmp_path / prompt / "metrics.json"))
        assert "prompts" not in single
        for metric in ("mean_dice", "mean_iou"):
            assert table["prompts"][prompt][metric]["mean"] == pytest.approx(single["metrics"][metric]["mean"])
    tight, misleading = (table["prompts"][p]["mean_dice"]["mean"] for p in ("tight", "misleading"))
    assert table["misleading_over_tight"] == pytest.approx(misleading / tight)
    with pytest.raises(Exception) as caught:
        run_bundle("unetr_prato", "evaluate", root, dataset_dir=acdc_dir, latency_repeats=0, prompt="wrong",
                   output_dir=str(tmp_path / "wrong"))
    assert "prompt must be one of" in error_text(caught.value)


def test_the_bundle_trains_the_same_weights_with_and_without_the_coarse_head(acdc_dir, tmp_path):
    """The coarse head reads detached features and is built on its own random stream: a short training of the
    bundle default (guided) gives every shared weight of today's box-decoding bundle, bit for bit."""
    weights = {}
    for name, settings in (("guided", {}), ("box", {"decode_region": "box", "coarse_head": False})):
        root = str(tmp_path / name)
        run_bundle("unetr_prato", "train", root, dataset_dir=acdc_dir, epochs=2, val_interval=2,
                   **{"train#trainer#epoch_length": 2, **settings})
        weights[name] = load_weights(os.path.join(root, "models", "model_final.pt"))[0]
    assert set(weights["guided"]) - set(weights["box"]) == {"coarse_head.conv.weight", "coarse_head.conv.bias"}
    for key, value in weights["box"].items():
        assert torch.equal(weights["guided"][key], value), key
