"""multi_gpu_train.json under torchrun with 2 CPU processes (gloo): the data is split, only rank 0 writes and logs."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys

import pytest
from conftest import BUNDLES, ROOT, read_json, tiny_overrides


@pytest.mark.parametrize("bundle", BUNDLES)
def test_overlay_keeps_resume_on_every_rank(bundle):
    overlay = read_json(os.path.join(ROOT, "bundles", bundle, "configs", "multi_gpu_train.json"))
    handlers = overlay["train#trainer#train_handlers"]
    assert "StatsHandler" in handlers and "[:" not in handlers  # ranks > 0 drop logging, never TrainingCheckpoint
    assert overlay["train#sampler"]["_target_"] == "DistributedSampler"


@pytest.mark.slow
def test_torchrun_two_processes_gloo(acdc_dir, tmp_path):
    configs = os.path.join(ROOT, "bundles", "unetr_prato", "configs")
    # test-only overlay: each rank records its sampler's indices and gets its own checkpoint folder, so the test
    # sees who writes what (in real runs all ranks share ckpt_dir: rank 0 writes, every rank resumes from it)
    probe = tmp_path / "probe.json"
    probe.write_text(json.dumps({
        "ckpt_dir": "$os.path.join(@bundle_root, 'models_rank' + os.environ['RANK'])",
        "+initialize": [
            "$import json",
            "$open(os.path.join(@bundle_root, 'indices_rank' + os.environ['RANK'] + '.json'), 'w')"
            ".write(json.dumps([int(i) for i in @train#sampler]))",
        ],
    }))
    root = str(tmp_path / "root")
    batch = 2
    overrides = {**tiny_overrides("unetr_prato"), "batch_size": batch, "epochs": 1}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "monai.bundle", "run",
        "--config_file", str([os.path.join(configs, "train.json"), os.path.join(configs, "multi_gpu_train.json"),
                              str(probe)]),
        "--meta_file", os.path.join(configs, "metadata.json"), "--logging_file", os.path.join(configs, "logging.conf"),
        "--bundle_root", root, "--dataset_dir", acdc_dir,
        *[f"--{k}={json.dumps(v)}" for k, v in overrides.items()],
    ]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    # own process group: on a timeout the launcher and both workers are stopped together
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               cwd=str(tmp_path), start_new_session=True)
    try:
        log, _ = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        # SIGTERM: torchrun's agent stops its workers (they run in sessions of their own, out of reach of killpg;
        # killed launcher, they would keep the log pipe open and this test would wait for them forever)
        os.killpg(process.pid, signal.SIGTERM)
        log, _ = process.communicate(timeout=60)
        pytest.fail(f"torchrun did not finish in 300 s:\n{log[-4000:]}")
    assert process.returncode == 0, log[-4000:]

    # DistributedSampler: disjoint halves of the training set (even_divisible may repeat one item)
    n_train = len(read_json(os.path.join(root, "models_rank0", "datalist_acdc.json"))["training"])
    indices = [read_json(os.path.join(root, f"indices_rank{r}.json")) for r in (0, 1)]
    per_rank = math.ceil(n_train / 2)
    assert [len(i) for i in indices] == [per_rank, per_rank]
    assert set(indices[0]) | set(indices[1]) == set(range(n_train))
    assert len(set(indices[0]) & set(indices[1])) == 2 * per_rank - n_train

    # only rank 0 writes checkpoints
    for name in ("last.pt", "model.pt", "model_final.pt"):
        assert os.path.isfile(os.path.join(root, "models_rank0", name)), name
        assert not os.path.exists(os.path.join(root, "models_rank1", name)), name

    # only rank 0 logs: each iteration of the (halved) epoch once, one metrics line
    iterations = math.ceil(per_rank / batch)
    assert iterations < math.ceil(n_train / batch)
    logged = re.findall(r"Epoch: 1/1, Iter: (\d+)/(\d+) -- train_loss", log)
    assert sorted(int(i) for i, _ in logged) == list(range(1, iterations + 1)), logged
    assert {int(n) for _, n in logged} == {iterations}
    assert len(re.findall(r"Epoch\[1\] Metrics", log)) == 1
