"""The paper's tables and figures as one command: experiment plans, a resumable runner, a report (docs/design.md §13).

A plan (``plans/*.yaml``) lists rows; each row is a bundle plus overrides (pruner options, ``keep_ratio``, the
prompt perturbation used at evaluation). The runner expands a plan over data sets and seeds into runs, trains and
evaluates each through ``monai.bundle.run`` (what ``python -m monai.bundle run`` calls), one folder per run, and
writes ``report.md``, ``results.csv`` and the figures::

    python tools/experiments.py run plans/paper.yaml --out results/                      # synthetic ACDC + ISIC
    python tools/experiments.py run plans/paper.yaml --dataset acdc --dataset_dir /data/ACDC --size paper --out r/
    python tools/experiments.py run plans/paper.yaml --size smoke --out /tmp/smoke         # CI: minutes on a CPU
    python tools/experiments.py list plans/table2.yaml                                    # the runs, nothing run
    python tools/experiments.py report results/                                           # the report again

Resumable: a run whose outputs exist is skipped; a run killed half-way resumes from its ``last.pt``. Runs shared by
several tables (the PrATo default appears in Tables I-V) are trained once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field

import fire
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from prato_components.verification import config_chain, split_bundle_name  # noqa: E402
from tools.bundles import BACKBONES, BUNDLES  # noqa: E402

SIZES: dict[str, dict] = {
    # CI: every run of the whole plan in seconds (64 x 64, Swin UNETR's least; the backbones' tiny widths, one epoch)
    "smoke": {"image_size": 64, "widths": "tiny", "latency_repeats": 1, "samples": 2,
              "train": {"epochs": 1, "batch_size": 4, "val_interval": 1},
              "data": {"acdc": {"num_patients": 5, "num_frames": 1, "slices": (3, 4), "size": (48, 48)},
                       "isic": {"num_images": 10, "size": (40, 48)}}},
    # a CPU: the demo's small networks at 96 x 96 (6 x 6 tokens on UNETR), less data (~40 s a run)
    "cpu": {"image_size": 96, "widths": "small", "latency_repeats": 5, "samples": 4,
            "train": {"epochs": 12, "batch_size": 8, "learning_rate": 3e-4, "val_interval": 4},
            "data": {"acdc": {"num_patients": 8, "num_frames": 1}, "isic": {"num_images": 40, "size": (96, 120)}}},
    # the README's demo settings
    "small": {"image_size": 96, "widths": "small", "latency_repeats": 10, "samples": 4,
              "train": {"epochs": 20, "batch_size": 8, "learning_rate": 3e-4, "val_interval": 5},
              "data": {"acdc": {"num_patients": 20}, "isic": {"num_images": 100}}},
    # the paper's settings: the bundles' defaults (224 x 224, ViT-B/16), a GPU job
    "paper": {"image_size": 224, "widths": None, "latency_repeats": 20, "samples": 4, "train": {},
              "data": {"acdc": {"num_patients": 100, "size": (256, 256)}, "isic": {"num_images": 400}}},
}
DATASETS = ("acdc", "isic")
PROMPTS = ("tight", "oversized", "partial", "misleading")
ROW_KEYS = {"label", "bundle", "overrides", "train_overrides", "evaluate_overrides", "prompt", "group", "paper"}
PLAN_KEYS = {"id", "title", "kind", "figure", "note", "columns", "defaults", "rows", "include", "datasets", "seeds"}


# ------------------------------------------------------------------------------------------------------ plans
@dataclass
class Row:
    """One row of a table (or one bar / panel of a figure): a bundle, its overrides, the evaluation prompt."""

    label: str
    bundle: str
    overrides: dict = field(default_factory=dict)  # training and evaluation (network and pruner options)
    train_overrides: dict = field(default_factory=dict)  # training only (e.g. a pruning warm-up)
    evaluate_overrides: dict = field(default_factory=dict)  # evaluation only (e.g. keep_ratio 1.0)
    prompt: str = "tight"
    group: str = ""  # e.g. the backbone a bar of Fig. 5 belongs to
    paper: dict = field(default_factory=dict)  # the paper's numbers per data set: {"acdc": {"dice": 0.717}}


@dataclass
class Section:
    """A table or a figure of the report."""

    id: str
    title: str
    kind: str  # "table" or "figure"
    rows: list[Row]
    figure: str = ""  # "bars" | "overlays" | "retention"
    note: str = ""
    columns: list[str] = field(default_factory=lambda: ["dice", "gflops", "latency_ms", "kept_fraction"])


def _read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"experiment plan {path!r} does not exist")
    with open(path) as f:
        plan = yaml.safe_load(f)
    if not isinstance(plan, dict):
        raise ValueError(f"experiment plan {path!r} must be a YAML mapping, got {type(plan).__name__}")
    unknown = set(plan) - PLAN_KEYS
    if unknown:
        raise ValueError(f"experiment plan {path!r}: unknown keys {sorted(unknown)}; allowed: {sorted(PLAN_KEYS)}")
    return plan


def _row(raw: dict, defaults: dict, where: str) -> Row:
    unknown = set(raw) - ROW_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown row keys {sorted(unknown)}; allowed: {sorted(ROW_KEYS)}")
    merged = {**defaults, **raw}
    for key in ("overrides", "train_overrides", "evaluate_overrides"):
        merged[key] = {**defaults.get(key, {}), **raw.get(key, {})}
    if "label" not in merged or "bundle" not in merged:
        raise ValueError(f"{where}: every row needs a label and a bundle, got {raw}")
    if merged["bundle"] not in BUNDLES:
        raise ValueError(f"{where}: unknown bundle {merged['bundle']!r}; the bundles are {BUNDLES}")
    if merged.get("prompt", "tight") not in PROMPTS:
        raise ValueError(f"{where}: unknown prompt {merged['prompt']!r}; choose one of {PROMPTS}")
    return Row(**merged)


def load_plan(path: str) -> tuple[list[Section], dict]:
    """The sections of plan ``path`` (its ``include`` files first, relative to it) and its top-level settings
    (``datasets``, ``seeds``)."""
    plan = _read_yaml(path)
    sections: list[Section] = []
    for name in plan.get("include", []):
        sections += load_plan(os.path.join(os.path.dirname(path), name))[0]
    if "rows" in plan:
        where = f"{path} ({plan.get('id', '?')})"
        rows = [_row(raw, plan.get("defaults", {}), where) for raw in plan["rows"]]
        kind = plan.get("kind", "table")
        if kind not in ("table", "figure"):
            raise ValueError(f"{where}: kind must be 'table' or 'figure', got {kind!r}")
        extra = {k: plan[k] for k in ("figure", "note", "columns") if k in plan}
        sections.append(Section(id=plan.get("id", os.path.basename(path)), title=plan.get("title", ""), kind=kind,
                                rows=rows, **extra))
    settings = {k: plan[k] for k in ("datasets", "seeds") if k in plan}
    return sections, settings


# ------------------------------------------------------------------------------------------------------- runs
@dataclass
class Run:
    """One training of a bundle with its evaluations: a folder ``<out>/runs/<size>/<dataset>/s<seed>/<key>``."""

    bundle: str
    dataset: str
    seed: int
    size: str
    overrides: dict
    train_overrides: dict
    evaluations: dict = field(default_factory=dict)  # tag -> evaluation overrides
    samples: int = 0  # test images whose predictions and retention maps are saved (figures)
    folder: str = ""

    @property
    def key(self) -> str:
        text = json.dumps([self.bundle, self.overrides, self.train_overrides], sort_keys=True, default=str)
        return f"{self.bundle}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"

    def outputs(self) -> list[str]:
        """Files that exist once the run is complete."""
        files = [os.path.join(self.folder, "models", "model_final.pt")]
        files += [os.path.join(self.folder, f"eval_{tag}", "metrics.json") for tag in self.evaluations]
        if self.samples:
            files.append(os.path.join(self.folder, "samples.pt"))
        return files

    def done(self) -> bool:
        return all(os.path.isfile(f) for f in self.outputs())


@functools.lru_cache(maxsize=None)
def _bundle_config(bundle: str) -> dict:
    with open(os.path.join(ROOT, "bundles", bundle, "configs", "train.json")) as f:
        return json.load(f)


def non_default(bundle: str, overrides: dict) -> dict:
    """``overrides`` without those equal to the bundle's own value (so a row that spells out a default, e.g.
    ``keep_ratio: 0.75``, shares the run of a row that does not)."""
    config = _bundle_config(bundle)

    def default(key: str):
        node = config
        for part in key.split("#"):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                return KeyError
        return node

    return {k: v for k, v in overrides.items() if default(k) != v}


def evaluation_tag(row: Row) -> str:
    """The evaluation a row reads: its prompt, plus a short hash of its evaluation-only overrides."""
    if not row.evaluate_overrides:
        return row.prompt
    text = json.dumps(row.evaluate_overrides, sort_keys=True, default=str)
    return f"{row.prompt}-{hashlib.sha1(text.encode()).hexdigest()[:6]}"


def expand(sections: Sequence[Section], datasets: Sequence[str], seeds: Sequence[int], size: str, out: str
           ) -> tuple[list[Run], dict]:
    """Every run the sections need (each training once), and ``{(section id, row index, dataset, seed): (run,
    evaluation tag)}``."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
    profile = SIZES[size]
    runs: dict[str, Run] = {}
    cells: dict = {}
    for section in sections:
        needs_samples = section.kind == "figure" and section.figure in ("overlays", "retention")
        for index, row in enumerate(section.rows):
            for dataset in datasets:
                for seed in seeds:
                    run = Run(row.bundle, dataset, int(seed), size, non_default(row.bundle, row.overrides),
                              non_default(row.bundle, row.train_overrides))
                    run.folder = os.path.join(out, "runs", size, dataset, f"s{seed}", run.key)
                    run = runs.setdefault(run.folder, run)  # rows with the same training share one run
                    tag = evaluation_tag(row)
                    run.evaluations[tag] = {"prompt": row.prompt, **row.evaluate_overrides}
                    if needs_samples:
                        run.samples = profile["samples"]
                    cells[(section.id, index, dataset, int(seed))] = (run, tag)
    return list(runs.values()), cells


