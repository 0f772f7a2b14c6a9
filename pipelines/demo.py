"""``make demo``: the compiled pipeline's whole DAG on this machine, on a real image set, with a teacher that knows.

1. Data: scikit-learn's digits rendered on textured 32x32 canvases (``kubedistill.devtools.digits``): 2,694
   train and 450 test images, one folder per class. The labels are used only by the probe and the teacher.
2. Teacher: a small CNN trained WITH labels on the train images (``kubedistill.devtools.known_teacher``), saved
   as TorchScript, trained once and cached (under a minute). Pretrained DINOv2 weights cannot be downloaded
   offline; a teacher that knows the data shows distillation working, where a random one shows only plumbing.
3. A local ``mlflow server`` (sqlite), started and stopped here.
4. ``pipelines/distillation_pipeline.yaml`` run by kfp.local: validate -> distill (launcher=local: torchrun
   with 2 processes, gloo) -> probe (with the random-init student and the teacher as references) -> register.

It ends with the three probe figures, the registered version and alias, where everything is, and how to open
the MLflow UI. Everything is written under ``--out`` (default out/demo); the renders and the teacher are cached
in $KUBEDISTILL_CACHE_DIR/demo (default ~/.cache/kubedistill/demo).
"""

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from kubedistill.devtools.digits import render_dataset
from kubedistill.devtools.known_teacher import cached_teacher
from kubedistill.devtools.mlflow_server import MlflowServer
from kubedistill.pipeline.local import PipelineFailedError, run_locally
from pipelines.distillation_pipeline import COMPILED

# The settings for a small dataset and a budget of minutes (README, "Small datasets and short runs"; the
# quality benchmark in BENCHMARKS.md): 64 px views of the 32 px images, AdamW, no mixup, mild crops.
SMALL_DATA_ARGS = (
    "optim=adamw optim_args.lr=0.001 method_args.lr_scale_method=none method_args.mixup=false "
    "transform_args.random_resize.min_scale=0.5 transform_args.color_jitter.prob=0 "
    "transform_args.random_gray_scale=0 transform_args.random_flip.horizontal_prob=0 log_every_n_steps=20"
)
RENDER_SIZE = 32
# Sized for 2 CPU cores without native bf16 (fp32, AVX2), first run included: the teacher trains in ~45 s there
# and the 252 steps at 48 px take ~3 min (at 64 px, ~4.7 min; BENCHMARKS.md, "make demo").
IMAGE_SIZE = 48
TEACHER_WIDTH = 16
TEACHER_EPOCHS = 20
MODEL_NAME = "kubedistill-demo-student"


def cache_dir() -> Path:
    return Path(os.environ.get("KUBEDISTILL_CACHE_DIR", Path.home() / ".cache" / "kubedistill")) / "demo"


def prepare(args: argparse.Namespace) -> tuple[Path, Path]:
    """The rendered digits and the known teacher, made once and reused."""
    data = cache_dir() / "digits"
    counts = render_dataset(data, renders_train=2, renders_test=1, size=RENDER_SIZE, seed=0)
    say(f"data: {counts['train']} train / {counts['test']} test images of rendered digits in {data}")
    teacher = cache_dir() / "teacher.pt"
    started = time.monotonic()
    info = cached_teacher(data, teacher, image_size=RENDER_SIZE, epochs=args.teacher_epochs, width=args.teacher_width,
                          log=lambda line: None)  # fmt: skip
    took = time.monotonic() - started
    say(f"teacher: trained with labels ({info['test_accuracy']:.3f} on test with its own classifier; "
        f"{'trained now in ' + format(took, '.0f') + ' s' if took > 2 else 'cached'}): {teacher}")  # fmt: skip
    return data, teacher


