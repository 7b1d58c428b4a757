"""One prepared GPU measurement of the bundles, with mixed precision (the bundles' ``amp``), in one process:

1. the machine: device name, CUDA, torch and MONAI versions;
2. a bundle check per backbone: its PrATo bundle trains two iterations (and validates) and evaluates one batch on
   the device with ``amp`` on, on a small synthetic ACDC-like data set;
3. inference images/s at batch 1 and 8 of each backbone x {baseline, PrATo (box), PrATo (full), STP, DynamicViT,
   random} at 224 x 224, and UNETR-3D windows at 96^3 (keep 0.9) and 128^3 (keep 0.75) for baseline, STP and
   PrATo, a backbone's rows timed interleaved (``prato_components.efficiency.interleaved_latency``);
4. a training step (forward, ``PrunedSegLoss``, backward, AdamW; autocast and a ``GradScaler`` as MONAI's trainer
   uses them) of the same rows: median time and peak memory.

Writes ``gpu_benchmark.json`` and a Markdown table (``--markdown_name``) to ``--out_dir``::

    python tools/gpu_benchmark.py run --out_dir gpu_results                 # CUDA, paper-size networks, < 10 min
    python tools/gpu_benchmark.py run --device cpu --size tiny --out_dir /tmp/gb   # the same path on a CPU, tiny
    python tools/gpu_benchmark.py run --device cpu --parts train --pruners baseline,prato_box --train_batch 2 \
        --train_batch_3d 1 --settings_3d '[[96,0.9]]' --threads 2   # CPU training step, float32 (amp off)

Autocast dtype: float16 on CUDA (MONAI's ``torch.autocast("cuda")`` default), bfloat16 on a CPU (``--amp True``;
off by default there, as in the bundles). Peak memory: on
CUDA ``torch.cuda.max_memory_allocated`` during the row's first step above what was allocated before it; on a CPU
the peak resident memory (``VmHWM``, reset through ``/proc/self/clear_refs``) of one step in a fresh subprocess
per row above its resident memory once the network, optimiser and batch exist (glibc's ``mmap`` threshold fixed
at 64 KiB, so freed tensors go back to the system and do not hide later peaks). Both include the optimiser's
state, created in that first step.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import fire
import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from prato_components.efficiency import interleaved_latency  # noqa: E402
from prato_components.verification import make_tiny_acdc, run_config, tiny_overrides  # noqa: E402
from tools.benchmark import _bundle_network, central_box  # noqa: E402

BACKBONES = ("unetr", "transunet", "swin_unetr", "segformer")
ROWS = {  # row -> (bundle pruner, overrides)
    "baseline": ("baseline", {}),
    "prato_box": ("prato", {"decode_region": "box"}),
    "prato_full": ("prato", {"decode_region": "full"}),
    "stp": ("stp", {}),
    "dynamicvit": ("dynamicvit", {}),
    "random": ("random", {}),
}
ROWS_3D = ("baseline", "stp", "prato_box")
SETTINGS_3D = ((96, 0.9), (128, 0.75))  # the STP paper's two settings: window side, keep ratio
CHANNELS_3D = {"in_channels": 1, "out_channels": 14}  # BTCV
SIZES = {"paper": {"image_size": 224, "settings_3d": SETTINGS_3D},
         "tiny": {"image_size": 64, "settings_3d": ((32, 0.9), (32, 0.75))}}


def environment(device: torch.device) -> dict:
    """The device and the library versions."""
    import monai

    info = {"device": str(device), "torch": torch.__version__, "monai": monai.__version__,
            "cuda_available": torch.cuda.is_available(), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info.update(name=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(),
                    memory_gib=round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1))
    else:
        info["name"] = "cpu"
    return info


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """The autocast a bundle's ``amp`` gives: float16 on CUDA (MONAI's default), bfloat16 on a CPU."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=amp)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def row_network(backbone: str, row: str, size: str, image_size: int | None = None,
                keep_ratio: float | None = None) -> tuple[nn.Module, list[int]]:
    """The ``network_def`` of the row's bundle (random weights) and its input shape ``[C, *spatial]``."""
    pruner, overrides = ROWS[row]
    overrides = dict(overrides)
    if size == "tiny":
        overrides.update({k: v for k, v in tiny_overrides(f"{backbone}_{pruner}").items()
                          if k not in ("num_workers", "batch_size")})
    if image_size is not None:
        overrides["image_size"] = image_size
    if backbone.endswith("3d"):
        overrides.update(CHANNELS_3D)
    if keep_ratio is not None and pruner != "baseline":
        overrides["keep_ratio"] = keep_ratio
    torch.manual_seed(0)
    return _bundle_network(os.path.join(ROOT, "bundles", f"{backbone}_{pruner}"), overrides)