def run_overrides(run: Run, dataset_dir: str) -> dict:
    """The overrides shared by a run's training and evaluations."""
    profile = SIZES[run.size]
    backbone, _ = split_bundle_name(run.bundle)
    widths = BACKBONES[backbone][profile["widths"]] if profile["widths"] else {}
    return {"dataset": run.dataset, "dataset_dir": dataset_dir, "bundle_root": run.folder, "seed": run.seed,
            "image_size": profile["image_size"], "num_workers": 0, **widths, **run.overrides}


def make_data(dataset: str, out: str, size: str) -> str:
    """A synthetic data set in the real layout under ``<out>/data/<size>/<dataset>`` (kept between reruns)."""
    from prato_components.data import make_acdc_like, make_isic_like

    root = os.path.join(out, "data", size, dataset)
    marker = os.path.join(root, ".complete")
    if not os.path.isfile(marker):
        writer = {"acdc": make_acdc_like, "isic": make_isic_like}[dataset]
        writer(root, seed=0, **SIZES[size]["data"][dataset])
        open(marker, "w").close()
    return root


# -------------------------------------------------------------------------------------------- one run (child)
def bundle_run(bundle: str, config: str, **overrides) -> None:
    """``python -m monai.bundle run`` in this process for ``bundles/<bundle>/configs/<config>.json`` (``evaluate``: the
    overlay chain ``train.json`` + ``evaluate.json``)."""
    from monai.bundle import run

    configs = os.path.join(ROOT, "bundles", bundle, "configs")
    run(config_file=evaluation_configs(bundle) if config == "evaluate" else os.path.join(configs, f"{config}.json"),
        meta_file=os.path.join(configs, "metadata.json"),
        logging_file=os.path.join(configs, "logging.conf"), **overrides)


