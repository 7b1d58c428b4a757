"""An interactive session against a real MONAI Label server through MONAI Label's own client: a box, then corrective
clicks, then the bad click requests. Run it with the MONAI Label environment's python (``tools/monailabel_env.sh``)::

    .venv-monailabel/bin/python tools/monailabel_session.py --bundle unetr_prato --clicks 3 --out session.json
    .venv-monailabel/bin/python tools/monailabel_session.py --bundle_root /runs/unetr_prato --structure all
    .venv-monailabel/bin/python tools/monailabel_session.py --image img.nii.gz --label img_gt.nii.gz -- --workers 2

It starts the server of ``monailabel_app/`` (``tools/monailabel_load.py``'s launcher; this checkout's package),
then with ``monailabel.client.MONAILabelClient``: uploads the image to the datastore (``upload_image``) and, per
structure, asks for it with its tight box from the ground truth (``infer``), then ``--clicks`` times places the next
corrective click (:func:`prato_components.engine.clicks.next_click`: the centre of the largest error region, a
foreground click on a miss, a background click on a leak) and sends the box with all clicks so far and the previous
label of the structure (``label_in``). Per step it records the Dice against the ground truth, the voxels of the
structure that changed against the previous label, whether the label changed at the click's voxel and within
``--near`` voxels of it (in-plane, on its slice) and the request's seconds. Then it sends the click cases of
``tools/bad_inputs.py`` (and a few more: a non-numeric click, a previous label of another shape or type) through
the same client and records the HTTP status and the message the client gets. It prints both as markdown tables and
writes them to ``--out`` (JSON).

The default image is one short-axis slice (a one-slice NIfTI volume, the voxel grid the app takes) of a synthetic
ACDC-like test patient (:func:`prato_components.data.make_acdc_like`): the slice with the most voxels of the
chosen structure(s). Without ``models/model.pt`` under ``--bundle_root`` the network is saved with random weights
first (said in the output): such a network need not react to clicks.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.metrics import compute_dice

try:
    from monailabel.client import MONAILabelClient
    from monailabel.client.client import MONAILabelClientException
except ImportError as missing:  # run by another python than MONAI Label's
    raise SystemExit(f"{missing}: run this tool with the MONAI Label environment's python (bash tools/monailabel_env.sh"
                     "; .venv-monailabel/bin/python tools/monailabel_session.py ...)") from None

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from prato_components.atomic import atomic_write_text  # noqa: E402 - after the repository is on the path
from prato_components.data import make_acdc_like  # noqa: E402
from prato_components.engine.clicks import FOREGROUND, next_click  # noqa: E402
from prato_components.prompts import boxes_from_label  # noqa: E402
from tools.bad_inputs import BOX as REFERENCE_BOX  # noqa: E402
from tools.bad_inputs import SERVER_CASES  # noqa: E402
from tools.monailabel_load import monailabel_server, served_bundle  # noqa: E402

# the click cases of tools/bad_inputs.py (prompts, clicks and their labels, the previous label, point_margin)
CLICK_CASES = ("click_", "points_", "point_label", "labels_no_points", "clicks_both_styles", "background_only_points",
               "label_without_clicks", "margin_", "prompt_class")
REFERENCE_SLICES = 3  # tools/bad_inputs.py's cases are written for a volume of 3 slices (indices 0 to 2)


# ---------------------------------------------------------------------------------------------- the test image
def default_case(folder: str, size: int, seed: int, structures: list[int] | None) -> tuple[str, str]:
    """One slice of the first synthetic ACDC-like test patient as a one-slice NIfTI volume, and its ground truth:
    the slice with the most voxels of ``structures`` (all classes when ``None``)."""
    written = make_acdc_like(os.path.join(folder, "acdc"), num_patients=1, num_frames=1, size=(size, size),
                             seed=seed, split="testing")
    image_path = next(p for p in written if p.endswith("_frame01.nii.gz"))
    image, truth = nib.load(image_path), nib.load(image_path.replace(".nii.gz", "_gt.nii.gz"))
    gt = np.asarray(truth.dataobj)
    chosen = np.isin(gt, structures) if structures else gt > 0
    z = int(np.argmax(chosen.sum(axis=(0, 1))))
    paths = []
    for volume, name in ((image, "image"), (truth, "label")):
        path = os.path.join(folder, f"{os.path.basename(image_path)[:-7]}_slice{z}_{name}.nii.gz")
        nib.save(volume.slicer[:, :, z:z + 1], path)  # nibabel moves the affine's origin to the slice
        paths.append(path)
    return paths[0], paths[1]


# ---------------------------------------------------------------------------------------------- one session
def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two binary masks (1 when both are empty), MONAI's ``compute_dice``."""
    return float(compute_dice(torch.as_tensor(a, dtype=torch.float32)[None, None],
                              torch.as_tensor(b, dtype=torch.float32)[None, None], ignore_empty=False))


