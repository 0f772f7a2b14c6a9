"""The registry flow with the MLflow server's artifacts on gs:// (fake-gcs-server), proxied by the server:
clients upload and load models without any bucket credentials or emulator settings of their own."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

import kubedistill
from kubedistill.devtools.mlflow_server import MlflowServer

from .conftest import make_exported_student

BUCKET = "mlflow-artifacts"


@pytest.fixture(scope="module")
def gcs_mlflow_server(tmp_path_factory) -> Iterator[tuple[str, str]]:
    """(MLflow URL, emulator URL): a server whose --artifacts-destination is gs://BUCKET/root."""
    from google.cloud import storage

    from kubedistill.devtools.gcs_emulator import GcsEmulator

    saved = os.environ.get("STORAGE_EMULATOR_HOST")
    with GcsEmulator(log_dir=tmp_path_factory.mktemp("gcs-log")) as gcs_url:
        os.environ["STORAGE_EMULATOR_HOST"] = gcs_url
        storage.Client(project="test").create_bucket(BUCKET)
        # Only the server knows about the emulator; this (client) process must not need it.
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
        folder = tmp_path_factory.mktemp("mlflow-gcs")
        env = {"STORAGE_EMULATOR_HOST": gcs_url, "GOOGLE_CLOUD_PROJECT": "test"}
        with MlflowServer(folder, artifacts=f"gs://{BUCKET}/root", env=env) as url:
            yield url, gcs_url
    if saved is not None:
        os.environ["STORAGE_EMULATOR_HOST"] = saved


def _bucket_objects(emulator: str) -> list[str]:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": emulator})
    return [blob.name for blob in client.list_blobs(BUCKET)]


# Its own MLflow server (~15 s to start) plus two registrations: ~40 s, kept in the default suite because
# proxied gs:// artifacts are how the pipeline runs on GKE.
def test_register_and_load_with_proxied_gcs_artifacts(tmp_path, gcs_mlflow_server, monkeypatch):
    url, emulator = gcs_mlflow_server
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-key.json"))  # no credentials here
    results = []
    for name, seed, top1 in (("a", 1, 0.6), ("b", 2, 0.4)):
        model = make_exported_student(tmp_path / name, seed=seed)
        metrics = tmp_path / f"{name}.json"
        metrics.write_text(json.dumps({"linear_top1": top1}))
        results.append(kubedistill.register(model=model, metrics=metrics, name="gcs-student", tracking_uri=url))
    assert [(r.version, r.alias) for r in results] == [(1, "champion"), (2, "challenger")]

    client = MlflowClient(url)
    version = client.get_model_version_by_alias("gcs-student", "champion")
    assert version.version == "1"
    objects = _bucket_objects(emulator)
    model_files = [o for o in objects if o.endswith("data/model.pth")]
    assert len(model_files) == 2, objects  # both versions' weights live in the bucket

    mlflow.set_tracking_uri(url)
    embeddings = mlflow.pyfunc.load_model("models:/gcs-student@champion").predict(
        np.random.default_rng(0).random((3, 3, 40, 40), dtype=np.float32)
    )
    assert embeddings.shape == (3, 576)
