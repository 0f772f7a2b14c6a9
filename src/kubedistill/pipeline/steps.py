"""The pipeline's steps: validate -> distill -> probe -> (gate) register, and the exit handler's ``finalize``.

Each function runs one step of one pipeline run: it calls the library, writes under the step's folder
(``<output root>/<run id>/<step>/``), nests its MLflow run under the pipeline's parent run, and returns what
the component turns into KFP artifacts. A failing step records its reason (``<step>/failure.json`` and tags on
the parent run) before the exception reaches KFP, so the exit handler can say why the run failed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shlex
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kubedistill import storage
from kubedistill.errors import ConfigError, DataError
from kubedistill.pipeline.context import RUN_FILE, STEPS, PipelineContext

logger = logging.getLogger(__name__)

# Train arguments the pipeline sets itself; `train_args` may not override them.
RESERVED_TRAIN_KEYS = ("out", "data", "model", "method", "epochs", "batch_size", "resume_interrupted", "overwrite",
                       "mlflow", "num_nodes", "devices")  # fmt: skip
# What the distill step keeps of a training run besides the model (the KFP `training` artifact).
TRAINING_FILES = ("config.yaml", "train.log", "metrics.jsonl", "mlflow_run.json", "exported/student.json")


class DataRejectedError(DataError):
    """Validation found more bad images than allowed (the CLI's exit status 3).

    ``details`` (kept in the step's failure.json) identifies the data that was rejected, so that KFP's retries of
    the task do not decode an unchanged dataset again to reach the same verdict.
    """

    def __init__(self, message: str, *, details: dict[str, Any]):
        super().__init__(message)
        self.details = details


@contextlib.contextmanager
def _step(context: PipelineContext, step: str) -> Iterator[None]:
    """Record why ``step`` failed (failure.json, parent run tags) and re-raise; a success (e.g. a retry that
    worked) clears what an earlier attempt recorded."""
    try:
        yield
    except Exception as e:
        context.record_failure(step, e)
        raise
    context.clear_failure(step)


@contextlib.contextmanager
def _local_folder(uri: str) -> Iterator[Path]:
    """A local folder for a step's outputs: ``uri`` itself when local; for gs://, a temporary folder whose files
    are uploaded to ``uri`` when the block ends without error."""
    if not storage.is_remote(uri):
        path = storage.to_local_path(uri)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="kubedistill-step-") as folder:
        yield Path(folder)
        upload_folder(Path(folder), uri)


def upload_folder(folder: Path, uri: str) -> None:
    """Copy every file below ``folder`` to ``uri`` (same relative paths)."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        storage.upload_file(path, storage.join(uri, *path.relative_to(folder).parts))


# ----------------------------------------------------------------------------------------------- validate


@dataclass
class ValidateOutputs:
    manifest_uri: str
    manifest_file: Path  # a local copy, for the KFP Dataset artifact
    report_markdown: str
    counts: dict[str, float]
    metadata: dict[str, Any]  # the Dataset artifact's metadata: uri, fingerprint, images, classes


def validate(
    context: PipelineContext, *, dataset_uri: str, workdir: str | Path, max_bad_fraction: float = 0.05,
    min_size: int = 32, labels: str = "auto",
) -> ValidateOutputs:  # fmt: skip
    """Check every image under ``dataset_uri``; DataRejectedError when too many are bad (outputs written first).
    ``workdir``: the caller's folder for the local copy of a gs:// manifest (the caller removes it)."""
    from kubedistill.api import validate_from_config
    from kubedistill.config import build_validate_config
    from kubedistill.data.validation import render_markdown

    context.refuse_a_local_output_root_on_kfp()  # before anything is written where no other step would see it
    with _step(context, "validate"):
        parent = context.pipeline_run()
        _log_params(context, parent, {"dataset_uri": dataset_uri, "max_bad_fraction": max_bad_fraction,
                                      "output_root": context.output_root})  # fmt: skip
        checks = {"dataset_uri": dataset_uri, "max_bad_fraction": max_bad_fraction, "min_size": min_size,
                  "labels": labels}  # fmt: skip
        _refuse_a_rejection_again(context, checks)
        config = build_validate_config({
            "data": dataset_uri, "out": context.step_uri("validate"), "min_size": min_size,
            "max_bad_fraction": max_bad_fraction, "labels": labels,
            "mlflow": _as_dict(context.step_mlflow("validate", parent)),
        })  # fmt: skip
        result = validate_from_config(config)
        totals = result.report["totals"]
        if not result.passed:
            raise DataRejectedError(
                f"{dataset_uri}: {result.report['verdict']} (report: {result.report_md})",
                details={**checks, "listing": listing_signature(dataset_uri)},
            )
        return ValidateOutputs(
            manifest_uri=result.manifest,
            manifest_file=_local_copy(result.manifest, Path(workdir)),
            report_markdown=render_markdown(result.report),
            counts={"images_ok": totals["images_ok"], "bad": totals["bad"], "bad_fraction": totals["bad_fraction"],
                    "files_seen": totals["files_seen"], "duplicates": totals["problems"]["duplicate"]},
            metadata={"uri": result.manifest, "fingerprint": result.fingerprint, "images": totals["images_ok"],
                      "classes": result.report.get("classes") or [], "report": result.report_md},
        )  # fmt: skip


def _refuse_a_rejection_again(context: PipelineContext, checks: Mapping[str, Any]) -> None:
    """A retry of a task that rejected this very data (same files and sizes, same checks) fails at once: KFP
    retries a failed task whatever the cause, and decoding every image again cannot change the verdict. Changed
    data (e.g. fixed before "Retry run") is validated again."""
    previous = next((f for f in context.failures() if f["step"] == "validate"), None)
    details = (previous or {}).get("details") or {}
    if previous is None or previous.get("error") != DataRejectedError.__name__:
        return
    same_checks = {k: details.get(k) for k in checks} == dict(checks)
    if not same_checks or details.get("listing") != listing_signature(checks["dataset_uri"]):
        return
    raise DataRejectedError(f"{previous['reason']}; the data has not changed since that verdict", details=details)


def listing_signature(uri: str) -> str:
    """sha256 of the sorted (URI, size) pairs under ``uri``: changes when a file is added, removed or resized."""
    import hashlib

    digest = hashlib.sha256()
    for info in sorted(storage.list_files(uri), key=lambda f: f.uri):
        digest.update(f"{info.uri}\t{info.size}\n".encode())
    return digest.hexdigest()


def _local_copy(uri: str, folder: Path) -> Path:
    """``uri`` itself when local; else a copy in ``folder``."""
    if not storage.is_remote(uri):
        return storage.to_local_path(uri)
    path = folder / Path(uri).name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(storage.read_bytes(uri))
    return path


# ----------------------------------------------------------------------------------------------- distill


@dataclass
class DistillOutputs:
    model_file: Path  # exported/student.pt, local
    training_folder: Path  # config.yaml, train.log, metrics.jsonl, mlflow_run.json, student.json
    run_uri: str
    metadata: dict[str, Any] = field(default_factory=dict)  # the Model artifact's metadata


def distill(
    context: PipelineContext,
    *,
    manifest_uri: str,
    workdir: str | Path,
    student: str,
    teacher: str,
    teacher_weights: str = "",
    epochs: int = 100,
    batch_size: int = 128,
    image_size: int = 224,
    nodes: int = 1,
    gpus_per_node: int = 1,
    gpu_type: str = "",
    launcher: str = "local",
    train_args: str = "",
    launch_args: str = "",
    trainer_image: str = "",
) -> DistillOutputs:
    """Distill ``teacher`` into ``student`` on the manifest's images with ``launcher``; the exported student and
    the run's records, copied into ``workdir`` (the caller's folder; the caller removes it).

    ``train_args``: more ``kubedistill train`` arguments, space-separated key=value (they may not set what the
    pipeline sets: out, data, model, epochs, batch size, the process layout, MLflow). The whole configuration
    is checked here, before anything is launched. Training always resumes from the run's own checkpoints, so
    a retried task continues where the failed attempt stopped. ``launch_args``: the cluster launchers' settings,
    space-separated key=value (``service_account=... kueue_queue=... mlflow_secret=... namespace=...
    pending_timeout=... timeout=...``, the last two in seconds: see ``kubedistill.kube.settings.JobSettings``);
    ``gpu_type`` and ``trainer_image`` (the training pods' image, fixed when the pipeline is compiled; empty:
    JobSettings' default) are their own parameters.
    """
    from kubedistill.launch import LaunchRequest, get_launcher, job_name

    with _step(context, "distill"):
        parent = context.pipeline_run()
        _log_params(context, parent, {
            "student": student, "teacher": teacher, "teacher_weights": teacher_weights or "official",
            "epochs": epochs, "batch_size": batch_size, "image_size": image_size, "nodes": nodes,
            "gpus_per_node": gpus_per_node, "gpu_type": gpu_type, "launcher": launcher, "train_args": train_args,
            "launch_args": launch_args, "trainer_image": trainer_image,
        })  # fmt: skip
        values = train_values(
            context, manifest_uri=manifest_uri, student=student, teacher=teacher, teacher_weights=teacher_weights,
            epochs=epochs, batch_size=batch_size, image_size=image_size, train_args=train_args,
            mlflow=context.step_mlflow("distill", parent),
        )  # fmt: skip
        launch = get_launcher(launcher, job_settings(launch_args, gpu_type=gpu_type, image=trainer_image))
        out_uri = context.step_uri("distill")
        if launcher != "local" and not storage.is_gcs(out_uri):
            raise ConfigError([
                f"output_root: {context.output_root} is a local folder, but launcher={launcher} trains in pods that "
                "cannot write this task's disk: give a gs://bucket/prefix"
            ])  # fmt: skip
        values["out"] = out_uri  # rank 0 writes there itself, a bucket included
        _check_train_values(values)
        request = LaunchRequest(name=job_name(context.run_id), train_args=values, nodes=nodes,
                                procs_per_node=gpus_per_node, gpu_type=gpu_type)  # fmt: skip
        launch.run(request)
        return _read_training_run(out_uri, Path(workdir))


# JobSettings fields that are pipeline parameters of their own: launch_args may not set them too.
OWN_PARAMETERS = {"gpu_type": "gpu_type", "image": "trainer_image"}


def job_settings(launch_args: str, *, gpu_type: str, image: str = ""):
    """The cluster launchers' ``JobSettings`` from the ``launch_args`` parameter, ``gpu_type`` and ``image`` (the
    ``trainer_image`` parameter; empty: JobSettings' default); every problem at once."""
    from kubedistill.config import build, parse_key_values
    from kubedistill.kube.settings import JobSettings

    values = parse_key_values(shlex.split(launch_args)) if launch_args.strip() else {}
    clashes = [f"launch_args: {key!r} is the pipeline parameter {name!r}; set it there"
               for key, name in OWN_PARAMETERS.items() if key in values]  # fmt: skip
    if clashes:
        raise ConfigError(clashes)
    own = {"gpu_type": gpu_type, **({"image": image} if image else {})}
    problems: list[str] = []
    settings = build(JobSettings, {**values, **own}, problems=problems)
    if problems:
        raise ConfigError([f"launch_args: {p}" for p in problems])
    return settings


def train_values(
    context: PipelineContext, *, manifest_uri: str, student: str, teacher: str, teacher_weights: str, epochs: int,
    batch_size: int, image_size: int, train_args: str, mlflow,
) -> dict[str, Any]:  # fmt: skip
    """The ``kubedistill train`` arguments of the distill step (a nested dict, as ``parse_key_values`` gives)."""
    from kubedistill.config import parse_key_values

    extra = parse_key_values(shlex.split(train_args)) if train_args.strip() else {}
    clashes = sorted(set(extra) & set(RESERVED_TRAIN_KEYS))
    if clashes:
        raise ConfigError([
            f"train_args: {key!r} is set by the pipeline (use its own parameter) and cannot be overridden"
            for key in clashes
        ])  # fmt: skip
    method_args = dict(extra.pop("method_args", {}) or {})
    method_args["teacher"] = teacher
    if teacher_weights:
        method_args["teacher_weights"] = teacher_weights
    transform_args = dict(extra.pop("transform_args", {}) or {})
    transform_args.setdefault("image_size", [image_size, image_size])
    mlflow_args = _as_dict(mlflow)
    return {
        "out": context.step_uri("distill"), "data": manifest_uri, "model": student, "method": "distillation",
        "epochs": epochs, "batch_size": batch_size, "resume_interrupted": True, "method_args": method_args,
        "transform_args": transform_args, "mlflow": mlflow_args, **extra,
    }  # fmt: skip


def _check_train_values(values: Mapping[str, Any]) -> None:
    """Build the train config here, so every invalid argument is reported before a job is started."""
    from kubedistill.config import build_train_config

    build_train_config(dict(values))


def _read_training_run(out_uri: str, keep: Path) -> DistillOutputs:
    """The exported student and the run's record, copied out of the run folder (local or gs://) into ``keep``."""
    keep.mkdir(parents=True, exist_ok=True)
    model_file = keep / "student.pt"
    exported = storage.join(out_uri, "exported", "student.pt")
    if not storage.exists(exported):
        raise DataError(f"training finished without {exported}: see {storage.join(out_uri, 'train.log')}")
    storage.fetch(exported, model_file)
    training = keep / "training"
    for name in TRAINING_FILES:
        uri = storage.join(out_uri, *name.split("/"))
        if storage.exists(uri):
            storage.fetch(uri, training / Path(name).name)
    config = yaml.safe_load((training / "config.yaml").read_text()) or {}
    return DistillOutputs(model_file, training, out_uri, model_metadata(config, training, out_uri))


def model_metadata(config: Mapping[str, Any], training: Path, out_uri: str) -> dict[str, Any]:
    """The Model artifact's metadata: what was trained, from what, how far, and where its run lives
    (``training``: a local copy of the run's records, as the distill step keeps them)."""
    exported = json.loads((training / "student.json").read_text())
    resolved = config.get("resolved") or {}
    records = [json.loads(line) for line in (training / "metrics.jsonl").read_text().splitlines() if line.strip()]
    method_args = config.get("method_args") or {}
    mlflow_run = training / "mlflow_run.json"
    return {
        "student": exported["model"],
        "teacher": method_args.get("teacher"),
        "teacher_weights": method_args.get("teacher_weights") or "",
        "image_size": exported["image_size"],
        "feature_dim": exported["feature_dim"],
        "steps": records[-1]["step"] if records else 0,
        "epochs": config.get("epochs"),
        "final_loss": records[-1]["loss"] if records else None,
        "dataset_fingerprint": resolved.get("data_fingerprint"),
        "data": config.get("data"),
        "run_uri": out_uri,
        "mlflow_run_id": json.loads(mlflow_run.read_text())["run_id"] if mlflow_run.is_file() else None,
    }


# ----------------------------------------------------------------------------------------------- probe

PROBE_METRICS = ("linear_top1", "linear_top5", "knn_top1", "knn_top5")
# What the KFP Metrics artifact shows (metrics.json has more: timings, the chosen penalty, k, ...).
SHOWN_PROBE_METRICS = ("num_train", "num_val", "num_classes", "gap_closed")


@dataclass
class ProbeOutputs:
    metrics: dict[str, float]  # for the KFP Metrics artifact (numbers only)
    classes: list[str]
    confusion: list[list[int]]  # the linear probe's, rows = true class
    summary_markdown: str
    results_folder: Path  # metrics.json, confusion_matrix.json/.png
    passed_gate: bool
    gate_reason: str


def probe(
    context: PipelineContext, *, model_file: str, model_metadata: Mapping[str, Any], train_uri: str, val_uri: str,
    workdir: str | Path, min_top1: float = 0.0, baselines: bool = True,
) -> ProbeOutputs:  # fmt: skip
    """Linear probe + kNN of the distilled student (and, with ``baselines``, of a random-init student and of the
    teacher) on labeled images; the gate: linear top-1 >= ``min_top1``. The results are copied into ``workdir``
    (the caller's folder; the caller removes it)."""
    from kubedistill.api import probe as run_probe
    from kubedistill.evaluation.run import CONFUSION_FILE
    from kubedistill.tracking.pipeline import log_to_pipeline_run

    with _step(context, "probe"), _local_folder(context.step_uri("probe")) as out:
        parent = context.pipeline_run()
        _log_params(context, parent, {"probe_train_uri": train_uri, "probe_val_uri": val_uri, "min_top1": min_top1,
                                      "probe_baselines": baselines})  # fmt: skip
        references = {"random_baseline": True, "teacher": model_metadata.get("teacher"),
                      "teacher_weights": model_metadata.get("teacher_weights") or None} if baselines else {}  # fmt: skip
        result = run_probe(
            checkpoint=model_file, train=train_uri, val=val_uri, out=out,
            mlflow=_as_dict(context.step_mlflow("probe", parent)), **references,
        )  # fmt: skip
        metrics = {k: float(v) for k, v in result.metrics.items()
                   if _is_number(v) and (k.endswith(PROBE_METRICS) or k in SHOWN_PROBE_METRICS)}  # fmt: skip
        passed, reason = gate(metrics, min_top1)
        confusion = json.loads((out / CONFUSION_FILE).read_text())
        if parent is not None:
            log_to_pipeline_run(parent, context.tracking_target(), metrics=metrics,
                                tags={"kubedistill.gate": "passed" if passed else "failed"})  # fmt: skip
        results = Path(workdir) / "probe"
        shutil.copytree(out, results, dirs_exist_ok=True)
    return ProbeOutputs(
        metrics=metrics, classes=[str(c) for c in confusion["classes"]], confusion=confusion["linear"],
        summary_markdown=probe_markdown(metrics, passed, reason, model_metadata), results_folder=results,
        passed_gate=passed, gate_reason=reason,
    )  # fmt: skip


def gate(metrics: Mapping[str, float], min_top1: float) -> tuple[bool, str]:
    """(passed, why): the probe's linear top-1 against ``min_top1``."""
    value = metrics.get("linear_top1")
    if value is None or not math.isfinite(value):
        return False, "the probe produced no linear_top1"
    if value >= min_top1:
        return True, f"linear top-1 {value:.4f} >= min_top1 {min_top1}"
    return False, f"linear top-1 {value:.4f} < min_top1 {min_top1}: not registered"


def probe_markdown(metrics: Mapping[str, float], passed: bool, reason: str, meta: Mapping[str, Any]) -> str:
    """The probe's summary for the KFP UI: the student against its references, and the gate."""
    rows = [("distilled student", "")]
    if "random_linear_top1" in metrics:
        rows.insert(0, ("random-init student", "random_"))
    if "teacher_linear_top1" in metrics:
        rows.append((f"teacher ({meta.get('teacher')})", "teacher_"))
    lines = [
        f"## Linear probe and kNN: {meta.get('student', 'student')}",
        "",
        "| features | linear top-1 | linear top-5 | kNN top-1 | kNN top-5 |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, prefix in rows:
        cells = " | ".join(_fmt(metrics.get(prefix + key)) for key in PROBE_METRICS)
        lines.append(f"| {label} | {cells} |")
    if "gap_closed" in metrics:
        lines += ["", f"Gap closed (random -> teacher, linear top-1): **{_fmt(metrics['gap_closed'])}**"]
    lines += ["", f"Gate: **{'passed' if passed else 'not passed'}** ({reason})."]
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"


# ----------------------------------------------------------------------------------------------- register


@dataclass
class RegisterOutputs:
    name: str
    version: int
    alias: str
    created: bool
    reason: str
    summary_markdown: str


def register(
    context: PipelineContext, *, model_file: str, training_folder: str, probe_folder: str, name: str,
    min_top1: float = 0.0,
) -> RegisterOutputs:  # fmt: skip
    """Register the student in the MLflow Model Registry (alias champion or challenger, see ``kubedistill
    register``) and record the version on the pipeline's run. Needs an MLflow server."""
    from kubedistill.api import register as run_register
    from kubedistill.evaluation.run import METRICS_FILE
    from kubedistill.tracking.pipeline import log_to_pipeline_run

    with _step(context, "register"):
        parent = context.pipeline_run(required=True)
        _log_params(context, parent, {"registered_model_name": name})
        target = context.tracking_target(required=True)
        result = run_register(
            model=model_file, metrics=str(Path(probe_folder) / METRICS_FILE), name=name, min_top1=min_top1,
            tracking_uri=target.tracking_uri, train_dir=training_folder,
            mlflow=_as_dict(context.step_mlflow("register", parent)),
        )  # fmt: skip
        log_to_pipeline_run(parent, target, metrics={"registered_version": result.version}, tags={
            "kubedistill.registered_model": result.name, "kubedistill.registered_version": result.version,
            "kubedistill.alias": result.alias,
        })  # fmt: skip
        record = {"name": result.name, "version": result.version, "alias": result.alias, "created": result.created,
                  "reason": result.reason, "tracking_uri": target.tracking_uri}  # fmt: skip
        storage.write_bytes(storage.join(context.step_uri("register"), "registration.json"),
                            json.dumps(record, indent=2).encode())  # fmt: skip
    summary = (
        f"## Registered `{result.name}` version {result.version}\n\nAlias: **{result.alias}**"
        f"{'' if result.created else ' (already registered: nothing new)'}.\n\n{result.reason}.\n\n"
        f"Load it with `mlflow.pyfunc.load_model(\"models:/{result.name}@{result.alias}\")`.\n"
    )
    return RegisterOutputs(result.name, result.version, result.alias, result.created, result.reason, summary)


# ----------------------------------------------------------------------------------------------- finalize


@dataclass
class FinalizeOutputs:
    succeeded: bool
    state: str
    failed_step: str | None
    reason: str | None
    summary: dict[str, Any]


# The words PipelineTaskFinalStatus.state uses for a pipeline body that ended well. KFP's open-source backend
# (>= 2.14) fills it with MLMD's execution state name (backend/src/v2/driver/resolve.go,
# `producer.GetExecution().GetLastKnownState().String()`; the names are Execution.State in
# third_party/ml-metadata/ml_metadata/proto/metadata_store.proto): COMPLETE, or CACHED for a body reused from the
# cache; FAILED and CANCELED otherwise. kfp.local writes SUCCEEDED or FAILED
# (sdk/python/kfp/local/orchestrator/orchestrator_utils.py). Any other word is not taken for a success.
SUCCEEDED_FINAL_STATES = frozenset({"COMPLETE", "CACHED", "SUCCEEDED"})
FAILED_FINAL_STATES = frozenset({"FAILED", "CANCELED"})


def final_state_succeeded(state: str) -> bool:
    """Whether the exit handler's ``PipelineTaskFinalStatus.state`` means the pipeline body succeeded."""
    return state.strip().upper() in SUCCEEDED_FINAL_STATES


def _unsuccessful_state_reason(state: str) -> str:
    if state.strip().upper() in FAILED_FINAL_STATES:
        return f"the pipeline ended {state}"
    return (f"the pipeline ended in state {state!r}, which kubedistill does not know as a success (expected one of "
            f"{', '.join(sorted(SUCCEEDED_FINAL_STATES | FAILED_FINAL_STATES))}): recorded as a failure")  # fmt: skip


def finalize(context: PipelineContext, *, state: str, error_message: str | None = None) -> FinalizeOutputs:
    """The exit handler: write ``<run>/run.json`` and end the MLflow parent run with the run's outcome.

    ``state``/``error_message``: KFP's PipelineTaskFinalStatus of the pipeline body (``state`` in either
    vocabulary: see SUCCEEDED_FINAL_STATES). The failing step and its reason come from the steps' own records:
    KFP's status only says that something failed (the open-source backend leaves ``error_message`` empty).
    """
    from kubedistill.tracking.pipeline import close_pipeline_run

    state = state or "UNKNOWN"
    succeeded = final_state_succeeded(state)
    failures = context.failures()
    failed_step = failures[0]["step"] if failures else None
    reason = failures[0]["reason"] if failures else None
    if not succeeded and reason is None:
        reason = error_message or _unsuccessful_state_reason(state)
    summary = {
        "kfp_run_id": context.run_id, "kfp_run_name": context.run_name, "state": state, "succeeded": succeeded,
        "failed_step": failed_step, "reason": reason, "outputs": context.run_uri,
        "steps": {step: context.step_uri(step) for step in STEPS},
    }  # fmt: skip
    parent = context.pipeline_run()
    if parent is not None:
        summary["mlflow_parent_run_id"] = parent.run_id
        close_pipeline_run(parent, context.tracking_target(), succeeded=succeeded, failed_step=failed_step,
                           reason=reason)  # fmt: skip
    storage.write_bytes(storage.join(context.run_uri, RUN_FILE), json.dumps(summary, indent=2).encode())
    return FinalizeOutputs(succeeded, state, failed_step, reason, summary)


# ----------------------------------------------------------------------------------------------- helpers


def _log_params(context: PipelineContext, parent, params: Mapping[str, Any]) -> None:
    from kubedistill.tracking.pipeline import log_to_pipeline_run

    if parent is not None:
        log_to_pipeline_run(parent, context.tracking_target(), params=params)


def _as_dict(args) -> dict[str, Any]:
    from dataclasses import asdict

    return {k: v for k, v in asdict(args).items() if v is not None}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
