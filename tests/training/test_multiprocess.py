"""Real multi-process training: torchrun on 127.0.0.1 with gloo, two "nodes" as two torchrun invocations,
PyTorchJob-style PET_* launches, equivalence with one process, and exact resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

import kubedistill

COMMON = [
    "model=torchvision/resnet18",
    "method_args.teacher=dinov2/vits14",
    "method_args.teacher_weights=none",
    "transform_args.image_size=[28,28]",
    "num_workers=0",
    "accelerator=cpu",
    "log_every_n_steps=1",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PET_", "TORCHELASTIC_"))}
    env.update(PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", **extra)
    return env


def _start(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a process whose output goes to a temporary file: with pipes, a process that logs more than the
    pipe buffer blocks until it is read, and waiting on another process first would deadlock."""
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed with the Popen object)
    proc = subprocess.Popen(command, env=env or _env(), stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def _torchrun(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return _start([sys.executable, "-m", "torch.distributed.run", *args], env)


def _wait(procs: list[subprocess.Popen], timeout: float = 240) -> list[str]:
    deadline = time.monotonic() + timeout
    outputs = []
    for proc in procs:
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            logs = [_read(p)[-3000:] for p in procs]
            raise AssertionError("timed out; output tails:\n" + "\n-----\n".join(logs)) from None
        output = _read(proc)
        assert proc.returncode == 0, output[-4000:]
        outputs.append(output)
    return outputs


def _read(proc: subprocess.Popen) -> str:
    proc.log.seek(0)
    return proc.log.read()


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _node_args(out: Path, data: Path, port: int, node_rank: int, *extra: str) -> list[str]:
    return [
        "--nnodes=2", "--nproc-per-node=1", f"--node-rank={node_rank}", "--master-addr=127.0.0.1",
        f"--master-port={port}", "-m", "kubedistill", "train", f"out={out}", f"data={data}", *COMMON, *extra,
    ]  # fmt: skip


def test_two_nodes_as_two_torchrun_invocations(tmp_path, image_folder):
    out, port = tmp_path / "run", _free_port()
    procs = [_torchrun(*_node_args(out, image_folder, port, r, "epochs=1", "batch_size=16")) for r in (0, 1)]
    _wait(procs)
    config = (out / "config.yaml").read_text()
    assert "world_size: 2" in config and "per_device_batch_size: 8" in config
    assert len(_losses(out)) == 4  # 64 images / global batch 16; rank 0 alone writes metrics
    assert kubedistill.load_student(out / "exported" / "student.pt").feature_dim == 512


def test_pytorchjob_style_launch_from_pet_variables_only(tmp_path, image_folder):
    """The training operator sets PET_* and runs a bare `torchrun`; its own RANK is the pod index."""
    out, port = tmp_path / "run", _free_port()
    procs = []
    for node in (0, 1):
        env = _env(
            PET_NNODES="2", PET_NODE_RANK=str(node), PET_NPROC_PER_NODE="1", PET_MASTER_ADDR="127.0.0.1",
            PET_MASTER_PORT=str(port), RANK=str(node), WORLD_SIZE="2",
        )  # fmt: skip
        train = ["-m", "kubedistill", "train", f"out={out}", f"data={image_folder}", *COMMON, "max_steps=3"]
        procs.append(_torchrun(*train, "batch_size=16", env=env))
    _wait(procs)
    assert len(_losses(out)) == 3


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, image_folder):
    """Same seed, global batch 16: 2 x 8 under torchrun vs 1 x 16, in fp32. Mixup off (its permutation is per rank);
    a student without batch norm (per-rank batch statistics differ from the global ones on CPU)."""
    settings = [
        "model=torchvision/squeezenet1_1", "method_args.mixup=false", "batch_size=16", "max_steps=6", "precision=32-true",
    ]  # fmt: skip
    single = tmp_path / "single"
    _wait([_start([sys.executable, "-m", "kubedistill", "train", f"out={single}", f"data={image_folder}", *COMMON,
                   *settings])])  # fmt: skip
    double, port = tmp_path / "double", _free_port()
    _wait([_torchrun(*_node_args(double, image_folder, port, r, *settings)) for r in (0, 1)])
    one, two = _losses(single), _losses(double)
    assert len(one) == len(two) == 6
    # Stated tolerance: 1e-4 relative; the sums run in a different order, nothing else differs.
    assert two == pytest.approx(one, rel=1e-4), (one, two)
    a = kubedistill.load_student(single / "exported" / "student.pt").state_dict()
    b = kubedistill.load_student(double / "exported" / "student.pt").state_dict()
    # Summation order alone moves the weights by up to ~1e-4 in 6 LARS steps (measured 7.9e-5 at most, the distance
    # between the two runs 0.6% of how far steps 2-6 moved the weights); a rank that trained on its own gradients
    # or images would differ by about as much as the weights move.
    assert all(torch.allclose(a[k], b[k], rtol=1e-3, atol=2e-4) for k in a)


def test_sigkill_then_resume_ends_with_the_same_weights(tmp_path, image_folder):
    """S = 16 steps straight vs. killed (SIGKILL) after the step-8 checkpoint and resumed, with a DataLoader
    worker process: augmentations are seeded per sample, so the resumed half sees exactly the same tensors."""
    settings = ["epochs=2", "batch_size=8", "checkpoint_every_n_steps=4", "num_workers=1"]
    straight = tmp_path / "straight"
    kubedistill_cli = [sys.executable, "-m", "kubedistill", "train", f"data={image_folder}", *COMMON, *settings]
    _wait([_start([*kubedistill_cli, f"out={straight}"])])

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*kubedistill_cli, f"out={killed}"], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    marker = killed / "checkpoints" / "step-00000008.pt"
    deadline = time.monotonic() + 180
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "exported" / "student.pt").exists()

    _wait([_start([*kubedistill_cli, f"out={killed}", "resume_interrupted=true"])])
    a = kubedistill.load_student(straight / "exported" / "student.pt").state_dict()
    b = kubedistill.load_student(killed / "exported" / "student.pt").state_dict()
    # Tight: the same operations on the same inputs in the same order.
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=0, atol=1e-6) for k in a)
    assert _losses(killed) == pytest.approx(_losses(straight), rel=1e-6)