def near(point: tuple[int, ...], shape: tuple[int, ...], radius: int) -> tuple[slice, ...]:
    """The voxels within ``radius`` of ``point`` in-plane (axes 0 and 1), on the point's slice for a volume."""
    window = [slice(max(p - radius, 0), min(p + radius + 1, s)) for p, s in zip(point[:2], shape[:2])]
    return tuple(window + [slice(p, p + 1) for p in point[2:]])


def _infer(client: MONAILabelClient, model: str, image_id: str, params: dict,
           label_in: str | None) -> tuple[np.ndarray, float]:
    """The label the server returns for one request and the request's seconds (the label file is removed)."""
    start = time.perf_counter()
    path, _result = client.infer(model, image_id, dict(params), label_in=label_in)  # the client adds client_id
    seconds = time.perf_counter() - start
    try:
        return np.asarray(nib.load(path).dataobj), seconds
    finally:
        os.remove(path)


def click_params(points: list[list[int]], point_labels: list[int], keys: str) -> dict[str, list]:
    """The clicks as request parameters: VISTA3D's ``points`` + ``point_labels`` (``keys`` ``"vista3d"``) or
    DeepEdit's ``foreground`` / ``background`` (``"deepedit"``; an empty list is left out)."""
    if keys == "vista3d":
        return {"points": points, "point_labels": point_labels}
    split = {"foreground": [p for p, k in zip(points, point_labels) if k == FOREGROUND],
             "background": [p for p, k in zip(points, point_labels) if k != FOREGROUND]}
    return {key: value for key, value in split.items() if value}


def run_session(client: MONAILabelClient, model: str, image_id: str, truth: nib.Nifti1Image, structure: int,
                clicks: int, folder: str, radius: int = 3, previous_label: bool = True, keys: str = "vista3d",
                ) -> dict[str, Any]:
    """One structure: its tight box, then ``clicks`` corrective clicks (each request: the box, every click so far
    in the spelling ``keys`` (:func:`click_params`), the structure as ``prompt_class``, and the previous label of the
    structure via ``label_in`` unless ``previous_label`` is false). The record of each step: Dice, changed voxels, a
    change at / near the click, the seconds; a note when the label did not change near the click or when no error was
    left to click on."""
    gt = np.asarray(truth.dataobj) == structure
    box = np.asarray(boxes_from_label(gt.astype(np.uint8), spatial_dims=gt.ndim)).reshape(-1).tolist()
    label, seconds = _infer(client, model, image_id, {"box": box}, None)
    mask = label == structure
    steps: list[dict[str, Any]] = [{"step": 0, "prompt": "box", "dice": dice(mask, gt), "seconds": seconds}]
    points: list[list[int]] = []
    point_labels: list[int] = []
    previous_path = os.path.join(folder, f"previous_{structure}.nii.gz")
    for step in range(1, clicks + 1):
        click = next_click(mask, gt)
        if click is None:
            steps.append({"step": step, "prompt": "none", "dice": steps[-1]["dice"],
                          "note": "no error left: no click placed, no request sent"})
            continue
        points.append(list(click.point))
        point_labels.append(click.label)
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), truth.affine), previous_path)
        params = {"box": box, **click_params(points, point_labels, keys), "prompt_class": structure}
        label, seconds = _infer(client, model, image_id, params, previous_path if previous_label else None)
        new = label == structure
        changed = new != mask
        record = {"step": step, "prompt": "box + clicks",
                  "click": {"point": list(click.point),
                            "label": "foreground" if click.label == FOREGROUND else "background"},
                  "dice": dice(new, gt), "changed_voxels": int(changed.sum()),
                  "changed_at_click": bool(changed[click.point]),
                  "changed_near_click": bool(changed[near(click.point, changed.shape, radius)].any()),
                  "seconds": seconds}
        if not record["changed_near_click"]:
            record["note"] = (f"the label did not change within {radius} voxels of the click"
                              + ("" if record["changed_voxels"] else " (nor anywhere)"))
        steps.append(record)
        mask = new
    return {"structure": structure, "box": box, "steps": steps}


# ---------------------------------------------------------------------------------------------- bad requests
def _on_image(value: Any, box: list[float], depth: int | None) -> Any:
    """A bad case's parameter moved onto the session's image: ``tools/bad_inputs.py``'s box becomes the session's
    box, and a click's slice index inside that tool's 3-slice volume becomes at most the image's last slice (a
    slice index outside it stays outside)."""
    if value == REFERENCE_BOX:
        return box
    if isinstance(value, list) and value and all(isinstance(p, list) for p in value) and depth is not None:
        return [p[:2] + [min(p[2], depth - 1)] + p[3:]
                if len(p) == 3 and type(p[2]) in (int, float) and 0 <= p[2] < REFERENCE_SLICES else p for p in value]
    return value