def _inputs(shape: Sequence[int], batch: int, box_fraction: float, out_channels: int, device: torch.device):
    torch.manual_seed(1)
    image = torch.randn(batch, *shape, device=device)
    boxes = central_box(shape[1:], box_fraction).expand(batch, -1).clone()[:, None].to(device)
    label = torch.randint(0, out_channels, (batch, 1, *shape[1:]), device=device)
    return image, boxes, label


class TrainStep:
    """One training step of ``network`` on a fixed batch: autocast forward, ``PrunedSegLoss`` (Dice + CE and the
    pruners' side losses, as the bundles train), scaled backward, AdamW."""

    def __init__(self, network: nn.Module, image, boxes, label, device: torch.device, amp: bool) -> None:
        from monai.losses import DiceCELoss

        from prato_components.engine import PrunedSegLoss

        self.network, self.image, self.boxes, self.label = network.train(), image, boxes, label
        self.device, self.amp = device, amp
        self.loss = PrunedSegLoss(DiceCELoss(to_onehot_y=True, softmax=True), network)
        self.optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4, weight_decay=1e-5)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")

    def __call__(self) -> None:
        with torch.inference_mode(False), torch.enable_grad():  # interleaved_latency times in inference mode
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(self.device, self.amp):
                loss = self.loss(self.network(self.image, boxes=self.boxes), self.label)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        synchronize(self.device)


def _inference_call(network: nn.Module, image, boxes, device: torch.device, amp: bool) -> Callable[[], None]:
    def call() -> None:
        with autocast(device, amp):
            network(image, boxes=boxes)
        synchronize(device)

    return call


