"""Issue 17 experiments: does PrATo lose a small dark structure, why, and which fix restores it.

Every training and evaluation runs the bundles exactly as ``python -m monai.bundle run`` does (``monai.bundle.run``
in-process, one process per job, jobs in parallel)::

    python tools/issue17_experiments.py run --out /tmp/i17 --parallel 8 --deadline 420      # GPU: everything
    python tools/issue17_experiments.py run --out /tmp/i17t --tiny True --parallel 1          # CPU smoke test
    python tools/issue17_experiments.py table /tmp/i17/results.json                          # the tables

Data: ``make_acdc_like(small_dark=True)`` ("dark", class 3 small and fluid-like) and the demo's default data
("demo"), 20 patients each; splits 80/10/10 by patient from the bundle ``seed``. Network: the demo's small ViT
(hidden 192, mlp 768, 3 heads, feature 16) at 96 x 96 (6 x 6 tokens) and 224 x 224 (14 x 14 tokens); batch 8,
lr 3e-4. Variants: the unpruned baseline, PrATo as in the paper (``protect_boxes false``), PrATo with
``protect_boxes``, PrATo literal with a pruning warm-up, random masking at the same budget. Evaluation: the test
split with the tight box and the three perturbed prompts; PrATo literal also with ``keep_ratio 1.0``; per stage, the
fraction of grid cells kept among the cells that contain each class (where do the pruned tokens lie).
"""

from __future__ import annotations

import glob
import json
import math
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence

import fire

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tools.bundles import BACKBONES  # noqa: E402
from tools.experiments import bundle_run as _bundle_run  # noqa: E402
from tools.experiments import evaluation_configs  # noqa: E402

SMALL = BACKBONES["unetr"]["small"]
FULL = {"decode_region": "full"}  # the variants measured before box decoding existed decode the whole image
VARIANTS = {
    "baseline": ("unetr_baseline", {}),
    "prato_literal": ("unetr_prato", {"protect_boxes": False, **FULL}),
    "prato_protect": ("unetr_prato", {"protect_boxes": True, **FULL}),
    "prato_warmup": ("unetr_prato", {"protect_boxes": False, "warmup_epochs": 4, "ramp_epochs": 4, **FULL}),
    "random": ("unetr_random", {}),
    "prato_protect_perclass": ("unetr_prato", {"protect_boxes": True, "prompt_boxes": "per_class", **FULL}),
    # the compared methods at the same budget: do they lose the small structure too?
    **{p: (f"unetr_{p}", {}) for p in ("stp", "dynamicvit", "evovit", "dtop", "tram")},
    # issue 12: the bundle default (protect_boxes, decode_region "box") trained at three decode margins
    **{f"prato_box_m{m}": ("unetr_prato", {"protect_boxes": True, "decode_region": "box", "decode_margin": m})
       for m in (0, 16, 32)},
    # the bundle default with a pruning warm-up (unpruned for 4 epochs, then keep_ratio ramped over 4)
    "prato_box_warmup": ("unetr_prato", {"protect_boxes": True, "decode_region": "box", "decode_margin": 16,
                                         "warmup_epochs": 4, "ramp_epochs": 4}),
    # the PrATo bundle keeping every token: PrATo's network and initialisation, nothing pruned (is a class lost to
    # pruning, or to the initialisation the pruner's parameters shift?)
    "prato_keep1": ("unetr_prato", {"protect_boxes": True, "keep_ratio": 1.0, **FULL}),
}
PROMPTS = ("tight", "oversized", "partial", "misleading")


