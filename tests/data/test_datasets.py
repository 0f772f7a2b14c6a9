"""Tests for kubedistill.data.datasets: substitutes for bad images, failure accounting and the loader."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kubedistill.data import datasets as D
from kubedistill.data.datasets import (
    FailureCounter,
    ImageDataset,
    collate,
    make_dataloader,
    resolve_num_workers,
)
from kubedistill.data.images import ImageDecodeError
from kubedistill.data.transforms import EvalTransform
from kubedistill.errors import ConfigError, DataError


def to_float(image: torch.Tensor) -> torch.Tensor:
    """Module-level (picklable) stand-in transform: uint8 (3, H, W) -> float32 in [0, 1]."""
    return image.float() / 255


def write_dataset(root: Path, num_good: int, bad: tuple[int, ...] = ()) -> list[str]:
    """PNG files 0..n-1 whose red channel encodes their number; the indices in ``bad`` hold garbage."""
    files = []
    for i in range(num_good + len(bad)):
        path = root / f"{i:03d}.png"
        if i in bad:
            path.write_bytes(b"this is not an image")
        else:
            array = np.zeros((8, 8, 3), np.uint8)
            array[:, :, 0] = i
            Image.fromarray(array).save(path)
        files.append(str(path))
    return files


def fake_loader(path: str) -> torch.Tensor:
    """Decodes nothing: 'bad*' names fail, others give an (3, 4, 4) image whose value is the file's number."""
    name = Path(path).name
    if name.startswith("bad"):
        raise ImageDecodeError(path, "not an image in a recognised format")
    return torch.full((3, 4, 4), int(name), dtype=torch.uint8)


# --- ImageDataset ----------------------------------------------------------------------------------------


def test_good_image_is_returned_with_no_failures(tmp_path: Path) -> None:
    dataset = ImageDataset(write_dataset(tmp_path, 4), to_float)
    sample = dataset[2]
    assert sample["index"] == 2 and sample["failures"] == []
    assert sample["image"].shape == (3, 8, 8) and sample["image"][0, 0, 0].item() == pytest.approx(2 / 255)


def test_corrupt_image_is_replaced_and_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    files = write_dataset(tmp_path, 9, bad=(3,))
    dataset = ImageDataset(files, EvalTransform(8))
    with caplog.at_level(logging.WARNING, logger="kubedistill.data.datasets"):
        first = dataset[3]
        second = dataset[3]
    assert first["index"] != 3 and first["index"] == second["index"]  # a deterministic substitute
    assert torch.equal(first["image"], dataset[first["index"]]["image"])
    assert first["image"].shape == (3, 8, 8)
    assert [p for p, _ in first["failures"]] == [files[3]]
    assert "not an image" in first["failures"][0][1]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and files[3] in warnings[0].getMessage()  # once per path


def test_substitutes_visit_every_index() -> None:
    for n in (1, 2, 7, 10, 64, 1000):
        step = D._coprime_step(n)
        assert len({(5 + k * step) % n for k in range(n)}) == n


def test_all_bad_raises_after_the_retries() -> None:
    dataset = ImageDataset([f"/x/bad{i}" for i in range(5)], to_float, max_retries=2, loader=fake_loader)
    with pytest.raises(DataError, match="2 substitutes could not be decoded") as info:
        dataset[0]
    assert "/x/bad0" in str(info.value) and "kubedistill validate" in str(info.value)


def test_empty_dataset_is_an_error() -> None:
    with pytest.raises(DataError, match="no files"):
        ImageDataset([], to_float)


def test_collate_stacks_and_concatenates() -> None:
    samples = [
        {"image": torch.zeros(3, 4, 4), "index": 0, "failures": []},
        {"image": torch.ones(3, 4, 4), "index": 5, "failures": [("a", "bad"), ("b", "worse")]},
        {"image": torch.ones(3, 4, 4), "index": 2, "failures": [("c", "bad")]},
    ]
    batch = collate(samples)
    assert batch["image"].shape == (3, 3, 4, 4)
    assert batch["index"].dtype == torch.long and batch["index"].tolist() == [0, 5, 2]
    assert batch["failures"] == [("a", "bad"), ("b", "worse"), ("c", "bad")]


