"""The main job on an embedded default: synthetic ACDC-like data, a short unetr_prato training, evaluation.

    python tools/demo.py                      # about 5 minutes on 2 CPU cores (12 while other jobs ran)
    python tools/demo.py --epochs 30 --workdir /tmp/prato_demo

It runs the bundle exactly as a user would (``python -m monai.bundle run ...`` in a subprocess; the commands
are printed), evaluates the trained network and, for reference, the same network untrained, and prints
both metric tables. The network is a small ViT (``hidden_size`` 192) at 96 x 96 so the demo fits a laptop CPU;
the bundle's defaults are the paper's (ViT-B/16 at 224 x 224).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

import fire

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tools.bundles import BACKBONES  # noqa: E402

SMALL = {"image_size": 96, **BACKBONES["unetr"]["small"]}


def _run(args: list[str]) -> None:
    command = [sys.executable, "-m", "monai.bundle", "run", *args]
    print("$", " ".join(shlex.quote(a) for a in command[1:]).replace(sys.executable, "python"), flush=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    subprocess.run(command, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL if "--quiet" in args else None)


def _overrides(values: dict) -> list[str]:
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


def main(workdir: str = "/tmp/prato_demo", epochs: int = 20, patients: int = 12, bundle: str = "unetr_prato",
         seed: int = 0) -> None:
    """Generate data, train ``bundle`` for ``epochs``, evaluate it trained and untrained, print the Dice."""
    from prato_components.data import make_acdc_like

    start = time.time()
    data_dir, bundle_root = os.path.join(workdir, "acdc"), os.path.join(workdir, bundle)
    if not os.path.isdir(os.path.join(data_dir, "training")):
        make_acdc_like(data_dir, num_patients=patients, seed=seed)
        print(f"wrote a synthetic ACDC-like data set ({patients} patients) to {data_dir}", flush=True)
    configs = os.path.join("bundles", bundle, "configs")
    common = {"dataset": "acdc", "dataset_dir": data_dir, "bundle_root": bundle_root, "num_workers": 0}
    _run(["--config_file", os.path.join(configs, "train.json"),
          *_overrides({**common, **SMALL, "epochs": epochs, "batch_size": 8, "learning_rate": 3e-4,
                        "val_interval": min(5, epochs)})])
    # evaluation needs no network settings: the checkpoint records those it was trained with
    summaries = {}
    for name, extra in (("trained", {}), ("untrained", {"handlers#0#_disabled_": True})):
        out = os.path.join(bundle_root, f"eval_{name}")
        print(f"\n== evaluation of the {name} network (test split) ==", flush=True)
        _run(["--config_file", str([os.path.join(configs, "train.json"), os.path.join(configs, "evaluate.json")]),
              *_overrides({**common, "output_dir": out, **extra})])
        with open(os.path.join(out, "metrics.json")) as f:
            summaries[name] = json.load(f)
    print(f"\nDice per class, trained vs untrained (test split of {patients} synthetic patients):")
    for cls, value in summaries["trained"]["metrics"]["mean_dice"].items():
        print(f"  {cls:<16} {value:.4f}   untrained {summaries['untrained']['metrics']['mean_dice'][cls]:.4f}")
    print(f"token sparsity {summaries['trained']['tokens'].get('token_sparsity', 0.0):.3f}, "
          f"wall time {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    fire.Fire(main)
