"""Compiled inference: every bundle's pruned forward traces as one graph (``torch.compile(fullgraph=True)``, no graph
break), gives the eager logits, and the compiled wrapper (:class:`~prato_components.export.CompiledNetwork`, the
bundle key ``compile``) keeps the input checks. The traces use torch.compile's ``eager`` backend (the graph capture
without code generation): an inductor compile takes minutes on a CI core, and what can break is the capture."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import ALL_BUNDLES, BUNDLES_DIR, error_text

from prato_components.export import (
    COMPILE_CONFIG,
    CompiledNetwork,
    compiled_network,
    example_inputs,
    export_network,
    load_exported,
    save_aoti_package,
    save_exported,
)
from prato_components.networks import PrunedUNETR
from prato_components.verification import _network, _network_overrides, spatial_dims, tiny_window_3d


def _tiny(name: str):
    """The bundle's tiny network (inference.json's settings: PrATo bundles decode guided), seeded, eval."""
    bundle_dir = os.path.join(BUNDLES_DIR, name)
    torch.manual_seed(0)
    network, channels, size = _network(bundle_dir, None, _network_overrides(bundle_dir))
    dims = spatial_dims(bundle_dir)
    if dims == 3:  # the window the 3D network is built for (UNETR's img_size, else the tiny window)
        return network, channels, tuple(getattr(network, "img_size", (tiny_window_3d(name),) * 3))
    return network, channels, (size, size)


@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_forward_compiles_as_one_graph(name):
    """Every backbone x pruner: ``fullgraph=True`` fails on any graph break; the compiled logits are the eager ones
    (box decoding included: the window is planned eagerly)."""
    network, channels, spatial = _tiny(name)
    image, boxes = example_inputs(channels, spatial, batch=2, seed=1, num_boxes=2, real_boxes=1)
    with torch.no_grad():
        guided = getattr(network, "decode_region", None) == "guided"
        if guided:  # traced, "guided" decodes the whole image (docs/design.md §6.1): the eager reference does too
            network.decode_region = "full"
        expected = network(image, boxes=boxes)
        if guided:
            network.decode_region = "guided"
        if hasattr(network, "plan_decoding"):
            assert network.plan_decoding(boxes) == network.last_decode_window
        torch._dynamo.reset()
        with torch._dynamo.config.patch(**COMPILE_CONFIG):  # Swin's data-dependent count of live parents
            compiled = torch.compile(network, backend="eager", fullgraph=True)(image, boxes=boxes)
    torch.testing.assert_close(compiled, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["unetr_prato", "transunet_prato", "swin_unetr_prato", "segformer_prato"])
def test_no_graph_break(name):
    network, channels, spatial = _tiny(name)
    image, boxes = example_inputs(channels, spatial, batch=2, seed=1, num_boxes=2, real_boxes=1)
    with torch.no_grad():
        network(image, boxes=boxes)
        network.plan_decoding(boxes)
        torch._dynamo.reset()
        with torch._dynamo.config.patch(**COMPILE_CONFIG):
            explained = torch._dynamo.explain(network)(image, boxes=boxes)
    assert (explained.graph_break_count, explained.graph_count) == (0, 1), [b.reason for b in explained.break_reasons]


def test_compiled_network_checks_inputs_and_reuses_the_compilation():
    network, channels, spatial = _tiny("unetr_prato")
    network.decode_region = "box"  # the eagerly planned window (guided decodes the whole image once traced)
    compiled = CompiledNetwork(network, backend="eager")
    image, boxes = example_inputs(channels, spatial, batch=2, seed=1)
    with torch.no_grad():
        torch._dynamo.reset()
        out = compiled(image, boxes)
        first = compiled._compiled
        assert compiled.compile_seconds is not None and compiled.compile_seconds > 0
        torch.testing.assert_close(compiled(image, boxes), network(image, boxes=boxes), rtol=1e-5, atol=1e-5)
        assert compiled._compiled is first  # compiled once, reused
        torch.testing.assert_close(out, network(image, boxes=boxes), rtol=1e-5, atol=1e-5)
        bad = image.clone()
        bad[0, 0, 0, 0] = float("nan")
        with pytest.raises(ValueError) as err:
            compiled(bad, boxes)
        assert error_text(err.value) == "ValueError: the image contains NaN or infinite values"
        outside = boxes.clone()
        outside[0, 0] = torch.tensor([100.0, 100.0, 120.0, 120.0])
        with pytest.raises(ValueError, match="lies outside the image of shape"):
            compiled(image, outside)


def test_compiled_network_passes_its_options_to_torch_compile(monkeypatch):
    seen = []

    def fake_compile(network, **kwargs):
        seen.append(kwargs)
        return network

    monkeypatch.setattr(torch, "compile", fake_compile)
    network, channels, spatial = _tiny("unetr_prato")
    image, boxes = example_inputs(channels, spatial, batch=1, seed=1)
    with torch.no_grad():
        CompiledNetwork(network, options={"freezing": True})(image, boxes)
        CompiledNetwork(network)(image, boxes)
    assert seen == [{"backend": "inductor", "fullgraph": True, "options": {"freezing": True}},
                    {"backend": "inductor", "fullgraph": True, "options": None}]


def test_compile_key_values():
    network = torch.nn.Identity()
    assert compiled_network(network, False) is network
    assert isinstance(compiled_network(network, True), CompiledNetwork)
    assert compiled_network(network, "inductor").backend == "inductor"
    for bad in ("tensorrt", 1, None):
        with pytest.raises(ValueError) as err:
            compiled_network(network, bad)
        expected = f"ValueError: compile must be one of (False, True, 'inductor', 'trt'), got {bad!r}"
        assert error_text(err.value) == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU message; the GPU route is tested below")
def test_trt_needs_a_gpu():
    with pytest.raises(RuntimeError, match="compile 'trt' needs a CUDA GPU"):
        compiled_network(torch.nn.Identity(), "trt")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="TensorRT needs a CUDA GPU (none on this machine)")
def test_trt_route_matches_eager_on_a_gpu(tmp_path):
    """``compile: "trt"`` through ``monai.networks.trt_compiler`` on a tiny PrATo UNETR (full decoding): the engine's
    logits are the eager ones within TensorRT's fp32 tolerance."""
    pytest.importorskip("tensorrt", reason="the TensorRT Python package is not installed")
    pytest.importorskip("onnx", reason="MONAI's trt_compiler exports through ONNX, which is not installed")
    torch.manual_seed(0)
    network = PrunedUNETR(in_channels=1, out_channels=2, img_size=32, spatial_dims=2, feature_size=4, hidden_size=16,
                          mlp_dim=32, num_heads=2, pruner="prato", prune_stages=[1]).cuda().eval()
    image, boxes = example_inputs(1, (32, 32), batch=2)
    image, boxes = image.cuda(), boxes.cuda()
    with torch.no_grad():
        expected = network(image, boxes=boxes)
        got = compiled_network(network, "trt", trt_path=str(tmp_path / "net"))(image, boxes=boxes)
    torch.testing.assert_close(got.float(), expected, atol=1e-3, rtol=1e-3)


