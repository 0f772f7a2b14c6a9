"""``make demo``: distill on a small real image set that ships offline, and say where the outputs are.

The images are scikit-learn's digits (1,797 real 8x8 handwritten digits), written out as PNG files.
Pretrained DINOv2 weights cannot be downloaded offline, so the demo's teacher is dinov2/vits14 with RANDOM
weights: it shows the whole pipeline working end to end, not a useful student. Point ``method_args.teacher_weights``
at the official checkpoint (or leave it unset with internet access) for a real run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from kubedistill.api import train


def write_digits(folder: Path, *, size: int = 32) -> int:
    """Write the digits as ``folder/<label>/<index>.png`` (upscaled to size x size); returns the count."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise SystemExit("the demo needs scikit-learn: run `make demo` (it installs it) or pip install scikit-learn") from e
    digits = load_digits()
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        path = folder / str(label) / f"{index:04d}.png"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        gray = (pixels / 16.0 * 255).astype(np.uint8)
        Image.fromarray(gray, mode="L").resize((size, size), Image.Resampling.BILINEAR).save(path)
    return len(digits.images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out/demo", help="folder for the images and the run (default out/demo)")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    root = Path(args.out)
    count = write_digits(root / "digits")
    print(f"demo data: {count} digit images in {root / 'digits'}")
    print("teacher: dinov2/vits14 with RANDOM weights (no download offline) -- a plumbing demo, not a useful model")
    result = train(
        out=root / "run",
        data=root / "digits",
        model="torchvision/resnet18",
        method="distillation",
        method_args={"teacher": "dinov2/vits14", "teacher_weights": "none"},
        transform_args={"image_size": [56, 56]},
        epochs=args.epochs,
        batch_size=64,
        overwrite=True,
    )
    run = result.out
    print(
        json.dumps(
            {
                "config": str(run / "config.yaml"),
                "log": str(run / "train.log"),
                "metrics": str(run / "metrics.jsonl"),
                "checkpoint": str(run / "checkpoints" / "last.pt"),
                "student": str(result.exported),
                "steps": result.steps,
                "final_loss": result.final_loss,
            },
            indent=2,
        )
    )
    print(f"load it with: kubedistill.load_student({str(result.exported)!r})")


if __name__ == "__main__":
    main()
