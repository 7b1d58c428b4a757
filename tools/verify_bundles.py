"""Verify the bundles the way MONAI users consume them: files, metadata, network I/O, export, a tiny run.

    python tools/verify_bundles.py run                               # every bundle under bundles/
    python tools/verify_bundles.py run --names unetr_prato,unetr_stp # a chosen list
    python tools/verify_bundles.py run --full_size True              # also verify_net_in_out at the shipped size
    python tools/verify_bundles.py export bundles/unetr_prato models/model.pt /tmp/unetr_prato.pt2

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

from prato_components.verification import export, verify_bundles  # noqa: E402

BUNDLES_DIR = os.path.join(ROOT, "bundles")
SCHEMA = os.path.join(ROOT, "schemas", "meta_schema.json")


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

    def export(self, bundle_dir: str, checkpoint: str, filepath: str, **overrides) -> str:
        return export(bundle_dir, checkpoint, filepath, **overrides)


if __name__ == "__main__":
    fire.Fire(CLI)
