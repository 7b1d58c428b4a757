"""The paper's tables and figures as one command: experiment plans, a resumable runner, a report (docs/design.md §13).

A plan (``plans/*.yaml``, read by ``tools/experiment_plan.py``) lists rows; each row is a bundle plus overrides
(pruner options, ``keep_ratio``, the prompt perturbation used at evaluation). The runner expands a plan over data sets
and seeds into runs, trains and evaluates each through ``prato_components.bundle.run`` (``python -m monai.bundle
run`` in-process, override keys checked), one folder per run, and writes ``report.md``, ``results.csv`` and the
figures (``tools/report.py``)::

    python tools/experiments.py run plans/paper.yaml --out results/                      # synthetic ACDC + ISIC
    python tools/experiments.py run plans/paper.yaml --dataset acdc --dataset_dir /data/ACDC --size paper --out r/
    python tools/experiments.py run plans/paper.yaml --size smoke --out /tmp/smoke         # CI: minutes on a CPU
    python tools/experiments.py list plans/table2.yaml                                    # the runs, nothing run
    python tools/experiments.py report results/                                           # the report again
    python tools/experiments.py run plans/small_structures.yaml --size small --out r/     # the small-structure study

Resumable: a run whose outputs exist is skipped; a run killed half-way resumes from its ``last.pt``. Runs shared by
several tables (the PrATo default appears in Tables I-V) are trained once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict

import fire

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from prato_components.atomic import atomic_write_text  # noqa: E402
from prato_components.bundle import run as checked_run  # noqa: E402
from prato_components.verification import config_chain  # noqa: E402
from tools.experiment_plan import SIZES, Run, as_list, data_set, expand, load_plan, size_widths  # noqa: E402
from tools.report import write_report  # noqa: E402


# -------------------------------------------------------------------------------------------- one run (child)
def run_overrides(run: Run, dataset_dir: str) -> dict:
    """The overrides shared by a run's training and evaluations."""
    return {"dataset": run.data.get("dataset", run.dataset), "dataset_dir": dataset_dir, "bundle_root": run.folder,
            "seed": run.seed, "image_size": SIZES[run.size]["image_size"], "num_workers": 0,
            **size_widths(run.bundle, run.size), **run.overrides}


def make_data(dataset: str, out: str, size: str, variants: dict | None = None) -> str:
    """A synthetic data set in the real layout under ``<out>/data/<size>/<dataset>`` (kept between reruns):
    ``dataset`` is one of ``DATASETS`` or a plan's data variant (its ``synthetic`` options over the size's)."""
    from prato_components.data import make_acdc_like, make_isic_like

    data = data_set(dataset, variants)
    root = os.path.join(out, "data", size, dataset)
    marker = os.path.join(root, ".complete")
    if not os.path.isfile(marker):
        writer = {"acdc": make_acdc_like, "isic": make_isic_like}[data["dataset"]]
        writer(root, seed=0, **{**SIZES[size]["data"][data["dataset"]], **data["synthetic"]})
        open(marker, "w").close()
    return root


def bundle_run(bundle: str, config: str, **overrides) -> None:
    """``python -m monai.bundle run`` in this process for ``bundles/<bundle>/configs/<config>.json`` (``evaluate``: the
    overlay chain ``train.json`` + ``evaluate.json``), unknown override keys refused."""
    configs = os.path.join(ROOT, "bundles", bundle, "configs")
    checked_run(evaluation_configs(bundle) if config == "evaluate" else os.path.join(configs, f"{config}.json"),
                meta_file=os.path.join(configs, "metadata.json"),
                logging_file=os.path.join(configs, "logging.conf"), **overrides)


def evaluation_configs(bundle: str) -> list[str]:
    """The files of ``bundle``'s evaluation: ``evaluate.json`` is an overlay on ``train.json``."""
    return [os.path.join(ROOT, "bundles", bundle, "configs", f"{c}.json") for c in config_chain("evaluate")]


