"""Load test of the MONAI Label app: N concurrent ``/infer`` requests on 127.0.0.1, an ``/info/`` probe meanwhile.

Starts the server (``.venv-monailabel``), waits for ``/info/``, sends ``--requests`` box-prompted requests at once
(one thread each), probes ``/info/`` every second while they run, measures the resident memory (RSS) of every
server process at the end, stops the server and prints one JSON object::

    python tools/monailabel_load.py --bundle unetr_prato --requests 20                       # one process
    python tools/monailabel_load.py --bundle unetr_prato --requests 20 -- --workers 2       # 2 uvicorn workers
    python tools/monailabel_load.py --bundle unetr_prato --requests 20 -- --conf infer_concurrency 2

Without ``models/model.pt`` in the bundle, the network is saved with random weights first (same size and cost as a
trained one; the load test does not look at the labels). The image is a synthetic volume (``--shape``), the box
covers its middle.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


APP = os.path.join(ROOT, "monailabel_app")


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart_post(url: str, content: bytes, filename: str, params: dict, timeout: float,
                   label: tuple[str, bytes] | None = None) -> tuple[int, bytes, float]:
    """``multipart/form-data`` POST of a file and ``params`` (what MONAI Label's ``/infer`` takes), and the previous
    label ``(filename, content)`` as form field ``label`` when given: the HTTP status (0 when the request was refused
    or timed out), the body and the seconds it took."""
    boundary = uuid.uuid4().hex
    files = [("file", filename, content)] + ([("label", *label)] if label else [])
    body = f"--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{json.dumps(params)}\r\n".encode()
    for field, name, data in files:
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
                 "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    start = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, answer = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, answer = error.code, error.read()
    except Exception:  # noqa: BLE001 - a refused or timed-out request counts as a failure
        status, answer = 0, b""
    return status, answer, time.monotonic() - start


@contextlib.contextmanager
def monailabel_server(
    python: str,
    studies: str,
    bundles: str,
    log_path: str,
    conf: dict[str, str] | None = None,
    extra: Sequence[str] = (),
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    startup_timeout: float = 600,
    app: str = APP,
) -> Iterator[tuple[str, dict, subprocess.Popen]]:
    """A MONAI Label server of the app serving ``bundles`` on 127.0.0.1 (its own process group, log at
    ``log_path``); yields (base url, ``/info/`` at start, the process) and stops the whole group on exit.
    ``conf``: more ``--conf key value`` pairs; ``extra``: more ``start_server`` arguments; ``env``: variables set
    for the server (PYTHONPATH is always removed). ``RuntimeError`` with the log's tail if it does not start."""
    port = free_port()
    conf_args = [arg for key, value in (conf or {}).items() for arg in ("--conf", key, value)]
    command = [python, "-m", "monailabel.main", "start_server", "--app", app, "--studies", studies,
               "--conf", "bundles", bundles, *conf_args, "--conf", "zoo_source", "github", "--conf", "sam2", "false",
               "--host", "127.0.0.1", "--port", str(port), *extra]
    server_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    server_env.update(env or {})
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=server_env,
                                  start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, info = time.monotonic() + startup_timeout, None
        while info is None and time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"{base}/info/", timeout=5) as response:
                    info = json.loads(response.read())
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1)
        if info is None:
            with open(log_path) as f:
                raise RuntimeError(f"the MONAI Label server did not start:\n{f.read()[-4000:]}")
        yield base, info, server
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def served_bundle(source: str, bundles: str, name: str, overrides: dict) -> bool:
    """Copy the bundle folder ``source`` to ``<bundles>/<name>``; without ``models/model.pt`` the network built
    with ``overrides`` is saved there with random weights (seed 0) first. ``True`` when the weights were made."""
    import torch
    from monai.bundle import ConfigParser

    target = os.path.join(bundles, name)
    shutil.copytree(source, target)
    weights = os.path.join(target, "models", "model.pt")
    if os.path.isfile(weights):
        return False
    os.makedirs(os.path.dirname(weights), exist_ok=True)
    parser = ConfigParser()
    parser.read_config(os.path.join(target, "configs", "inference.json"))
    for key, value in overrides.items():
        parser[key] = value
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), weights)
    return True