def _queue_worker(rank: int, world_size: int, port: int, results) -> None:
    """One rank: a method with a 4-slot queue, two steps on rank-specific images, queue sent back."""
    import torch.distributed as dist
    from torch import nn

    from kubedistill.methods.distillation import Distillation
    from kubedistill.training import distributed

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 6)).requires_grad_(False)
    student = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    method = Distillation(student=student, student_dim=5, teacher=teacher, teacher_dim=6, queue_size=6)
    generator = torch.Generator().manual_seed(100 + rank)  # different images and mixup on each rank
    for _ in range(2):
        method(torch.randn(2, 3, 4, 4, generator=generator), gather=distributed.all_gather, generator=generator)
    results.put((rank, method.queue.vectors.clone(), method.queue.filled))
    dist.barrier()
    dist.destroy_process_group()


def test_every_rank_holds_the_same_global_queue():
    ctx = torch.multiprocessing.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_queue_worker, args=(r, 2, port, results)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict((rank, (vectors, filled)) for rank, vectors, filled in (results.get(timeout=120) for _ in procs))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    (q0, filled0), (q1, filled1) = got[0], got[1]
    assert filled0 == filled1 == 6  # 2 steps x 4 gathered vectors, capped at the 6 slots
    assert torch.equal(q0, q1)
    # Newest global batch first: rank 0's two vectors, then rank 1's.
    assert not torch.equal(q0[0], q0[2])



def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def test_killed_worker_restarts_and_ends_with_the_uninterrupted_weights(tmp_path, image_folder):
    """2 nodes, --max-restarts=1: SIGKILL node 1's training process after the step-4 checkpoint; torchrun
    restarts the group, every rank resumes from the newest complete checkpoint, and the job completes."""
    settings = ["epochs=2", "batch_size=16", "checkpoint_every_n_steps=2", "precision=32-true"]
    straight, port = tmp_path / "straight", _free_port()
    _wait([_torchrun(*_node_args(straight, image_folder, port, r, *settings)) for r in (0, 1)])

    # Restarts use torchrun's c10d (elastic) rendezvous, as an elastic PyTorchJob does.
    out, port = tmp_path / "killed", _free_port()
    elastic = ["--nnodes=2", "--nproc-per-node=1", "--max-restarts=1", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=killed-worker-test"]  # fmt: skip
    train = ["-m", "kubedistill", "train", f"out={out}", f"data={image_folder}", *COMMON, *settings]
    procs = []
    for _ in range(2):
        procs.append(_torchrun(*elastic, *train))
        time.sleep(0.5)  # the first agent hosts the rendezvous store
    marker = out / "checkpoints" / "step-00000004.pt"
    deadline = time.monotonic() + 180
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    victims = _children(procs[1].pid)
    assert marker.exists() and victims, "no checkpoint or no training process to kill"
    os.kill(victims[0], signal.SIGKILL)
    outputs = _wait(procs)
    assert any("torchrun restarted the workers: resuming from" in o for o in outputs)
    assert len(_losses(out)) == len(_losses(straight)) == 8
    assert _losses(out) == pytest.approx(_losses(straight), rel=1e-5)
    a = kubedistill.load_student(straight / "exported" / "student.pt").state_dict()
    b = kubedistill.load_student(out / "exported" / "student.pt").state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=0, atol=1e-5) for k in a)


