"""The report of an experiment folder: ``report.md`` (tables laid out like the paper's, mean and spread over seeds,
the paper's numbers beside ours), ``results.csv`` (every run and evaluation) and PNG figures (docs/design.md §13).

Figures need matplotlib (``pip install -e ".[report]"``); without it the tables are still written and the report
says which figures it skipped. Called by ``tools/experiments.py run`` at the end, or on its own::

    python tools/experiments.py report results/
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
import statistics
from collections.abc import Sequence

from tools.experiment_plan import Section, expand, load_plan

COLUMN_TITLES = {"dice": "DSC", "gflops": "GFLOPs", "latency_ms": "ms", "kept_fraction": "kept"}
PAPER_TITLES = {"dice": "paper DSC", "gflops": "paper GFLOPs", "latency_ms": "paper ms"}


def read_metrics(path: str) -> dict | None:
    """The numbers of one evaluation (``metrics.json`` of ``evaluate.json``), flattened; ``None`` if missing."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        m = json.load(f)
    dice = m["metrics"]["mean_dice"]
    return {"dice": dice["mean"], "dice_per_class": {k: v for k, v in dice.items() if k != "mean"},
            "num_present": m.get("num_present", {}), "num_images": m.get("num_images"),
            "gflops": m.get("gflops"), "latency_ms": m.get("latency_ms"),
            "kept_fraction": m.get("tokens", {}).get("kept_fraction"),
            "token_sparsity": m.get("tokens", {}).get("token_sparsity")}


def _finite(values: Sequence) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean_spread(values: Sequence) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count of the finite values."""
    vals = _finite(values)
    if not vals:
        return math.nan, math.nan, 0
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals)


def _cell(values: Sequence, digits: int, spread: bool = True) -> str:
    mean, sd, n = mean_spread(values)
    if n == 0:
        return "missing"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if spread and n > 1 else f"{mean:.{digits}f}"


def _median_cell(values: Sequence, digits: int) -> str:
    """The median (latency: one slow, disturbed measurement must not move the cell)."""
    vals = _finite(values)
    return f"{statistics.median(vals):.{digits}f}" if vals else "missing"


def collect(sections: Sequence[Section], cells: dict) -> list[dict]:
    """One record per (section, row, data set, seed) with that run's evaluation numbers (``None`` if missing)."""
    records = []
    for (section_id, index, dataset, seed), (run, tag) in sorted(cells.items(), key=lambda kv: kv[0]):
        section = next(s for s in sections if s.id == section_id)
        row = section.rows[index]
        metrics = read_metrics(os.path.join(run.folder, f"eval_{tag}", "metrics.json"))
        records.append({"section": section_id, "row": index, "label": row.label, "bundle": row.bundle,
                        "dataset": dataset, "seed": seed, "prompt": row.prompt, "run": run.folder,
                        "evaluation": tag, "metrics": metrics})
    return records


