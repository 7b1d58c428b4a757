"""Killed and resumed equals uninterrupted: train a bundle twice on the demo's synthetic data through the command line.

    python tools/resume_check.py                                  # demo size (tools/demo.py), 4 epochs, killed after 2
    python tools/resume_check.py --epochs 6 --kill_after 3 --workdir /tmp/prato_resume
    python tools/resume_check.py --tiny                           # 32 x 32 and the tiny ViT: a quick look

Run A trains ``epochs`` epochs in one go. Run B is started the same way, killed (SIGKILL) as soon as its
``models/last.pt`` holds ``kill_after`` epochs, and started again with the same command, which resumes from that
file. The script prints the validation Dice of both per epoch (``models/val_per_class.json``), the largest absolute
difference between their final weights (``models/model_final.pt``) and a JSON summary; both should be 0 on one
machine (docs/design.md §9).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import fire
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from prato_components.verification import tiny_overrides  # noqa: E402 - after the repository is on the path
from tools.demo import SMALL, _make_data, _overrides  # noqa: E402


def _command(bundle: str, overrides: dict) -> list[str]:
    configs = os.path.join(ROOT, "bundles", bundle, "configs")
    return [sys.executable, "-m", "monai.bundle", "run", "--config_file", os.path.join(configs, "train.json"),
            "--meta_file", os.path.join(configs, "metadata.json"),
            "--logging_file", os.path.join(configs, "logging.conf"), *_overrides(overrides)]


def _epochs_saved(last: str) -> int:
    if not os.path.isfile(last):
        return 0
    trainer = torch.load(last, map_location="cpu", weights_only=False)["trainer"]
    return trainer["iteration"] // trainer["epoch_length"]


def _train_killed(command: list[str], last: str, kill_after: int, log) -> int:
    """Start ``command``, SIGKILL it once ``last`` holds ``kill_after`` epochs; the epochs it holds then."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    while process.poll() is None and _epochs_saved(last) < kill_after:
        time.sleep(0.2)
    if process.poll() is not None:
        raise RuntimeError(f"the run ended (exit code {process.returncode}) before it could be killed after epoch "
                           f"{kill_after}: see {log.name}")
    process.send_signal(signal.SIGKILL)
    process.wait()
    return _epochs_saved(last)


def _dice(bundle_root: str) -> list[float]:
    with open(os.path.join(bundle_root, "models", "val_per_class.json")) as f:
        return [row["mean"] for row in json.load(f)]


def check(workdir: str = "/tmp/prato_resume", epochs: int = 4, kill_after: int = 2, bundle: str = "unetr_prato",
          patients: int = 20, seed: int = 0, num_workers: int = 0, tiny: bool = False) -> dict:
    """Train ``bundle`` uninterrupted and killed after ``kill_after`` of ``epochs`` epochs then resumed; compare.

    Args:
        workdir: the data and both runs' bundle roots (``whole``, ``resumed``; emptied first).
        epochs: epochs of both runs.
        kill_after: run B is killed once it has saved this many epochs (it may be a little later).
        bundle: a 2D bundle under ``bundles/``.
        patients: synthetic ACDC-like patients (the demo's 20).
        seed: data seed.
        num_workers: data loader workers (0 draws the augmentations in the main process).
        tiny: 32 x 32 images and the tests' tiny network instead of the demo's 96 x 96 small ViT.

    Returns:
        ``{"dice_uninterrupted", "dice_resumed", "max_abs_dice_diff", "max_abs_weight_diff", "killed_after"}``.
    """
    if not 1 <= kill_after < epochs:
        raise ValueError(f"kill_after must be in [1, epochs), got {kill_after} with epochs={epochs}")
    data, _ = _make_data(workdir, bundle, patients, seed)
    sizes = tiny_overrides(bundle) if tiny else {**SMALL, "batch_size": 8}
    settings = {**data, **sizes, "num_workers": num_workers, "epochs": epochs, "val_interval": 1,
                "learning_rate": 3e-4}
    roots = {name: os.path.join(workdir, name) for name in ("whole", "resumed")}
    for root in roots.values():
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(root)
    commands = {name: _command(bundle, {**settings, "bundle_root": root}) for name, root in roots.items()}
    with open(os.path.join(roots["whole"], "train.log"), "w") as log:
        print(f"run A: {epochs} epochs uninterrupted (log {log.name})", flush=True)
        subprocess.run(commands["whole"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    with open(os.path.join(roots["resumed"], "train.log"), "w") as log:
        print(f"run B: killed after epoch {kill_after}, then resumed (log {log.name})", flush=True)
        killed = _train_killed(commands["resumed"], os.path.join(roots["resumed"], "models", "last.pt"), kill_after,
                               log)
        print(f"  killed with {killed} epochs saved; resuming", flush=True)
        subprocess.run(commands["resumed"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    dice = {name: _dice(root) for name, root in roots.items()}
    weights = {name: torch.load(os.path.join(root, "models", "model_final.pt"), map_location="cpu")["model"]
               for name, root in roots.items()}
    weight_diff = max(float((weights["whole"][k] - weights["resumed"][k]).abs().max()) for k in weights["whole"])
    print(f"\n{'epoch':>5}  {'uninterrupted':>14}  {'resumed':>14}  {'|diff|':>9}")
    for epoch, (a, b) in enumerate(zip(dice["whole"], dice["resumed"]), start=1):
        print(f"{epoch:>5}  {a:>14.6f}  {b:>14.6f}  {abs(a - b):>9.2e}")
    summary = {"dice_uninterrupted": dice["whole"], "dice_resumed": dice["resumed"],
               "max_abs_dice_diff": max(abs(a - b) for a, b in zip(dice["whole"], dice["resumed"])),
               "max_abs_weight_diff": weight_diff, "killed_after": killed}
    print(f"max |diff| of the final weights: {weight_diff:.3e}")
    print(json.dumps(summary))
    return summary


def main(workdir: str = "/tmp/prato_resume", epochs: int = 4, kill_after: int = 2, bundle: str = "unetr_prato",
         patients: int = 20, seed: int = 0, num_workers: int = 0, tiny: bool = False) -> None:
    """The command line of :func:`check` (prints; returns nothing for ``fire`` to print)."""
    check(workdir, epochs, kill_after, bundle, patients, seed, num_workers, tiny)


if __name__ == "__main__":
    fire.Fire(main)