def cuda_step_memory(step: Callable[[], None], device: torch.device) -> float:
    """MiB allocated at the peak of ``step()`` above what was allocated before it."""
    synchronize(device)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def cpu_step_memory(step: Callable[[], None]) -> float:
    """MiB of peak resident memory during ``step()`` above the resident memory before it (Linux)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (the peak) to the current resident size
    before = _status_kib("VmRSS")
    step()
    return (_status_kib("VmHWM") - before) / 1024


def memory_row(spec_path: str) -> str:
    """(Subprocess entry) the CPU peak memory of one training step of the row described by the JSON file
    ``spec_path``, printed as JSON."""
    with open(spec_path) as f:
        s = json.load(f)
    torch.set_num_threads(s["threads"])
    device = torch.device("cpu")
    network, shape = row_network(s["backbone"], s["row"], s["size"], s["image_size"], s["keep_ratio"])
    step = TrainStep(network, *_inputs(shape, s["batch"], s["box_fraction"], s["out_channels"], device), device,
                     s["amp"])
    return json.dumps({"peak_mib": cpu_step_memory(step)})


def _cpu_memory_in_subprocess(spec: dict, work_dir: str) -> float:
    """:func:`memory_row` in a fresh Python process (fixed ``mmap`` threshold, see the module docstring)."""
    path = os.path.join(work_dir, "memory_row.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "memory_row", path], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def measure_group(group: str, backbone: str, rows: Sequence[str], size: str, device: torch.device, amp: bool,
                  parts: Sequence[str], batches: Sequence[int], train_batch: int, box_fraction: float,
                  warmup: int, repeats: int, threads: int | None, work_dir: str, image_size: int | None = None,
                  keep_ratio: float | None = None) -> list[dict]:
    """Inference images/s at each batch size and a training step (time, peak memory) of ``rows`` of one backbone,
    each measurement interleaved across the rows."""
    networks, shape = {}, None
    for row in rows:
        networks[row], shape = row_network(backbone, row, size, image_size, keep_ratio)
        networks[row].to(device)
    out_channels = CHANNELS_3D["out_channels"] if backbone.endswith("3d") else 4
    results = {row: {"group": group, "backbone": backbone, "row": row, "input": "x".join(map(str, shape[1:])),
                     "keep_ratio": None if row == "baseline" else keep_ratio or 0.75} for row in rows}
    if "inference" in parts:
        for batch in batches:
            image, boxes, _ = _inputs(shape, batch, box_fraction, out_channels, device)
            fns = {row: _inference_call(net.eval(), image, boxes, device, amp) for row, net in networks.items()}
            seconds = interleaved_latency(fns, warmup=warmup, repeats=repeats, threads=threads)
            for row in rows:
                results[row][f"images_per_s_b{batch}"] = batch / seconds[row]
    if "train" in parts:
        batch_data = _inputs(shape, train_batch, box_fraction, out_channels, device)
        steps = {row: TrainStep(net, *batch_data, device, amp) for row, net in networks.items()}
        for row, step in steps.items():
            if device.type == "cuda":
                results[row]["train_peak_mib"] = cuda_step_memory(step, device)
            else:
                spec = {"backbone": backbone, "row": row, "size": size, "image_size": image_size,
                        "keep_ratio": keep_ratio, "batch": train_batch, "box_fraction": box_fraction,
                        "out_channels": out_channels, "amp": amp, "threads": threads or torch.get_num_threads()}
                results[row]["train_peak_mib"] = _cpu_memory_in_subprocess(spec, work_dir)
        seconds = interleaved_latency(steps, warmup=warmup, repeats=repeats, threads=threads)
        for row in rows:
            results[row]["train_step_ms"] = seconds[row] * 1e3
            results[row]["train_batch"] = train_batch
    for network in networks.values():
        network.cpu()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return list(results.values())


def bundle_check(backbone: str, size: str, device: torch.device, work_dir: str) -> dict:
    """Train the backbone's PrATo bundle two iterations (one epoch, then its validation) and evaluate one batch,
    ``amp`` on, on the synthetic ACDC-like set; the seconds each took or the error."""
    name = f"{backbone}_prato"
    bundle_dir, root = os.path.join(ROOT, "bundles", name), os.path.join(work_dir, name)
    data = make_tiny_acdc(os.path.join(work_dir, "acdc"))
    overrides = {"dataset_dir": data, "amp": True, "device": f"$torch.device({str(device)!r})", "num_workers": 0,
                 "batch_size": 2, **(tiny_overrides(name) if size == "tiny" else {})}
    result = {"bundle": name, "amp": True}
    try:
        start = time.perf_counter()
        run_config(bundle_dir, "train", root, **overrides, epochs=1, **{"train#trainer#epoch_length": 2})
        result["train_s"] = time.perf_counter() - start
        start = time.perf_counter()
        run_config(bundle_dir, "evaluate", root, **overrides, latency_repeats=0, **{"evaluator#epoch_length": 1})
        result["evaluate_s"] = time.perf_counter() - start
        result["ok"] = True
    except Exception as error:  # reported in the table; the measurements still run
        result.update(ok=False, error=f"{type(error).__name__}: {error}")
    return result


def markdown(report: dict) -> str:
    """The Markdown tables of a :func:`run` report."""
    env = report["environment"]
    dtype = "float16" if env["device"].startswith("cuda") else "bfloat16"
    lines = [f"Device: {env['name']} ({env['device']}), torch {env['torch']}, MONAI {env['monai']}, "
             f"measured with amp {report['amp']}{f' ({dtype})' if report['amp'] else ''}, "
             f"size {report['size']}, central box {report['box_fraction']:g} of each side.", ""]
    if report["bundle_checks"]:
        lines += ["| bundle | train 2 iterations + validation (s) | evaluate 1 batch (s) | ok |", "|---|---|---|---|"]
        for c in report["bundle_checks"]:
            lines.append(f"| {c['bundle']} | {c.get('train_s', float('nan')):.1f} | "
                         f"{c.get('evaluate_s', float('nan')):.1f} | {'yes' if c['ok'] else c['error'][:80]} |")
        lines.append("")
    rows = report["rows"]
    if rows:
        batches = report["batches"]
        head = ["group", "row", "input", "keep"] + [f"images/s b{b}" for b in batches]
        head += [f"train step ms (b{report['train_batch']})", "train peak MiB"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            cells = [r["group"], r["row"], r["input"], "-" if r["keep_ratio"] is None else f"{r['keep_ratio']:g}"]
            cells += [f"{r[f'images_per_s_b{b}']:.1f}" if f"images_per_s_b{b}" in r else "-" for b in batches]
            cells += [f"{r['train_step_ms']:.1f}" if "train_step_ms" in r else "-",
                      f"{r['train_peak_mib']:.0f}" if "train_peak_mib" in r else "-"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run(device: str = "cuda", size: str = "paper", out_dir: str = "gpu_benchmark",
        markdown_name: str = "gpu_benchmark.md", parts: str | Sequence[str] = "check,inference,train",
        backbones: str | Sequence[str] = BACKBONES + ("unetr3d",), pruners: str | Sequence[str] = tuple(ROWS),
        amp: bool | None = None, batches: Sequence[int] = (1, 8),
        train_batch: int = 8, train_batch_3d: int = 2, box_fraction: float = 0.4, warmup: int | None = None,
        repeats: int | None = None, threads: int | None = None, settings_3d: Sequence | None = None) -> str:
    """Run the checks and measurements; writes ``<out_dir>/gpu_benchmark.json`` and ``<out_dir>/<markdown_name>``
    and returns the Markdown. ``pruners``: the rows (``baseline``, ``prato_box``, ``prato_full``, ``stp``,
    ``dynamicvit``, ``random``; UNETR-3D runs those of baseline, STP and PrATo (box)). Warm-up and repeats default to
    5 and 20 on CUDA, 1 and 3 on a CPU. ``amp``: as the bundles' default, on with CUDA (float16), off on a CPU (CPUs
    without native bfloat16 emulate it slowly); the bundle check always runs with ``amp`` on. ``settings_3d``:
    UNETR-3D's ``[[window side, keep ratio], ...]`` instead of the size's (paper: ``[[96, 0.9], [128, 0.75]]``)."""
    def names(value) -> list[str]:
        return value.split(",") if isinstance(value, str) else list(value)

    parts, backbones, pruners = names(parts), names(backbones), names(pruners)
    for value, known, what in ((parts, ("check", "inference", "train"), "part"), (pruners, ROWS, "row"),
                               (backbones, BACKBONES + ("unetr3d",), "backbone")):
        unknown = [v for v in value if v not in known]
        if unknown:
            raise ValueError(f"unknown {what}(s) {unknown}; choose from {list(known)}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {list(SIZES)}, got {size!r}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA is not available here; run with --device cpu")
    amp = dev.type == "cuda" if amp is None else amp
    warmup = warmup if warmup is not None else (5 if dev.type == "cuda" else 1)
    repeats = repeats if repeats is not None else (20 if dev.type == "cuda" else 3)
    os.makedirs(out_dir, exist_ok=True)
    report = {"environment": environment(dev), "amp": amp, "size": size, "box_fraction": box_fraction,
              "batches": list(batches), "train_batch": train_batch, "train_batch_3d": train_batch_3d,
              "warmup": warmup, "repeats": repeats, "bundle_checks": [], "rows": []}
    with tempfile.TemporaryDirectory() as work_dir:
        if "check" in parts:
            report["bundle_checks"] = [bundle_check(b, size, dev, work_dir) for b in backbones if b in BACKBONES]
        common = dict(size=size, device=dev, amp=amp, parts=parts, batches=batches, box_fraction=box_fraction,
                      warmup=warmup, repeats=repeats, threads=threads, work_dir=work_dir)
        for backbone in backbones:
            if backbone == "unetr3d":
                rows = [r for r in ROWS_3D if r in pruners]
                for side, keep in settings_3d or SIZES[size]["settings_3d"]:
                    report["rows"] += measure_group(f"unetr3d {side}^3", backbone, rows, **common,
                                                    train_batch=train_batch_3d, image_size=side, keep_ratio=keep)
            else:
                report["rows"] += measure_group(backbone, backbone, pruners, **common, train_batch=train_batch,
                                                image_size=SIZES[size]["image_size"])
    text = markdown(report)
    with open(os.path.join(out_dir, "gpu_benchmark.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(out_dir, markdown_name), "w") as f:
        f.write(text)
    return text


if __name__ == "__main__":
    fire.Fire({"run": run, "memory_row": memory_row})
