"""FLOPs, latency and parameter counts, shared by the benchmark tool, handlers and tests.

FLOPs come from torch's own ``FlopCounterMode`` (multiply-add = 2 FLOPs); no third-party counter.
Latency follows docs/design.md §8: eval mode, ``torch.inference_mode()``, warm-up, a fixed thread count, the
median of repeats, and networks compared in the same run with their runs interleaved.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

__all__ = ["count_flops", "count_parameters", "measure_latency", "interleaved_latency"]


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# torch's counter knows the CUDA attention kernels but not the CPU flash kernel that
# ``F.scaled_dot_product_attention`` dispatches to here; count it with torch's own SDPA formula.
_aten = torch.ops.aten
CPU_ATTENTION_FLOPS = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: Callable, *args, by_module: bool = False, **kwargs) -> int | tuple[int, dict[str, int]]:
    """FLOPs of one forward call ``model(*args, **kwargs)`` under ``torch.no_grad()``.

    Args:
        by_module: also return a dict ``{module name: FLOPs}`` (torch's hierarchical counts, top level first).
    """
    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)
    with torch.no_grad(), counter:
        model(*args, **kwargs)
    total = int(counter.get_total_flops())
    if not by_module:
        return total
    per_module = {name: int(sum(ops.values())) for name, ops in counter.get_flop_counts().items()}
    return total, per_module


def _time_once(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure_latency(fn: Callable[[], object], warmup: int = 3, repeats: int = 10, threads: int | None = None) -> float:
    """Median wall-clock seconds of ``fn()`` under ``torch.inference_mode()``."""
    return interleaved_latency({"fn": fn}, warmup=warmup, repeats=repeats, threads=threads)["fn"]


def interleaved_latency(
    fns: Mapping[str, Callable[[], object]],
    warmup: int = 3,
    repeats: int = 10,
    threads: int | None = None,
) -> dict[str, float]:
    """Median seconds of each callable, their runs interleaved (so machine noise hits them alike).

    Args:
        fns: name -> zero-argument callable (e.g. ``lambda: net(image, boxes)``).
        warmup: untimed calls of each before timing.
        repeats: timed rounds; in each round every callable runs once, in rotating order.
        threads: ``torch.set_num_threads`` during the measurement (restored afterwards).
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    names: Sequence[str] = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    try:
        with torch.inference_mode():
            for name in names:
                for _ in range(warmup):
                    fns[name]()
            for round_index in range(repeats):
                shift = round_index % len(names)
                for name in list(names[shift:]) + list(names[:shift]):
                    times[name].append(_time_once(fns[name]))
    finally:
        torch.set_num_threads(previous)
    return {name: statistics.median(values) for name, values in times.items()}