def plan(tiny: bool = False, epochs: int = 20, seeds: int | str | Sequence[int] = (0, 1)) -> list[dict]:
    """The jobs, most important first (a deadline drops the tail); ``seeds``: e.g. ``"2,3"`` for more seeds."""
    if isinstance(seeds, int):  # fire reads "--seeds 2" as a number
        seeds = [seeds]
    seeds = [int(s) for s in (seeds.split(",") if isinstance(seeds, str) else seeds)]
    jobs = []
    if tiny:
        return [{"name": f"dark_32_s0_{v}", "data": "dark", "size": 32, "seed": 0, "variant": v, "epochs": 1}
                for v in ("baseline", "prato_literal", "prato_warmup")]
    order = [
        ("dark", 96, ("baseline", "prato_literal", "prato_protect", "prato_warmup", "random", "prato_protect_perclass",
                      "prato_box_m16")),
        ("dark", 224, ("baseline", "prato_literal", "prato_protect", "prato_warmup")),
        ("demo", 96, ("baseline", "prato_literal", "prato_protect")),
        ("demo", 224, ("baseline", "prato_literal", "prato_protect")),
        ("demo", 96, ("prato_box_m0", "prato_box_m16", "prato_box_m32")),
        ("dark", 96, ("stp", "dynamicvit", "evovit", "dtop", "tram")),
        ("dark", 96, ("prato_box_warmup", "prato_keep1")),
        ("demo", 96, ("prato_keep1",)),
        ("demo", 96, ("prato_box_warmup",)),
        ("demo", 224, ("prato_box_m16",)),  # the bundle default at the paper's size
        ("dark", 224, ("prato_box_m16",)),
    ]
    for data, size, variants in order:
        for seed in seeds:
            for v in variants:
                jobs.append({"name": f"{data}_{size}_s{seed}_{v}", "data": data, "size": size, "seed": seed,
                             "variant": v, "epochs": epochs})
    return jobs


def make_data(out: str, tiny: bool = False) -> dict[str, str]:
    from prato_components.data import make_acdc_like

    dirs = {"dark": os.path.join(out, "data_dark"), "demo": os.path.join(out, "data_demo")}
    kw = {"num_patients": 6, "num_frames": 1, "slices": (4, 5), "size": (64, 64)} if tiny else {"num_patients": 20}
    for name, path in dirs.items():
        if not os.path.isdir(os.path.join(path, "training")):
            make_acdc_like(path, seed=0, small_dark=name == "dark", **kw)
    return dirs


def kept_by_class(bundle: str, overrides: dict, ckpt: str) -> dict:
    """Per pruned stage: the fraction of grid cells kept among cells containing each class (any voxel), among cells
    overlapping the prompt box, and among cells outside it (test split, tight box)."""
    import torch
    import torch.nn.functional as F
    from monai.bundle import ConfigParser

    from prato_components.engine import load_weights, record_retention

    parser = ConfigParser()
    parser.read_config(evaluation_configs(bundle))
    parser.update(overrides)
    net = parser.get_parsed_content("network")
    net.load_state_dict(load_weights(ckpt)[0])
    net.eval()
    loader = parser.get_parsed_content("test#dataloader")
    device = next(net.parameters()).device
    counts: dict = {}
    num_classes = int(parser.get_parsed_content("out_channels"))
    with torch.no_grad(), record_retention(net) as kept:
        for batch in loader:
            image, label, box = batch["image"].to(device), batch["label"].to(device), batch["box"].to(device)
            kept.clear()
            net(image, boxes=box)
            grid_shape = tuple(net.feat_size)
            one_hot = F.one_hot(label[:, 0].long(), num_classes).movedim(-1, 1).float()
            present = F.adaptive_max_pool2d(one_hot, grid_shape).flatten(2) > 0  # [B, classes, N]
            stride = [s / g for s, g in zip(image.shape[2:], grid_shape)]
            for stage in sorted(kept):
                alive = kept[stage][0].flatten(1).to(device)  # [B, N] alive after this stage
                cells = torch.stack(torch.meshgrid(*(torch.arange(g, device=device) for g in grid_shape),
                                                   indexing="ij"), -1).reshape(-1, 2).float()  # row-major grid
                st = torch.tensor(stride, device=device)
                c_lo, c_hi = cells * st, (cells + 1) * st  # [N, 2]
                b = box.float()  # [B, M, 4]
                inside = ((c_lo[None, :, None] < b[:, None, :, 2:]) & (c_hi[None, :, None] > b[:, None, :, :2])
                          ).all(-1).any(-1)  # [B, N]
                groups = {f"class{c}": present[:, c] for c in range(1, num_classes)}
                groups["in_box"], groups["outside_box"] = inside, ~inside
                for key, mask in groups.items():
                    entry = counts.setdefault(f"stage{stage}", {}).setdefault(key, [0, 0])
                    entry[0] += int((alive & mask).sum())
                    entry[1] += int(mask.sum())
    return {s: {k: (v[0] / v[1] if v[1] else None) for k, v in d.items()} for s, d in counts.items()}


