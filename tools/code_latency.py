"""Latency of the four backbones' paper-size PrATo networks under two versions of the code, interleaved.

Each version runs in a worker process of its own (``PYTHONPATH`` set to that version's checkout) that builds the
``network_def`` of ``bundles/<backbone>_prato/configs/train.json`` at the bundle's size (224 x 224, batch 1, one box
prompt, seed 0: the same weights in both) in evaluation mode. The parent asks the workers for one timed forward
pass at a time, alternating versions (and which goes first) in every round, so machine noise hits both alike;
it prints the median milliseconds per backbone and version and the ratio after / before::

    python tools/code_latency.py --before /path/to/base --after . --repeats 20 --threads 4 --out latency.json

Numbers taken on a shared machine are preliminary; compare only numbers from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from monai.bundle import ConfigParser

import prato_components
from prato_components.export import example_inputs

BACKBONES = ("unetr", "transunet", "segformer", "swin_unetr")


def worker(root: str, backbones: list[str], threads: int) -> None:
    """Build the networks under ``root`` (the ``prato_components`` this process imported, from ``PYTHONPATH``) and
    answer ``<backbone>`` lines with one forward pass's seconds."""
    package = os.path.dirname(os.path.abspath(prato_components.__file__))
    if package != os.path.join(root, "prato_components"):
        raise RuntimeError(f"the worker for {root} imported prato_components from {package}")
    torch.set_num_threads(threads)
    networks, inputs = {}, {}
    for backbone in backbones:
        configs = os.path.join(root, "bundles", f"{backbone}_prato", "configs")
        parser = ConfigParser()
        parser.read_config(os.path.join(configs, "train.json"))
        parser.read_meta(os.path.join(configs, "metadata.json"))
        parser["bundle_root"] = os.path.dirname(configs)
        torch.manual_seed(0)
        networks[backbone] = parser.get_parsed_content("network_def").eval()
        size = int(parser.get_parsed_content("image_size"))
        inputs[backbone] = example_inputs(parser.get_parsed_content("in_channels"), (size, size), num_boxes=1)
    print("ready", flush=True)
    with torch.inference_mode():
        for line in sys.stdin:
            backbone = line.strip()
            if not backbone:
                break
            image, boxes = inputs[backbone]
            start = time.perf_counter()
            networks[backbone](image, boxes=boxes)
            print(time.perf_counter() - start, flush=True)


def _start(root: str, backbones: list[str], threads: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(root), "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, os.path.abspath(__file__), "--worker", os.path.abspath(root), "--threads", str(threads),
               "--backbones", *backbones]
    process = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if process.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the worker for {root} did not start (see its error above)")
    return process


def _ask(process: subprocess.Popen, backbone: str) -> float:
    process.stdin.write(backbone + "\n")
    process.stdin.flush()
    return float(process.stdout.readline())


def compare(before: str, after: str, backbones: list[str], repeats: int, warmup: int, threads: int) -> dict:
    """Median seconds per backbone and version, measured interleaved."""
    workers = {"before": _start(before, backbones, threads), "after": _start(after, backbones, threads)}
    times = {backbone: {version: [] for version in workers} for backbone in backbones}
    try:
        for backbone in backbones:
            for _ in range(warmup):
                for process in workers.values():
                    _ask(process, backbone)
        for round_index in range(repeats):
            order = list(workers) if round_index % 2 == 0 else list(workers)[::-1]
            for backbone in backbones:
                for version in order:
                    times[backbone][version].append(_ask(workers[version], backbone))
    finally:
        for process in workers.values():
            process.stdin.close()
            process.wait()
    return {
        backbone: {version: statistics.median(values) for version, values in by_version.items()}
        for backbone, by_version in times.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", help="checkout of the first version (its prato_components and bundles)")
    parser.add_argument("--after", default=".", help="checkout of the second version (default: this one)")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each worker")
    parser.add_argument("--out", help="write the medians (seconds) as JSON here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.backbones, args.threads)
        return 0
    if not args.before:
        parser.error("--before is required")
    medians = compare(args.before, args.after, args.backbones, args.repeats, args.warmup, args.threads)
    print(f"{'backbone':<12} {'before ms':>10} {'after ms':>10} {'after/before':>13}")
    for backbone, by_version in medians.items():
        ratio = by_version["after"] / by_version["before"]
        print(f"{backbone:<12} {1e3 * by_version['before']:>10.1f} {1e3 * by_version['after']:>10.1f} {ratio:>13.3f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"threads": args.threads, "repeats": args.repeats, "seconds": medians}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