def _evaluation_network(run: Run, common: dict):
    """The parser of ``run``'s evaluation (tight box) and its trained network, in eval mode."""
    from monai.bundle import ConfigParser

    from prato_components.engine import load_weights

    parser = ConfigParser()
    parser.read_config(evaluation_configs(run.bundle))
    parser.update(common)
    parser["network_settings#overridden"] = list(common)  # as in the run: these win over the checkpoint's settings
    network = parser.get_parsed_content("network")
    network.load_state_dict(load_weights(os.path.join(run.folder, "models", "model.pt"))[0])
    return parser, network.eval()


def kept_by_class(run: Run, common: dict, path: str) -> None:
    """Per pruned stage, the share of grid cells kept among the cells holding each class (any voxel), among the
    cells overlapping the prompt box and among those outside it, over the test split with the tight box
    (``kept_by_class.json``, written atomically; ``{}`` for an unpruned network)."""
    import torch
    import torch.nn.functional as F

    from prato_components.engine import record_retention

    parser, network = _evaluation_network(run, common)
    device = next(network.parameters()).device
    num_classes = int(parser.get_parsed_content("out_channels"))
    counts: dict = {}
    with torch.no_grad(), record_retention(network) as kept:
        for batch in parser.get_parsed_content("test#dataloader"):
            image, label, box = batch["image"].to(device), batch["label"].to(device), batch["box"].to(device)
            kept.clear()
            network(image, boxes=box)
            for stage, maps in sorted(kept.items()):
                alive = maps[0].to(device)  # [B, *grid] alive after this stage
                grid = tuple(alive.shape[1:])
                one_hot = F.one_hot(label[:, 0].long(), num_classes).movedim(-1, 1).float()
                present = F.adaptive_max_pool2d(one_hot, grid).flatten(2) > 0  # [B, classes, N]
                stride = torch.tensor([s / g for s, g in zip(image.shape[2:], grid)], device=device)
                cells = torch.stack(torch.meshgrid(*(torch.arange(g, device=device) for g in grid), indexing="ij"),
                                    -1).reshape(-1, 2).float()
                low, high = cells * stride, (cells + 1) * stride  # [N, 2]
                inside = ((low[None, :, None] < box[:, None, :, 2:]) & (high[None, :, None] > box[:, None, :, :2])
                          ).all(-1).any(-1)  # [B, N]
                groups = {f"class{c}": present[:, c] for c in range(1, num_classes)}
                groups.update(in_box=inside, outside_box=~inside)
                alive = alive.flatten(1).bool()
                for key, mask in groups.items():
                    entry = counts.setdefault(f"stage{stage}", {}).setdefault(key, [0, 0])
                    entry[0] += int((alive & mask).sum())
                    entry[1] += int(mask.sum())
    result = {s: {k: (v[0] / v[1] if v[1] else None) for k, v in d.items()} for s, d in counts.items()}
    atomic_write_text(json.dumps(result, indent=1), path)


def save_samples(run: Run, common: dict, path: str) -> None:
    """``run.samples`` test images spread evenly over the test split (tight box): image, label, box, prediction and,
    per pruned stage, the grid cells kept (``samples.pt``, written atomically); the report draws Figs. 6 and 7."""
    import torch
    from monai.data import list_data_collate

    from prato_components.engine import atomic_save, record_retention

    parser, network = _evaluation_network(run, common)
    dataset = parser.get_parsed_content("test#dataset")
    picks = sorted({round(i * (len(dataset) - 1) / max(1, run.samples - 1)) for i in range(run.samples)})
    batch = list_data_collate([dataset[i] for i in picks])  # spread over the test split, not neighbouring slices
    device = next(network.parameters()).device
    with torch.no_grad(), record_retention(network) as kept:
        logits = network(batch["image"].to(device), boxes=batch["box"].to(device))
    atomic_save({"image": batch["image"].cpu(), "label": batch["label"].cpu(), "box": batch["box"].cpu(),
                 "pred": logits.argmax(1).cpu(), "kept": {stage: maps[0] for stage, maps in kept.items()}}, path)


