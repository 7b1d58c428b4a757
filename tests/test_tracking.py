"""`monai.bundle run ... --tracking mlflow` for train and evaluate, with a local SQLite tracking store."""

from __future__ import annotations

import os

import pytest
from conftest import run_bundle

mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed (pip install -e '.[tracking]')")
pytest.importorskip("sqlalchemy", reason="MLflow's local SQLite store needs sqlalchemy (pip install -e '.[tracking]')")


def test_train_and_evaluate_are_tracked(acdc_dir, tmp_path):
    from monai.utils import path_to_sqlite_uri

    root = str(tmp_path / "bundle")
    uri = path_to_sqlite_uri(str(tmp_path / "tracking" / "mlruns.db"))
    os.makedirs(tmp_path / "tracking")
    tracking = {"tracking": "mlflow", "tracking_uri": uri, "experiment_name": "prato_tracking_test"}
    run_bundle("unetr_prato", "train", root, dataset_dir=acdc_dir, epochs=1, **{"train#trainer#epoch_length": 2},
               **tracking)
    run_bundle("unetr_prato", "evaluate", root, dataset_dir=acdc_dir, latency_repeats=0, **tracking)

    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("prato_tracking_test")
    runs = client.search_runs([experiment.experiment_id])
    metrics = [set(run.data.metrics) for run in runs]
    assert len(runs) == 2
    assert any({"train_loss", "val_mean_dice", "val_token_sparsity"} <= m for m in metrics), metrics  # train.json
    assert any({"mean_dice", "mean_iou", "hd95", "token_sparsity"} <= m for m in metrics), metrics  # evaluate.json
    assert all(client.list_artifacts(run.info.run_id) for run in runs)  # the executed config is logged
