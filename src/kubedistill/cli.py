"""``kubedistill <command> key=value ...``: the CLI over the public API (LightlyTrain-style arguments)."""

from __future__ import annotations

import inspect
import json
import logging
import sys
from collections.abc import Callable, Sequence

from kubedistill.errors import ConfigError, KubedistillError

USAGE = """\
usage: kubedistill <command> [key=value ...]

commands:
  train      distill a teacher into a student without labels
             kubedistill train out=out/exp data=my_images model=torchvision/resnet18 method=distillation
             dotted keys set nested arguments: method_args.teacher=dinov2/vits14 optim_args.lr=0.5
             transform_args.image_size=[160,160]
  validate   check every image, write a manifest of the good ones and a report
             kubedistill validate data=gs://bucket/images out=out/data [min_size=32] [max_bad_fraction=0.05]
             [dedup=true] [labels=auto|folder|none] [workers=auto]
             exit status 3 when the data fails (too many bad images, or none valid); the report says why
  describe   print every default of a method as JSON: kubedistill describe method=distillation
  probe      linear probe + kNN accuracy of an exported student on labeled train/val images
             kubedistill probe checkpoint=out/exp/exported/student.pt train=labeled/train val=labeled/val
             out=out/probe [k=20] [temperature=0.07] [device=auto] [mlflow.tracking_uri=http://...]
             [random_baseline=true] [teacher=dinov2/vitb14]: also score a random-init student and the teacher
  register   register the student in the MLflow Model Registry; alias champion if it beats the champion
             kubedistill register model=out/exp/exported/student.pt metrics=out/probe/metrics.json
             name=my-student [min_top1=0.0] [metric=linear_top1] [tracking_uri=http://mlflow:5000]

  launch     run a training job as a PyTorchJob or TrainJob and follow it; dry_run=true prints it without a cluster
             kubedistill launch backend=pytorchjob|trainjob nodes=2 gpus_per_node=8 image=... namespace=ml
             [gpu_type=nvidia-l4] [service_account=kubedistill-trainer] [kueue_queue=...] [mlflow_secret=...]
             [pending_timeout=1800] [timeout=null] [dry_run=true]
             out=gs://bucket/runs/r1 data=gs://bucket/data/manifest.jsonl model=torchvision/resnet50 ...
             (every key that is not a launch setting is a train argument; timeouts in seconds)
             node 0's log goes to stdout; the launcher's own lines (created, pending and why, running,
             succeeded or failed, deleting) to stderr

MLflow: train, probe (and validate) log to MLFLOW_TRACKING_URI or mlflow.tracking_uri=..., each as a nested
run of MLFLOW_RUN_ID when the pipeline sets it.

Values are parsed as YAML: 0.5 is a number, [160,160] a list, true/false booleans, null None.
Exit status: 0 success, 1 failure (the message says what to do), 2 invalid arguments,
3 the data failed validation (`validate` only).
"""

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_DATA_REJECTED = 0, 1, 2, 3


def _train(args: dict) -> int:
    from kubedistill import storage
    from kubedistill.config import build_train_config
    from kubedistill.training.trainer import run_training

    config = build_train_config(args)  # as api.train, but missing keys are ConfigErrors
    result = run_training(config)
    # Where the run lives (a gs:// run is staged locally while it trains; the bucket is what lasts).
    out = config.out if storage.is_gcs(config.out) else str(result.out)
    exported = storage.join(out, "exported", "student.pt") if storage.is_gcs(out) else str(result.exported)
    print(json.dumps({"out": out, "exported": exported, "steps": result.steps}))
    return EXIT_OK


def _validate(args: dict) -> int:
    from kubedistill.api import validate_from_config
    from kubedistill.config import build_validate_config

    result = validate_from_config(build_validate_config(args))  # missing keys are ConfigErrors here
    print(json.dumps(result.summary()))
    if not result.passed:
        print(f"kubedistill validate: {result.report['verdict']} (see {result.report_md})", file=sys.stderr)
        return EXIT_DATA_REJECTED
    return EXIT_OK


def _describe(args: dict) -> int:
    from kubedistill.api import describe

    unknown = set(args) - {"method"}
    if unknown:
        raise ConfigError([f"unknown key {k!r} for describe; valid keys: method" for k in sorted(unknown)])
    print(json.dumps(describe(**args), indent=2))
    return EXIT_OK


def _probe(args: dict) -> int:
    from kubedistill.api import probe

    result = probe(**_known_keys(args, "probe", probe))
    print(json.dumps({"out": str(result.out), "metrics": result.metrics, "mlflow_run_id": result.mlflow_run_id}))
    return EXIT_OK


def _register(args: dict) -> int:
    from kubedistill.api import register

    print(json.dumps(register(**_known_keys(args, "register", register)).to_dict()))
    return EXIT_OK


def _launch(args: dict) -> int:
    from kubedistill.kube.spec import durability_warning, launch_request, render, split_arguments
    from kubedistill.launch import get_launcher

    config, train = split_arguments(args)
    if config.dry_run:
        print(render(config, train), end="")
        return EXIT_OK
    warning = durability_warning(train)
    if warning:
        print(f"kubedistill launch: warning: {warning}", file=sys.stderr)
    get_launcher(config.backend, config.settings).run(launch_request(config, train))
    return EXIT_OK


def _known_keys(args: dict, command: str, function: Callable) -> dict:
    """``args`` when every key is a parameter of ``function``; else a ConfigError naming the valid keys."""
    valid = list(inspect.signature(function).parameters)
    unknown = sorted(set(args) - set(valid))
    if unknown:
        raise ConfigError([f"unknown key {k!r} for {command}; valid keys: {', '.join(valid)}" for k in unknown])
    return args


COMMANDS: dict[str, Callable[[dict], int]] = {
    "train": _train, "validate": _validate, "describe": _describe, "probe": _probe, "register": _register,
    "launch": _launch,
}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    from kubedistill.config import parse_key_values

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return EXIT_OK if argv else EXIT_USAGE
    command, tokens = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"kubedistill: unknown command {command!r}; valid: {', '.join(COMMANDS)}\n\n{USAGE}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return COMMANDS[command](parse_key_values(tokens))
    except ConfigError as e:
        print(f"kubedistill {command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KubedistillError as e:
        logging.getLogger("kubedistill").debug("failure", exc_info=True)
        print(f"kubedistill {command}: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"kubedistill {command}: interrupted", file=sys.stderr)
        return 130
