"""tools/benchmark.py: per-bundle settings and a real (tiny) comparison table."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import ROOT

from tools.benchmark import Benchmark, _setting


def test_setting_parses_json_values_and_rejects_bad_text():
    assert _setting("network_def#pruner=random") == ("network_def#pruner", "random")
    assert _setting("keep_ratio=0.5") == ("keep_ratio", 0.5)
    assert _setting("prune_stages=[2, 3]") == ("prune_stages", [2, 3])
    assert _setting("network_def#pruner=null") == ("network_def#pruner", None)
    with pytest.raises(ValueError, match="key=value"):
        _setting("keep_ratio")


def test_bundle_entries_with_settings_compare_variants_of_one_bundle(tmp_path):
    prato = os.path.join(ROOT, "bundles", "segformer_prato")
    random_half = "@network_def#pruner=random@network_def#pruner_kwargs={\"keep_ratio\":0.5}"
    table = Benchmark().bundles(f"{prato},{prato}{random_half}", image_size=64, repeats=1, warmup=0,
                                json_out=str(tmp_path / "rows.json"))
    assert table.splitlines()[0].startswith("input [1, 1, 64, 64]")
    rows = {row["network"]: row for row in json.loads((tmp_path / "rows.json").read_text())}
    assert set(rows) == {"segformer_prato", "segformer_prato" + random_half}
    # PrATo keeps three quarters at both boundaries, the random variant half (same network otherwise); kept token-block
    # work over the four one-block MiT stages (16x16, 8x8, 4x4, 2x2 tokens), stages 2 and 3 pruned
    assert rows["segformer_prato"]["kept_fraction"] == pytest.approx((256 + 48 + 12 + 4) / 340)
    assert rows["segformer_prato" + random_half]["kept_fraction"] == pytest.approx((256 + 32 + 8 + 4) / 340)
    assert rows["segformer_prato" + random_half]["params_M"] < rows["segformer_prato"]["params_M"]  # no f1, f2


def test_box_fraction_sets_the_central_box_the_bundles_decode(tmp_path):
    """``box_fraction``: a smaller central box, a smaller decoded window, fewer FLOPs (SegFormer snaps it to 32)."""
    baseline = os.path.join(ROOT, "bundles", "segformer_baseline")
    gflops = {}
    for fraction in (0.25, 0.9):  # 128 x 128: a 64-pixel window (32..96) and the whole image
        out = tmp_path / f"{fraction}.json"
        table = Benchmark().bundles(f"{baseline}@decode_region=box@decode_margin=0", image_size=128, repeats=1,
                                    warmup=0, json_out=str(out), box_fraction=fraction)
        assert f"central box {fraction:g} of each side" in table.splitlines()[0]
        gflops[fraction] = json.loads(out.read_text())[0]["gflops"]
    assert gflops[0.25] < gflops[0.9]


def test_compare_compiled_networks_counts_eager_flops(tmp_path):
    """--compile times torch.compile'd networks: same FLOPs and kept fractions as eager, no pruner timing."""
    import math

    from prato_components.networks import SegFormer
    from tools.benchmark import compare

    tiny = {"embed_dims": (8, 16, 32, 64), "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1), "decoder_dim": 16}
    torch.manual_seed(0)
    networks = {"base": SegFormer(**tiny),
                "random": SegFormer(**tiny, pruner="random", pruner_kwargs={"keep_ratio": 0.5})}
    eager = compare(networks, [1, 64, 64], repeats=1, warmup=0)
    compiled = compare(networks, [1, 64, 64], repeats=1, warmup=0, compile=True)
    for e, c in zip(eager, compiled):
        assert (c["network"], c["gflops"], c["kept_fraction"]) == (e["network"], e["gflops"], e["kept_fraction"])
        assert c["latency_ms"] > 0 and math.isnan(c["pruner_ms"])
    assert compiled[1]["kept_fraction"] == pytest.approx((256 + 32 + 8 + 4) / 340) and compiled[1]["flops_ratio"] < 1.0


def test_volume_counts_windows_flops_and_latency_of_the_prompted_sliding_window(tmp_path):
    # box decoding on both bundles (the PrATo bundle's default, guided, would also scan the untouched windows)
    tiny = {"hidden_size": 48, "mlp_dim": 96, "num_heads": 2, "feature_size": 8, "decode_region": "box"}
    dirs = ",".join(os.path.join(ROOT, "bundles", b) for b in ("unetr3d_baseline", "unetr3d_prato"))
    table = Benchmark().volume(dirs, volume_shape=[96, 64, 32], image_size=32, organ="gallbladder", overlap=0.0,
                               margin=0, overrides=tiny, json_out=str(tmp_path / "rows.json"))
    assert table.splitlines()[0].startswith("volume [1, 1, 96, 64, 32], windows 32^3")
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [row["run"] for row in rows] == ["unetr3d_baseline (every window)", "unetr3d_baseline (box)",
                                            "unetr3d_prato (box)"]
    # 3 x 2 x 1 windows; the gallbladder (centre 0.05, -0.45 of the half sizes, radii 0.08) sits in one of them
    assert [row["windows"] for row in rows] == ["6/6", "1/6", "1/6"]
    assert rows[1]["flops_ratio"] == pytest.approx(1 / 6, rel=0.01)  # one window of six, same network
    assert all(row["latency_s"] > 0 for row in rows)


def test_compiled_reports_eager_and_compiled_columns_per_batch_and_threads(tmp_path):
    """``compiled``: baseline, PrATo (box) and PrATo (full) of one backbone, eager and compiled in one run (the
    ``eager`` backend here: the graph capture without an inductor build, which takes minutes on CI)."""
    out = tmp_path / "rows.json"
    text = Benchmark().compiled("unetr", image_size=32, batch_sizes=[1, 2], threads=[1], repeats=1, warmup=0,
                                overrides={"hidden_size": 32, "mlp_dim": 64, "num_heads": 2, "feature_size": 8},
                                backend="eager", json_out=str(out))
    rows = json.loads(out.read_text())
    assert [(r["network"], r["batch"], r["threads"]) for r in rows] == [
        (n, b, 1) for b in (1, 2) for n in ("baseline", "prato_box", "prato_full")]
    for row in rows:
        assert row["eager_ms"] > 0 and row["compiled_ms"] > 0 and row["compile_s"] > 0
        assert row["compiled_images_s"] == pytest.approx(row["batch"] * 1e3 / row["compiled_ms"])
    box, full = rows[1], rows[2]
    # at 32 px the box's window is the whole image: no saving from box decoding at this size
    assert rows[0]["flops_ratio"] == 1.0 and box["flops_ratio"] <= full["flops_ratio"]
    assert "compiled: torch.compile('eager', fullgraph=True)" in text.splitlines()[0]


def test_tokens_compares_dense_blocks_on_all_and_on_the_kept_tokens():
    table = Benchmark().tokens(tokens=16, keep=0.75, hidden_size=32, mlp_dim=64, num_heads=2, depth=2, threads=(1,),
                               repeats=1, warmup=0, compile=False)
    header, _, _, row = table.splitlines()
    assert "16 -> 12 tokens, eager" in header
    cells = [c.strip() for c in row.strip("|").split("|")]
    # per block and token: qkv, projection and MLP 2 * (4 * D^2 + 2 * D * M); attention 4 * T * D (QK^T and AV)
    flops = {t: t * 2 * (4 * 32**2 + 2 * 32 * 64) + 4 * t * t * 32 for t in (16, 12)}
    assert cells[0] == "1" and float(cells[4]) == pytest.approx(flops[12] / flops[16], abs=5e-4)
    assert float(cells[1]) >= 0 and float(cells[2]) >= 0 and len(cells) == 6
