"""``make demo``: the library's steps on a small real image set that ships offline: validate, distill, probe.

The images are scikit-learn's digits (1,797 real 8x8 handwritten digits), written out as PNG files in a
class-per-folder layout and split into train (4 of 5) and val (1 of 5). The steps:

1. ``validate`` the train split: manifest.jsonl (with the class folder as label) and the report;
2. ``train`` from that manifest, without labels;
3. ``probe`` the exported student: linear probe and kNN, fitted on train and scored on val.

Pretrained DINOv2 weights cannot be downloaded offline, so the demo's teacher is dinov2/vits14 with RANDOM
weights: it shows the steps working end to end, not a useful student. Point ``method_args.teacher_weights``
at the official checkpoint (or leave it unset with internet access) for a real run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from kubedistill.api import probe, train, validate

VAL_EVERY = 5  # every 5th digit goes to val


def write_digits(folder: Path, *, size: int = 32, split: bool = False) -> int:
    """Write the digits as ``folder/<label>/<index>.png`` (upscaled to size x size); returns the count.

    With ``split``, every ``VAL_EVERY``-th digit goes to ``folder/val/<label>/`` and the rest to
    ``folder/train/<label>/``.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise SystemExit("the demo needs scikit-learn: run `make demo` (it installs it) or pip install scikit-learn") from e
    digits = load_digits()
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        part = ("val" if index % VAL_EVERY == 0 else "train") if split else ""
        path = folder / part / str(label) / f"{index:04d}.png"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        gray = (pixels / 16.0 * 255).astype(np.uint8)
        Image.fromarray(gray, mode="L").resize((size, size), Image.Resampling.BILINEAR).save(path)
    return len(digits.images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out/demo", help="folder for the images and the outputs (default out/demo)")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    root = Path(args.out)
    count = write_digits(root / "digits", split=True)
    print(f"demo data: {count} digit images in {root / 'digits'} (train/ and val/, one folder per class)")

    checked = validate(data=root / "digits" / "train", out=root / "data")
    print(f"1. validate: {checked.report['verdict']} -> {checked.manifest}")

    print("2. train: teacher dinov2/vits14 with RANDOM weights (no download offline): a plumbing demo")
    result = train(
        out=root / "run",
        data=checked.manifest,
        model="torchvision/resnet18",
        method="distillation",
        method_args={"teacher": "dinov2/vits14", "teacher_weights": "none"},
        transform_args={"image_size": [56, 56]},
        epochs=args.epochs,
        batch_size=64,
        overwrite=True,
    )
    scored = probe(checkpoint=result.exported, train=checked.manifest, val=root / "digits" / "val", out=root / "probe")
    metrics = scored.metrics
    print(
        f"3. probe: linear top-1 {metrics['linear_top1']:.3f}, kNN top-1 {metrics['knn_top1']:.3f} on "
        f"{metrics['num_val']} val digits ({metrics['num_classes']} classes)"
    )
    run = result.out
    print(
        json.dumps(
            {
                "manifest": checked.manifest,
                "validation_report": checked.report_md,
                "config": str(run / "config.yaml"),
                "log": str(run / "train.log"),
                "metrics": str(run / "metrics.jsonl"),
                "student": str(result.exported),
                "steps": result.steps,
                "final_loss": result.final_loss,
                "probe": str(scored.out / "metrics.json"),
            },
            indent=2,
        )
    )
    print(f"load the student with: kubedistill.load_student({str(result.exported)!r})")
    print(
        "register it with an MLflow server: kubedistill register "
        f"model={result.exported} metrics={scored.out / 'metrics.json'} name=demo-student tracking_uri=http://..."
    )


if __name__ == "__main__":
    main()
