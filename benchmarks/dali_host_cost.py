"""What the DALI loader costs the training process per image, outside DALI: on a GPU this host-side work (read
the header, draw the view's random choices under its per-sample seed, build DALI's per-sample inputs) runs in
the training process for every batch, so it bounds images/s however fast nvJPEG and the GPU are. Also the
torch path's whole per-image cost (decode + augment in a DataLoader worker), for scale.

Each source tree (this one, and with ``--baseline REF`` that commit, checked out with ``git worktree`` into a
temporary folder) is measured in its own fresh processes, alternating, ``--rounds`` times; the median round is
reported; within a process each figure is the fastest of 3-4 identical repeats. The files are read into
memory first: storage is not part of it.

    .venv/bin/python benchmarks/dali_host_cost.py [--baseline REF] [--images 512] [--rounds 5]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

CHILD = r"""
import json, sys, time
import torch
from kubedistill.data.dali import DaliLoader
from kubedistill.data.datasets import ImageDataset
from kubedistill.data.images import decode_image
from kubedistill.data.transforms import DistillationTransform
from kubedistill.data.sources import list_images

torch.set_num_threads(1)
files = list_images(sys.argv[1])
contents = {path: open(path, "rb").read() for path in files}
transform = DistillationTransform()
loader = DaliLoader(files, transform, batch_size=len(files), seed=0, device="cpu", num_threads=1,
                    read_bytes=contents.__getitem__)
keys = list(loader.sampler)
pipe = loader._pipeline(encoded=True)
samples = [loader._dataset[key] for key in keys[:8]]  # warm-up
pipe._feeds(samples)
def best(fn, repeats=3):
    # The fastest of a few repeats: the work is identical each time, and interference only adds to it.
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)

draw = best(lambda: [loader._dataset[key] for key in keys])
samples = [loader._dataset[key] for key in keys]
feeds = best(lambda: pipe._feeds(samples))
loader.close()
torch_path = ImageDataset(files, transform, seed=0, loader=lambda path: decode_image(contents[path], source=path))
torch_path[keys[0]]
whole = best(lambda: [torch_path[key] for key in keys[:64]], repeats=4)
n = len(keys)
print("RESULT " + json.dumps({"dali_draw_us": draw / n * 1e6, "dali_feeds_us": feeds / n * 1e6,
                              "torch_image_us": whole / 64 * 1e6}))
"""


def measure(src: Path, images: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(images)], capture_output=True, text=True, env=env,
                          timeout=600, check=True)  # fmt: skip
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default=None, help="a git ref to measure against, in the same run")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from common import cpu_name
    from data_speed import make_jpegs

    with tempfile.TemporaryDirectory(prefix="kubedistill-hostcost-") as tmp:
        images = Path(tmp) / "images"
        make_jpegs(images, args.images)
        trees = {"this tree": ROOT / "src"}
        if args.baseline:
            worktree = Path(tmp) / "baseline"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.baseline],
                           check=True, capture_output=True)  # fmt: skip
            trees = {f"baseline {args.baseline}": worktree / "src", **trees}
        try:
            rounds: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
            for _ in range(args.rounds):
                for name, src in trees.items():
                    rounds[name].append(measure(src, images))
        finally:
            if args.baseline:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], check=False)
    print(f"- command: `.venv/bin/python benchmarks/dali_host_cost.py {' '.join(sys.argv[1:])}`")
    print(f"- machine: {platform.machine()}, {os.cpu_count()} cores, {cpu_name()}; date: "
          f"{datetime.date.today().isoformat()}; {args.images} generated 500x375 JPEGs, default augmentations, "
          f"224 px; median of {args.rounds} alternating rounds, each in a fresh process, one thread")  # fmt: skip
    print()
    print("| source | DALI path: header + view's choices, us/image | DALI inputs, us/image | "
          "at batch 256, ms per batch | torch path: decode + augment, us/image |")
    print("|---|---:|---:|---:|---:|")
    for name, results in rounds.items():
        draw = statistics.median(r["dali_draw_us"] for r in results)
        feeds = statistics.median(r["dali_feeds_us"] for r in results)
        whole = statistics.median(r["torch_image_us"] for r in results)
        print(f"| {name} | {draw:.0f} | {feeds:.0f} | {(draw + feeds) * 256 / 1000:.1f} | {whole:.0f} |")


if __name__ == "__main__":
    main()