def evaluation_configs(bundle: str) -> list[str]:
    """The files of ``bundle``'s evaluation: ``evaluate.json`` is an overlay on ``train.json``."""
    return [os.path.join(ROOT, "bundles", bundle, "configs", f"{c}.json") for c in config_chain("evaluate")]


def save_samples(run: Run, common: dict, path: str) -> None:
    """``run.samples`` test images spread evenly over the test split (tight box): image, label, box, prediction and,
    per pruned stage, the grid cells kept (``samples.pt``, written atomically); the report draws Figs. 6 and 7."""
    import torch
    from monai.bundle import ConfigParser
    from monai.data import list_data_collate

    from prato_components.engine import atomic_save, load_weights, record_retention

    parser = ConfigParser()
    parser.read_config(evaluation_configs(run.bundle))
    parser.update(common)
    network = parser.get_parsed_content("network")
    network.load_state_dict(load_weights(os.path.join(run.folder, "models", "model.pt"))[0])
    network.eval()
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


# ------------------------------------------------------------------------------------------------ the runner
def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


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


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [v for v in value.split(",") if v]
    return list(value) if isinstance(value, (list, tuple)) else [value]


def run(plan: str, out: str = "results", dataset: str | Sequence[str] | None = None, dataset_dir: str | None = None,
        size: str = "cpu", seeds: str | Sequence[int] | None = None, parallel: int = 1, report: bool = True) -> int:
    """Run every run of ``plan`` not yet complete, then write the report; returns the number of failed runs.

    Args:
        plan: a plan file (``plans/paper.yaml`` runs all tables and figures).
        out: results folder: ``runs/``, ``data/`` (synthetic data), ``report.md``, ``results.csv``, ``figures/``.
        dataset: data set(s) (``acdc``, ``isic``); default: the plan's ``datasets``.
        dataset_dir: the data set's folder as shipped (one data set); default: synthetic data in ``out/data``.
        size: ``smoke`` (CI), ``cpu``, ``small`` (the README demo) or ``paper`` (the bundles' defaults).
        seeds: seeds (comma separated); default: the plan's ``seeds``.
        parallel: runs at a time (one process each).
        report: write the report at the end.
    """
    sections, settings = load_plan(plan)
    datasets = _as_list(dataset) or _as_list(settings.get("datasets")) or ["acdc"]
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        raise ValueError(f"unknown data set(s) {unknown}; choose from {DATASETS}")
    if dataset_dir is not None and len(datasets) != 1:
        raise ValueError(f"--dataset_dir names one data set's folder; choose one --dataset (got {datasets})")
    if dataset_dir is not None and not os.path.isdir(dataset_dir):
        raise FileNotFoundError(f"--dataset_dir {dataset_dir!r} does not exist")
    seed_list = [int(s) for s in _as_list(seeds)] or [int(s) for s in _as_list(settings.get("seeds"))] or [0]
    runs, _ = expand(sections, datasets, seed_list, size, out)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "experiment.json.tmp"), "w") as f:  # what the report reads
        json.dump({"plan": os.path.abspath(plan), "datasets": datasets, "seeds": seed_list, "size": size}, f)
    os.replace(os.path.join(out, "experiment.json.tmp"), os.path.join(out, "experiment.json"))
    start = time.time()
    dirs = {d: dataset_dir if dataset_dir else make_data(d, out, size) for d in datasets}
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
        from tools.report import write_report

        write_report(out)
    print(f"{total - len(failed)}/{total} runs complete, {len(failed)} failed, in {_duration(time.time() - start)}",
          flush=True)
    return len(failed)


def list_runs(plan: str, dataset: str | None = None, size: str = "cpu", seeds: str | None = None,
              out: str = "results") -> None:
    """Print the runs a plan expands to (bundle, overrides, evaluations, complete or not); runs nothing."""
    sections, settings = load_plan(plan)
    datasets = _as_list(dataset) or _as_list(settings.get("datasets")) or ["acdc"]
    seed_list = [int(s) for s in _as_list(seeds)] or [int(s) for s in _as_list(settings.get("seeds"))] or [0]
    runs, _ = expand(sections, datasets, seed_list, size, out)
    for r in runs:
        print(f"{'done' if r.done() else 'todo'}  {os.path.relpath(r.folder, out)}  {r.bundle}  {r.overrides}  "
              f"train {r.train_overrides}  evaluations {sorted(r.evaluations)}")
    print(f"{len(runs)} runs")


def report(out: str = "results", plan: str | None = None) -> str:
    """Write the report of ``out`` again (the plan, data sets, seeds and size of its last ``run``)."""
    from tools.report import write_report

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
