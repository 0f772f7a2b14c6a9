"""Registration against a real MLflow server: versions, the champion/challenger gate, idempotency, loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

import kubedistill
from kubedistill.errors import ConfigError
from kubedistill.models.export import load_student
from kubedistill.tracking.model import EmbeddingModel
from kubedistill.tracking.runs import TrackingError

from .conftest import make_exported_student

KUBEDISTILL = Path(sys.executable).with_name("kubedistill")


def _candidate(root: Path, name: str, *, seed: int, top1: float) -> tuple[Path, Path]:
    """An exported student with a training config.yaml, a validated manifest's report, and probe metrics."""
    out = root / name
    model = make_exported_student(out, seed=seed)
    data = root / "data" / "manifest.jsonl"
    data.parent.mkdir(exist_ok=True)
    data.write_text("")
    (data.parent / "report.json").write_text(json.dumps({"fingerprint": "fp-1234"}))
    config = {"model": "torchvision/mobilenet_v3_small", "method": "distillation", "data": str(data),
              "method_args": {"teacher": "dinov2/vits14"}, "epochs": 3, "out": str(out)}  # fmt: skip
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    metrics = root / f"{name}-metrics.json"
    metrics.write_text(json.dumps({"linear_top1": top1, "linear_top5": 1.0, "knn_top1": top1 - 0.05}))
    return model, metrics


def _register(model: Path, metrics: Path, name: str, url: str, **kwargs):
    return kubedistill.register(model=model, metrics=metrics, name=name, tracking_uri=url, **kwargs)


def test_gate_versions_aliases_idempotency_and_loading(tmp_path, mlflow_server, monkeypatch):
    client = MlflowClient(mlflow_server)
    parent = client.create_run(client.create_experiment("pipeline-runs"), run_name="pipeline").info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", parent)  # as the KFP MLflow plugin sets it
    first, first_metrics = _candidate(tmp_path, "first", seed=1, top1=0.60)
    worse, worse_metrics = _candidate(tmp_path, "worse", seed=2, top1=0.40)
    better, better_metrics = _candidate(tmp_path, "better", seed=3, top1=0.75)

    r1 = _register(first, first_metrics, "student-gate", mlflow_server)
    assert (r1.version, r1.alias, r1.created, r1.champion_version) == (1, "champion", True, 1)
    r2 = _register(worse, worse_metrics, "student-gate", mlflow_server)
    assert (r2.version, r2.alias, r2.champion_version) == (2, "challenger", 1)
    assert client.get_model_version_by_alias("student-gate", "champion").version == "1"
    assert client.get_model_version_by_alias("student-gate", "challenger").version == "2"
    r3 = _register(better, better_metrics, "student-gate", mlflow_server)
    assert (r3.version, r3.alias, r3.champion_version) == (3, "champion", 3)
    again = _register(better, better_metrics, "student-gate", mlflow_server)
    assert (again.version, again.alias, again.created) == (3, "champion", False)
    first_again = _register(first, first_metrics, "student-gate", mlflow_server)  # was champion, not any more
    assert (first_again.version, first_again.alias, first_again.created) == (1, "challenger", False)
    assert len(client.search_model_versions("name='student-gate'")) == 3

    tags = client.get_model_version("student-gate", "3").tags
    assert tags["kubedistill.dataset_fingerprint"] == "fp-1234"
    assert tags["kubedistill.teacher"] == "dinov2/vits14"
    assert tags["kubedistill.student"] == "torchvision/mobilenet_v3_small"
    assert tags["kubedistill.method"] == "distillation"
    assert len(tags["kubedistill.config_hash"]) == 16
    assert tags["kubedistill.pipeline_run_id"] == parent
    assert float(tags["probe.linear_top1"]) == 0.75
    # The register step's run is nested under the pipeline's run.
    version = client.get_model_version("student-gate", "3")
    assert client.get_run(version.run_id).data.tags["mlflow.parentRunId"] == parent

    images = np.random.default_rng(0).random((2, 3, 50, 60), dtype=np.float32)
    mlflow.set_tracking_uri(mlflow_server)
    pyfunc = mlflow.pyfunc.load_model("models:/student-gate@champion")
    embeddings = pyfunc.predict(images)
    assert embeddings.shape == (2, 576)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    expected = EmbeddingModel(load_student(better))(torch.from_numpy(images))
    np.testing.assert_allclose(embeddings, expected.detach().numpy(), atol=1e-5)
    module = mlflow.pytorch.load_model("models:/student-gate@champion")
    assert isinstance(module, torch.jit.ScriptModule)  # a program: no kubedistill class to unpickle


