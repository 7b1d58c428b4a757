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
    table = Benchmark().bundles(f"{prato},{prato}{random_half}", image_size=64, repeats=1, warmup=0, json_out=str(tmp_path / "rows.json"))
    assert table.splitlines()[0].startswith("input [1, 1, 64, 64]")
    rows = {row["network"]: row for row in json.loads((tmp_path / "rows.json").read_text())}
    assert set(rows) == {"segformer_prato", "segformer_prato" + random_half}
    # PrATo keeps three quarters at both boundaries, the random variant half (same network otherwise); kept token-block
    # work over the four one-block MiT stages (16x16, 8x8, 4x4, 2x2 tokens), stages 2 and 3 pruned
    assert rows["segformer_prato"]["kept_fraction"] == pytest.approx((256 + 48 + 12 + 4) / 340)
    assert rows["segformer_prato" + random_half]["kept_fraction"] == pytest.approx((256 + 32 + 8 + 4) / 340)
    assert rows["segformer_prato" + random_half]["params_M"] < rows["segformer_prato"]["params_M"]  # no f1, f2


def test_compare_compiled_networks_counts_eager_flops(tmp_path):
    """--compile times torch.compile'd networks: same FLOPs and kept fractions as eager, no pruner timing."""
    import math

    from prato_components.networks import SegFormer
    from tools.benchmark import compare

    tiny = {"embed_dims": (8, 16, 32, 64), "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1), "decoder_dim": 16}
    torch.manual_seed(0)
    networks = {"base": SegFormer(**tiny), "random": SegFormer(**tiny, pruner="random", pruner_kwargs={"keep_ratio": 0.5})}
    eager = compare(networks, [1, 64, 64], repeats=1, warmup=0)
    compiled = compare(networks, [1, 64, 64], repeats=1, warmup=0, compile=True)
    for e, c in zip(eager, compiled):
        assert (c["network"], c["gflops"], c["kept_fraction"]) == (e["network"], e["gflops"], e["kept_fraction"])
        assert c["latency_ms"] > 0 and math.isnan(c["pruner_ms"])
    assert compiled[1]["kept_fraction"] == pytest.approx((256 + 32 + 8 + 4) / 340) and compiled[1]["flops_ratio"] < 1.0