# --- FailureCounter --------------------------------------------------------------------------------------


def test_failure_counter_tolerates_up_to_the_fraction() -> None:
    counter = FailureCounter(total_images=100, max_bad_fraction=0.05)
    counter.update([(f"/d/{i}.jpg", "corrupt") for i in range(5)])
    counter.update([("/d/0.jpg", "corrupt"), ("/d/4.jpg", "corrupt")])  # repeats do not count twice
    assert counter.num_failed == 5 and counter.failed_paths[0] == "/d/0.jpg"
    with pytest.raises(DataError) as info:
        counter.update([("/d/5.jpg", "truncated")])
    message = str(info.value)
    assert "6 of 100 images" in message and "/d/0.jpg" in message
    assert "kubedistill validate" in message and "max_bad_fraction" in message


def test_failure_counter_with_zero_fraction_stops_at_the_first() -> None:
    counter = FailureCounter(total_images=10_000, max_bad_fraction=0.0)
    counter.update([])
    with pytest.raises(DataError, match="1 of 10000"):
        counter.update([("/d/a.jpg", "empty")])


def test_failure_counter_state_survives_a_resume() -> None:
    counter = FailureCounter(total_images=20, max_bad_fraction=0.1)
    counter.update([("/a", "x"), ("/b", "y")])
    restored = FailureCounter(total_images=20, max_bad_fraction=0.1)
    restored.load_state_dict(counter.state_dict())
    assert restored.num_failed == 2 and restored.failed_paths == ["/a", "/b"]
    restored.update([("/a", "x")])
    with pytest.raises(DataError, match="3 of 20"):
        restored.update([("/c", "z")])


# --- loader ----------------------------------------------------------------------------------------------


def test_loader_with_workers_gives_fixed_batches_and_carries_failures(tmp_path: Path) -> None:
    files = write_dataset(tmp_path, 6, bad=(1, 4))
    dataset = ImageDataset(files, to_float)
    loader = make_dataloader(dataset=dataset, batch_size=4, num_workers=2, shuffle=True, seed=0)
    seen_failures: set[str] = set()
    orders = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        batches = list(loader)
        assert [b["image"].shape for b in batches] == [(4, 3, 8, 8)] * 2
        orders.append(torch.cat([b["index"] for b in batches]).tolist())
        seen_failures.update(p for b in batches for p, _ in b["failures"])
        # Every returned image is a good one and its pixels match its index.
        for b in batches:
            assert not set(b["index"].tolist()) & {1, 4}
            assert torch.allclose(b["image"][:, 0, 0, 0] * 255, b["index"].float())
    assert seen_failures == {files[1], files[4]}
    assert orders[0] != orders[1]  # set_epoch reshuffles


def test_loader_is_reproducible_for_a_seed() -> None:
    dataset = ImageDataset([str(i) for i in range(12)], to_float, loader=fake_loader)

    def first_epoch(seed: int) -> list[int]:
        loader = make_dataloader(dataset=dataset, batch_size=3, num_workers=0, shuffle=True, seed=seed)
        return torch.cat([b["index"] for b in loader]).tolist()

    assert first_epoch(1) == first_epoch(1)
    assert first_epoch(1) != first_epoch(2)