TRAINING_ONLY = ("warmup_epochs", "ramp_epochs")


def _run_overrides(spec: dict, data: dict, root: str, extra: dict, skip: tuple[str, ...] = ()) -> dict:
    """The overrides shared by a job's training and evaluations: data, run folder, size, seed, the small ViT and
    the variant's settings (not the training-only ones, nor ``skip``)."""
    small = SMALL if spec["size"] >= 64 else {"hidden_size": 32, "mlp_dim": 64, "num_heads": 2, "feature_size": 8}
    return {"dataset": "acdc", "dataset_dir": data[spec["data"]], "bundle_root": root, "image_size": spec["size"],
            "num_workers": 0, "seed": spec["seed"], **small,
            **{k: v for k, v in extra.items() if k not in TRAINING_ONLY + tuple(skip)}}


def job(spec: str, out: str, data_json: str) -> None:
    """One training with its evaluations; writes ``<out>/jobs/<name>.json``."""
    spec = json.loads(spec) if isinstance(spec, str) else spec  # fire already parses JSON arguments
    data = json.loads(data_json) if isinstance(data_json, str) else data_json
    bundle, extra = VARIANTS[spec["variant"]]
    root = os.path.join(out, "runs", spec["name"])
    training_only = {k: v for k, v in extra.items() if k in TRAINING_ONLY}
    common = _run_overrides(spec, data, root, extra)
    result = {**spec, "bundle": bundle, "overrides": extra}
    start = time.time()
    _bundle_run(bundle, "train", **common, **training_only, epochs=spec["epochs"], batch_size=8, learning_rate=3e-4,
                val_interval=1)
    result["train_s"] = time.time() - start
    history = os.path.join(root, "models", "val_per_class.json")
    result["val_history"] = json.load(open(history)) if os.path.exists(history) else None
    evals = [("tight", {})]
    if bundle != "unetr_baseline":
        evals += [(p, {"prompt": p}) for p in PROMPTS[1:]]
    if spec["variant"] == "prato_literal":
        evals.append(("tight_keep1", {"keep_ratio": 1.0}))
    result["eval"] = {}
    for tag, eo in evals:
        output_dir = os.path.join(root, f"eval_{tag}")
        _bundle_run(bundle, "evaluate", **common, **eo, output_dir=output_dir, latency_repeats=0)
        with open(os.path.join(output_dir, "metrics.json")) as f:
            m = json.load(f)
        result["eval"][tag] = {"dice": m["metrics"]["mean_dice"], "num_present": m.get("num_present"),
                               "num_images": m["num_images"], "tokens": m["tokens"], "gflops": m.get("gflops")}
    if bundle == "unetr_prato":
        result["kept_by_class"] = kept_by_class(bundle, common, os.path.join(root, "models", "model.pt"))
    result["total_s"] = time.time() - start
    os.makedirs(os.path.join(out, "jobs"), exist_ok=True)
    with open(os.path.join(out, "jobs", spec["name"] + ".json"), "w") as f:
        json.dump(result, f, indent=1)


