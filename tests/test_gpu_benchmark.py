"""tools/gpu_benchmark.py on a CPU at tiny size: the bundle check, the interleaved rows, the JSON and Markdown."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from tools.gpu_benchmark import run


def test_tiny_cpu_run_writes_json_and_markdown(tmp_path):
    text = run(device="cpu", size="tiny", out_dir=str(tmp_path), markdown_name="table.md",
               backbones="segformer,unetr3d", pruners="baseline,prato_box", batches=[1, 2], train_batch=2,
               train_batch_3d=1, warmup=0, repeats=1, threads=1, settings_3d=[[32, 0.9]], amp=True)
    report = json.loads((tmp_path / "gpu_benchmark.json").read_text())
    assert (tmp_path / "table.md").read_text() == text
    assert report["environment"]["torch"] == torch.__version__ and report["amp"] is True
    assert [(c["bundle"], c["ok"]) for c in report["bundle_checks"]] == [("segformer_prato", True)]
    rows = [(r["group"], r["row"], r["input"], r["keep_ratio"]) for r in report["rows"]]
    assert rows == [("segformer", "baseline", "64x64", None), ("segformer", "prato_box", "64x64", 0.75),
                    ("unetr3d 32^3", "baseline", "32x32x32", None), ("unetr3d 32^3", "prato_box", "32x32x32", 0.9)]
    for row in report["rows"]:
        assert row["images_per_s_b1"] > 0 and row["images_per_s_b2"] > 0 and row["train_step_ms"] > 0
        assert row["train_peak_mib"] > 0
    assert "| segformer | prato_box | 64x64 | 0.75 |" in text
    assert "| segformer_prato |" in text and "bfloat16" in text.splitlines()[0]


def test_cpu_step_memory_measures_the_peak_of_the_step():
    """A step that holds 64 MiB for a moment peaks at least that much above where it started, measured as the
    benchmark measures it: in a fresh process whose freed memory goes back to the system (a long-lived process, such
    as this test run, may serve the step from pages it already holds)."""
    code = ("import torch; from tools.gpu_benchmark import cpu_step_memory; "
            "print(cpu_step_memory(lambda: torch.ones(16 * 2**20).sum()))")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    assert 60 < float(out.stdout.strip().splitlines()[-1]) < 200


def test_bad_input_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown row\(s\) \['prato'\]"):
        run(device="cpu", pruners="baseline,prato", out_dir=str(tmp_path))
    with pytest.raises(ValueError, match="size must be one of"):
        run(device="cpu", size="huge", out_dir=str(tmp_path))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available here; run with --device cpu"):
            run(out_dir=str(tmp_path))
