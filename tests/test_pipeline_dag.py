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
from kubedistill.pipeline.images import COMPONENTS_IMAGE, TAG, TRAINER_IMAGE
from pipelines import distillation_pipeline as dag

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def spec() -> dict:
    documents = list(yaml.safe_load_all(dag.COMPILED.read_text()))
    return documents[0]


@pytest.fixture(scope="module")
def platform() -> dict:
    """The kfp-kubernetes settings: the compiled file's second document."""
    documents = list(yaml.safe_load_all(dag.COMPILED.read_text()))
    assert len(documents) == 2
    return documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _compile(path: Path, **env: str) -> list[dict]:
    """Compile in a fresh process (the image names are fixed when kubedistill.pipeline.images is imported)."""
    environ = {k: v for k, v in os.environ.items() if k != "KUBEDISTILL_IMAGE_REGISTRY"}
    subprocess.run([sys.executable, "-m", "pipelines.distillation_pipeline", "--out", str(path)], cwd=ROOT,
                   env={**environ, **env}, check=True, capture_output=True)  # fmt: skip
    return list(yaml.safe_load_all(path.read_text()))


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


def test_the_cluster_is_the_default_and_the_trainer_image_is_fixed_at_compile_time(spec):
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert parameters["launcher"]["defaultValue"] == "pytorchjob"  # the demo and the local tests pass local
    assert parameters["trainer_image"]["defaultValue"] == TRAINER_IMAGE
    distill = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]["distill"]
    assert distill["inputs"]["parameters"]["trainer_image"]["componentInputParameter"] == "pipelinechannel--trainer_image"


def test_an_image_registry_given_at_compile_time_names_both_images(tmp_path):
    spec, _ = _compile(tmp_path / "other.yaml", KUBEDISTILL_IMAGE_REGISTRY="r.example/x")
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {f"r.example/x/kubedistill-components:{TAG}"}
    trainer = spec["root"]["inputDefinitions"]["parameters"]["trainer_image"]["defaultValue"]
    assert trainer == f"r.example/x/kubedistill-trainer:{TAG}"


def test_a_job_launched_with_the_compiled_defaults_runs_the_compiled_trainer_image(tmp_path):
    """What the distill step does with the compiled defaults, up to the job spec (a dry run: no cluster)."""
    from kubedistill.kube.spec import LaunchConfig, render
    from kubedistill.pipeline import steps

    spec, _ = _compile(tmp_path / "other.yaml", KUBEDISTILL_IMAGE_REGISTRY="r.example/x")
    defaults = {k: p.get("defaultValue") for k, p in spec["root"]["inputDefinitions"]["parameters"].items()}
    settings = steps.job_settings(defaults["launch_args"], gpu_type=defaults["gpu_type"], image=defaults["trainer_image"])
    config = LaunchConfig(backend=defaults["launcher"], nodes=defaults["nodes"], gpus_per_node=defaults["gpus_per_node"],
                          name="kd-run-1", settings=settings)  # fmt: skip
    job = yaml.safe_load(render(config, {"out": "gs://b/runs/r1/distill", "data": "gs://b/m.jsonl",
                                         "model": "torchvision/resnet18"}))  # fmt: skip
    images = {c["image"] for replica in job["spec"]["pytorchReplicaSpecs"].values()
              for c in replica["template"]["spec"]["containers"]}  # fmt: skip
    assert images == {f"r.example/x/kubedistill-trainer:{TAG}"}  # not the default registry of the components pod
    with pytest.raises(Exception, match="'image' is the pipeline parameter 'trainer_image'"):
        steps.job_settings("image=elsewhere/trainer:1", gpu_type="", image=defaults["trainer_image"])


def test_every_task_has_cpu_and_memory_requests_and_limits(spec):
    executors = spec["deploymentSpec"]["executors"]
    for name, executor in executors.items():
        resources = executor["container"].get("resources", {})
        for key in ("resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit"):
            assert resources.get(key), f"{name} has no {key}"
        assert resources["cpuLimit"] >= resources["cpuRequest"] and resources["memoryLimit"] >= resources["memoryRequest"]
    assert executors["exec-distill"]["container"]["resources"]["resourceMemoryLimit"] == "4Gi"


def test_the_distill_task_is_not_evictable(platform):
    assert platform == {"exec-distill": {"podMetadata": {"annotations": {
        "cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}}}}  # only the task that follows a job


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
