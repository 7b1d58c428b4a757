"""The main job on an embedded default: synthetic data, a short training of a bundle, evaluation.

    python tools/demo.py                      # about 6 minutes on 2 CPU cores (13 while other jobs ran)
    python tools/demo.py --epochs 30 --workdir /tmp/prato_demo
    python tools/demo.py --bundle unetr3d_prato --workdir /tmp/prato_demo3d     # 3D: synthetic MSD-layout volumes
    python tools/demo.py --clicks 3            # then per structure its box and 3 corrective clicks: Dice after each

It runs the bundle exactly as a user would (``python -m monai.bundle run ...`` in a subprocess; the commands
are printed), evaluates the trained network and, for reference, the same network untrained, and prints
both metric tables. The network is a small ViT (``hidden_size`` 192) at 96 x 96 so the demo fits a laptop CPU;
the bundle's defaults are the paper's (ViT-B/16 at 224 x 224). A 3D bundle (``BUNDLES_3D``) trains on synthetic
MSD/decathlon-layout CT volumes (three organs, LPS affine, anisotropic spacing; ``make_decathlon_like``) with
``SMALL_3D`` windows and evaluates on whole volumes with the prompt-aware sliding window. With ``--clicks N`` the
trained network is also evaluated interactively (``evaluate.json``'s ``clicks``: per structure its box, then N clicks
at the centre of the largest error), and the Dice after the box and after each click is printed; the training then
simulates clicks too (``CLICK_TRAINING``: half the batches, 1 to 5 clicks on the network's own errors).
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

from tools.bundles import BACKBONES, BACKBONES_3D, BUNDLES_3D  # noqa: E402

SMALL = {"image_size": 96, **BACKBONES["unetr"]["small"]}
# 3D: 32^3 windows (8 tokens of 16^3) of 2 mm voxels, the same small ViT; a few minutes on 2 CPU cores
SMALL_3D = {"image_size": 32, "pixdim": [2.0, 2.0, 2.0], "sw_batch_size": 2, **BACKBONES_3D["unetr3d"]["small"]}
DATA_3D = {"size": (80, 80, 32), "spacing": (1.2, 1.2, 2.5), "organs": 3, "orientation": "LPS"}
"""The synthetic CT volumes of the 3D demo (liver, spleen, kidney): about 48 x 48 x 40 voxels of 2 mm, 8 windows."""
CLICK_TRAINING = {"click_training#probability": 0.5, "click_training#max_clicks": 5}
"""The click training of ``--clicks`` (docs/accuracy.md, "Corrective clicks")."""


def _run(args: list[str]) -> None:
    command = [sys.executable, "-m", "monai.bundle", "run", *args]
    print("$", " ".join(shlex.quote(a) for a in command[1:]).replace(sys.executable, "python"), flush=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    subprocess.run(command, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL if "--quiet" in args else None)


def _overrides(values: dict) -> list[str]:
    return [item for key, value in values.items()
            for item in (f"--{key}", json.dumps(value) if isinstance(value, (list, tuple)) else str(value))]


def _check_demo_data(data_dir: str, patients: int, seed: int) -> None:
    """Refuse to reuse demo data made with other settings (the workdir keeps data and checkpoint between runs):
    ``ValueError`` naming what the folder holds. A folder from before the record is checked by its patient count."""
    record = os.path.join(data_dir, "demo_data.json")
    if os.path.isfile(record):
        with open(record) as f:
            made = json.load(f)
    else:
        training = os.path.join(data_dir, "training")
        made = {"patients": len(os.listdir(training)), "seed": seed} if os.path.isdir(training) else None
    if made is not None and made != {"patients": patients, "seed": seed}:
        raise ValueError(f"{data_dir} holds demo data made with {made['patients']} patients and seed {made['seed']}, "
                         f"not {patients} and {seed}: choose another --workdir or delete {os.path.dirname(data_dir)}")


def _make_data(workdir: str, bundle: str, patients: int, seed: int) -> tuple[dict, str]:
    """Write the demo's synthetic data (once, with a record of its settings); the bundle overrides that point at it
    and the split's name."""
    from prato_components.data import make_acdc_like, make_decathlon_like

    three_d = bundle in BUNDLES_3D
    data_dir = os.path.join(workdir, "msd" if three_d else "acdc")
    made = os.path.isfile(os.path.join(data_dir, "dataset.json")) if three_d else \
        os.path.isdir(os.path.join(data_dir, "training"))
    if made:
        _check_demo_data(data_dir, patients, seed)
    elif three_d:
        make_decathlon_like(data_dir, num_cases=patients, seed=seed, num_test=0, **DATA_3D)
        print(f"wrote a synthetic MSD-layout data set ({patients} CT volumes) to {data_dir}", flush=True)
    else:
        make_acdc_like(data_dir, num_patients=patients, seed=seed)
        print(f"wrote a synthetic ACDC-like data set ({patients} patients) to {data_dir}", flush=True)
    if not made:
        with open(os.path.join(data_dir, "demo_data.json"), "w") as f:
            json.dump({"patients": patients, "seed": seed}, f)
    if three_d:
        return {"dataset": "decathlon", "dataset_dir": data_dir}, f"{patients} synthetic volumes"
    return {"dataset": "acdc", "dataset_dir": data_dir}, f"{patients} synthetic patients"


