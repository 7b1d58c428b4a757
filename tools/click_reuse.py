"""What a ClickSession saves between the clicks on one image: FLOPs (exact) and CPU latency (preliminary on a shared
machine) of the four backbones' bundle networks, per click.

Each backbone's ``network_def`` of ``bundles/<backbone>_prato/configs/train.json`` is built at the bundle's size (224 x
224, batch 1, one box prompt, seed 0, evaluation mode, ``click_prompts`` true) and called three ways with two clicks
(a foreground click at the box centre, a background click inside the box): without clicks (``plain``), directly with
the clicks (``direct``), and as the next click of a :class:`~prato_components.networks.ClickSession` whose first
click already ran (``session``: the work before stage boundary 1 is reused, docs/design.md §6.2)::

    python tools/click_reuse.py --repeats 20 --threads 4 --out click_reuse.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from monai.bundle import ConfigParser

from prato_components.atomic import atomic_write_text
from prato_components.efficiency import count_flops, interleaved_latency
from prato_components.export import example_inputs
from prato_components.networks import ClickSession

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKBONES = ("unetr", "transunet", "segformer", "swin_unetr")


def bundle_parser(bundle: str, config_files: tuple[str, ...] = ("train.json",)) -> ConfigParser:
    """The configs ``config_files`` of ``bundles/<bundle>`` with its metadata, ``click_prompts`` on, and torch's
    seed set to 0 (so that the network built next from it has the same weights every time)."""
    configs = os.path.join(ROOT, "bundles", bundle, "configs")
    parser = ConfigParser()
    parser.read_config([os.path.join(configs, name) for name in config_files])
    parser.read_meta(os.path.join(configs, "metadata.json"))
    parser["bundle_root"] = os.path.dirname(configs)
    parser["click_prompts"] = True
    torch.manual_seed(0)
    return parser


def build(backbone: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The PrATo bundle's network of ``backbone`` (seed 0, eval mode) and its example image and box."""
    parser = bundle_parser(f"{backbone}_prato")
    network = parser.get_parsed_content("network_def").eval()
    size = int(parser.get_parsed_content("image_size"))
    image, boxes = example_inputs(parser.get_parsed_content("in_channels"), (size, size), num_boxes=1)
    return network, image, boxes.reshape(1, 1, -1)


def two_clicks(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A foreground click at the centre of the first box and a background click a quarter of the way in."""
    lo, hi = boxes[0, 0, :2], boxes[0, 0, 2:]
    points = torch.stack([(lo + hi) / 2, lo + (hi - lo) / 4])[None]
    return points, torch.tensor([[1, 0]])


def measure(backbone: str, repeats: int, warmup: int, threads: int) -> dict:
    """FLOPs and median seconds of ``plain``, ``direct`` and ``session`` for one backbone."""
    network, image, boxes = build(backbone)
    points, labels = two_clicks(boxes)
    session = ClickSession(network, image, boxes)
    session.segment(points[:, :1], labels[:, :1])  # the first click fills the session's cache
    calls = {
        "plain": lambda: network(image, boxes=boxes),
        "direct": lambda: network(image, boxes=boxes, points=points, point_labels=labels),
        "session": lambda: session.segment(points, labels),
    }
    flops = {name: count_flops(call) for name, call in calls.items()}
    seconds = interleaved_latency(calls, warmup=warmup, repeats=repeats, threads=threads)
    return {"flops": flops, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    results = {backbone: measure(backbone, args.repeats, args.warmup, args.threads) for backbone in args.backbones}
    print(f"{'backbone':<12} {'plain GF':>9} {'direct GF':>10} {'session GF':>11} {'saved':>6} "
          f"{'direct ms':>10} {'session ms':>11}")
    for backbone, result in results.items():
        flops, seconds = result["flops"], result["seconds"]
        saved = 1 - flops["session"] / flops["direct"]
        print(f"{backbone:<12} {flops['plain'] / 1e9:>9.2f} {flops['direct'] / 1e9:>10.2f} "
              f"{flops['session'] / 1e9:>11.2f} {saved:>6.1%} {1e3 * seconds['direct']:>10.1f} "
              f"{1e3 * seconds['session']:>11.1f}")
    if args.out:
        atomic_write_text(json.dumps({"threads": args.threads, "repeats": args.repeats, "results": results}, indent=1),
                          args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