# Run in a fresh interpreter that cannot import kubedistill: what a serving image with torch and MLflow has.
_SERVE_WITHOUT_KUBEDISTILL = """
import importlib.abc, os, sys

class NoKubedistill(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] == "kubedistill":
            raise ModuleNotFoundError("kubedistill is not installed in this image")
        return None

sys.meta_path.insert(0, NoKubedistill())
sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "kubedistill"))]
import mlflow
import numpy as np

mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model("models:/student-serve@champion")
np.save(sys.argv[3], model.predict(np.load(sys.argv[2])))
print("imported:", sorted(m for m in sys.modules if m.partition(".")[0] in ("kubedistill", "torchvision")))
"""


def test_registered_model_serves_with_torch_and_mlflow_alone(tmp_path, mlflow_server):
    model, metrics = _candidate(tmp_path, "serve", seed=7, top1=0.6)
    _register(model, metrics, "student-serve", mlflow_server)
    images = np.random.default_rng(1).random((3, 3, 45, 70), dtype=np.float32)
    np.save(tmp_path / "images.npy", images)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-c", _SERVE_WITHOUT_KUBEDISTILL, mlflow_server, tmp_path / "images.npy",
         tmp_path / "embeddings.npy"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "imported: []" in result.stdout  # neither kubedistill nor torchvision was needed
    expected = EmbeddingModel(load_student(model))(torch.from_numpy(images)).detach().numpy()
    np.testing.assert_allclose(np.load(tmp_path / "embeddings.npy"), expected, atol=1e-5)


def test_served_preprocessing_is_the_probes(tmp_path):
    """The scripted resize and crop match torchvision's (float input, exactly) and the probe's EvalTransform
    (uint8 input: torchvision resizes uint8 with its own integer kernel, so within a small tolerance)."""
    import torchvision.transforms.v2.functional as TF

    from kubedistill.data.transforms import EvalTransform
    from kubedistill.tracking.model import compile_for_serving

    student = load_student(make_exported_student(tmp_path, seed=8, size=40))
    program = compile_for_serving(student)
    mean, std = torch.tensor(student.metadata.mean).view(1, 3, 1, 1), torch.tensor(student.metadata.std).view(1, 3, 1, 1)
    for height, width in ((40, 40), (61, 97), (130, 47)):  # odd margins test the crop's rounding
        images = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(height))
        reference = TF.center_crop(TF.resize(images, [round(40 / 0.875)], antialias=True), [40, 40])
        with torch.no_grad():
            expected = torch.nn.functional.normalize(student((reference - mean) / std), dim=1)
            assert torch.allclose(program(images), expected, atol=1e-5)
            pixels = (images * 255).round().to(torch.uint8)
            probe = torch.nn.functional.normalize(student(torch.stack([EvalTransform(40)(p) for p in pixels])), dim=1)
            cosine = (program(pixels) * probe).sum(dim=1)
        assert cosine.min() > 0.999, cosine


def test_below_min_top1_is_challenger_even_without_champion(tmp_path, mlflow_server):
    model, metrics = _candidate(tmp_path, "weak", seed=4, top1=0.30)
    result = _register(model, metrics, "student-min", mlflow_server, min_top1=0.5)
    assert (result.version, result.alias, result.champion_version) == (1, "challenger", None)
    assert "below min_top1=0.5" in result.reason
    # Another metric of metrics.json can drive the gate.
    other, other_metrics = _candidate(tmp_path, "knn", seed=5, top1=0.60)
    by_knn = _register(other, other_metrics, "student-min", mlflow_server, min_top1=0.5, metric="knn_top1")
    assert (by_knn.alias, by_knn.value) == ("champion", pytest.approx(0.55))