def pipeline_arguments(args: argparse.Namespace, data: Path, teacher: Path, mlflow_uri: str) -> dict:
    return {
        "dataset_uri": str(data / "train"),
        "probe_train_uri": str(data / "train"),
        "probe_val_uri": str(data / "test"),
        "output_root": str(args.out / "runs"),
        "student": "torchvision/resnet18",
        "teacher": str(teacher),
        "epochs": args.epochs,
        "batch_size": 128,
        "image_size": args.image_size,
        "nodes": 1,
        "gpus_per_node": args.processes,
        "launcher": "local",
        "train_args": SMALL_DATA_ARGS,
        "mlflow_tracking_uri": mlflow_uri,
        "mlflow_experiment": "kubedistill-demo",
        "registered_model_name": MODEL_NAME,
        "min_top1": args.min_top1,
        "probe_baselines": True,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="where everything is written")
    parser.add_argument("--epochs", type=int, default=12, help="distillation epochs (21 steps each)")
    parser.add_argument("--processes", type=int, default=2, help="training processes (torchrun, gloo)")
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE, help="the training views' side in pixels")
    parser.add_argument("--teacher-epochs", type=int, default=TEACHER_EPOCHS)
    parser.add_argument("--teacher-width", type=int, default=TEACHER_WIDTH,
                        help="channels of the known teacher's first stage (it doubles at each of the 4)")
    parser.add_argument("--min-top1", type=float, default=0.3, help="the registration gate")
    args = parser.parse_args()
    args.out = args.out.resolve()
    started = time.monotonic()
    data, teacher = prepare(args)
    log = args.out / "pipeline.log"
    with MlflowServer(args.out / "mlflow") as mlflow_uri:
        say(f"MLflow: {mlflow_uri} (sqlite in {args.out / 'mlflow'})")
        say(f"running {COMPILED.name} with kfp.local; every task's log: {log}")
        pipeline_started = time.monotonic()
        try:
            run = run_locally(COMPILED, pipeline_arguments(args, data, teacher, mlflow_uri),
                              pipeline_root=args.out / "kfp", log_file=log, echo=lambda line: say("  " + line))  # fmt: skip
        except PipelineFailedError as e:
            say(f"FAILED: {e}")
            return 1
        pipeline_seconds = time.monotonic() - pipeline_started
    report(args, run, pipeline_seconds, time.monotonic() - started)
    return 0


def report(args: argparse.Namespace, run, pipeline_seconds: float, total_seconds: float) -> None:
    metrics = json.loads((run.step_dir("probe") / "metrics.json").read_text())
    registration_file = run.step_dir("register") / "registration.json"
    rows = [("random-init student", "random_"), ("distilled student", ""), ("teacher (trained with labels)", "teacher_")]
    print()
    print(f"{'features':<32}{'linear top-1':>14}{'kNN top-1':>12}")
    for label, prefix in rows:
        print(f"{label:<32}{metrics[prefix + 'linear_top1']:>14.3f}{metrics[prefix + 'knn_top1']:>12.3f}")
    print(f"gap closed (linear, random -> teacher): {metrics.get('gap_closed', float('nan')):.2f}")
    if registration_file.is_file():
        registered = json.loads(registration_file.read_text())
        print(f"registered: {registered['name']} version {registered['version']}, alias {registered['alias']} "
              f"({registered['reason']})")  # fmt: skip
    else:
        print(f"not registered: linear top-1 below the gate min_top1={args.min_top1}")
    mlflow_dir = args.out / "mlflow"
    print(f"outputs of this run: {run.run_dir} (validate/, distill/, probe/, register/, run.json)")
    print(f"pipeline log: {args.out / 'pipeline.log'}; KFP artifacts: {args.out / 'kfp'}")
    print(f"time: {pipeline_seconds:.0f} s for the pipeline, {total_seconds:.0f} s in all")
    command = [".venv/bin/mlflow", "server", "--backend-store-uri", f"sqlite:///{mlflow_dir / 'mlflow.db'}",
               "--artifacts-destination", str(mlflow_dir / "artifacts"), "--port", "5000"]  # fmt: skip
    print(f"MLflow UI: {shlex.join(command)}  then open http://127.0.0.1:5000")


def say(line: str) -> None:
    # Not print(): kfp.local replaces builtins.print while a task runs, to indent the task's log.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