def bad_requests(box: list[float], shape: tuple[int, ...], folder: str
                 ) -> list[tuple[str, str, dict, str | None]]:
    """``(name, what, params, label file)`` of every bad click request: the click cases of ``tools/bad_inputs.py``
    on the session's image, a non-numeric click and previous labels of another shape and type."""
    depth = shape[2] if len(shape) == 3 else None
    centre = [int(box[0] + box[len(box) // 2]) // 2, int(box[1] + box[len(box) // 2 + 1]) // 2] + [0] * (len(shape) - 2)
    previous = os.path.join(folder, "previous_ok.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(shape, np.uint8), np.eye(4)), previous)
    small = os.path.join(folder, "previous_small.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((shape[0] // 2, shape[1] // 2, *shape[2:]), np.uint8), np.eye(4)), small)
    text = os.path.join(folder, "previous.txt")
    with open(text, "w") as f:
        f.write("not a label")
    cases = []
    for case in SERVER_CASES:
        if case.name.startswith(CLICK_CASES):
            params = {key: _on_image(value, box, depth) for key, value in case.params.items()}
            label = previous if params.pop("label", None) else None  # the previous label goes as a file
            cases.append((case.name, case.what, params, label))
    cases += [
        ("click_word", "a word in a click", {"box": box, "foreground": [[centre[0], "a", *centre[2:]]]}, None),
        ("label_other_shape", "a previous label of another shape",
         {"box": box, "foreground": [centre]}, small),
        ("label_text", "a previous label that is a text file", {"box": box, "foreground": [centre]}, text),
    ]
    return cases


def client_error(error: MONAILabelClientException) -> tuple[int | None, str]:
    """The HTTP status and the server's ``detail`` from what the client raises (``infer`` puts both into ``msg``
    only: ``Status: 422; Response: {"detail": ...}``)."""
    status = getattr(error, "status_code", None)
    found = re.match(r"Status: (\d+); Response: (.*)", str(error.msg), re.S)
    if found is None:
        return status, str(error.msg)
    try:
        detail = json.loads(found.group(2)).get("detail", found.group(2))
    except (ValueError, AttributeError):
        detail = found.group(2)
    return status or int(found.group(1)), str(detail)


def send_bad_requests(client: MONAILabelClient, model: str, image_id: str,
                      cases: list[tuple[str, str, dict, str | None]]) -> list[dict[str, Any]]:
    """Each bad case through ``client.infer``: the status and message the client gets (200 when it succeeded)."""
    out = []
    for name, what, params, label in cases:
        try:
            path, _ = client.infer(model, image_id, dict(params), label_in=label)  # the client adds client_id
            os.remove(path)
            status, message = 200, "label returned"
        except MONAILabelClientException as error:
            status, message = client_error(error)
        out.append({"name": name, "what": what, "params": params,
                    "label_in": os.path.basename(label) if label else None, "status": status, "message": message})
    return out


# ---------------------------------------------------------------------------------------------- the report
def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown(result: dict[str, Any]) -> str:
    """The sessions and the bad requests as markdown tables."""
    lines = ["| structure | step | prompt | click | Dice | changed voxels | changed at / near click | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for session in result["sessions"]:
        for s in session["steps"]:
            click = s.get("click")
            where = "" if click is None else f"{s['changed_at_click']} / {s['changed_near_click']}"
            what = "" if click is None else f"{click['label']} {tuple(click['point'])}"
            lines.append(f"| {session['name']} | {s['step']} | {s['prompt']} | {what} | {s['dice']:.4f} | "
                         f"{s.get('changed_voxels', '')} | {where} | {s.get('seconds', 0):.2f} |")
    lines += ["", "| request | what | status | message |", "|---|---|---|---|"]
    lines += [f"| {r['name']} | {_cell(r['what'])} | {r['status']} | {_cell(r['message'])} |"
              for r in result["bad_requests"]]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main
def session(args: argparse.Namespace, work: str) -> dict[str, Any]:
    """Start the server, run the sessions and the bad requests; the result (see the module docstring)."""
    overrides = json.loads(args.overrides)
    bundles = os.path.join(work, "bundles")
    fresh = served_bundle(args.bundle_root or os.path.join(ROOT, "bundles", args.bundle), bundles, args.bundle,
                          overrides)
    structures = None if args.structure == "all" else [int(args.structure)]
    if args.image is None:
        image, label = default_case(work, args.size, args.seed, structures)
    else:
        image, label = args.image, args.label
    truth = nib.load(label)
    present = sorted(int(c) for c in np.unique(np.asarray(truth.dataobj)) if c > 0)
    structures = structures or present
    missing = [c for c in structures if c not in present]
    if missing:
        raise ValueError(f"--structure {missing[0]} is not in the ground truth {label} (classes {present})")
    studies, folder = os.path.join(work, "studies"), os.path.join(work, "client")
    os.makedirs(studies)
    os.makedirs(folder)
    conf = {"models": args.bundle, **({"bundle_overrides": json.dumps(overrides)} if overrides else {})}
    result: dict[str, Any] = {
        "bundle": args.bundle, "bundle_root": args.bundle_root or os.path.join(ROOT, "bundles", args.bundle),
        "weights": "random (no models/model.pt: saved fresh, seed 0)" if fresh else "models/model.pt",
        "image": image if args.image else f"synthetic ACDC-like test slice {os.path.basename(image)}",
        "image_shape": list(nib.load(image).shape), "clicks": args.clicks, "previous_label": not args.no_previous_label,
        "near_voxels": args.near, "click_keys": args.click_keys}
    start = time.monotonic()
    with monailabel_server(args.python, studies, bundles, os.path.join(work, "server.log"), conf, args.server_args,
                           cwd=work, env={"PYTHONPATH": ROOT}, startup_timeout=args.timeout) as (base, info, server):
        result["server"] = " ".join(server.args[1:])
        result["startup_s"] = round(time.monotonic() - start, 1)
        names = {index: name for name, index in info["models"][args.bundle]["labels"].items()}
        client = MONAILabelClient(base, tmpdir=folder)
        image_id = client.upload_image(image, image_id="session_image")["image"]
        result["sessions"] = []
        for c in structures:
            record = run_session(client, args.bundle, image_id, truth, c, args.clicks, folder, args.near,
                                 not args.no_previous_label, args.click_keys)
            result["sessions"].append({"name": names.get(c, str(c)), **record})
        box = result["sessions"][0]["box"]
        result["bad_requests"] = send_bad_requests(client, args.bundle, image_id,
                                                   bad_requests(box, tuple(truth.shape), folder))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="unetr_prato", help="the served name (and the repository's bundle)")
    parser.add_argument("--bundle_root", default=None, help="a bundle folder with models/model.pt (default: the "
                                                            "repository's bundle; random weights without one)")
    parser.add_argument("--image", default=None, help="a NIfTI image (default: a synthetic ACDC-like test slice)")
    parser.add_argument("--label", default=None, help="its ground-truth label (with --image)")
    parser.add_argument("--structure", default="1", help="the class to refine, or 'all' (each in turn)")
    parser.add_argument("--clicks", type=int, default=3)
    parser.add_argument("--near", type=int, default=3, help="voxels around a click that count as 'near' it")
    parser.add_argument("--no_previous_label", action="store_true", help="do not send the previous label")
    parser.add_argument("--click_keys", choices=("vista3d", "deepedit"), default="vista3d",
                        help="send clicks as points + point_labels (VISTA3D) or foreground / background (DeepEdit)")
    parser.add_argument("--size", type=int, default=128, help="in-plane size of the synthetic image")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument("--overrides", default="{}", help="JSON bundle overrides (given to the server)")
    parser.add_argument("--out", default=None, help="the JSON file to write (atomically)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the server to start")
    parser.add_argument("--python", default=sys.executable, help="the python that runs the server")
    parser.add_argument("server_args", nargs="*", help="after --: extra start_server arguments (--workers 2 ...)")
    args = parser.parse_args()
    if (args.image is None) != (args.label is None):
        parser.error("--image and --label go together")
    if args.structure != "all" and not args.structure.isdigit():
        parser.error(f"--structure must be a class number or 'all', got {args.structure!r}")
    if args.clicks < 0:
        parser.error(f"--clicks must be >= 0, got {args.clicks}")
    for path in filter(None, (args.image, args.label)):
        if not path.lower().endswith((".nii", ".nii.gz")) or not os.path.isfile(path):
            parser.error(f"--image / --label must be NIfTI files (.nii, .nii.gz), got {path!r}")
    if args.image and nib.load(args.image).shape[:3] != nib.load(args.label).shape:
        parser.error(f"--label {nib.load(args.label).shape} must have the shape of --image "
                     f"{nib.load(args.image).shape[:3]}")

    work = tempfile.mkdtemp(prefix="prato_session_")
    try:
        result = session(args, work)
    except (RuntimeError, ValueError) as error:
        print(error, file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{result['bundle']} ({result['weights']}), image {result['image']} {result['image_shape']}, server "
          f"started in {result['startup_s']} s\n")
    print(markdown(result))
    if args.out:
        atomic_write_text(json.dumps(result, indent=1) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