def _prepare(args, work: str) -> tuple[str, dict, bytes]:
    """The bundles folder (the bundle with weights), the overrides and the image file's bytes."""
    import nibabel as nib
    import numpy as np

    bundles = os.path.join(work, "bundles")
    overrides = json.loads(args.overrides)
    served_bundle(os.path.join(ROOT, "bundles", args.bundle), bundles, args.bundle, overrides)
    shape = [int(s) for s in args.shape.split(",")]
    rng = np.random.default_rng(0)
    image = os.path.join(work, "image.nii.gz")
    nib.save(nib.Nifti1Image(rng.normal(size=shape).astype(np.float32), np.eye(4)), image)
    with open(image, "rb") as f:
        return bundles, overrides, f.read()


def _load(base: str, args, content: bytes) -> dict:
    """``args.requests`` concurrent box-prompted ``/infer`` requests, ``/info/`` probed every second meanwhile."""
    w, h, d = (int(s) for s in args.shape.split(","))
    params = {"box": [w // 4, h // 4, 0, 3 * w // 4, 3 * h // 4, d]}
    url = f"{base}/infer/{args.bundle}?output=image"
    outcomes: list[tuple[int, float]] = []

    def request() -> None:
        status, _body, seconds = multipart_post(url, content, "image.nii.gz", params, args.timeout)
        outcomes.append((status, seconds))

    threads = [threading.Thread(target=request) for _ in range(args.requests)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    probes = []
    while any(t.is_alive() for t in threads):
        time.sleep(1.0)
        p0 = time.monotonic()
        try:
            with urllib.request.urlopen(f"{base}/info/", timeout=args.timeout) as response:
                response.read()
            probes.append(time.monotonic() - p0)
        except Exception:  # noqa: BLE001
            probes.append(float("inf"))
    for t in threads:
        t.join()
    latencies = sorted(s for _, s in outcomes)
    return {
        "wall_s": round(time.monotonic() - t0, 1),
        "succeeded": sum(status == 200 for status, _ in outcomes),
        "statuses": sorted({status for status, _ in outcomes}),
        "latency_s": {"min": round(latencies[0], 2), "median": round(statistics.median(latencies), 2),
                      "max": round(latencies[-1], 2)},
        "info_probe_s": {"count": len(probes), "first": round(probes[0], 3) if probes else None,
                         "max": round(max(probes), 3) if probes else None},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="unetr_prato")
    parser.add_argument("--overrides", default="{}", help="JSON bundle overrides (also given to the server)")
    parser.add_argument("--shape", default="128,128,8", help="synthetic NIfTI volume shape")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=600, help="seconds per request")
    parser.add_argument("--app", default=APP, help="the MONAI Label app folder")
    parser.add_argument("--python", default=os.path.join(ROOT, ".venv-monailabel", "bin", "python"))
    parser.add_argument("server_args", nargs="*", help="after --: extra start_server arguments (--workers 2 ...)")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="prato_load_")
    bundles, overrides, content = _prepare(args, work)
    studies = os.path.join(work, "studies")
    os.makedirs(studies)
    result: dict = {"requests": args.requests, "shape": args.shape}
    conf = {"models": args.bundle, "bundle_overrides": json.dumps(overrides)}
    try:
        start = time.monotonic()
        with monailabel_server(args.python, studies, bundles, os.path.join(work, "server.log"), conf,
                               args.server_args, cwd=work, app=args.app) as (base, _info, server):
            result["command"] = " ".join(server.args[1:])
            result["startup_s"] = round(time.monotonic() - start, 1)
            result.update(_load(base, args, content))
            result["processes"] = [{"pid": p, "rss_mib": round(_rss_mib(p) or 0), "cmd": _cmdline(p)[:120]}
                                   for p in _tree(server.pid)]
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))
    return 0 if result.get("succeeded") == args.requests else 2


if __name__ == "__main__":
    sys.exit(main())
