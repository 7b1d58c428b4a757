"""Seconds per interaction of the interactive protocol (a box, then corrective clicks) at a bundle's own size.

Builds a bundle's network (``network_def`` of its ``train.json``, fresh weights, seed 0, the click encoder's weights
set to random non-zero values so that each click changes the answer as a trained encoder would) and its evaluation
inferer (2D: the whole image; 3D: the prompt-aware sliding window), makes a synthetic image with two ellipsoid
structures, and runs :func:`~prato_components.engine.interactive_evaluation` (per structure its tight box, then
``--clicks`` clicks at the centre of the largest error) ``--repeats`` times, alternating a session that reuses work
between the clicks (``reuse``: the image-only work once; in 3D also the windows a click does not touch) with calls
afresh (``afresh``). Prints the median seconds of each step and its ratio to the first call (the box) of the same
run::

    python tools/click_latency.py --bundle unetr_prato --clicks 5 --repeats 3               # 224 x 224
    python tools/click_latency.py --bundle unetr3d_prato --shape "[160,160,96]" --repeats 1  # 96^3 windows

The image is random, so the answers are not segmentations worth a Dice; the work each call does is the bundle's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from prato_components.atomic import atomic_write_text  # noqa: E402
from prato_components.engine import interactive_evaluation  # noqa: E402
from prato_components.prompts.boxes import boxes_from_label  # noqa: E402
from tools.click_reuse import bundle_parser  # noqa: E402


def build(bundle: str) -> tuple[torch.nn.Module, object, int, tuple[int, ...]]:
    """The bundle's network (eval mode, random click weights), its evaluation inferer, its input channels and
    network input size."""
    parser = bundle_parser(bundle, ("train.json", "evaluate.json"))
    network = parser.get_parsed_content("network_def").eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in network.click_encoder.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    dims = int(parser.get("network_def", {}).get("spatial_dims", 2))
    size = (int(parser.get_parsed_content("image_size")),) * dims
    inferer = parser.get_parsed_content("evaluator#inferer")
    return network, inferer, int(parser.get_parsed_content("in_channels")), size


def synthetic_case(in_channels: int, shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """An image ``[1, C, *shape]`` and a label ``[*shape]`` with two ellipsoids (classes 1 and 2) in noise."""
    generator = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*(torch.arange(s, dtype=torch.float32) for s in shape), indexing="ij"))
    label = torch.zeros(shape, dtype=torch.long)
    size = torch.tensor(shape, dtype=torch.float32).reshape(-1, *(1,) * len(shape))
    for value, (centre, radius) in enumerate((((0.35,) * len(shape), 0.15), ((0.65,) * len(shape), 0.1)), 1):
        inside = (((grid - torch.tensor(centre).reshape(size.shape) * size) / (radius * size)) ** 2).sum(0) <= 1
        label[inside] = value
    image = label.float()[None, None] / 2 + 0.2 * torch.randn(1, in_channels, *shape, generator=generator)
    return image, label


def measure(bundle: str, clicks: int, repeats: int, shape: tuple[int, ...] | None,
            modes: tuple[str, ...] = ("afresh", "reuse")) -> dict:
    """Per step (box, click 1..N) the median seconds of each of ``modes`` (``afresh``, ``reuse``), over ``repeats``
    runs of the protocol on both structures."""
    network, inferer, in_channels, size = build(bundle)
    image, label = synthetic_case(in_channels, tuple(shape or size))
    boxes = boxes_from_label(label[None], per_class=True, classes=[1, 2])
    seconds: dict[str, list[list[float]]] = {mode: [] for mode in modes}
    calls: dict[str, int] = {}
    for _ in range(repeats):
        for mode in modes:
            records = interactive_evaluation(network, image, label, boxes, clicks, [1, 2], inferer,
                                             reuse=mode == "reuse")
            seconds[mode].extend(r.seconds for r in records if len(r.seconds) == clicks + 1)
            calls[mode] = sum(len(r.seconds) for r in records)
    steps = {mode: [statistics.median(run[step] for run in runs) for step in range(clicks + 1)] if runs else []
             for mode, runs in seconds.items()}
    return {"bundle": bundle, "image_shape": list(image.shape[2:]), "network_input": list(size), "clicks": clicks,
            "repeats": repeats, "threads": torch.get_num_threads(), "runs": {m: len(r) for m, r in seconds.items()},
            "seconds_per_step": steps,
            "ratio_to_first": {m: [s / v[0] for s in v] for m, v in steps.items() if v},
            "later_over_first": {m: statistics.mean(v[1:]) / v[0] for m, v in steps.items() if v}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="unetr_prato")
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shape", type=json.loads, default=None, help="image shape (default: the network input)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--modes", nargs="+", default=["afresh", "reuse"], choices=["afresh", "reuse"])
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = measure(args.bundle, args.clicks, args.repeats, args.shape, tuple(args.modes))
    print(f"{args.bundle}, image {result['image_shape']}, {args.threads} thread(s), runs {result['runs']}")
    print(f"{'step':<8} " + " ".join(f"{m + ' s':>10} {'ratio':>6}" for m in result["seconds_per_step"]))
    for step in range(args.clicks + 1):
        name = "box" if step == 0 else f"click {step}"
        print(f"{name:<8} " + " ".join(f"{v[step]:>10.3f} {result['ratio_to_first'][m][step]:>6.3f}"
                                       for m, v in result["seconds_per_step"].items()))
    print("clicks / box: " + ", ".join(f"{m} {v:.3f}" for m, v in result["later_over_first"].items()))
    if args.out:
        atomic_write_text(json.dumps(result, indent=1), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