def child(spec: str) -> None:
    """Train (resuming from ``last.pt`` when present), evaluate, save samples: whatever of ``spec`` is missing."""
    with open(spec) as f:
        description = json.load(f)
    run = Run(**{k: v for k, v in description["run"].items()})
    common = run_overrides(run, description["dataset_dir"])
    profile = SIZES[run.size]
    if not os.path.isfile(os.path.join(run.folder, "models", "model_final.pt")):
        bundle_run(run.bundle, "train", **{**common, **profile["train"], **run.train_overrides})
    for tag, extra in run.evaluations.items():
        output_dir = os.path.join(run.folder, f"eval_{tag}")
        if not os.path.isfile(os.path.join(output_dir, "metrics.json")):
            bundle_run(run.bundle, "evaluate", **{**common, "latency_repeats": profile["latency_repeats"], **extra,
                                                   "output_dir": output_dir})
    if run.samples and not os.path.isfile(os.path.join(run.folder, "samples.pt")):
        save_samples(run, common, os.path.join(run.folder, "samples.pt"))
    if "kept_by_class" in run.analyses and not os.path.isfile(os.path.join(run.folder, "kept_by_class.json")):
        kept_by_class(run, common, os.path.join(run.folder, "kept_by_class.json"))


# ------------------------------------------------------------------------------------------------ the runner
def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _launch(run: Run, dataset_dir: str, threads: int) -> int:
    os.makedirs(run.folder, exist_ok=True)
    spec = os.path.join(run.folder, "run.json")
    with open(spec + ".tmp", "w") as f:
        json.dump({"run": asdict(run), "dataset_dir": dataset_dir}, f, indent=1, default=str)
    os.replace(spec + ".tmp", spec)
    # runs side by side share the cores: more threads than cores makes OpenMP spin (measured: 100x slower)
    env = {"OMP_NUM_THREADS": str(threads), **os.environ, "PYTHONWARNINGS": "ignore"}
    with open(os.path.join(run.folder, "log.txt"), "a") as log:
        return subprocess.run([sys.executable, os.path.abspath(__file__), "child", spec], stdout=log,
                              stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode


def run(plan: str, out: str = "results", dataset: str | Sequence[str] | None = None, dataset_dir: str | None = None,
        size: str = "cpu", seeds: str | Sequence[int] | None = None, parallel: int = 1, report: bool = True) -> int:
    """Run every run of ``plan`` not yet complete, then write the report; returns the number of failed runs.

    Args:
        plan: a plan file (``plans/paper.yaml`` runs all tables and figures).
        out: results folder: ``runs/``, ``data/`` (synthetic data), ``report.md``, ``results.csv``, ``figures/``.
        dataset: data set(s) (``acdc``, ``isic`` or the plan's ``data`` variants); default: the plan's ``datasets``.
        dataset_dir: the data set's folder as shipped (one data set); default: synthetic data in ``out/data``.
        size: ``smoke`` (CI), ``cpu``, ``small`` (the README demo) or ``paper`` (the bundles' defaults).
        seeds: seeds (comma separated); default: the plan's ``seeds``.
        parallel: runs at a time (one process each).
        report: write the report at the end.
    """
    sections, settings = load_plan(plan)
    datasets = as_list(dataset) or as_list(settings.get("datasets")) or ["acdc"]
    variants = settings.get("data", {})
    for name in datasets:
        data_set(name, variants)  # an unknown name stops the run here
    if dataset_dir is not None and len(datasets) != 1:
        raise ValueError(f"--dataset_dir names one data set's folder; choose one --dataset (got {datasets})")
    if dataset_dir is not None and not os.path.isdir(dataset_dir):
        raise FileNotFoundError(f"--dataset_dir {dataset_dir!r} does not exist")
    seed_list = [int(s) for s in as_list(seeds)] or [int(s) for s in as_list(settings.get("seeds"))] or [0]
    runs, _ = expand(sections, datasets, seed_list, size, out, variants)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "experiment.json.tmp"), "w") as f:  # what the report reads
        json.dump({"plan": os.path.abspath(plan), "datasets": datasets, "seeds": seed_list, "size": size}, f)
    os.replace(os.path.join(out, "experiment.json.tmp"), os.path.join(out, "experiment.json"))
    start = time.time()
    dirs = {d: dataset_dir if dataset_dir else make_data(d, out, size, variants) for d in datasets}
    todo = [r for r in runs if not r.done()]
    threads = max(1, (os.cpu_count() or 1) // max(1, int(parallel)))
    total, finished, failed, took = len(runs), len(runs) - len(todo), [], []
    print(f"{plan}: {total} runs ({len(sections)} tables and figures, data sets {datasets}, seeds {seed_list}, size "
          f"{size}); {finished} already complete, {len(todo)} to run", flush=True)
    with ThreadPoolExecutor(max_workers=max(1, int(parallel))) as pool:
        pending: dict[Future, tuple[Run, float]] = {}
        queue = list(todo)
        while queue or pending:
            while queue and len(pending) < max(1, int(parallel)):
                current = queue.pop(0)
                print(f"[{finished + len(pending) + 1}/{total}] running {os.path.relpath(current.folder, out)} "
                      f"({current.bundle}, {len(current.evaluations)} evaluations)", flush=True)
                pending[pool.submit(_launch, current, dirs[current.dataset], threads)] = (current, time.time())
            complete, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in complete:
                current, began = pending.pop(future)
                finished += 1
                took.append(time.time() - began)
                ok = future.result() == 0 and current.done()
                if not ok:
                    failed.append(current)
                remaining = len(queue) + len(pending)
                eta = sum(took) / len(took) * remaining / max(1, int(parallel))
                print(f"[{finished}/{total}] {'done' if ok else 'FAILED'} {os.path.relpath(current.folder, out)} "
                      f"in {_duration(took[-1])}; elapsed {_duration(time.time() - start)}, estimated "
                      f"{_duration(eta)} to go" + ("" if ok else f" (log: {current.folder}/log.txt)"), flush=True)
    if report:
        write_report(out)
    print(f"{total - len(failed)}/{total} runs complete, {len(failed)} failed, in {_duration(time.time() - start)}",
          flush=True)
    return len(failed)


def list_runs(plan: str, dataset: str | None = None, size: str = "cpu", seeds: str | None = None,
              out: str = "results") -> None:
    """Print the runs a plan expands to (bundle, overrides, evaluations, complete or not); runs nothing."""
    sections, settings = load_plan(plan)
    datasets = as_list(dataset) or as_list(settings.get("datasets")) or ["acdc"]
    seed_list = [int(s) for s in as_list(seeds)] or [int(s) for s in as_list(settings.get("seeds"))] or [0]
    runs, _ = expand(sections, datasets, seed_list, size, out, settings.get("data"))
    for r in runs:
        print(f"{'done' if r.done() else 'todo'}  {os.path.relpath(r.folder, out)}  {r.bundle}  {r.overrides}  "
              f"train {r.train_overrides}  evaluations {sorted(r.evaluations)}")
    print(f"{len(runs)} runs")


def report(out: str = "results", plan: str | None = None) -> str:
    """Write the report of ``out`` again (the plan, data sets, seeds and size of its last ``run``)."""
    return write_report(out, plan)


def main() -> None:
    """The command line; ``run`` exits with status 1 when a run failed."""
    def run_command(*args, **kwargs) -> None:
        failed = run(*args, **kwargs)
        if failed:
            raise SystemExit(f"{failed} runs failed (see their log.txt)")

    fire.Fire({"run": run_command, "list": list_runs, "report": report, "child": child})


if __name__ == "__main__":
    main()