def demo(workdir: str = "/tmp/prato_demo", epochs: int | None = None, patients: int | None = None,
         bundle: str = "unetr_prato", seed: int = 0, sizes: dict | None = None, clicks: int = 0) -> dict:
    """Generate data, train ``bundle`` for ``epochs``, evaluate it trained and untrained, print the Dice.

    Args:
        workdir: where the data and the bundle's outputs go.
        epochs: training epochs (default 20 in 2D, 60 in 3D).
        patients: synthetic patients (2D, default 20: with 12, one class was learnt in 20 epochs at some seeds
            and not at others, for the baseline too; docs/accuracy.md) or volumes (3D, default 10).
        bundle: a bundle under ``bundles/``; a 3D one (``BUNDLES_3D``) trains on synthetic MSD-layout volumes.
        seed: data seed.
        sizes: overrides of the network and window settings (default ``SMALL`` / ``SMALL_3D``).
        clicks: corrective clicks per structure in the trained network's evaluation (0: the box only); with clicks
            the training simulates clicks (``CLICK_TRAINING``).

    Returns:
        ``{"trained": metrics.json, "untrained": metrics.json}`` of the two evaluations.
    """
    if isinstance(clicks, bool) or not isinstance(clicks, int) or clicks < 0:
        raise ValueError(f"--clicks must be an integer >= 0, got {clicks!r}")
    if not os.path.isfile(os.path.join(ROOT, "bundles", bundle, "configs", "train.json")):
        raise ValueError(f"unknown bundle {bundle!r}; the bundles are the folders of {os.path.join(ROOT, 'bundles')}")
    three_d = bundle in BUNDLES_3D
    epochs = epochs or (60 if three_d else 20)
    patients = patients or (10 if three_d else 20)
    start = time.time()
    bundle_root = os.path.join(workdir, bundle)
    common, described = _make_data(workdir, bundle, patients, seed)
    common = {**common, "bundle_root": bundle_root, "num_workers": 0}
    small = {**(SMALL_3D if three_d else SMALL), **(sizes or {})}
    training = {"batch_size": 2, "num_samples": 2, "learning_rate": 2e-3} if three_d else \
        {"batch_size": 8, "learning_rate": 3e-4}
    training.update(CLICK_TRAINING if clicks else {})
    configs = os.path.join("bundles", bundle, "configs")
    _run(["--config_file", os.path.join(configs, "train.json"),
          *_overrides({**common, **small, "epochs": epochs, **training, "val_interval": min(5, epochs)})])
    # evaluation needs no network settings: the checkpoint records those it was trained with (not the data's)
    data_settings = {k: v for k, v in small.items() if k in ("pixdim", "sw_batch_size")}
    if three_d:
        data_settings["latency_repeats"] = 1  # the demo prints Dice; one timed window is enough
    summaries = {}
    for name, extra in (("trained", {"clicks": clicks}), ("untrained", {"handlers#0#_disabled_": True})):
        out = os.path.join(bundle_root, f"eval_{name}")
        print(f"\n== evaluation of the {name} network (test split) ==", flush=True)
        _run(["--config_file", str([os.path.join(configs, "train.json"), os.path.join(configs, "evaluate.json")]),
              *_overrides({**common, **data_settings, "output_dir": out, **extra})])
        with open(os.path.join(out, "metrics.json")) as f:
            summaries[name] = json.load(f)
    print(f"\nDice per class, trained vs untrained (test split of {described}):")
    for cls, value in summaries["trained"]["metrics"]["mean_dice"].items():
        print(f"  {cls:<16} {value:.4f}   untrained {summaries['untrained']['metrics']['mean_dice'][cls]:.4f}")
    if clicks:
        print_clicks(summaries["trained"]["interactive"])
    print(f"token sparsity {summaries['trained']['tokens'].get('token_sparsity', 0.0):.3f}, "
          f"wall time {time.time() - start:.0f} s", flush=True)
    return summaries


def print_clicks(interactive: dict) -> None:
    """The Dice per class after the box and after each click, the Dice AUC and NoC@90 of an interactive evaluation
    (``metrics.json``'s ``interactive``)."""
    steps = interactive["clicks"] + 1
    print(f"\nDice per structure after its box and after each corrective click ({interactive['num_structures']} "
          f"structures; AUC: area under Dice vs clicks; NoC@90: clicks to Dice 0.90, {steps} if never):")
    print(f"  {'':<16} {'box':>6} " + " ".join(f"{f'+{c}':>6}" for c in range(1, steps)) + f" {'AUC':>6} {'NoC@90':>7}")
    for name, values in interactive["dice_per_step"].items():
        print(f"  {name:<16} " + " ".join(f"{v:>6.3f}" for v in values)
              + f" {interactive['dice_auc'][name]:>6.3f} {interactive['noc90'][name]:>7.2f}")
    print(f"  seconds per interaction: box {interactive['seconds_first']:.3f}, each click "
          f"{interactive['seconds_later']:.3f} (ratio {interactive['later_over_first']:.2f})", flush=True)


def main(workdir: str = "/tmp/prato_demo", epochs: int | None = None, patients: int | None = None,
         bundle: str = "unetr_prato", seed: int = 0, clicks: int = 0) -> None:
    """The command line of :func:`demo` (prints; returns nothing for ``fire`` to print)."""
    demo(workdir, epochs, patients, bundle, seed, clicks=clicks)


if __name__ == "__main__":
    fire.Fire(main)
