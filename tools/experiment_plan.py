"""The experiment plan model, read by the runner (``tools/experiments.py``) and the report (``tools/report.py``).

A plan (``plans/*.yaml``) lists sections (tables and figures); each row of a section is a bundle plus overrides
(pruner options, ``keep_ratio``, the prompt used at evaluation). ``expand`` turns the sections into runs over data
sets and seeds, each training once however many rows read it. A plan file holds one section (``rows``) or several
(``sections``), includes others (``include``), and may name synthetic data variants (``data``: e.g. ACDC-like data
with a small dark structure) to use as data sets.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from prato_components.verification import split_bundle_name
from tools.bundlegen.spec import BACKBONES, BUNDLES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
SECTION_KEYS = {"id", "title", "kind", "figure", "note", "columns", "defaults", "rows", "datasets", "analyses"}
PLAN_KEYS = SECTION_KEYS | {"include", "seeds", "sections", "data"}
DATA_KEYS = {"dataset", "synthetic"}
# per-run analyses a section can ask for: ``kept_by_class``: per pruned stage, the share of grid cells kept among
# those holding each class, inside and outside the prompt box (``kept_by_class.json``)
ANALYSES = ("kept_by_class",)


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
    datasets: list[str] = field(default_factory=list)  # the data sets this section reads (default: every one run)
    analyses: list[str] = field(default_factory=list)  # per-run analyses (``ANALYSES``)


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


def _section(raw: dict, where: str, default_id: str) -> Section:
    rows = [_row(row, raw.get("defaults", {}), where) for row in raw["rows"]]
    kind = raw.get("kind", "table")
    if kind not in ("table", "figure"):
        raise ValueError(f"{where}: kind must be 'table' or 'figure', got {kind!r}")
    unknown = [a for a in raw.get("analyses", []) if a not in ANALYSES]
    if unknown:
        raise ValueError(f"{where}: unknown analyses {unknown}; choose from {list(ANALYSES)}")
    extra = {k: raw[k] for k in ("figure", "note", "columns", "datasets", "analyses") if k in raw}
    return Section(id=raw.get("id", default_id), title=raw.get("title", ""), kind=kind, rows=rows, **extra)


def _data_variants(data: object, where: str) -> dict[str, dict]:
    """The plan's ``data``: ``{name: {"dataset": one of DATASETS, "synthetic": make-data options}}``."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: data must map variant names to {{dataset, synthetic}}, got {data!r}")
    variants = {}
    for name, variant in data.items():
        variant = {"dataset": name, **(variant or {})}
        unknown = set(variant) - DATA_KEYS
        if unknown:
            raise ValueError(f"{where}: data {name!r}: unknown keys {sorted(unknown)}; allowed: {sorted(DATA_KEYS)}")
        if variant["dataset"] not in DATASETS:
            raise ValueError(f"{where}: data {name!r}: unknown dataset {variant['dataset']!r}; choose from {DATASETS}")
        variants[str(name)] = {"dataset": variant["dataset"], "synthetic": dict(variant.get("synthetic") or {})}
    return variants


def load_plan(path: str) -> tuple[list[Section], dict]:
    """The sections of plan ``path`` (its ``include`` files first, relative to it) and its top-level settings
    (``datasets``, ``seeds``, ``data``: the synthetic data variants, with those of its includes)."""
    plan = _read_yaml(path)
    where = f"{path} ({plan.get('id', '?')})"
    sections: list[Section] = []
    variants: dict[str, dict] = {}
    for name in plan.get("include", []):
        included, settings = load_plan(os.path.join(os.path.dirname(path), name))
        sections += included
        variants.update(settings.get("data", {}))
    variants.update(_data_variants(plan.get("data", {}), where))
    if "rows" in plan:
        sections.append(_section(plan, where, os.path.basename(path)))
    for index, raw in enumerate(plan.get("sections", [])):
        unknown = set(raw) - SECTION_KEYS
        if unknown:
            raise ValueError(f"{where}: section {index}: unknown keys {sorted(unknown)}; "
                             f"allowed: {sorted(SECTION_KEYS)}")
        if "rows" not in raw:
            raise ValueError(f"{where}: section {index} has no rows")
        sections.append(_section(raw, f"{where} section {raw.get('id', index)}", f"section{index}"))
    settings = {k: plan[k] for k in ("datasets", "seeds") if k in plan}
    if variants:
        settings["data"] = variants
    return sections, settings


