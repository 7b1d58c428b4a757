"""Bit-identical behaviour of every bundle's tiny network across a code change.

``dump OUT`` builds the tiny network of every bundle (``network_def`` of ``train.json`` with the tiny overrides of
:func:`prato_components.verification.tiny_overrides`, seed 0) and saves, per bundle, to ``OUT/<bundle>.pt``, for the
bundle's own executor and fill and for the full-length reference executor with ``fill="zero"`` (:data:`VARIANTS`):

- in training mode on a seeded image batch with box prompts: the logits, the gradient of a fixed random projection
  of the logits (plus the pruners' side loss) with respect to the input and to every parameter, the token and
  block reports and the side terms;
- in evaluation mode: the logits and reports of the same batch with and without boxes.

``compare A B`` compares two dumps tensor by tensor and prints the largest absolute difference per bundle; it exits
with status 1 unless every tensor is exactly equal (same shape, dtype and values).

Run it once per code version, each with its own ``PYTHONPATH`` (the package the dump should use)::

    PYTHONPATH=/path/to/base python tools/equivalence.py dump /tmp/eq_base
    PYTHONPATH=$PWD python tools/equivalence.py dump /tmp/eq_new
    python tools/equivalence.py compare /tmp/eq_base /tmp/eq_new

The bundles are read beside the imported ``prato_components`` (``--bundles`` to choose).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import torch
from monai.bundle import ConfigParser

import prato_components
from prato_components.export import example_inputs
from prato_components.verification import find_bundles, spatial_dims, split_bundle_name, tiny_overrides, tiny_window_3d

BATCH = 2
FULL_LENGTH = {"segformer": "mask"}  # the full-length reference executor per backbone (default: attention_mask)
VARIANTS = ("bundle", "full_length_zero")


def _plain(value):
    """Reports and tensors as nested dicts/lists of CPU tensors and plain values (comparable across versions)."""
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _reports(network) -> dict:
    return {
        "token_report": _plain(getattr(network, "token_report", [])),
        "block_report": _plain(getattr(network, "block_report", [])),
        "window_report": _plain(getattr(network, "window_report", [])),
        "aux_loss": _plain(getattr(network, "aux_loss", None)),
        "aux_logits": _plain(getattr(network, "aux_logits", [])),
        # the grid size the network reports (named num_tokens before the pruning settings were gathered)
        "num_tokens": int(next((getattr(network, n) for n in ("pruned_grid_tokens", "vit_tokens", "num_tokens")
                                if hasattr(network, n)), 0)),
        "kept_fraction": float(network.kept_fraction()),
    }


def tiny_network(bundle_dir: str, name: str, variant: str = "bundle"):
    """The bundle's ``network_def`` at its tiny size (seed 0), its input channels and spatial shape; ``variant``
    ``"full_length_zero"`` runs the full-length reference executor with ``fill="zero"``."""
    dims = spatial_dims(bundle_dir)
    size = tiny_window_3d(name) if dims == 3 else 64
    overrides = {k: v for k, v in tiny_overrides(name, size).items() if k not in ("num_workers", "batch_size")}
    if variant == "full_length_zero":
        overrides.update(executor=FULL_LENGTH.get(split_bundle_name(name)[0], "attention_mask"), fill="zero")
    parser = ConfigParser()
    parser.read_config(os.path.join(bundle_dir, "configs", "train.json"))
    parser.read_meta(os.path.join(bundle_dir, "configs", "metadata.json"))
    parser["bundle_root"] = bundle_dir
    io = parser.get("_meta_")["network_data_format"]
    if dims == 3:
        overrides.update(in_channels=io["inputs"]["image"]["num_channels"],
                         out_channels=io["outputs"]["pred"]["num_channels"])
    parser.update(overrides)
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    return network, parser.get_parsed_content("in_channels"), (size,) * dims


def dump_bundle(bundle_dir: str, name: str) -> dict:
    return {variant: dump_network(*tiny_network(bundle_dir, name, variant)) for variant in VARIANTS}


def dump_network(network, channels: int, shape: tuple) -> dict:
    image, boxes = example_inputs(channels, shape, batch=BATCH, seed=1, num_boxes=2, real_boxes=1)
    out: dict = {}
    network.train()
    torch.manual_seed(1)
    x = image.clone().requires_grad_(True)
    logits = network(x, boxes=boxes)
    weight = torch.randn(logits.shape, generator=torch.Generator().manual_seed(2))
    loss = (logits * weight).sum()
    if getattr(network, "aux_loss", None) is not None:
        loss = loss + network.aux_loss
    loss.backward()
    out["train"] = {
        "logits": logits.detach().clone(),
        "input_grad": x.grad.clone(),
        "param_grads": {n: p.grad.clone() for n, p in network.named_parameters() if p.grad is not None},
        "no_grad": sorted(n for n, p in network.named_parameters() if p.grad is None),
        **_reports(network),
    }
    network.eval()
    with torch.no_grad():
        for key, prompt in (("eval_boxes", boxes), ("eval_no_boxes", None)):
            torch.manual_seed(3)
            out[key] = {"logits": network(image, boxes=prompt).clone(), **_reports(network)}
    return out


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}/{key}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _flatten(item, f"{prefix}[{i}]").items()}
    return {prefix: value}


def compare(first: dict, second: dict) -> tuple[float, list[str]]:
    """The largest absolute difference over all tensors and the entries that are not exactly equal."""
    a, b = _flatten(first), _flatten(second)
    problems = [f"{k}: only in one dump" for k in sorted(set(a) ^ set(b))]
    worst = 0.0
    for key in sorted(set(a) & set(b)):
        x, y = a[key], b[key]
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            if x.shape != y.shape or x.dtype != y.dtype:
                problems.append(f"{key}: {tuple(x.shape)} {x.dtype} vs {tuple(y.shape)} {y.dtype}")
                continue
            if x.numel():
                diff = (x.double() - y.double()).abs().max().item() if x.is_floating_point() else float((x != y).sum())
                worst = max(worst, diff)
            if not torch.equal(x, y):
                problems.append(f"{key}: not equal")
        elif x != y:
            problems.append(f"{key}: {x!r} vs {y!r}")
    return worst, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    dump = commands.add_parser("dump", help="dump every bundle's tiny network to OUT")
    dump.add_argument("out")
    dump.add_argument("--bundles", default=os.path.join(os.path.dirname(os.path.dirname(prato_components.__file__)),
                                                        "bundles"))
    dump.add_argument("--only", nargs="*", help="bundle names (default: all)")
    check = commands.add_parser("compare", help="compare two dumps; status 1 unless bit-identical")
    check.add_argument("first")
    check.add_argument("second")
    args = parser.parse_args(argv)
    torch.use_deterministic_algorithms(True)
    if args.command == "dump":
        os.makedirs(args.out, exist_ok=True)
        print(f"prato_components from {os.path.dirname(prato_components.__file__)}", flush=True)
        for name in args.only or find_bundles(args.bundles):
            torch.save(dump_bundle(os.path.join(args.bundles, name), name), os.path.join(args.out, f"{name}.pt"))
            print(f"dumped {name}", flush=True)
        return 0
    names = sorted(f.removesuffix(".pt") for f in os.listdir(args.first) if f.endswith(".pt"))
    missing = sorted(set(names) ^ {f.removesuffix(".pt") for f in os.listdir(args.second) if f.endswith(".pt")})
    failed = bool(missing)
    for name in missing:
        print(f"{name}: only in one dump")
    for name in names:
        if name in missing:
            continue
        first = torch.load(os.path.join(args.first, f"{name}.pt"), weights_only=False)
        second = torch.load(os.path.join(args.second, f"{name}.pt"), weights_only=False)
        worst, problems = compare(first, second)
        failed |= bool(problems)
        status = "identical" if not problems else f"DIFFERENT ({len(problems)}: {'; '.join(problems[:3])})"
        print(f"{name}: max abs diff {worst:g}, {status}")
    print("all bit-identical" if not failed else "NOT bit-identical")
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