def margins(out: str, names: str, data_json: str | None = None, settings: str = "full,0,16,32") -> None:
    """Issue 12: evaluate trained runs (``names``, comma separated, e.g. ``demo_96_s0_prato_box_m16``) on the test
    split with the tight box at each decode setting (``full`` or a margin in pixels for ``box``); prints a table
    and writes ``<out>/margins.json``."""
    names = names.split(",") if isinstance(names, str) else list(names)
    settings = settings.split(",") if isinstance(settings, str) else [str(s) for s in settings]
    data = json.loads(data_json) if data_json else {"dark": os.path.join(out, "data_dark"),
                                                    "demo": os.path.join(out, "data_demo")}
    results = {}
    for name in names:
        spec = json.load(open(os.path.join(out, "jobs", name + ".json")))
        bundle, extra = VARIANTS[spec["variant"]]
        root = os.path.join(out, "runs", name)
        common = _run_overrides(spec, data, root, extra, skip=("decode_region", "decode_margin"))
        for setting in settings:
            decode = {"decode_region": "full"} if setting == "full" else {"decode_region": "box",
                                                                          "decode_margin": int(setting)}
            output_dir = os.path.join(root, f"eval_decode_{setting}")
            _bundle_run(bundle, "evaluate", **common, **decode, output_dir=output_dir, latency_repeats=0)
            with open(os.path.join(output_dir, "metrics.json")) as f:
                m = json.load(f)
            results.setdefault(name, {})[setting] = {"dice": m["metrics"]["mean_dice"], "gflops": m.get("gflops")}
    with open(os.path.join(out, "margins.json"), "w") as f:
        json.dump(results, f, indent=1)
    classes = ["right_ventricle", "myocardium", "left_ventricle"]
    print("| run | decode | class 1 | class 2 | class 3 | mean | GFLOPs |")
    print("|---|---|---|---|---|---|---|")
    for name, by in results.items():
        for setting, r in by.items():
            label = "full" if setting == "full" else f"box, margin {setting}"
            print(f"| {name} | {label} | " + " | ".join(f"{r['dice'][c]:.3f}" for c in classes)
                  + f" | {r['dice']['mean']:.3f} | {r['gflops']:.3f} |")


