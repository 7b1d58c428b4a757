"""Every generated file of a bundle, and the ``generate`` / ``check`` / ``list`` command line."""

from __future__ import annotations

import json
import os
import re

from prato_components.verification import CONFIG_CHAINS

from .configs import evaluate_config, inference_config, multi_gpu_config, train_config
from .configs_3d import evaluate_config_3d, inference_config_3d, train_config_3d
from .metadata import metadata, metadata_3d
from .order import forward_references
from .spec import ALL_BUNDLES, BUNDLES_3D, ROOT
from .templates import LICENSE, LOGGING_CONF, readme

# a work-item number ("issue" followed by digits, as a word or in a file name): generated files name subjects
WORK_ITEM = re.compile(r"issue[ _-]?\d", re.IGNORECASE)


def bundle_files(name: str) -> dict[str, str]:
    """Relative path -> content of every generated file of bundle ``name``."""

    def dump(obj) -> str:
        return json.dumps(obj, indent=4) + "\n"

    three_d = name in BUNDLES_3D
    return {
        "configs/metadata.json": dump(metadata_3d(name) if three_d else metadata(name)),
        "configs/train.json": dump(train_config_3d(name) if three_d else train_config(name)),
        "configs/evaluate.json": dump(evaluate_config_3d(name) if three_d else evaluate_config(name)),
        "configs/inference.json": dump(inference_config_3d(name) if three_d else inference_config(name)),
        "configs/multi_gpu_train.json": dump(multi_gpu_config(name)),
        "configs/logging.conf": LOGGING_CONF,
        "docs/README.md": readme(name),
        "LICENSE": LICENSE,
    }


def reading_order_problems(name: str) -> list[str]:
    """:func:`forward_references` of every config chain of bundle ``name`` (as generated)."""
    files = bundle_files(name)
    problems = []
    for chain in CONFIG_CHAINS.values():
        configs = [json.loads(files[f"configs/{file}"]) for file in chain]
        problems += forward_references(configs, [f"{name}/configs/{file}" for file in chain])
    return sorted(set(problems))


class Bundles:
    """Generate / check the bundles (fire CLI)."""

    def list(self) -> list[str]:
        return list(ALL_BUNDLES)

    def generate(self, out: str = os.path.join(ROOT, "bundles"), names: str | None = None) -> str:
        chosen = ALL_BUNDLES if names is None else names.split(",")
        for name in chosen:
            for rel, content in bundle_files(name).items():
                path = os.path.join(out, name, rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(content)
        return f"wrote {len(chosen)} bundles to {out}"

    def check(self, out: str = os.path.join(ROOT, "bundles")) -> str:
        work_items = [f"{name}/{rel}" for name in ALL_BUNDLES for rel, content in bundle_files(name).items()
                      if WORK_ITEM.search(content)]
        if work_items:
            raise SystemExit(f"generated files name a work item (issue number): {work_items}")
        unordered = [problem for name in ALL_BUNDLES for problem in reading_order_problems(name)]
        if unordered:
            raise SystemExit("configs that use a key before defining it (reorder the templates in tools/bundlegen): "
                             + "; ".join(unordered))
        stale = []
        for name in ALL_BUNDLES:
            for rel, content in bundle_files(name).items():
                path = os.path.join(out, name, rel)
                if not os.path.exists(path) or open(path).read() != content:
                    stale.append(os.path.join(name, rel))
        if stale:
            raise SystemExit(f"bundles differ from tools/bundlegen (run `python tools/bundles.py generate`): {stale}")
        return f"{len(ALL_BUNDLES)} bundles match the specification"
