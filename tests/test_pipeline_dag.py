"""The compiled pipeline: no drift from its source, and the intended DAG (steps, gate, exit handler,
caching, retries, images, documented parameters)."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import components
from kubedistill.pipeline.images import COMPONENTS_IMAGE
from pipelines import distillation_pipeline as dag

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def spec() -> dict:
    documents = list(yaml.safe_load_all(dag.COMPILED.read_text()))
    return documents[0]


def test_compiled_yaml_has_no_drift_from_the_source(tmp_path):
    # In a fresh process without a registry override: what `make compile` writes on a clean checkout.
    env = {k: v for k, v in os.environ.items() if k != "KUBEDISTILL_IMAGE_REGISTRY"}
    script = "import sys; from pathlib import Path; from pipelines.distillation_pipeline import compile_pipeline; compile_pipeline(Path(sys.argv[1]))"
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "fresh.yaml")], cwd=ROOT, env=env, check=True)
    fresh = (tmp_path / "fresh.yaml").read_text()
    assert fresh == dag.COMPILED.read_text(), (
        "pipelines/distillation_pipeline.yaml differs from the pipeline's source: run `make compile` and commit it"
    )


def test_the_four_steps_run_inside_the_exit_handler_and_register_is_gated(spec):
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"exit-handler-1", "finalize-run"}
    finalize = root["finalize-run"]
    assert finalize["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert finalize["inputs"]["parameters"]["status"]["taskFinalStatus"]["producerTask"] == "exit-handler-1"
    body = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert set(body) == {"validate-dataset", "distill", "linear-probe", "condition-2"}
    assert body["distill"]["dependentTasks"] == ["validate-dataset"]
    assert body["linear-probe"]["dependentTasks"] == ["distill"]
    condition = body["condition-2"]["triggerPolicy"]["condition"]
    assert condition == "inputs.parameter_values['pipelinechannel--linear-probe-Output'] == true"
    gated = spec["components"]["comp-condition-2"]["dag"]["tasks"]
    assert set(gated) == {"register-model"}


def test_display_names_caching_and_retries(spec):
    body = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    gated = spec["components"]["comp-condition-2"]["dag"]["tasks"]
    tasks = {**body, **gated, "finalize-run": spec["root"]["dag"]["tasks"]["finalize-run"]}
    for name in ("validate-dataset", "distill", "linear-probe", "register-model", "finalize-run"):
        assert tasks[name]["taskInfo"]["name"], name
    # Caching off where a rerun must redo the work (new files under the same URI, a new model, a new version).
    for name in ("validate-dataset", "distill", "register-model"):
        assert not tasks[name].get("cachingOptions", {}).get("enableCache"), name
    assert tasks["linear-probe"]["cachingOptions"]["enableCache"] is True
    for name in ("validate-dataset", "linear-probe"):
        retry = tasks[name]["retryPolicy"]
        assert retry["maxRetryCount"] == 2 and retry["backoffFactor"] == 2.0, name
    assert "retryPolicy" not in tasks["distill"]  # training resumes by itself; a KFP retry would start a second job


def test_every_parameter_has_a_type_and_a_description(spec):
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    signature = inspect.signature(dag.distillation_pipeline.pipeline_func)
    assert set(parameters) == set(signature.parameters)
    for name, definition in parameters.items():
        assert definition.get("description", "").strip(), f"{name} has no description"
        assert definition["parameterType"] in {"STRING", "NUMBER_INTEGER", "NUMBER_DOUBLE", "BOOLEAN"}
    required = {n for n, d in parameters.items() if not d.get("isOptional")}
    assert required == {"dataset_uri", "probe_train_uri", "probe_val_uri", "output_root"}
    for name in ("dataset_uri", "student", "teacher", "teacher_weights_uri", "epochs", "batch_size", "image_size",
                 "nodes", "gpus_per_node", "gpu_type", "launcher", "mlflow_tracking_uri", "mlflow_experiment",
                 "registered_model_name", "min_top1", "output_root", "probe_train_uri", "probe_val_uri"):  # fmt: skip
        assert name in parameters, name


def test_the_readme_documents_every_parameter():
    readme = (ROOT / "README.md").read_text()
    for name in inspect.signature(dag.distillation_pipeline.pipeline_func).parameters:
        assert f"`{name}`" in readme, f"README does not document the pipeline parameter {name}"


def test_components_use_our_image_and_install_nothing_at_run_time(spec):
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == 5
    for name, executor in executors.items():
        container = executor["container"]
        assert container["image"] == COMPONENTS_IMAGE, name
        command = " ".join(container["command"])
        assert "pip install" not in command and "pip" not in container["command"][2], name
    assert spec["sdkVersion"] == f"kfp-{__import__('kfp').__version__}"


def test_components_are_thin():
    """Each component's body: a context, one library call, artifact fills (no logic of its own)."""
    for name in components.__all__:
        source = inspect.getsource(getattr(components, name).python_func)
        body = source.split('"""')[-1]
        statements = [line for line in body.splitlines() if line.strip() and not line.strip().startswith("#")]
        assert len(statements) <= 14, f"{name} has {len(statements)} lines of body"
        assert "from kubedistill.pipeline import" in body
        for keyword in ("if ", "for ", "while ", "try:"):
            assert keyword not in body, f"{name} has control flow ({keyword.strip()}): move it into kubedistill"