def test_aoti_package_round_trip_keeps_the_input_checks(tmp_path):
    """The one real inductor build of these tests: a tiny UNETR's export, its AOTInductor package beside the ``.pt2``
    and ``load_exported(..., aoti=True)`` running it with the exported program's input checks."""
    torch.manual_seed(0)
    network = PrunedUNETR(in_channels=1, out_channels=2, img_size=32, spatial_dims=2, feature_size=4, hidden_size=16,
                          mlp_dim=32, num_heads=2, pruner="prato", prune_stages=[1]).eval()
    image, boxes = example_inputs(1, (32, 32), batch=2)
    program, _ = export_network(network, image, boxes)
    path = save_exported(program, str(tmp_path / "net.pt2"))
    assert save_aoti_package(program, path) == str(tmp_path / "net.aoti.pt2")
    module, _ = load_exported(path, (), aoti=True)
    with torch.no_grad():
        torch.testing.assert_close(module(image, boxes), network(image, boxes=boxes), rtol=1e-4, atol=1e-4)
    bad = image.clone()
    bad[1, 0, 3, 3] = float("inf")
    with pytest.raises(ValueError) as err:
        module(bad, boxes)
    assert error_text(err.value) == "ValueError: the image contains NaN or infinite values"
    with pytest.raises(FileNotFoundError, match="net2.aoti.pt2 does not exist"):
        load_exported(save_exported(program, str(tmp_path / "net2.pt2")), (), aoti=True)
