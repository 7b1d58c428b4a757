"""The experiment runner and the report (tools/experiments.py, tools/report.py): plans, the smoke plan end to end,
skipping finished runs, resuming a run killed mid-training."""

from __future__ import annotations

import ast
import csv
import json
import math
import os
import re
import signal
import struct
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT

from prato_components.engine import record_retention
from tools.experiment_plan import PROMPTS, expand, load_plan, non_default
from tools.report import mean_spread

PLANS = os.path.join(ROOT, "plans")
TABLES = ("table1", "table2", "table3", "table4", "table5", "table6")
FIGURES = ("fig5", "fig6", "fig7")


def _write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _experiments(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "experiments.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------------------------------- plans
def test_paper_plan_covers_every_table_and_figure():
    sections, settings = load_plan(os.path.join(PLANS, "paper.yaml"))
    assert [s.id for s in sections] == [*TABLES, *FIGURES]
    assert settings == {"datasets": ["acdc", "isic"], "seeds": [0, 1]}
    assert {s.figure for s in sections if s.kind == "figure"} == {"bars", "overlays", "retention"}
    table6 = next(s for s in sections if s.id == "table6")
    assert [row.prompt for row in table6.rows] == ["tight", "partial", "oversized", "misleading"]
    assert table6.rows[0].paper == {"acdc": {"dice": 0.717}}


def test_runs_are_shared_between_tables(tmp_path):
    sections, _ = load_plan(os.path.join(PLANS, "paper.yaml"))
    runs, cells = expand(sections, ["acdc"], [0, 1], "smoke", str(tmp_path))
    assert len(runs) == 2 * 27  # 27 distinct trainings per seed; the rest are shared
    assert len({r.folder for r in runs}) == len(runs)
    # Table I's PrATo row, Table II's 25th percentile and Table III's k = 5 spell the same run differently
    same = {cells[(table, row, "acdc", 0)][0].folder for table, row in (("table1", 2), ("table2", 4), ("table3", 1))}
    assert len(same) == 1
    # Table VI evaluates one trained network with the four prompts; Fig. 6 and 7 save samples from it
    prato = cells[("table6", 0, "acdc", 0)][0]
    assert sorted(prato.evaluations) == sorted(PROMPTS)
    assert prato.samples > 0 and prato is cells[("fig7", 0, "acdc", 0)][0]
    assert all(cells[(s, 0, "acdc", 1)][0].seed == 1 for s in ("table1", "fig5"))


def test_small_structure_plan_runs_through_the_plan_model(tmp_path):
    """The small-structure study is a plan: its data variant (ACDC-like with a small dark class) is a data set,
    sections read only their data sets, trainings are shared across sections, and the runs of the section asking
    for it write the kept-cells-by-class analysis."""
    sections, settings = load_plan(os.path.join(PLANS, "small_structures.yaml"))
    assert [s.id for s in sections] == ["small_dark_96", "size_224", "demo_96", "prompts", "decode_margins"]
    assert settings["data"] == {"acdc_small_dark": {"dataset": "acdc",
                                                    "synthetic": {"small_dark": True, "num_patients": 20}}}
    runs, cells = expand(sections, settings["datasets"], [0], "small", str(tmp_path), settings["data"])
    assert {key[2] for key in cells if key[0] == "small_dark_96"} == {"acdc_small_dark"}
    assert {key[2] for key in cells if key[0] == "demo_96"} == {"acdc"}
    assert {key[2] for key in cells if key[0] == "size_224"} == {"acdc_small_dark", "acdc"}
    literal, _ = cells[("small_dark_96", 1, "acdc_small_dark", 0)]
    assert literal.data == {"dataset": "acdc", "synthetic": {"small_dark": True, "num_patients": 20}}
    assert literal is cells[("prompts", 4, "acdc_small_dark", 0)][0]  # keep_ratio 1.0 at evaluation: same training
    assert len(literal.evaluations) == 5  # the four prompts, and the tight box keeping every token
    assert {tag.split("-")[0] for tag in literal.evaluations} == set(PROMPTS)
    assert {"prompt": "tight", "latency_repeats": 0, "keep_ratio": 1.0} in literal.evaluations.values()
    assert literal.analyses == ["kept_by_class"] and literal.outputs()[-1].endswith("kept_by_class.json")
    margins = {cells[("decode_margins", i, "acdc", 0)][0].folder for i in range(4)}
    assert len(margins) == 1  # one training, four decodings
    assert cells[("size_224", 0, "acdc", 0)][0].overrides == {"image_size": 224}
    # dark at 96 (its "box, margin 16" row is no longer the bundle default, which decodes guided), both data sets at
    # 224, demo at 96; the rest shared
    assert len(runs) == 15 + 2 * 5 + 8


def test_plan_model_has_no_import_circle():
    """The runner and the report both read the plan model; the plan model reads neither, the report not the
    runner."""
    imports = {}
    for name in ("experiment_plan", "experiments", "report"):
        tree = ast.parse(open(os.path.join(ROOT, "tools", f"{name}.py")).read())
        imports[name] = {node.module.split(".")[1] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                         and node.module and node.module.startswith("tools.")}
    assert imports["experiment_plan"] == {"bundlegen"}
    assert imports["report"] == {"experiment_plan"}
    assert imports["experiments"] == {"experiment_plan", "report"}


def test_non_default_drops_the_bundles_own_values():
    assert non_default("unetr_prato", {"keep_ratio": 0.75, "pruner_def#roi_size": 5}) == {}
    assert non_default("unetr_prato", {"keep_ratio": 0.5, "pruner_def#tau": 0.1}) == {
        "keep_ratio": 0.5, "pruner_def#tau": 0.1}
    assert non_default("unetr_baseline", {"no_such_key": 1}) == {"no_such_key": 1}


@pytest.mark.parametrize(
    "text, message",
    [
        ("rows: [{label: a, bundle: unetr_nothing}]", "unknown bundle 'unetr_nothing'"),
        ("rows: [{label: a, bundle: unetr_prato, prompt: sloppy}]", "unknown prompt 'sloppy'"),
        ("rows: [{label: a, bundle: unetr_prato, overide: {}}]", "unknown row keys ['overide']"),
        ("rows: [{bundle: unetr_prato}]", "every row needs a label and a bundle"),
        ("tables: []", "unknown keys ['tables']"),
        ("include: [missing.yaml]", "missing.yaml' does not exist"),
        ("- a list", "must be a YAML mapping"),
        ("kind: chart\nrows: [{label: a, bundle: unetr_prato}]", "kind must be 'table' or 'figure'"),
        ("analyses: [dice_maps]\nrows: [{label: a, bundle: unetr_prato}]", "unknown analyses ['dice_maps']"),
        ("sections: [{id: a}]", "section 0 has no rows"),
        ("sections: [{id: a, row: []}]", "section 0: unknown keys ['row']"),
        ("data: {dark: {dataset: brats}}", "data 'dark': unknown dataset 'brats'"),
        ("data: {dark: {dataset: acdc, synth: {}}}", "data 'dark': unknown keys ['synth']"),
    ],
)
def test_bad_plans_are_refused_with_the_reason(tmp_path, text, message):
    with pytest.raises((ValueError, FileNotFoundError), match=re.escape(message)):
        load_plan(_write(tmp_path / "plan.yaml", text))


def test_bad_command_lines_are_refused(tmp_path):
    plan = os.path.join(PLANS, "table6.yaml")
    cases = [(["--dataset", "brats"], "unknown data set(s) ['brats']"),
             (["--size", "huge"], "unknown size 'huge'"),
             (["--dataset_dir", str(tmp_path / "nowhere")], "does not exist"),
             (["--dataset", "acdc,isic", "--dataset_dir", str(tmp_path)], "names one data set's folder")]
    for extra, message in cases:
        result = _experiments("run", plan, "--out", str(tmp_path / "out"), *extra)
        assert result.returncode != 0 and message in result.stderr, (extra, result.stderr[-2000:])


def test_mean_spread_ignores_missing_values():
    assert mean_spread([0.5, 0.7, None]) == pytest.approx((0.6, math.sqrt(0.02), 2))
    assert mean_spread([0.4]) == (0.4, 0.0, 1)
    assert math.isnan(mean_spread([None, float("nan")])[0])


def test_record_retention_maps_each_stage_on_its_grid():
    from conftest import image, tiny_unetr

    from prato_components.pruners import RandomPruner

    net = tiny_unetr(RandomPruner(keep_ratio=0.5)).eval()
    with torch.no_grad(), record_retention(net) as kept:
        net(image(batch=2))
    assert sorted(kept) == [1, 2]
    first, second = kept[1][0], kept[2][0]
    assert first.shape == second.shape == (2, 4, 4) and first.dtype == torch.bool
    assert first.flatten(1).sum(1).tolist() == [8, 8] and second.flatten(1).sum(1).tolist() == [4, 4]
    assert not (second & ~first).any()  # a token pruned at stage 1 is not alive after stage 2
    with torch.no_grad():
        net(image(batch=2))
    assert len(kept[1]) == 1  # the hooks are gone after the block


# ------------------------------------------------------------------------------------- the smoke plan, in CI
def _png_size(path: str) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


@pytest.mark.slow
def test_smoke_plan_end_to_end_then_rerun_skips(tmp_path):
    out = str(tmp_path / "results")
    # the whole plan on both data sets, one seed (spread over seeds: test_mean_spread_ignores_missing_values)
    args = ("run", os.path.join(PLANS, "paper.yaml"), "--size", "smoke", "--seeds", "0", "--out", out,
            "--parallel", "2")
    first = _experiments(*args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "54/54 runs complete, 0 failed" in first.stdout
    report = open(os.path.join(out, "report.md")).read()
    sections, _ = load_plan(os.path.join(PLANS, "paper.yaml"))
    for section in sections:
        assert section.title in report
        if section.kind == "table":
            for row in section.rows:
                line = next(x for x in report.splitlines() if x.startswith(f"| {row.label} |"))
                numbers = [float(x) for x in re.findall(r"-?\d+\.\d+", line)]
                assert len(numbers) >= 10 and all(math.isfinite(x) for x in numbers), line  # both data sets
                assert "missing" not in line, line
    assert "cells are missing" not in report and "nan" not in report
    with open(os.path.join(out, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * sum(len(s.rows) for s in sections)
    assert all(math.isfinite(float(r["dice"])) and 0 <= float(r["dice"]) <= 1 for r in rows)
    assert all(float(r["gflops"]) > 0 for r in rows)
    for figure in FIGURES:
        for dataset in ("acdc", "isic"):
            path = os.path.join(out, "figures", f"{figure}_{dataset}.png")
            width, height = _png_size(path)
            assert width >= 200 and height >= 80 and os.path.getsize(path) > 5000, (figure, width, height)
            assert f"figures/{figure}_{dataset}.png" in report

    again = _experiments(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "54 already complete, 0 to run" in again.stdout and "running" not in again.stdout


@pytest.mark.slow
def test_data_variant_and_kept_by_class_end_to_end(tmp_path):
    plan = _write(tmp_path / "plan.yaml", "data: {dark: {dataset: acdc, synthetic: {small_dark: true}}}\n"
                                          "datasets: [dark]\nanalyses: [kept_by_class]\n"
                                          "rows: [{label: literal, bundle: unetr_prato, "
                                          "overrides: {protect_boxes: false}}]\n")
    out = str(tmp_path / "results")
    done = _experiments("run", plan, "--size", "smoke", "--out", out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert os.path.isfile(os.path.join(out, "data", "smoke", "dark", ".complete"))
    (folder,) = os.listdir(os.path.join(out, "runs", "smoke", "dark", "s0"))
    with open(os.path.join(out, "runs", "smoke", "dark", "s0", folder, "kept_by_class.json")) as f:
        kept = json.load(f)
    assert sorted(kept) == ["stage1", "stage2"]
    assert set(kept["stage1"]) == {"class1", "class2", "class3", "in_box", "outside_box"}
    assert all(v is None or 0 <= v <= 1 for stage in kept.values() for v in stage.values())
    assert kept["stage2"]["outside_box"] < 1  # pruning removed cells
    report = open(os.path.join(out, "report.md")).read()
    assert "| literal | dark | stage1 | class1 " in report


@pytest.mark.slow
def test_run_killed_mid_training_resumes_from_its_checkpoint(tmp_path):
    plan = _write(tmp_path / "plan.yaml", "rows: [{label: long, bundle: unetr_baseline, "
                                          "train_overrides: {epochs: 40}}]\n")
    out = str(tmp_path / "results")
    args = [sys.executable, os.path.join(ROOT, "tools", "experiments.py"), "run", plan, "--size", "smoke", "--out", out]
    runner = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)
    run_dir = os.path.join(out, "runs", "smoke", "acdc", "s0")
    deadline = time.time() + 300
    while time.time() < deadline:
        lasts = [os.path.join(run_dir, d, "models", "last.pt") for d in os.listdir(run_dir)] \
            if os.path.isdir(run_dir) else []
        if lasts and os.path.isfile(lasts[0]):
            break
        assert runner.poll() is None, runner.stdout.read().decode()[-3000:]
        time.sleep(0.05)
    os.killpg(runner.pid, signal.SIGKILL)  # the runner and its child, mid-training
    runner.wait()
    folder = os.path.dirname(os.path.dirname(lasts[0]))
    assert not os.path.isfile(os.path.join(folder, "models", "model_final.pt")), "training finished before the kill"

    resumed = _experiments("run", plan, "--size", "smoke", "--out", out)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "0 already complete, 1 to run" in resumed.stdout
    log = open(os.path.join(folder, "log.txt")).read()
    match = re.search(r"resumed from \S+last\.pt at epoch (\d+) of 40", log)
    assert match and int(match.group(1)) >= 1, log[-3000:]
    assert os.path.isfile(os.path.join(folder, "eval_tight", "metrics.json"))