def test_per_sample_seeding_leaves_the_gpu_generators_and_the_global_cpu_stream_alone(monkeypatch) -> None:
    """The DALI loader (and num_workers=0) seeds views in the training process: reseeding the GPUs' generators there
    would leave them at the last image's seed (fork_rng restores the CPU's only)."""
    from kubedistill.data.transforms import DistillationTransform

    def no_gpu_seeding(seed: int) -> None:
        raise AssertionError(f"a GPU generator was reseeded with {seed}")

    monkeypatch.setattr(torch.cuda, "manual_seed_all", no_gpu_seeding)
    transform = DistillationTransform()
    dataset = ImageDataset(["1", "2"], lambda image: transform.sample(40, 60), loader=fake_loader, seed=7)
    torch.random.default_generator.manual_seed(0)
    expected_next = torch.rand(3)
    torch.random.default_generator.manual_seed(0)
    first = [dataset[(0, i)]["image"] for i in range(2)]
    assert torch.equal(torch.rand(3), expected_next)  # the global stream continues as if nothing was drawn
    assert [dataset[(0, i)]["image"] for i in range(2)] == first  # and each view depends on its key alone
    assert first[0] != first[1]


def test_ranks_get_disjoint_equal_shards() -> None:
    dataset = ImageDataset([str(i) for i in range(11)], to_float, loader=fake_loader)
    shards = []
    for rank in range(2):
        loader = make_dataloader(
            dataset=dataset, batch_size=5, num_workers=0, shuffle=True, seed=3, rank=rank, world_size=2
        )
        shards.append(torch.cat([b["index"] for b in loader]).tolist())
    assert len(shards[0]) == len(shards[1]) == 5  # 11 // 2 = 5 each, one batch of 5
    assert not set(shards[0]) & set(shards[1])


def test_make_dataloader_rejects_a_bad_rank() -> None:
    dataset = ImageDataset(["1"], to_float, loader=fake_loader)
    with pytest.raises(ValueError, match="rank=2"):
        make_dataloader(
            dataset=dataset, batch_size=1, num_workers=0, shuffle=False, seed=0, rank=2, world_size=2
        )


# --- worker count ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cpus,local,expected", [(1, 1, 0), (2, 1, 1), (4, 1, 3), (64, 1, 8), (16, 8, 1), (8, 8, 0)]
)
def test_auto_num_workers(monkeypatch: pytest.MonkeyPatch, cpus: int, local: int, expected: int) -> None:
    monkeypatch.setattr(D.os, "sched_getaffinity", lambda _pid: set(range(cpus)))
    monkeypatch.setattr(D, "_cgroup_cpu_quota", lambda: None)
    assert resolve_num_workers("auto", world_size_local=local) == expected


@pytest.mark.parametrize("cpus,local,expected", [(2, 1, 0), (7, 1, 0), (8, 1, 1), (32, 1, 4), (128, 1, 8), (32, 2, 2)])
def test_auto_num_workers_when_the_model_computes_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch, cpus: int, local: int, expected: int
) -> None:
    """CPU training keeps the cores for the model's threads: one loader worker per 8 CPUs."""
    monkeypatch.setattr(D.os, "sched_getaffinity", lambda _pid: set(range(cpus)))
    monkeypatch.setattr(D, "_cgroup_cpu_quota", lambda: None)
    assert resolve_num_workers("auto", world_size_local=local, compute_on_cpu=True) == expected


def test_auto_num_workers_respects_a_cgroup_quota(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("200000 100000\n")
    assert D._cgroup_cpu_quota(str(cpu_max)) == 2
    cpu_max.write_text("max 100000\n")
    assert D._cgroup_cpu_quota(str(cpu_max)) is None
    monkeypatch.setattr(D.os, "sched_getaffinity", lambda _pid: set(range(32)))
    monkeypatch.setattr(D, "_cgroup_cpu_quota", lambda: 3)
    assert resolve_num_workers("auto") == 2


def test_explicit_num_workers() -> None:
    assert resolve_num_workers(0) == 0 and resolve_num_workers(5) == 5
    for bad in (-1, "many", True):
        with pytest.raises(ConfigError, match="num_workers"):
            resolve_num_workers(bad)  # type: ignore[arg-type]
