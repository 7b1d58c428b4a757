"""Verify the bundles the way MONAI users consume them: files, metadata, network I/O, export, a tiny run.

    python tools/verify_bundles.py run                               # every bundle under bundles/
    python tools/verify_bundles.py run --names unetr_prato,unetr_stp # a chosen list
    python tools/verify_bundles.py run --full_size True              # also verify_net_in_out at the shipped size
    python tools/verify_bundles.py export bundles/unetr_prato models/model.pt /tmp/unetr_prato.pt2
    python tools/verify_bundles.py model_zoo                         # the MONAI Model Zoo's data-shape check

The checks are :mod:`prato_components.verification` (each one a function there); this is their command line, on
this repository's ``bundles/`` with its ``schemas/meta_schema.json``.
"""

from __future__ import annotations

import json
import os
import sys

import fire

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from prato_components.verification import export, find_bundles, verify_bundles  # noqa: E402

BUNDLES_DIR = os.path.join(ROOT, "bundles")
SCHEMA = os.path.join(ROOT, "schemas", "meta_schema.json")


def model_zoo_shape_check(bundle_dir: str, device: str = "cpu") -> None:
    """The MONAI Model Zoo's data-shape check of a bundle (its ``ci/verify_bundle.py``): ``verify_net_in_out`` on
    ``network_def`` of ``configs/inference.json`` with the bundle's metadata and ``bundle_root``, fresh weights and
    nothing else: no data folder, no overrides (``device`` only, where the Zoo takes the first GPU)."""
    import torch
    from monai.bundle import verify_net_in_out

    with torch.no_grad():
        verify_net_in_out(net_id="network_def", meta_file=os.path.join(bundle_dir, "configs", "metadata.json"),
                          config_file=os.path.join(bundle_dir, "configs", "inference.json"), bundle_root=bundle_dir,
                          device=device)


class CLI:
    """Verify bundles (fire CLI)."""

    def run(self, names: str | None = None, dataset_dir: str | None = None, work_dir: str | None = None,
            full_size: bool = False, torchscript: bool = False, bundles_dir: str = BUNDLES_DIR) -> None:
        chosen = names.split(",") if isinstance(names, str) else names
        report = verify_bundles(bundles_dir, chosen, dataset_dir=dataset_dir, work_dir=work_dir, full_size=full_size,
                                torchscript=torchscript, schema=SCHEMA)
        print(json.dumps(report, indent=2))
        failed = [name for name, result in report.items() if "error" in result]
        if failed:
            raise SystemExit(f"verification failed for {failed}")

    def model_zoo(self, names: str | None = None, bundles_dir: str = BUNDLES_DIR, device: str = "cpu") -> str:
        chosen = names.split(",") if isinstance(names, str) else names or find_bundles(bundles_dir)
        for name in chosen:
            model_zoo_shape_check(os.path.join(bundles_dir, name), device)
        return f"{len(chosen)} bundles pass the Model Zoo's data-shape check"

    def export(self, bundle_dir: str, checkpoint: str, filepath: str, **overrides) -> str:
        return export(bundle_dir, checkpoint, filepath, **overrides)


if __name__ == "__main__":
    fire.Fire(CLI)