def write_csv(records: Sequence[dict], path: str) -> None:
    classes = list(dict.fromkeys(c for r in records if r["metrics"] for c in r["metrics"]["dice_per_class"]))
    fields = ["section", "label", "bundle", "dataset", "seed", "prompt", "dice", "gflops", "latency_ms",
              "kept_fraction", "token_sparsity", *[f"dice_{c}" for c in classes], *[f"present_{c}" for c in classes],
              "num_images", "run", "evaluation"]
    with open(path + ".tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in records:
            m = r["metrics"] or {}
            row = {k: r[k] for k in ("section", "label", "bundle", "dataset", "seed", "prompt", "run", "evaluation")}
            row.update({k: m.get(k) for k in ("dice", "gflops", "latency_ms", "kept_fraction", "token_sparsity",
                                               "num_images")})
            row.update({f"dice_{c}": m.get("dice_per_class", {}).get(c) for c in classes})
            row.update({f"present_{c}": m.get("num_present", {}).get(c) for c in classes})
            writer.writerow(row)
    os.replace(path + ".tmp", path)


def _group(records: Sequence[dict], section: Section, index: int, dataset: str) -> list[dict]:
    return [r["metrics"] for r in records
            if r["section"] == section.id and r["row"] == index and r["dataset"] == dataset and r["metrics"]]


def _classes(records: Sequence[dict], section: Section, dataset: str) -> list[str]:
    """The class names of a section's evaluations on ``dataset``, in the data set's order."""
    names: dict[str, None] = {}
    for r in records:
        if r["section"] == section.id and r["dataset"] == dataset and r["metrics"]:
            names.update(dict.fromkeys(r["metrics"]["dice_per_class"]))
    return list(names)


def table_markdown(section: Section, records: Sequence[dict], datasets: Sequence[str]) -> list[str]:
    """The section's table: one line per row; per data set our columns (mean ± sd over seeds), per-class DSC, and
    the paper's numbers where the plan records them."""
    digits = {"dice": 3, "gflops": 3, "latency_ms": 1, "kept_fraction": 3}
    paper_cols = [c for c in ("dice", "gflops", "latency_ms") if any(c in r.paper.get(d, {}) for r in section.rows
                                                                   for d in datasets)]
    header = ["row"]
    for d in datasets:
        classes = _classes(records, section, d)
        header += [f"{d} {COLUMN_TITLES[c]}" for c in section.columns] + [f"{d} DSC per class ({' / '.join(classes)})"]
        header += [f"{d} {PAPER_TITLES[c]}" for c in paper_cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in enumerate(section.rows):
        cells = [row.label]
        for d in datasets:
            group = _group(records, section, index, d)
            cells += [_median_cell([g.get(c) for g in group], digits[c]) if c == "latency_ms"
                      else _cell([g.get(c) for g in group], digits[c], spread=c == "dice") for c in section.columns]
            classes = _classes(records, section, d)
            cells.append(" / ".join(_cell([g["dice_per_class"].get(c) for g in group], 3, spread=False)
                                    for c in classes) or "missing")
            cells += [str(row.paper.get(d, {}).get(c, "—")) for c in paper_cols]
        lines.append("| " + " | ".join(cells) + " |")
    for d in datasets:
        ranked = sorted(((mean_spread([g["dice"] for g in _group(records, section, i, d)])[0], row.label)
                         for i, row in enumerate(section.rows)), key=lambda t: -t[0] if math.isfinite(t[0]) else 1e9)
        lines.append("")
        lines.append(f"Ranking by mean DSC on {d}: " + " > ".join(f"{label} ({v:.3f})" for v, label in ranked))
    return lines


def kept_by_class_markdown(section: Section, cells: dict, datasets: Sequence[str]) -> list[str]:
    """Per row, data set and pruned stage: the share of grid cells kept among those holding each class, inside and
    outside the prompt box (the first seed's ``kept_by_class.json``)."""
    lines = ["Kept share of grid cells by what they hold (test split, tight box, first seed):", "",
             "| row | data set | stage | kept share by class / in box / outside box |", "|---|---|---|---|"]
    for index, row in enumerate(section.rows):
        for dataset in datasets:
            keys = sorted(k for k in cells if k[:3] == (section.id, index, dataset))
            path = os.path.join(cells[keys[0]][0].folder, "kept_by_class.json") if keys else ""
            if not os.path.isfile(path):
                continue
            with open(path) as f:
                stages = json.load(f)
            for stage, shares in sorted(stages.items()):
                text = ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} -" for k, v in shares.items())
                lines.append(f"| {row.label} | {dataset} | {stage} | {text} |")
    return lines


def write_report(out: str, plan: str | None = None) -> str:
    """Write ``report.md``, ``results.csv`` and ``figures/*.png`` for the runs in ``out``, as its last ``run`` set
    them up (``experiment.json``: plan, data sets, seeds, size; ``plan`` replaces the plan); returns the path."""
    settings_file = os.path.join(out, "experiment.json")
    if not os.path.isfile(settings_file):
        raise FileNotFoundError(f"{settings_file} does not exist: run a plan into {out!r} first")
    with open(settings_file) as f:
        saved = json.load(f)
    plan = plan or saved["plan"]
    datasets, seeds, size = saved["datasets"], saved["seeds"], saved["size"]
    sections, settings = load_plan(plan)
    _, cells = expand(sections, datasets, seeds, size, out, settings.get("data"))
    records = collect(sections, cells)
    write_csv(records, os.path.join(out, "results.csv"))
    figures_dir = os.path.join(out, "figures")
    figures, skipped = draw_figures(sections, records, datasets, figures_dir)
    missing = [r for r in records if r["metrics"] is None]
    lines = [f"# Report: {os.path.basename(plan)}", "",
             f"Written {datetime.datetime.now().isoformat(timespec='seconds')} from `{out}`: size `{size}`, data sets "
             f"{', '.join(datasets)}, seeds {', '.join(map(str, seeds))}. Our numbers are mean ± standard deviation "
             "over seeds (DSC; latency `ms` is the median, other columns are means); `—` marks a cell the paper's "
             "table is not recorded for in the plan. Every run and evaluation is in `results.csv`.", ""]
    if missing:
        lines += [f"**{len(missing)} cells are missing** (a run failed or has not run yet): "
                  + ", ".join(sorted({os.path.relpath(r['run'], out) for r in missing})), ""]
    for section in sections:
        lines += [f"## {section.title or section.id}", ""]
        if section.note:
            lines += [section.note.strip(), ""]
        if section.kind == "table":
            lines += table_markdown(section, records, datasets) + [""]
        if "kept_by_class" in section.analyses:
            lines += kept_by_class_markdown(section, cells, datasets) + [""]
        for path in figures.get(section.id, []):
            lines += [f"![{section.id}](figures/{os.path.basename(path)})", ""]
        if section.id in skipped:
            lines += [f"Figure skipped: {skipped[section.id]}", ""]
    path = os.path.join(out, "report.md")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines))
    os.replace(path + ".tmp", path)
    print(f"report: {path} ({len(records) - len(missing)}/{len(records)} cells, "
          f"{sum(len(v) for v in figures.values())} figures)", flush=True)
    return path