def data_set(name: str, variants: Mapping[str, dict] | None = None) -> dict:
    """``{"dataset", "synthetic"}`` of a data set name: a plan's data variant, or one of ``DATASETS`` as is."""
    if variants and name in variants:
        return variants[name]
    if name not in DATASETS:
        raise ValueError(f"unknown data set(s) [{name!r}]; choose from {DATASETS} or the plan's data "
                         f"{sorted(variants or {})}")
    return {"dataset": name, "synthetic": {}}


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
    data: dict = field(default_factory=dict)  # the data set behind ``dataset`` and its synthetic options
    analyses: list = field(default_factory=list)  # per-run analyses (``ANALYSES``)

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
        files += [os.path.join(self.folder, f"{analysis}.json") for analysis in self.analyses]
        return files

    def done(self) -> bool:
        return all(os.path.isfile(f) for f in self.outputs())


@functools.lru_cache(maxsize=None)
def _bundle_config(bundle: str) -> dict:
    with open(os.path.join(ROOT, "bundles", bundle, "configs", "train.json")) as f:
        return json.load(f)


def non_default(bundle: str, overrides: dict, profile: Mapping[str, Any] | None = None) -> dict:
    """``overrides`` without those equal to the value the run has anyway: the bundle's own, or ``profile``'s (what a
    size sets: ``image_size``, widths, training settings). So a row that spells out a default, e.g.
    ``keep_ratio: 0.75``, shares the run of a row that does not, while ``image_size: 224`` at a size of 96 stays."""
    config = _bundle_config(bundle)
    profile = profile or {}

    def default(key: str):
        if key in profile:
            return profile[key]
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


def expand(sections: Sequence[Section], datasets: Sequence[str], seeds: Sequence[int], size: str, out: str,
           variants: Mapping[str, dict] | None = None) -> tuple[list[Run], dict]:
    """Every run the sections need (each training once), and ``{(section id, row index, dataset, seed): (run,
    evaluation tag)}``; ``variants``: the plan's data variants (``load_plan``'s ``data``)."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
    profile = SIZES[size]
    runs: dict[str, Run] = {}
    cells: dict = {}
    for section in sections:
        needs_samples = section.kind == "figure" and section.figure in ("overlays", "retention")
        for index, row in enumerate(section.rows):
            for dataset in datasets:
                if section.datasets and dataset not in section.datasets:
                    continue
                for seed in seeds:
                    sized = {"image_size": profile["image_size"], **size_widths(row.bundle, size)}
                    run = Run(row.bundle, dataset, int(seed), size, non_default(row.bundle, row.overrides, sized),
                              non_default(row.bundle, row.train_overrides, profile["train"]),
                              data=data_set(dataset, variants))
                    run.folder = os.path.join(out, "runs", size, dataset, f"s{seed}", run.key)
                    run = runs.setdefault(run.folder, run)  # rows with the same training share one run
                    tag = evaluation_tag(row)
                    run.evaluations[tag] = {"prompt": row.prompt, **row.evaluate_overrides}
                    if needs_samples:
                        run.samples = profile["samples"]
                    run.analyses = sorted(set(run.analyses) | set(section.analyses))
                    cells[(section.id, index, dataset, int(seed))] = (run, tag)
    return list(runs.values()), cells


def size_widths(bundle: str, size: str) -> dict:
    """The network widths a size gives a bundle (``SIZES[size]["widths"]`` of its backbone; none: its own)."""
    profile = SIZES[size]
    return BACKBONES[split_bundle_name(bundle)[0]][profile["widths"]] if profile["widths"] else {}


def as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [v for v in value.split(",") if v]
    return list(value) if isinstance(value, (list, tuple)) else [value]