def test_cli_prints_version_and_alias_as_json(tmp_path, mlflow_server):
    model, metrics = _candidate(tmp_path, "cli", seed=6, top1=0.5)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MLFLOW_TRACKING_URI": mlflow_server}
    result = subprocess.run(
        [str(KUBEDISTILL), "register", f"model={model}", f"metrics={metrics}", "name=student-cli", "min_top1=0.1"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert (printed["name"], printed["version"], printed["alias"], printed["created"]) == ("student-cli", 1, "champion", True)


def test_invalid_arguments_are_all_reported(tmp_path):
    with pytest.raises(ConfigError) as raised:
        kubedistill.register(model=tmp_path / "none.pt", metrics=tmp_path / "none.json", name="bad name!", min_top1=2.0)
    text = str(raised.value)
    assert "4 configuration problem(s)" in text
    assert "model:" in text and "metrics:" in text and "name:" in text and "min_top1:" in text


def test_unknown_metric_names_the_numeric_keys(tmp_path, mlflow_server):
    model, metrics = _candidate(tmp_path, "m", seed=7, top1=0.5)
    with pytest.raises(ConfigError, match="'top1' is not a number .* numeric keys: linear_top1, linear_top5, knn_top1"):
        _register(model, metrics, "student-x", mlflow_server, metric="top1")


class _Unhealthy(BaseHTTPRequestHandler):
    hits: Counter = Counter()

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        _Unhealthy.hits[self.path] += 1
        self.send_error(503)

    def log_message(self, *args: object) -> None:
        pass


def test_server_down_fails_clearly_after_bounded_retries(tmp_path):
    model, metrics = _candidate(tmp_path, "down", seed=8, top1=0.5)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Unhealthy)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        with pytest.raises(TrackingError, match=rf"MLflow server at {url} is not reachable after 3 attempt\(s\)"):
            _register(model, metrics, "student-down", url, mlflow={"connect_retries": 3, "connect_backoff_s": 0.05})
    finally:
        httpd.shutdown()
    assert _Unhealthy.hits["/health"] == 3
    # Nothing listening at all: the same clear error, and the CLI exits 1 with it.
    closed = f"http://127.0.0.1:{_closed_port()}"
    result = subprocess.run(
        [str(KUBEDISTILL), "register", f"model={model}", f"metrics={metrics}", "name=s", f"tracking_uri={closed}",
         "mlflow.connect_retries=2", "mlflow.connect_backoff_s=0.05"],
        capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"error: the MLflow server at {closed} is not reachable after 2 attempt(s)" in result.stderr
    assert "Connection refused" in result.stderr


def _closed_port() -> int:
    from kubedistill.devtools.mlflow_server import free_port

    return free_port()


def test_lineage_from_a_separate_training_folder(tmp_path, mlflow_server):
    """In a pipeline the model file arrives alone (KFP copies artifacts); train_dir points at the run's folder."""
    model, metrics = _candidate(tmp_path, "run", seed=9, top1=0.5)
    (tmp_path / "run" / "mlflow_run.json").write_text(json.dumps({"run_id": "train123"}))
    alone = tmp_path / "artifact" / "student.pt"
    alone.parent.mkdir()
    alone.write_bytes(model.read_bytes())
    result = _register(alone, metrics, "student-lineage", mlflow_server, train_dir=tmp_path / "run")
    tags = MlflowClient(mlflow_server).get_model_version("student-lineage", str(result.version)).tags
    assert (tags["kubedistill.teacher"], tags["kubedistill.train_run_id"]) == ("dinov2/vits14", "train123")
    assert tags["kubedistill.dataset_fingerprint"] == "fp-1234"
    assert tags["kubedistill.pipeline_run_id"] == "none"