# -------------------------------------------------------------------------------------------------- figures
def draw_figures(sections: Sequence[Section], records: Sequence[dict], datasets: Sequence[str], folder: str
                 ) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Draw every figure section; returns ``{section id: [png paths]}`` and ``{section id: why it was skipped}``."""
    wanted = [s for s in sections if s.kind == "figure"]
    if not wanted:
        return {}, {}
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        why = 'matplotlib is not installed (pip install -e ".[report]")'
        return {}, {s.id: why for s in wanted}
    os.makedirs(folder, exist_ok=True)
    drawn: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}
    for section in wanted:
        for dataset in datasets:
            draw = {"bars": draw_bars, "overlays": draw_overlays, "retention": draw_retention}.get(section.figure)
            if draw is None:
                raise ValueError(f"{section.id}: unknown figure {section.figure!r} (bars, overlays, retention)")
            path = os.path.join(folder, f"{section.id}_{dataset}.png")
            if draw(section, [r for r in records if r["section"] == section.id and r["dataset"] == dataset], path):
                drawn.setdefault(section.id, []).append(path)
            else:
                skipped[section.id] = f"no finished runs for {dataset}"
    return drawn, skipped


def draw_bars(section: Section, records: Sequence[dict], path: str) -> bool:
    """Fig. 5: GFLOPs and token sparsity per backbone (bars per row label within each group)."""
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(row.group or row.label for row in section.rows))
    labels = list(dict.fromkeys(row.label for row in section.rows))
    if not any(r["metrics"] for r in records):
        return False
    fig, axes = plt.subplots(1, 2, figsize=(8, 3), dpi=80)
    width = 0.8 / max(1, len(labels))
    for j, label in enumerate(labels):
        for ax, key, scale in ((axes[0], "gflops", 1.0), (axes[1], "token_sparsity", 100.0)):
            values = []
            for group in groups:
                vals = [r["metrics"][key] for r in records if r["metrics"] and r["label"] == label
                        and (section.rows[r["row"]].group or label) == group]
                values.append(mean_spread(vals)[0] * scale if vals else 0.0)
            ax.bar([i + j * width for i in range(len(groups))], values, width, label=label)
    for ax, title in ((axes[0], "GFLOPs"), (axes[1], "token sparsity (%)")):
        ax.set_xticks([i + width * (len(labels) - 1) / 2 for i in range(len(groups))], groups, fontsize=8)
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _samples(records: Sequence[dict], index: int) -> dict | None:
    """``samples.pt`` of the first seed's run of row ``index``."""
    import torch

    for r in sorted(records, key=lambda r: r["seed"]):
        if r["row"] == index and os.path.isfile(os.path.join(r["run"], "samples.pt")):
            return torch.load(os.path.join(r["run"], "samples.pt"), weights_only=False)
    return None