def collect(out: str, dest: str | None = None) -> str:
    results = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, "jobs", "*.json")))]
    path = os.path.join(dest or out, "results.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    return path


def run(out: str, parallel: int = 8, deadline: float = 420.0, tiny: bool = False, epochs: int = 20,
        dest: str | None = None, only: str | None = None, seeds: str | Sequence[int] = (0, 1)) -> None:
    """Run the plan with ``parallel`` jobs at a time; no job starts after ``deadline`` seconds and running ones are
    stopped at ``deadline + 60``; results (and logs) are collected to ``dest`` (default ``out``)."""
    t0 = time.time()
    os.makedirs(out, exist_ok=True)
    data = make_data(out, tiny)
    print(f"data ready in {time.time() - t0:.0f} s", flush=True)
    jobs = plan(tiny, epochs, seeds)
    if only:
        keys = only.split(",") if isinstance(only, str) else [str(k) for k in only]  # fire makes "a,b" a tuple
        names = {j["name"] for j in jobs}  # a key naming a job exactly selects that job only, else every job containing it
        jobs = [j for j in jobs if any(k == j["name"] or (k not in names and k in j["name"]) for k in keys)]
    threads = os.environ.get("OMP_NUM_THREADS", "2")  # set it to 1 when other jobs share the cores
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    running: list = []
    logs = os.path.join(out, "logs")
    os.makedirs(logs, exist_ok=True)
    pending = list(jobs)
    while pending or running:
        now = time.time() - t0
        running = [(p, j, f) for p, j, f in running if p.poll() is None or (f.close() and False)]
        if now > deadline + 60:
            for p, j, f in running:
                p.kill()
                print(f"killed {j['name']} at the deadline", flush=True)
            break
        while pending and len(running) < parallel and now < deadline:
            spec = pending.pop(0)
            log = open(os.path.join(logs, spec["name"] + ".log"), "w")
            proc = subprocess.Popen([sys.executable, __file__, "job", "--spec", json.dumps(spec), "--out", out,
                                     "--data_json", json.dumps(data)], stdout=log, stderr=subprocess.STDOUT, env=env,
                                    cwd=ROOT)
            running.append((proc, spec, log))
            print(f"[{now:5.0f} s] started {spec['name']}", flush=True)
        if now >= deadline and pending:
            print(f"deadline: {len(pending)} jobs not started: {[j['name'] for j in pending]}", flush=True)
            pending = []
        time.sleep(2)
    done = {os.path.basename(p)[:-5] for p in glob.glob(os.path.join(out, "jobs", "*.json"))}
    print(f"done {len(done)}/{len(jobs)} jobs in {time.time() - t0:.0f} s; failed or missing: "
          f"{[j['name'] for j in jobs if j['name'] not in done]}", flush=True)
    path = collect(out, dest)
    with tarfile.open(os.path.join(dest or out, "logs.tar.gz"), "w:gz") as tar:
        tar.add(logs, arcname="logs")
    print(f"results: {path}", flush=True)


def table(results: str) -> None:
    """Markdown tables: per-class Dice (mean over seeds), prompts, keep 1.0, kept cells by class."""
    rows = json.load(open(results))
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["data"], r["size"], r["variant"]), []).append(r)

    def mean(vals):
        vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
        return sum(vals) / len(vals) if vals else float("nan")

    classes = ["right_ventricle", "myocardium", "left_ventricle"]
    print("| data | size | variant | seeds | epochs | class 1 | class 2 | class 3 | mean | present (c1/c2/c3 of images) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (data, size, variant), rs in sorted(groups.items()):
        d = [r["eval"]["tight"]["dice"] for r in rs]
        pres = rs[0]["eval"]["tight"].get("num_present") or {}
        seeds = ",".join(str(r["seed"]) for r in rs)
        per_seed = " / ".join(f"{r['eval']['tight']['dice']['left_ventricle']:.3f}" for r in rs)
        print(f"| {data} | {size} | {variant} | {seeds} | {rs[0]['epochs']} | "
              + " | ".join(f"{mean([x[c] for x in d]):.3f}" for c in classes)
              + f" | {mean([x['mean'] for x in d]):.3f} | "
              + "/".join(str(pres.get(c, '?')) for c in classes) + f" of {rs[0]['eval']['tight']['num_images']}"
              + f" (class 3 per seed {per_seed}) |")
    print("\nPrompt perturbations (mean Dice over classes, mean over seeds):\n")
    print("| data | size | variant | tight | oversized | partial | misleading | keep_ratio 1.0 |")
    print("|---|---|---|---|---|---|---|---|")
    for (data, size, variant), rs in sorted(groups.items()):
        if "oversized" not in rs[0]["eval"]:
            continue
        cells = [mean([r["eval"][p]["dice"]["mean"] for r in rs if p in r["eval"]]) for p in PROMPTS + ("tight_keep1",)]
        print(f"| {data} | {size} | {variant} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")
    print("\nKept fraction of grid cells by what they contain (test split, tight box, first seed of each row):\n")
    print("| data | size | variant | seed | stage | class 1 | class 2 | class 3 | in box | outside box |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (data, size, variant), rs in sorted(groups.items()):
        kb = rs[0].get("kept_by_class")
        if not kb:
            continue
        for stage, d in sorted(kb.items()):
            print(f"| {data} | {size} | {variant} | {rs[0]['seed']} | {stage} | " + " | ".join(
                f"{d.get(k):.3f}" if d.get(k) is not None else "-" for k in
                ("class1", "class2", "class3", "in_box", "outside_box")) + " |")
    print("\nValidation Dice per epoch (first seed of each row; class 1 / class 2 / class 3):\n")
    for (data, size, variant), rs in sorted(groups.items()):
        hist = rs[0].get("val_history") or []
        cells = " ".join(f"e{h['epoch']}:{h.get('right_ventricle') or 0:.2f}/{h.get('myocardium') or 0:.2f}/"
                         f"{h.get('left_ventricle') or 0:.2f}" for h in hist)
        print(f"- {data} {size} {variant}, seed {rs[0]['seed']}: {cells}")


if __name__ == "__main__":
    fire.Fire({"run": run, "job": job, "table": table, "plan": plan, "collect": collect, "margins": margins})
