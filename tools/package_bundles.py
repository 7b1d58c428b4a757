"""Pack bundles as deterministic zips for sharing, with a checksum index.

    python tools/package_bundles.py pack --out dist/bundles                       # every bundle under bundles/
    python tools/package_bundles.py pack --out dist/bundles --names unetr_prato   # a chosen list
    python tools/package_bundles.py check dist/bundles                            # re-hash against index.json

Each bundle becomes ``<name>_v<version>.zip`` in the MONAI bundle layout (``<name>/configs/...``,
``<name>/docs/README.md``, ``<name>/LICENSE``, ``<name>/models/...`` when the bundle folder holds weights,
``<name>/large_files.yml`` when present). Entries are sorted and carry a fixed timestamp and permissions, so the
same files always give the same bytes. ``index.json`` lists per bundle the file, version and sha256.

Download one back (MONAI's own command; ``file://`` URLs work offline)::

    python -m monai.bundle download --name unetr_prato --url file:///abs/dist/bundles/unetr_prato_v0.1.1.zip \\
        --bundle_dir ./downloaded
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile
from collections.abc import Sequence

import fire

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

__all__ = ["WEIGHT_SUFFIXES", "bundle_entries", "pack_bundle", "pack_bundles", "sha256", "check_index"]

WEIGHT_SUFFIXES = (".pt", ".ts", ".pt2", ".onnx")
# files of models/ that are training state or bookkeeping, not what a user downloads
SKIPPED_MODEL_FILES = ("last.pt", "best_metric.txt")
FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def _metadata(bundle_dir: str) -> dict:
    with open(os.path.join(bundle_dir, "configs", "metadata.json")) as f:
        return json.load(f)


def bundle_entries(bundle_dir: str) -> list[str]:
    """Relative paths packed for ``bundle_dir``, sorted: configs/, docs/, LICENSE, large_files.yml (if present) and
    the weights in models/ (``*.pt``, ``*.ts``, ``*.pt2``, ``*.onnx``; not the resume state ``last.pt``)."""
    entries = []
    for top in ("configs", "docs"):
        for folder, dirs, files in os.walk(os.path.join(bundle_dir, top)):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
            entries += [os.path.relpath(os.path.join(folder, f), bundle_dir) for f in files if not f.startswith(".")]
    for single in ("LICENSE", "large_files.yml", "large_files.yaml", "large_files.json"):
        if os.path.isfile(os.path.join(bundle_dir, single)):
            entries.append(single)
    models = os.path.join(bundle_dir, "models")
    if os.path.isdir(models):
        entries += [
            os.path.join("models", f) for f in os.listdir(models)
            if f.endswith(WEIGHT_SUFFIXES) and f not in SKIPPED_MODEL_FILES and not f.startswith(".")
        ]
    return sorted(e.replace(os.sep, "/") for e in entries)


def pack_bundle(bundle_dir: str, out_dir: str) -> str:
    """Write ``<out_dir>/<name>_v<version>.zip`` for ``bundle_dir``; the same files give the same bytes."""
    meta = _metadata(bundle_dir)
    name, version = meta["name"], meta["version"]
    missing = [f for f in ("configs/metadata.json", "LICENSE", "docs/README.md")
               if not os.path.isfile(os.path.join(bundle_dir, f))]
    if missing:
        raise FileNotFoundError(f"bundle {bundle_dir} lacks {missing}")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}_v{version}.zip")
    tmp = path + ".tmp"
    with zipfile.ZipFile(tmp, "w") as archive:
        for rel in bundle_entries(bundle_dir):
            info = zipfile.ZipInfo(f"{name}/{rel}", date_time=FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # unix, so the permissions below are read the same everywhere
            info.external_attr = 0o644 << 16
            with open(os.path.join(bundle_dir, rel), "rb") as f:
                archive.writestr(info, f.read(), compresslevel=9)
    os.replace(tmp, path)
    return path


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pack_bundles(out_dir: str, names: Sequence[str] | None = None,
                 bundles_dir: str = os.path.join(ROOT, "bundles")) -> dict:
    """Pack ``names`` (default: every folder of ``bundles_dir`` with configs/metadata.json) and write
    ``<out_dir>/index.json``: ``{name: {"version", "file", "sha256", "size"}}``."""
    if names is None:
        names = sorted(n for n in os.listdir(bundles_dir)
                       if os.path.isfile(os.path.join(bundles_dir, n, "configs", "metadata.json")))
    index = {}
    for name in sorted(names):
        path = pack_bundle(os.path.join(bundles_dir, name), out_dir)
        index[name] = {"version": _metadata(os.path.join(bundles_dir, name))["version"],
                       "file": os.path.basename(path), "sha256": sha256(path), "size": os.path.getsize(path)}
    with open(os.path.join(out_dir, "index.json"), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
        f.write("\n")
    return index


def check_index(out_dir: str) -> dict:
    """Re-hash every zip listed in ``out_dir/index.json``; ``ValueError`` naming any mismatch or missing file."""
    with open(os.path.join(out_dir, "index.json")) as f:
        index = json.load(f)
    bad = {}
    for name, entry in index.items():
        path = os.path.join(out_dir, entry["file"])
        if not os.path.isfile(path):
            bad[name] = "missing"
        elif sha256(path) != entry["sha256"]:
            bad[name] = "sha256 mismatch"
    if bad:
        raise ValueError(f"bundle archives in {out_dir} do not match index.json: {bad}")
    return index


class CLI:
    """Pack / check bundle archives (fire CLI)."""

    def pack(self, out: str = os.path.join(ROOT, "dist", "bundles"), names: str | None = None,
             bundles_dir: str = os.path.join(ROOT, "bundles")) -> str:
        chosen = names.split(",") if isinstance(names, str) else names
        index = pack_bundles(out, chosen, bundles_dir)
        return f"packed {len(index)} bundles to {out} (index.json)"

    def check(self, out: str = os.path.join(ROOT, "dist", "bundles")) -> str:
        return f"{len(check_index(out))} archives match index.json"


if __name__ == "__main__":
    fire.Fire(CLI)