def _show(ax, image, box=None, overlay=None, cmap="tab10", vmax=9) -> None:
    import matplotlib.patches as patches
    import numpy as np

    ax.imshow(image[0].T if image.ndim == 3 else image.T, cmap="gray", origin="lower")  # array axes are (x, y)
    if overlay is not None:
        masked = np.ma.masked_where(overlay == 0, overlay)
        ax.imshow(masked.T, cmap=cmap, vmin=0, vmax=vmax, alpha=0.5, origin="lower", interpolation="nearest")
    if box is not None:
        for b in box:
            if b[2] > b[0] and b[3] > b[1]:
                ax.add_patch(patches.Rectangle((b[0] - 0.5, b[1] - 0.5), b[2] - b[0], b[3] - b[1], fill=False,
                                               edgecolor="yellow", linewidth=1))
    ax.set_xticks([])
    ax.set_yticks([])


def draw_overlays(section: Section, records: Sequence[dict], path: str) -> bool:
    """Fig. 6: per test image: the image with its box, the ground truth, and each row's prediction."""
    import matplotlib.pyplot as plt

    samples = [_samples(records, i) for i in range(len(section.rows))]
    if not any(s is not None for s in samples):
        return False
    first = next(s for s in samples if s is not None)
    count = first["image"].shape[0]
    cols = 2 + len(section.rows)
    fig, axes = plt.subplots(count, cols, figsize=(1.6 * cols, 1.6 * count), dpi=64, squeeze=False)
    for i in range(count):
        image, box = first["image"][i].numpy(), first["box"][i].numpy()
        _show(axes[i, 0], image, box)
        _show(axes[i, 1], image, box, first["label"][i, 0].numpy())
        for j, s in enumerate(samples):
            if s is not None:
                _show(axes[i, 2 + j], image, box, s["pred"][i].numpy())
            else:
                axes[i, 2 + j].axis("off")
    for j, title in enumerate(["image + box", "ground truth", *[row.label for row in section.rows]]):
        axes[0, j].set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def draw_retention(section: Section, records: Sequence[dict], path: str) -> bool:
    """Fig. 7: per test image and pruned stage, the grid cells kept (bright) over the image, with the box."""
    import matplotlib.pyplot as plt
    import torch.nn.functional as F

    samples = _samples(records, 0)
    if samples is None or not samples["kept"]:
        return False
    stages = sorted(samples["kept"])
    count = samples["image"].shape[0]
    fig, axes = plt.subplots(count, 1 + len(stages), figsize=(1.6 * (1 + len(stages)), 1.6 * count), dpi=64,
                             squeeze=False)
    size = samples["image"].shape[2:]
    for i in range(count):
        image, box = samples["image"][i].numpy(), samples["box"][i].numpy()
        _show(axes[i, 0], image, box)
        for j, stage in enumerate(stages):
            kept = samples["kept"][stage][i][None, None].float()
            kept = F.interpolate(kept, size=size, mode="nearest")[0, 0].numpy()
            _show(axes[i, 1 + j], image, box, (kept > 0).astype("int") * 2, vmax=9)
    axes[0, 0].set_title("image + box", fontsize=7)
    for j, stage in enumerate(stages):
        axes[0, 1 + j].set_title(f"kept after stage {stage}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
