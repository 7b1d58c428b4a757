"""Pack bundles as deterministic zips for sharing, with a checksum index.

    python tools/package_bundles.py pack --out dist/bundles                       # every bundle under bundles/
    python tools/package_bundles.py pack --out dist/bundles --names unetr_prato   # a chosen list
    python tools/package_bundles.py pack --out dist/bundles --weights final       # best (default) | final | all
    python tools/package_bundles.py check dist/bundles                            # re-hash against index.json

Each bundle becomes ``<name>_v<version>.zip`` in the MONAI bundle layout (``<name>/configs/...``,
``<name>/docs/README.md``, ``<name>/LICENSE``, ``<name>/models/...`` when the bundle folder holds weights,
``<name>/large_files.yml`` when present). Entries are sorted and carry a fixed timestamp and permissions, so the
same files always give the same bytes. ``index.json`` lists per bundle the file, version, sha256, size and
``weights``: which file of the bundle folder each packed checkpoint came from.

Weights: training writes two checkpoints, ``models/model.pt`` (best validation metric) and ``models/model_final.pt``
(last epoch), each as large as the network; a zip carries **one** of them, always as ``models/model.pt`` (the
``ckpt_path`` every config of the bundle loads by default, so a downloaded bundle runs without overrides):

- ``weights="best"`` (default): ``model.pt``; a bundle folder without ``model.pt`` but with ``model_final.pt``
  ships ``model_final.pt`` under the name ``models/model.pt`` (logged, and recorded in ``index.json``);
- ``weights="final"``: ``model_final.pt`` under the name ``models/model.pt`` (``FileNotFoundError`` when the folder
  has ``model.pt`` but no ``model_final.pt``: an explicit request is not substituted);
- ``weights="all"``: every ``*.pt`` of ``models/`` under its own name (both checkpoints).

The resume state ``last.pt`` is never packed; a bundle folder without checkpoints is packed without them; the
other weight formats (``*.pt2``, ``*.ts``, ``*.onnx``: exports) are packed with every choice.

Download one back (MONAI's own command; ``file://`` URLs work offline)::

    python -m monai.bundle download --name unetr_prato --url file:///abs/dist/bundles/unetr_prato_v0.3.0.zip \\
        --bundle_dir ./downloaded
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import zipfile
from collections.abc import Sequence

import fire

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

__all__ = ["WEIGHT_SUFFIXES", "WEIGHT_CHOICES", "bundle_entries", "pack_bundle", "pack_bundles", "sha256",
           "check_index"]

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".pt", ".ts", ".pt2", ".onnx")
CHECKPOINT_SUFFIX = ".pt"
BEST, FINAL = "model.pt", "model_final.pt"  # BestModelSaver / TrainingCheckpoint(final_filename=...)
WEIGHT_CHOICES = ("best", "final", "all")
# files of models/ that are training state or bookkeeping, not what a user downloads
SKIPPED_MODEL_FILES = ("last.pt", "best_metric.txt")
FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def _metadata(bundle_dir: str) -> dict:
    with open(os.path.join(bundle_dir, "configs", "metadata.json")) as f:
        return json.load(f)


def _checkpoints(models: str, files: list[str], weights: str) -> list[tuple[str, str]]:
    """``(name in the zip, name in models/)`` for the ``*.pt`` checkpoints packed under ``weights``."""
    checkpoints = sorted(f for f in files if f.endswith(CHECKPOINT_SUFFIX))
    if weights == "all" or not checkpoints:
        return [(f, f) for f in checkpoints]
    if weights == "final":
        if FINAL not in checkpoints:
            raise FileNotFoundError(f"weights='final' but {models} has no {FINAL} (it has {checkpoints})")
        return [(BEST, FINAL)]
    if BEST in checkpoints:
        return [(BEST, BEST)]
    if FINAL in checkpoints:
        logger.warning("%s has no %s: packing %s as models/%s", models, BEST, FINAL, BEST)
        return [(BEST, FINAL)]
    raise FileNotFoundError(f"weights='best' but {models} has neither {BEST} nor {FINAL} (it has {checkpoints}); "
                            "pass weights='all' to pack them under their own names")


def bundle_entries(bundle_dir: str, weights: str = "best") -> list[tuple[str, str]]:
    """What is packed for ``bundle_dir``: ``(path in the zip, path in bundle_dir)`` pairs, sorted: configs/, docs/,
    LICENSE, large_files.yml (if present) and models/: one checkpoint as ``models/model.pt`` (``weights``: see the
    module docstring) and the exports (``*.pt2``, ``*.ts``, ``*.onnx``); never the resume state ``last.pt``."""
    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"weights must be one of {WEIGHT_CHOICES}, got {weights!r}")
    entries = []
    for top in ("configs", "docs"):
        for folder, dirs, files in os.walk(os.path.join(bundle_dir, top)):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
            entries += [os.path.relpath(os.path.join(folder, f), bundle_dir) for f in files if not f.startswith(".")]
    for single in ("LICENSE", "large_files.yml", "large_files.yaml", "large_files.json"):
        if os.path.isfile(os.path.join(bundle_dir, single)):
            entries.append(single)
    pairs = [(e, e) for e in entries]
    models = os.path.join(bundle_dir, "models")
    if os.path.isdir(models):
        files = [f for f in os.listdir(models) if f.endswith(WEIGHT_SUFFIXES) and f not in SKIPPED_MODEL_FILES
                 and not f.startswith(".") and os.path.isfile(os.path.join(models, f))]
        pairs += [(os.path.join("models", f), os.path.join("models", f))
                  for f in files if not f.endswith(CHECKPOINT_SUFFIX)]
        pairs += [(os.path.join("models", a), os.path.join("models", b))
                  for a, b in _checkpoints(models, files, weights)]
    return sorted((a.replace(os.sep, "/"), b.replace(os.sep, "/")) for a, b in pairs)


def packed_weights(bundle_dir: str, weights: str = "best") -> dict[str, str]:
    """``{path in the zip: path in bundle_dir}`` for the checkpoints (``*.pt``) that ``weights`` packs."""
    return {a: b for a, b in bundle_entries(bundle_dir, weights) if a.startswith("models/")
            and a.endswith(CHECKPOINT_SUFFIX)}


def pack_bundle(bundle_dir: str, out_dir: str, weights: str = "best") -> str:
    """Write ``<out_dir>/<name>_v<version>.zip`` for ``bundle_dir``; the same files give the same bytes.
    ``weights``: ``"best"`` (default), ``"final"`` or ``"all"`` checkpoints (see the module docstring)."""
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
        for rel, source in bundle_entries(bundle_dir, weights):
            info = zipfile.ZipInfo(f"{name}/{rel}", date_time=FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # unix, so the permissions below are read the same everywhere
            info.external_attr = 0o644 << 16
            with open(os.path.join(bundle_dir, source), "rb") as f:
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
                 bundles_dir: str = os.path.join(ROOT, "bundles"), weights: str = "best") -> dict:
    """Pack ``names`` (default: every folder of ``bundles_dir`` with configs/metadata.json) with the ``weights``
    checkpoints and write ``<out_dir>/index.json``: ``{name: {"version", "file", "sha256", "size", "weights"}}``
    (``weights``: ``{path in the zip: path in the bundle folder}`` of the packed checkpoints, ``{}`` when none)."""
    if names is None:
        names = sorted(n for n in os.listdir(bundles_dir)
                       if os.path.isfile(os.path.join(bundles_dir, n, "configs", "metadata.json")))
    index = {}
    for name in sorted(names):
        bundle_dir = os.path.join(bundles_dir, name)
        path = pack_bundle(bundle_dir, out_dir, weights)
        index[name] = {"version": _metadata(bundle_dir)["version"], "file": os.path.basename(path),
                       "sha256": sha256(path), "size": os.path.getsize(path),
                       "weights": packed_weights(bundle_dir, weights)}
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
             bundles_dir: str = os.path.join(ROOT, "bundles"), weights: str = "best") -> str:
        chosen = names.split(",") if isinstance(names, str) else names
        index = pack_bundles(out, chosen, bundles_dir, weights)
        return f"packed {len(index)} bundles to {out} (index.json, weights={weights})"

    def check(self, out: str = os.path.join(ROOT, "dist", "bundles")) -> str:
        return f"{len(check_index(out))} archives match index.json"


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    fire.Fire(CLI)