# --- run folders on gs:// (fake-gcs-server): what a PyTorchJob's pods do ----------------------------------------


def _gcs_losses(out: str) -> list[float]:
    from kubedistill import storage

    return [json.loads(line)["loss"] for line in storage.read_bytes(f"{out}/metrics.jsonl").decode().splitlines()]


def _gcs_student(out: str, tmp: Path) -> dict:
    from kubedistill import storage

    local = tmp / f"student-{abs(hash(out))}.pt"
    storage.fetch(f"{out}/exported/student.pt", local)
    return kubedistill.load_student(local).state_dict()


def _wait_for_object(uri: str, procs: list[subprocess.Popen], timeout: float = 180) -> None:
    from kubedistill import storage

    deadline = time.monotonic() + timeout
    while not storage.exists(uri) and all(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert storage.exists(uri), f"{uri} never appeared"


def test_two_processes_write_to_the_bucket_and_resume_from_it_after_sigkill(tmp_path, image_folder, gcs_bucket):
    """A 2-process torchrun run with out=gs://: SIGKILLed after the step-4 checkpoint, resumed with
    resume_interrupted=true on a node with an empty cache (only the bucket remembers), it ends with the
    uninterrupted run's weights."""
    emulator = os.environ["STORAGE_EMULATOR_HOST"]
    settings = ["epochs=2", "batch_size=16", "checkpoint_every_n_steps=2", "precision=32-true"]

    def launch(out: str, cache: str, *extra: str) -> subprocess.Popen:
        env = _env(STORAGE_EMULATOR_HOST=emulator, KUBEDISTILL_CACHE_DIR=str(tmp_path / cache))
        return _torchrun("--nproc-per-node=2", f"--master-port={_free_port()}", "-m", "kubedistill", "train",
                         f"out={out}", f"data={image_folder}", *COMMON, *settings, *extra, env=env)  # fmt: skip

    straight = f"gs://{gcs_bucket.name}/straight"
    _wait([launch(straight, "cache-straight")])
    killed = f"gs://{gcs_bucket.name}/killed"
    proc = launch(killed, "cache-first", "resume_interrupted=true")
    _wait_for_object(f"{killed}/checkpoints/step-00000004.pt", [proc])
    for pid in [*_children(proc.pid), proc.pid]:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    from kubedistill import storage

    assert not storage.exists(f"{killed}/exported/student.pt")
    (output,) = _wait([launch(killed, "cache-second-node", "resume_interrupted=true")])
    assert f"resumed from {killed} at step 4" in output or f"resumed from {killed} at step 6" in output
    assert _gcs_losses(killed) == pytest.approx(_gcs_losses(straight), rel=1e-6)
    a, b = _gcs_student(straight, tmp_path), _gcs_student(killed, tmp_path)
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=0, atol=1e-6) for k in a)


def test_two_nodes_with_their_own_caches_resume_without_divergence(tmp_path, image_folder, gcs_bucket):
    """Two torchrun "nodes" on loopback, each with its own local cache: rank 0 decides the resume from the
    bucket and sends its state, so the node that never saw a checkpoint resumes exactly as the other."""
    emulator = os.environ["STORAGE_EMULATOR_HOST"]
    settings = ["epochs=2", "batch_size=16", "checkpoint_every_n_steps=2", "precision=32-true"]

    def nodes(out: str, tag: str, *extra: str) -> list[subprocess.Popen]:
        port = _free_port()
        return [
            _torchrun(*_node_args(out, image_folder, port, rank, *settings, *extra),  # type: ignore[arg-type]
                      env=_env(STORAGE_EMULATOR_HOST=emulator, KUBEDISTILL_CACHE_DIR=str(tmp_path / f"{tag}-{rank}")))
            for rank in (0, 1)
        ]  # fmt: skip

    straight = f"gs://{gcs_bucket.name}/two-straight"
    _wait(nodes(straight, "straight"))
    killed = f"gs://{gcs_bucket.name}/two-killed"
    procs = nodes(killed, "first")
    _wait_for_object(f"{killed}/checkpoints/step-00000004.pt", procs)
    for proc in procs:
        for pid in [*_children(proc.pid), proc.pid]:
            os.kill(pid, signal.SIGKILL)
        proc.wait()
    _wait(nodes(killed, "second", "resume_interrupted=true"))  # fresh caches on both nodes
    assert _gcs_losses(killed) == pytest.approx(_gcs_losses(straight), rel=1e-6)
    a, b = _gcs_student(straight, tmp_path), _gcs_student(killed, tmp_path)
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=0, atol=1e-6) for k in a)
