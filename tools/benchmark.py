"""Compare networks: parameters, GFLOPs, kept token-block work (``kept_fraction``, 1 - token sparsity), CPU latency
and the pruners' own cost.

Networks come from presets (paper-size UNETR-2D configurations) or from bundles (their ``network_def``)::

    python tools/benchmark.py presets unetr,unetr_prato,unetr_prato_mask,unetr_prato_keep50
    python tools/benchmark.py bundles bundles/unetr_baseline,bundles/unetr_prato --image_size 224

The first network is the reference for the ratios; ``saving_in_latency`` is the latency saving divided by the
FLOPs saving (1.0: every FLOP saved shows up in wall-clock time). Latency: eval mode, ``torch.inference_mode()``,
warm-up, fixed thread count, median of interleaved repeats (docs/design.md §8). The pruners' own cost is timed with
forward hooks on ``network.pruners`` (and a ``completion`` module) during the same timed runs. ``--compile``
times ``torch.compile``d networks instead (no per-operation Python overhead; the pruners' time is not measured)::

    python tools/benchmark.py bundles bundles/segformer_baseline,bundles/segformer_prato --compile

``guided`` times each backbone's PrATo bundle decoding ``guided`` against ``box`` (no coarse head), with the coarse
pass finding nothing outside the box (a correct box) and finding a structure in the far corner (a misleading box)::

    python tools/benchmark.py guided --backbones unetr,transunet,swin_unetr,segformer --image_size 224

``compiled`` times one backbone's baseline, PrATo decoding the box and PrATo decoding the whole image, each eager and
compiled (:class:`~prato_components.export.CompiledNetwork`, what the bundle key ``compile`` runs), in one interleaved
run per batch size and thread count; it reports median latency, images/s, the FLOPs ratio and the compile time::

    python tools/benchmark.py compiled segformer --image_size 224 --batch_sizes "[1,8]" --threads "[1,2]"

``tokens`` times dense ViT blocks (MONAI's ``TransformerBlock``, no pruner, no gathers) on all tokens and on the kept
fraction of them: the most any token pruner can turn into time on this machine, per thread count::

    python tools/benchmark.py tokens --tokens 196 --keep 0.755 --threads "[1,2]"

``volume`` times whole-volume inference of 3D bundles with the prompt-aware sliding window (a box around one
organ), against the first bundle computing every window (MONAI's plain sliding window)::

    python tools/benchmark.py volume bundles/unetr3d_baseline,bundles/unetr3d_prato --volume_shape "[256,256,128]"
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Sequence

import fire
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from prato_components.bundle import trained_bundle_config  # noqa: E402
from prato_components.efficiency import count_flops, count_parameters, interleaved_latency  # noqa: E402
from prato_components.export import CompiledNetwork  # noqa: E402
from prato_components.pruners.base import keep_count  # noqa: E402

UNETR_2D = {
    "_target_": "prato_components.networks.PrunedUNETR",
    "in_channels": 1,
    "out_channels": 4,
    "img_size": 224,
    "spatial_dims": 2,
    "feature_size": 16,
}
PRESETS: dict[str, dict] = {
    "unetr": {**UNETR_2D, "pruner": None},
    "unetr_prato": {**UNETR_2D, "pruner": "prato", "prune_stages": [1, 2]},
    "unetr_prato_mask": {**UNETR_2D, "pruner": "prato", "prune_stages": [1, 2], "executor": "mask"},
    "unetr_prato_keep50": {**UNETR_2D, "pruner": "prato", "prune_stages": [1, 2], "pruner_kwargs": {"keep_ratio": 0.5}},
    "monai_unetr": {**{k: v for k, v in UNETR_2D.items() if k != "_target_"}, "_target_": "monai.networks.nets.UNETR"},
}


def central_box(spatial_shape: Sequence[int], fraction: float = 0.4) -> torch.Tensor:
    """A box covering the central ``fraction`` of each side, ``[1, 2D]`` in voxel coordinates."""
    lo = [s * (1 - fraction) / 2 for s in spatial_shape]
    hi = [s - low for s, low in zip(spatial_shape, lo)]
    return torch.tensor([lo + hi], dtype=torch.float32)


class PrunerTimer:
    """Sums the wall-clock time spent inside the pruner (and completion) modules of a network."""

    def __init__(self, network: nn.Module) -> None:
        self.seconds, self.calls, self._start, self._handles = 0.0, 0, {}, []
        modules = list(getattr(network, "pruners", {}).values())
        completion = getattr(network, "completion", None)
        if isinstance(completion, nn.ModuleDict):  # hierarchical backbones: one completion per tap
            modules.extend(completion.values())
        elif completion is not None:
            modules.append(completion)
        for module in modules:
            self._handles.append(module.register_forward_pre_hook(self._enter))
            self._handles.append(module.register_forward_hook(self._leave))

    def _enter(self, module, args):
        self._start[id(module)] = time.perf_counter()

    def _leave(self, module, args, output):
        self.seconds += time.perf_counter() - self._start.pop(id(module))
        self.calls += 1

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0


def _call(network: nn.Module, image: torch.Tensor, boxes: torch.Tensor, runner: Callable | None = None):
    """A no-argument call of ``network`` (through ``runner``, e.g. its compiled form, when given) with the boxes
    when its ``forward`` takes them."""
    runner = network if runner is None else runner
    if "boxes" in inspect.signature(network.forward).parameters:
        return lambda: runner(image, boxes=boxes)
    return lambda: runner(image)


def work_row(net: nn.Module, fn: Callable[[], object]) -> dict:
    """Parameters (M), GFLOPs, the pruners' (and completion's) GFLOPs and the kept fraction of one call ``fn``."""
    flops, per_module = count_flops(lambda: fn(), by_module=True)
    pruner_flops = sum(v for k, v in per_module.items() if k.count(".") == 2 and ".pruners." in k)
    pruner_flops += sum(v for k, v in per_module.items() if k.endswith(".completion"))
    pruner_flops += sum(v for k, v in per_module.items() if k.count(".") == 2 and ".completion." in k)  # one per tap
    kept = net.kept_fraction() if hasattr(net, "kept_fraction") else 1.0
    return {"params_M": count_parameters(net) / 1e6, "gflops": flops / 1e9, "pruner_gflops": pruner_flops / 1e9,
            "kept_fraction": kept}


def compare(
    networks: dict[str, nn.Module],
    image_shape: Sequence[int],
    batch_size: int = 1,
    box_fraction: float = 0.4,
    threads: int = 2,
    warmup: int = 3,
    repeats: int = 10,
    compile: bool = False,
) -> list[dict]:
    """Measure every network on the same input; returns one row per network (first = reference).

    ``compile``: time ``torch.compile``d networks (compiled during the warm-up, which is then at least one call);
    FLOPs are counted on the eager networks and the pruners' own time is not measured (``nan``).
    """
    torch.manual_seed(0)
    image = torch.randn(batch_size, *image_shape)
    boxes = central_box(image_shape[1:], box_fraction).expand(batch_size, -1).clone()
    rows, fns, timers = [], {}, {}
    for name, net in networks.items():
        net.eval()
        fn = _call(net, image, boxes)
        rows.append({"network": name, **work_row(net, fn)})
        if compile:
            fns[name] = _call(net, image, boxes, torch.compile(net))
        else:
            fns[name], timers[name] = fn, PrunerTimer(net)
    if compile:
        warmup = max(warmup, 1)
    if warmup > 0:
        interleaved_latency(fns, warmup=0, repeats=warmup, threads=threads)  # warm-up, untimed
    for timer in timers.values():
        timer.reset()
    latency = interleaved_latency(fns, warmup=0, repeats=repeats, threads=threads)
    runs = repeats
    reference = rows[0]
    for row in rows:
        name = row["network"]
        row["latency_ms"] = latency[name] * 1e3
        row["pruner_ms"] = timers[name].seconds / runs * 1e3 if name in timers else float("nan")
        row["flops_ratio"] = row["gflops"] / reference["gflops"]
        row["latency_ratio"] = latency[name] / latency[reference["network"]]
        own = name == reference["network"]
        row["pruner_share_of_ref_latency"] = 0.0 if own else row["pruner_ms"] / reference["latency_ms"]
        flops_saving = 1.0 - row["flops_ratio"]
        row["saving_in_latency"] = (1.0 - row["latency_ratio"]) / flops_saving if flops_saving > 1e-9 else float("nan")
    return rows


def _plain_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Rows as right-aligned text columns ``(key, format)`` under a header line."""
    cells = [[c for c, _ in columns]] + [[fmt.format(row[c]) for c, fmt in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def compare_compiled(
    networks: dict[str, nn.Module],
    image_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 8),
    threads: Sequence[int] = (1, 2),
    box_fraction: float = 0.4,
    warmup: int = 2,
    repeats: int = 10,
    backend: str = "inductor",
    options: dict | None = None,
) -> list[dict]:
    """Every network eager and compiled (``options``: ``torch.compile``'s), in one interleaved run per batch size and
    thread count; one row per network, batch size and thread count (first network = reference of the ratios). The
    compile (first call of each batch size) is timed apart, before the runs."""
    rows = []
    compiled = {name: CompiledNetwork(net.eval(), backend, options=options) for name, net in networks.items()}
    for batch in batch_sizes:
        torch.manual_seed(0)
        image = torch.randn(batch, *image_shape)
        boxes = central_box(image_shape[1:], box_fraction).expand(batch, -1).clone()
        fns, work, compile_s = {}, {}, {}
        for name, net in networks.items():
            fns[f"{name}/eager"] = _call(net, image, boxes)
            fns[f"{name}/compiled"] = _call(net, image, boxes, compiled[name])
            work[name] = work_row(net, fns[f"{name}/eager"])
            start = time.perf_counter()
            with torch.inference_mode():
                fns[f"{name}/compiled"]()
            compile_s[name] = time.perf_counter() - start
        reference = next(iter(networks))
        for count in threads:
            latency = interleaved_latency(fns, warmup=warmup, repeats=repeats, threads=count)
            for name in networks:
                eager, fast = latency[f"{name}/eager"], latency[f"{name}/compiled"]
                rows.append({
                    "network": name, "batch": batch, "threads": count, "gflops": work[name]["gflops"],
                    "flops_ratio": work[name]["gflops"] / work[reference]["gflops"],
                    "eager_ms": eager * 1e3, "compiled_ms": fast * 1e3,
                    "eager_images_s": batch / eager, "compiled_images_s": batch / fast,
                    "eager_ratio": eager / latency[f"{reference}/eager"],
                    "compiled_ratio": fast / latency[f"{reference}/compiled"],
                    "compile_s": compile_s[name],
                })
    return rows


def format_compiled_table(rows: list[dict]) -> str:
    """A plain-text table of :func:`compare_compiled` rows."""
    columns = [("network", "{}"), ("batch", "{}"), ("threads", "{}"), ("flops_ratio", "{:.3f}"),
               ("eager_ms", "{:.2f}"), ("compiled_ms", "{:.2f}"), ("eager_images_s", "{:.1f}"),
               ("compiled_images_s", "{:.1f}"), ("eager_ratio", "{:.3f}"), ("compiled_ratio", "{:.3f}"),
               ("compile_s", "{:.1f}")]
    return _plain_table(rows, columns)


def format_table(rows: list[dict]) -> str:
    """A plain-text table of :func:`compare` rows."""
    columns = [("network", "{}"), ("params_M", "{:.2f}"), ("gflops", "{:.2f}"), ("flops_ratio", "{:.3f}"),
               ("kept_fraction", "{:.3f}"), ("latency_ms", "{:.1f}"), ("latency_ratio", "{:.3f}"),
               ("saving_in_latency", "{:.2f}"), ("pruner_gflops", "{:.4f}"), ("pruner_ms", "{:.2f}"),
               ("pruner_share_of_ref_latency", "{:.2%}")]
    return _plain_table(rows, columns)


def _instantiate(config: dict) -> nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser({"network_def": config})
    return parser.get_parsed_content("network_def")


def _bundle_network(bundle_dir: str, overrides: dict) -> tuple[nn.Module, list[int]]:
    parser = trained_bundle_config(bundle_dir, None, overrides)  # the overrides win over a checkpoint's settings
    image = parser.get("_meta_#network_data_format#inputs#image")
    spatial = image["spatial_shape"]
    if "image_size" in overrides:
        spatial = [int(parser.get("image_size"))] * len(image["spatial_shape"])
    return parser.get_parsed_content("network_def"), [int(image["num_channels"]), *spatial]


def _setting(text: str) -> tuple[str, object]:
    """``key=value`` -> ``(key, value)``, the value read as JSON where it parses (numbers, null, lists), else text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"a bundle setting must read key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def organ_box(volume_shape: Sequence[int], organ: str = "spleen") -> torch.Tensor:
    """The box ``[1, 6]`` (voxels) around ``organ`` of the synthetic 3D cases (``ORGANS_3D``, mean position and size)
    in a volume of ``volume_shape``."""
    from prato_components.data import ORGANS_3D

    found = {name: (centre, radii) for name, _, centre, radii in ORGANS_3D}
    if organ not in found:
        raise ValueError(f"unknown organ {organ!r}; choose from {sorted(found)}")
    centre, radii = found[organ]
    half = [s / 2 for s in volume_shape]
    lo = [max(0.0, (1 + c - r) * h) for c, r, h in zip(centre, radii, half)]
    hi = [min(float(s), (1 + c + r) * h) for c, r, h, s in zip(centre, radii, half, volume_shape)]
    return torch.tensor([lo + hi], dtype=torch.float32)


def compare_volume(
    networks: dict[str, nn.Module],
    volume_shape: Sequence[int],
    in_channels: int,
    roi_size: int,
    box: torch.Tensor,
    overlap: float = 0.25,
    sw_batch_size: int = 1,
    margin: int = 16,
    threads: int = 2,
    warmup: int = 0,
    repeats: int = 1,
    flops: bool = True,
) -> list[dict]:
    """Whole-volume inference of every network with :class:`PromptedSlidingWindowInferer` and the box ``[1, 6]``;
    the first network is also run without a box (every window computed), which is the reference row."""
    from prato_components.engine import PromptedSlidingWindowInferer

    torch.manual_seed(0)
    image = torch.randn(1, in_channels, *volume_shape)
    inferer = PromptedSlidingWindowInferer(roi_size, sw_batch_size=sw_batch_size, overlap=overlap, margin=margin)
    first = next(iter(networks))
    runs = {f"{first} (every window)": (networks[first], None)}
    runs.update({f"{name} (box)": (net, box[None]) for name, net in networks.items()})
    rows, fns = [], {}
    for label, (net, boxes) in runs.items():
        net.eval()
        fns[label] = lambda net=net, boxes=boxes: inferer(image, net, boxes=boxes)
        with torch.inference_mode():
            gflops = count_flops(fns[label]) / 1e9 if flops else float("nan")
            if not flops:
                fns[label]()
        report = inferer.last_report
        rows.append({"run": label, "windows": f"{report.num_computed}/{report.total}", "gflops": gflops})
    if warmup > 0:
        interleaved_latency(fns, warmup=0, repeats=warmup, threads=threads)
    latency = interleaved_latency(fns, warmup=0, repeats=repeats, threads=threads)
    reference = rows[0]
    for row in rows:
        row["latency_s"] = latency[row["run"]]
        row["flops_ratio"] = row["gflops"] / reference["gflops"] if flops else float("nan")
        row["throughput_ratio"] = latency[reference["run"]] / latency[row["run"]]
    return rows


def force_coarse(net: nn.Module, far: bool) -> None:
    """Make the coarse pass of a guided network find nothing (``far=False``) or foreground in the last cell of its
    grid only (``far=True``), whatever its weights: what a trained head does with a correct box and with a box away
    from the structure (the structure in the far corner)."""

    def hook(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        fixed = torch.full_like(output, -20.0)
        fixed[:, 0] = 20.0
        if far:
            fixed[(slice(None), 1, *([-1] * (output.ndim - 2)))] = 40.0
        return fixed

    net.coarse_head.register_forward_hook(hook)


def format_volume_table(rows: list[dict]) -> str:
    """A plain-text table of :func:`compare_volume` rows."""
    columns = [("run", "{}"), ("windows", "{}"), ("gflops", "{:.1f}"), ("flops_ratio", "{:.3f}"),
               ("latency_s", "{:.2f}"), ("throughput_ratio", "{:.2f}")]
    return _plain_table(rows, columns)


class Benchmark:
    """Benchmark CLI (fire)."""

    def presets(self, names: str | Sequence[str] = "unetr,unetr_prato,unetr_prato_mask,unetr_prato_keep50",
                batch_size: int = 1, threads: int = 2, repeats: int = 10, warmup: int = 3, json_out: str | None = None,
                compile: bool = False) -> str:
        """Compare preset networks (paper-size UNETR-2D at 224x224; see ``PRESETS``)."""
        names = names.split(",") if isinstance(names, str) else list(names)
        unknown = [n for n in names if n not in PRESETS]
        if unknown:
            raise ValueError(f"unknown preset(s) {unknown}; choose from {sorted(PRESETS)}")
        torch.manual_seed(0)
        networks = {name: _instantiate(PRESETS[name]) for name in names}
        shape = [PRESETS[names[0]]["in_channels"]] + [PRESETS[names[0]]["img_size"]] * PRESETS[names[0]]["spatial_dims"]
        return self._report(networks, shape, batch_size, threads, repeats, warmup, json_out, compile)

    def bundles(self, dirs: str | Sequence[str], image_size: int | None = None, batch_size: int = 1, threads: int = 2,
                repeats: int = 10, warmup: int = 3, json_out: str | None = None, overrides: dict | None = None,
                compile: bool = False, box_fraction: float = 0.4) -> str:
        """Compare the ``network_def`` of bundles (the first is the reference) on one image with a central box covering
        ``box_fraction`` of each side.

        ``overrides``: config keys set in every bundle, e.g. ``--overrides '{"variant": "b2"}'``. A bundle entry
        ``path@key=value[@key=value]`` sets keys for that entry alone (values read as JSON, else as text), so one
        bundle can be compared with variants of itself: ``bundles/segformer_prato@network_def#pruner=random``.
        """
        dirs = dirs.split(",") if isinstance(dirs, str) else list(dirs)
        overrides = dict(overrides or {})
        if image_size:
            overrides["image_size"] = image_size
        networks, shape = {}, None
        for entry in dirs:
            path, *settings = entry.split("@")
            torch.manual_seed(0)
            net, shape_d = _bundle_network(path, {**overrides, **dict(_setting(s) for s in settings)})
            networks["@".join([os.path.basename(os.path.normpath(path)), *settings])] = net
            shape = shape or shape_d
        return self._report(networks, shape, batch_size, threads, repeats, warmup, json_out, compile, box_fraction)

    def matrix(self, image_size: int = 224, box_fraction: float = 0.4) -> str:
        """The backbone x pruner table of every bundle (``tools/bundles.py`` ``PRUNERS_BY_BACKBONE``) at its
        defaults: GFLOPs, ratio to the backbone's baseline, kept fraction, the pruner's own GFLOPs (batch 1, a
        central box). FLOPs only; time a backbone's bundles with ``bundles``."""
        from tools.bundles import PRUNERS_BY_BACKBONE

        lines = ["| backbone | pruner | decode | GFLOPs | ratio to baseline | kept fraction | pruner GFLOPs |",
                 "|---|---|---|---|---|---|---|"]
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        for backbone, pruners in PRUNERS_BY_BACKBONE.items():
            reference = None
            for pruner in pruners:
                torch.manual_seed(0)
                net, shape = _bundle_network(os.path.join(root, "bundles", f"{backbone}_{pruner}"),
                                             {"image_size": image_size})
                net.eval()
                image = torch.randn(1, *shape)
                boxes = central_box(shape[1:], box_fraction)[None]
                row = work_row(net, _call(net, image, boxes))
                reference = reference or row["gflops"]
                region = getattr(net, "decode_region", "full")
                lines.append(f"| {backbone} | {pruner} | {region} | {row['gflops']:.2f} | "
                             f"{row['gflops'] / reference:.3f} | {row['kept_fraction']:.3f} | "
                             f"{row['pruner_gflops']:.4f} |")
        return "\n".join(lines)

    def guided(self, backbones: str | Sequence[str] = "unetr,transunet,swin_unetr,segformer", image_size: int = 224,
               threads: int = 2, repeats: int = 10, warmup: int = 3, box_fraction: float = 0.4) -> str:
        """Per backbone, its PrATo bundle decoding ``box`` without a coarse head (the reference), ``guided`` with a
        correct box (the coarse pass finds nothing outside it) and ``guided`` with a misleading box (the coarse pass
        finds a structure in the far corner, :func:`force_coarse`); a central box covering ``box_fraction`` of each
        side."""
        backbones = backbones.split(",") if isinstance(backbones, str) else list(backbones)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = []
        for backbone in backbones:
            bundle = os.path.join(root, "bundles", f"{backbone}_prato")
            networks, shape = {}, None
            for label, settings, far in (("box", {"decode_region": "box", "coarse_head": False}, None),
                                         ("guided, correct box", {}, False), ("guided, misleading box", {}, True)):
                torch.manual_seed(0)
                net, shape = _bundle_network(bundle, {"image_size": image_size, **settings})
                if far is not None:
                    force_coarse(net, far)
                networks[f"{backbone}_prato {label}"] = net
            out.append(self._report(networks, shape, 1, threads, repeats, warmup, None, box_fraction=box_fraction))
        return "\n\n".join(out)

    def compiled(self, backbone: str = "unetr", image_size: int = 224, batch_sizes: Sequence[int] = (1, 8),
                 threads: Sequence[int] = (1, 2), repeats: int = 10, warmup: int = 2, box_fraction: float = 0.4,
                 overrides: dict | None = None, backend: str = "inductor", json_out: str | None = None,
                 options: dict | None = None) -> str:
        """``backbone``'s baseline, PrATo decoding the box and PrATo decoding the whole image (its
        ``<backbone>_baseline`` and ``<backbone>_prato`` bundles), eager and compiled (:func:`compare_compiled`;
        ``options``: inductor's, e.g. ``'{"freezing": True}'``, a Python literal)."""
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        entries = {"baseline": ("baseline", {}), "prato_box": ("prato", {"decode_region": "box"}),
                   "prato_full": ("prato", {"decode_region": "full"})}
        networks, shape = {}, None
        for name, (pruner, settings) in entries.items():
            torch.manual_seed(0)
            net, shape_d = _bundle_network(os.path.join(root, "bundles", f"{backbone}_{pruner}"),
                                           {"image_size": image_size, **dict(overrides or {}), **settings})
            networks[name], shape = net, shape or shape_d
        rows = compare_compiled(networks, shape, list(batch_sizes), list(threads), box_fraction, warmup, repeats,
                                backend, options)
        if json_out:
            with open(json_out, "w") as f:
                json.dump(rows, f, indent=2)
        header = (f"{backbone}, input [B, {', '.join(map(str, shape))}], central box {box_fraction:g} of each side, "
                  f"repeats={repeats}, compiled: torch.compile({backend!r}, fullgraph=True"
                  f"{f', options={options}' if options else ''}), torch {torch.__version__}")
        return header + "\n" + format_compiled_table(rows)

    def tokens(self, tokens: int = 196, keep: float = 0.755, hidden_size: int = 768, mlp_dim: int = 3072,
               num_heads: int = 12, depth: int = 12, threads: Sequence[int] = (1, 2), repeats: int = 10,
               warmup: int = 3, compile: bool = True) -> str:
        """``depth`` dense ViT blocks on ``tokens`` tokens against the same blocks on the ``keep_count(tokens, keep)``
        that the pruners keep (batch 1): per thread count the median latencies, the latency ratio, the FLOPs ratio and
        the realization (time saved / FLOPs saved), which bounds what a token pruner that keeps ``keep`` of the tokens
        realizes."""
        from monai.networks.blocks import TransformerBlock

        torch.manual_seed(0)
        blocks = nn.Sequential(*[TransformerBlock(hidden_size, mlp_dim, num_heads) for _ in range(depth)]).eval()
        run = torch.compile(blocks, fullgraph=True) if compile else blocks
        kept = keep_count(tokens, keep)
        inputs = {"all": torch.randn(1, tokens, hidden_size), "kept": torch.randn(1, kept, hidden_size)}
        flops = {name: count_flops(lambda x=x: blocks(x)) for name, x in inputs.items()}
        lines = [f"{depth} x TransformerBlock({hidden_size}, {mlp_dim}, {num_heads}), {tokens} -> {kept} tokens, "
                 f"{'compiled' if compile else 'eager'}, repeats={repeats}, torch {torch.__version__}",
                 "| threads | ms all | ms kept | latency ratio | FLOPs ratio | realization |",
                 "|---|---|---|---|---|---|"]
        for count in threads:
            seconds = interleaved_latency({name: (lambda x=x: run(x)) for name, x in inputs.items()}, warmup=warmup,
                                          repeats=repeats, threads=count)
            ratio, flops_ratio = seconds["kept"] / seconds["all"], flops["kept"] / flops["all"]
            lines.append(f"| {count} | {1e3 * seconds['all']:.1f} | {1e3 * seconds['kept']:.1f} | {ratio:.3f} | "
                         f"{flops_ratio:.3f} | {(1 - ratio) / (1 - flops_ratio):.2f} |")
        return "\n".join(lines)

    def volume(self, dirs: str | Sequence[str] = "bundles/unetr3d_baseline,bundles/unetr3d_prato",
               volume_shape: Sequence[int] = (256, 256, 128), image_size: int | None = None, organ: str = "spleen",
               overlap: float = 0.25, sw_batch_size: int = 1, margin: int = 16, in_channels: int = 1,
               out_channels: int = 14, threads: int = 2, warmup: int = 0, repeats: int = 1, flops: bool = True,
               json_out: str | None = None, overrides: dict | None = None, coarse_finds: str | None = None) -> str:
        """Whole-volume inference of 3D bundles (the first is the reference, also run on every window) with the
        prompt-aware sliding window and a box around ``organ`` (its mean position in the synthetic 3D data): windows
        computed, GFLOPs, latency and the throughput ratio to the reference's every-window run. Random weights and
        a random volume (the work does not depend on them); ``in_channels`` / ``out_channels`` default to BTCV's.
        ``coarse_finds`` (``nothing`` | ``everywhere``): what the coarse pass of the guided networks finds in every
        window (:func:`force_coarse`): a correct box, and the bound of a misleading one (every window computed)."""
        dirs = dirs.split(",") if isinstance(dirs, str) else list(dirs)
        overrides = {"in_channels": in_channels, "out_channels": out_channels, **dict(overrides or {})}
        if image_size:
            overrides["image_size"] = image_size
        networks, roi = {}, None
        for entry in dirs:
            path, *settings = entry.split("@")
            torch.manual_seed(0)
            net, shape = _bundle_network(path, {**overrides, **dict(_setting(s) for s in settings)})
            if coarse_finds is not None and getattr(net, "decode_region", None) == "guided":
                force_coarse(net, {"nothing": False, "everywhere": True}[coarse_finds])
            networks["@".join([os.path.basename(os.path.normpath(path)), *settings])] = net
            roi = roi or shape[1]
        box = organ_box(volume_shape, organ)
        rows = compare_volume(networks, list(volume_shape), in_channels, roi, box, overlap, sw_batch_size, margin,
                              threads, warmup, repeats, flops)
        if json_out:
            with open(json_out, "w") as f:
                json.dump(rows, f, indent=2)
        header = (f"volume [1, {in_channels}, {', '.join(map(str, volume_shape))}], windows {roi}^3, "
                  f"overlap {overlap}, "
                  f"box around the {organ} {[round(v, 1) for v in box[0].tolist()]} + {margin} voxels, "
                  f"threads={threads}, repeats={repeats}, torch {torch.__version__}")
        return header + "\n" + format_volume_table(rows)

    @staticmethod
    def _report(networks, shape, batch_size, threads, repeats, warmup, json_out, compile=False,
                box_fraction=0.4) -> str:
        rows = compare(networks, shape, batch_size=batch_size, box_fraction=box_fraction, threads=threads,
                       repeats=repeats, warmup=warmup, compile=compile)
        if json_out:
            with open(json_out, "w") as f:
                json.dump(rows, f, indent=2)
        header = (f"input [{batch_size}, {', '.join(map(str, shape))}], central box {box_fraction:g} of each side, "
                  f"threads={threads}, repeats={repeats}, torch {torch.__version__}")
        header += ", torch.compile" if compile else ", eager"
        return header + "\n" + format_table(rows)


if __name__ == "__main__":
    fire.Fire(Benchmark)
