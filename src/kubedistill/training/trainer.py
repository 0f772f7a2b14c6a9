"""The training entry point: a small object with setup / train / save_checkpoint / cleanup."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from kubedistill import storage
from kubedistill.config import TrainConfig, to_dict
from kubedistill.data.dali import DaliLoader, resolve_backend
from kubedistill.data.datasets import FailureCounter, ImageDataset, make_dataloader, resolve_num_workers
from kubedistill.data.remote import ImageReader, choose_remote_mode, data_cache_dir, stage
from kubedistill.data.sources import ImageList, resolve_images
from kubedistill.data.transforms import DistillationTransform
from kubedistill.errors import ConfigError, DataError, KubedistillError, OutputDirError
from kubedistill.methods.distillation import Distillation, auto_queue_size
from kubedistill.methods.distillation.args import scaled_lr
from kubedistill.methods.distillation.queue import QUEUE_SIZE_TABLE
from kubedistill.models.export import StudentMetadata, backbone_file, export_student, load_student
from kubedistill.models.students import Student, build_student
from kubedistill.models.teachers import load_teacher
from kubedistill.tracking.lineage import RUN_FILE
from kubedistill.tracking.runs import flatten
from kubedistill.tracking.training import TrainingTracker
from kubedistill.training import distributed
from kubedistill.training.allocator import tune_glibc_malloc
from kubedistill.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from kubedistill.training.compile import CompileReport, compile_models, decide_compile, example_batch
from kubedistill.training.logs import MetricsWriter, Progress, close_logging, setup_logging
from kubedistill.training.optim import build_optimizer, resolve_warmup_steps, set_lr, warmup_cosine_schedule
from kubedistill.training.precision import (
    cast_frozen_matmul_weights_,
    configure_matmul,
    resolve_device,
    resolve_precision,
)
from kubedistill.training.runfolder import RunFolder

logger = logging.getLogger(__name__)

# Periodic checkpoints when checkpoint_every_n_steps is not set: ~15 min at one step per second.
DEFAULT_CHECKPOINT_EVERY_N_STEPS = 1000
KEEP_CHECKPOINTS = 3
# Non-zero ranks resume too, but from the state rank 0 sends them, never from a file of their own.
RESUME_FROM_RANK_0 = Path("<rank 0's checkpoint>")
# Settings that say where or how a run is launched and logged, not what it computes: a resume may change them.
_HARMLESS = frozenset({"out", "overwrite", "resume_interrupted", "log_every_n_steps", "checkpoint_every_n_steps",
                       "num_workers", "checkpoint", "accelerator", "devices", "num_nodes", "compile"})  # fmt: skip
_HARMLESS_PREFIXES = ("loader_args.", "mlflow.")
# Epoch ends get a checkpoint too, but at most one per minute: small datasets run thousands of short epochs.
EPOCH_END_MIN_INTERVAL_S = 60.0


class NonFiniteLossError(KubedistillError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class TrainResult:
    out: Path
    exported: Path
    steps: int
    final_loss: float | None
    failed_images: int = 0
    already_finished: bool = False


class Trainer:
    """Distills ``config.method_args.teacher`` into ``config.model``. Use: setup(); train(); cleanup()."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.folder = RunFolder(config.out)  # local, or gs:// with a node-local staging folder
        self.layout = self.folder.layout
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.last_loss: float | None = None
        self.already_finished = False
        self.last_save = time.monotonic()
        self.tracker = TrainingTracker(None)  # MLflow, rank 0 only; inactive until setup() opens a run

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        cfg = self.config
        self.device = resolve_device(cfg.accelerator)
        self.proc = distributed.init(self.device)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.proc.local_rank)
            torch.cuda.set_device(self.device)
        self._check_world()
        self.is_main = distributed.is_main()
        resume_path = self._prepare_output()
        setup_logging(self.layout.train_log, main_process=self.is_main)
        self.precision = resolve_precision(cfg.precision, self.device)
        configure_matmul(self.device, self.precision)
        if self.device.type == "cpu":
            tune_glibc_malloc()
        logger.info("device %s, precision %s, world size %d", self.device, self.precision.name, self.proc.world_size)
        # The same seed on every rank: models (a random teacher too) are built identically everywhere. Per-rank
        # randomness has its own streams (mixup generator, per-sample augmentation seeds).
        torch.manual_seed(cfg.seed)
        self._setup_data()
        self._setup_model()
        self._setup_optimizer()
        if resume_path is not None:
            self._resume(resume_path)
        elif cfg.checkpoint:
            self._load_initial_weights(cfg.checkpoint)
        self.compile_report = self._compile_models()  # after a resume: only the steps left count
        if self.is_main:
            self.layout.config.write_text(yaml.safe_dump(self.resolved_config(), sort_keys=False))
            self.tracker = TrainingTracker.start(
                cfg.mlflow, out=self.layout.root, config=self.resolved_config(), resume=resume_path is not None
            )
            self.folder.push(self.layout.config, self.layout.root / RUN_FILE)
        self.metrics = MetricsWriter(self.layout.metrics)

    def _compile_models(self) -> CompileReport:
        """torch.compile the teacher and the student as ``compile`` decides, warmed up on a batch of the
        training's shape (the time is logged and written to config.yaml)."""
        cfg = self.config
        decision = decide_compile(cfg.compile, device=self.device, total_steps=self.total_steps - self.step,
                                  per_device_batch=self.per_device_batch, world_size=self.proc.world_size)  # fmt: skip
        if not (decision.teacher or decision.student):
            logger.info("%s", decision.reason)
            return CompileReport(decision)
        example = example_batch(self.per_device_batch, cfg.transform_args.image_size, self.device,
                                channels_last=self.channels_last)  # fmt: skip
        return compile_models(
            decision, teacher=self.method.teacher, student=self.method.student, example=example,
            teacher_autocast=self.precision.teacher_autocast(self.device),
            student_autocast=self.precision.student_autocast(self.device),
        )  # fmt: skip

    def _check_world(self) -> None:
        """Under torchrun the launch decides the process layout; without it, asking for more is an error."""
        cfg, world, local = self.config, self.proc.world_size, self.proc.local_world_size
        nodes = world // local
        problems = []
        if world == 1 and cfg.num_nodes > 1:
            problems.append(
                f"num_nodes={cfg.num_nodes} needs a launcher on every node: start "
                f"`torchrun --nnodes={cfg.num_nodes} --nproc-per-node=<devices> -m kubedistill train ...` on each "
                "(on a cluster, `kubedistill launch` or the pipeline's pytorchjob/trainjob launcher does this)"
            )
        elif world > 1 and ((cfg.devices not in ("auto", local)) or cfg.num_nodes not in (1, nodes)):
            logger.warning(
                "devices=%s num_nodes=%s differ from the torchrun launch (%d process(es) per node, %d node(s)): "
                "the launch wins", cfg.devices, cfg.num_nodes, local, nodes,
            )
        if cfg.batch_size % world:
            problems.append(
                f"batch_size: the global batch {cfg.batch_size} is not divisible by the world size {world}"
            )
        if problems:
            raise ConfigError(problems)

    def _prepare_output(self) -> Path | None:
        """Rank 0 alone inspects and prepares the run folder and decides whether (and from what) to resume; the
        others learn the decision from it, so no rank decides from what its own disk happens to hold. Returns
        the checkpoint to resume from on rank 0, and ``RESUME_FROM_RANK_0`` elsewhere (None: a new run)."""
        decision: dict[str, Any] = {}
        error: KubedistillError | None = None
        if self.is_main:
            # After torchrun restarted the workers (--max-restarts), resume without being asked.
            resume = self.config.resume_interrupted or (
                distributed.is_elastic_restart() and self.layout.last_checkpoint.exists()
            )
            try:
                path = self.folder.prepare(overwrite=self.config.overwrite, resume=resume)
                decision = {"resume": str(path) if path else None}
            except KubedistillError as e:  # every rank stops, with rank 0's reason
                error, decision = e, {"error": str(e)}
        decision = distributed.broadcast_object(decision)
        if error is not None:
            raise error
        if "error" in decision:
            raise OutputDirError(f"rank 0 could not prepare the run folder: {decision['error']}")
        if decision["resume"] is None:
            return None
        if distributed.is_elastic_restart():
            logger.warning("torchrun restarted the workers: resuming from %s", decision["resume"])
        return Path(decision["resume"]) if self.is_main else RESUME_FROM_RANK_0

    def _setup_data(self) -> None:
        cfg = self.config
        images = resolve_images(cfg.data)
        self.data_fingerprint = images.fingerprint
        files = images.uris
        self.num_images = len(files)
        if self.num_images < cfg.batch_size:
            raise DataError(
                f"data: {self.num_images} image(s) found in {cfg.data}, fewer than batch_size={cfg.batch_size}; "
                "lower batch_size or add images"
            )
        self.transform = DistillationTransform(cfg.transform_args)
        cache = self._staged_cache(images)
        self.per_device_batch = cfg.batch_size // self.proc.world_size
        num_workers = resolve_num_workers(
            cfg.num_workers, world_size_local=self.proc.local_world_size, compute_on_cpu=self.device.type == "cpu"
        )
        self.loader_backend = resolve_backend(cfg.loader_args.backend, self.device)
        if self.loader_backend == "dali":
            # Decoding and augmentation in DALI (nvJPEG on CUDA); the random choices are still ours.
            self.loader = DaliLoader(
                files, self.transform, batch_size=self.per_device_batch, seed=cfg.seed, rank=self.proc.rank,
                world_size=self.proc.world_size, device=self.device, num_threads=max(1, num_workers),
                read_bytes=ImageReader(cache).read_bytes,
            )  # fmt: skip
        else:
            pin = cfg.loader_args.pin_memory
            self.loader = make_dataloader(
                dataset=ImageDataset(files, self.transform, seed=cfg.seed, loader=ImageReader(cache)),
                batch_size=self.per_device_batch,
                num_workers=num_workers,
                shuffle=True,
                seed=cfg.seed,
                drop_last=True,
                rank=self.proc.rank,
                world_size=self.proc.world_size,
                pin_memory=self.device.type == "cuda" if pin == "auto" else pin,
                persistent_workers=cfg.loader_args.persistent_workers and num_workers > 0,
                prefetch_factor=cfg.loader_args.prefetch_factor if num_workers > 0 else None,
            )
        self.failures = FailureCounter(self.num_images, cfg.loader_args.max_bad_fraction)
        self._pending_failures: list[tuple[str, str]] = []  # this rank's, not yet counted with the others
        self.steps_per_epoch = len(self.loader)
        epoch_steps = cfg.epochs * self.steps_per_epoch
        self.total_steps = min(epoch_steps, cfg.max_steps) if cfg.max_steps else epoch_steps
        workers = f"DALI with {max(1, num_workers)} threads" if self.loader_backend == "dali" else (
            f"{num_workers} data workers")  # fmt: skip
        logger.info("%d images, %d steps per epoch of global batch %d, %d steps in total, %s per process",
                    self.num_images, self.steps_per_epoch, cfg.batch_size, self.total_steps, workers)  # fmt: skip

    def _staged_cache(self, images: ImageList) -> Path | None:
        """Local files are read in place (None); gs:// ones staged to the node's disk first (the folder they are
        in) or streamed (None)."""
        self.remote_mode = None
        if not images.remote:
            return None
        largs = self.config.loader_args
        cache = data_cache_dir(largs.cache_dir)
        self.remote_mode = choose_remote_mode(largs.remote, images.remote_bytes, cache)
        if self.remote_mode == "stream":
            return None
        stage(images.uris, cache, sizes=images.sizes, sha256=images.sha256)
        # Every node stages the same files at about the same speed, so the wait here is short.
        distributed.barrier()
        return cache

    def _setup_model(self) -> None:
        cfg, margs = self.config, self.config.method_args
        queue_size = auto_queue_size(self.num_images) if margs.queue_size == "auto" else margs.queue_size
        if queue_size >= self.num_images:
            smallest = min(size for _, size in QUEUE_SIZE_TABLE)
            fix = (
                f"queue_size=auto needs at least {smallest + 1} images: add images (or set a queue_size below "
                f"{self.num_images}, a queue that small teaches little)"
                if margs.queue_size == "auto" else "set a smaller queue_size or use 'auto'"
            )  # fmt: skip
            raise ConfigError([
                f"method_args.queue_size: {queue_size} must be smaller than the number of images "
                f"({self.num_images}); {fix}"
            ])  # fmt: skip
        self.queue_size = queue_size
        teacher = load_teacher(margs.teacher, weights=margs.teacher_weights, sha256=margs.teacher_sha256)
        self.teacher_sha256 = teacher.sha256  # of the file actually loaded: provenance
        teacher.to(self.device)
        if self.precision.teacher_dtype is not None:
            cast_frozen_matmul_weights_(teacher, self.precision.teacher_dtype)
        student = build_student(cfg.model, image_size=tuple(cfg.transform_args.image_size))
        self.method = Distillation(
            student=student,
            student_dim=student.feature_dim,
            teacher=teacher,
            teacher_dim=teacher.embed_dim,
            queue_size=queue_size,
            temperature=margs.temperature,
            use_mixup=margs.mixup,
        ).to(self.device)
        # NHWC convolutions: faster on tensor cores, and on CPUs in bf16 (oneDNN): resnet18 forward+backward at
        # 224 px, batch 32, 1.46 -> 1.04 s here (BENCHMARKS.md). Harmless for architectures without convolutions.
        self.channels_last = self.device.type == "cuda" or self.precision.student_bf16
        if self.channels_last:
            self.method.student.to(memory_format=torch.channels_last)
        # The optimizer and checkpoints use self.method; the forward pass goes through the DDP wrapper.
        self.model = distributed.wrap_ddp(self.method, self.device)
        # Re-seeded every step from (seed, rank, step): a resumed run, on any rank, mixes exactly as the
        # uninterrupted one without saving per-rank RNG state.
        self.mixup_generator = torch.Generator()
        logger.info(
            "student %s (%d-d) -> teacher %s (%d-d), queue %d", cfg.model, student.feature_dim, margs.teacher,
            teacher.embed_dim, queue_size,
        )

    def _setup_optimizer(self) -> None:
        cfg = self.config
        oargs = cfg.optim_args
        self.base_lr = scaled_lr(oargs.lr, cfg.batch_size, cfg.method_args)
        self.optimizer = build_optimizer([self.method.student, self.method.head], oargs, self.base_lr)
        self.warmup_steps = resolve_warmup_steps(
            oargs.warmup_epochs, steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps
        )
        self.schedule = warmup_cosine_schedule(
            base_lr=self.base_lr,
            total_steps=self.total_steps,
            warmup_steps=self.warmup_steps,
            min_lr_ratio=oargs.min_lr_ratio,
        )
        self.trainable = [p for p in self.method.parameters() if p.requires_grad]
        self._first_nonfinite = torch.full((), -1, dtype=torch.long, device=self.device)
        # Loss scaling for fp16 (16-mixed); with it off, scale/unscale_/step/update are plain pass-throughs.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.grad_scaler)

    def _load_initial_weights(self, source: str) -> None:
        """``checkpoint=PATH``: a new run starting from the student weights of an export or a training checkpoint."""
        path = Path(source)
        try:
            state = load_checkpoint(path)["model"]
            student_state = {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}
        except CheckpointError:
            student_state = load_student(path).student.state_dict()
        try:
            self.method.student.load_state_dict(student_state)
        except RuntimeError as e:
            raise CheckpointError(
                f"checkpoint {path} does not fit student {self.config.model}: {str(e).splitlines()[0]}"
            ) from e
        logger.info("student initialised from %s", path)

    # ------------------------------------------------------------------ resume

    def _resume(self, path: Path) -> None:
        """Rank 0 reads the checkpoint and checks that it fits this configuration; every rank then loads rank 0's
        state (a node's own disk may hold nothing, or an older file), and all ranks must agree before step one."""
        payload: dict[str, Any] = {}
        if self.is_main:
            try:
                state = load_checkpoint(path)
                self._check_resumable(state, path)
                payload = {"state": state}
            except KubedistillError as e:
                payload = {"error": str(e)}
        payload = distributed.broadcast_object(payload)
        if "error" in payload:
            raise CheckpointError(payload["error"])
        state = payload["state"]
        self.method.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.failures.load_state_dict(state["failures"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.already_finished = self.step >= self.total_steps
        weights = sum(float(p.detach().double().sum()) for p in self.method.parameters())
        if not distributed.all_equal([float(self.step), weights], self.device):
            raise CheckpointError(f"the ranks disagree after resuming from {path}: step or weights differ")
        if self.is_main:
            MetricsWriter(self.layout.metrics).truncate_after(self.step)
        logger.info("resumed from %s at step %d (epoch %d)", self.folder.uri if self.folder.remote else path,
                    self.step, self.epoch)  # fmt: skip

    def _check_resumable(self, state: dict[str, Any], path: Path) -> None:
        """A resume must continue the same run: refuse a configuration that would change the result."""
        if state["total_steps"] != self.total_steps or state["queue_size"] != self.queue_size:
            raise CheckpointError(
                f"{path} was written by a run with {state['total_steps']} steps and queue {state['queue_size']}; "
                f"this configuration has {self.total_steps} steps and queue {self.queue_size}. Resume with the "
                "same settings, or start a new run in another output folder"
            )
        saved = state.get("config")
        if saved is None:  # written before checkpoints carried their configuration
            logger.warning("%s does not record its configuration: the resume cannot be checked", path)
            return
        current = self.result_config()
        differing = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        if differing:
            changes = "; ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in differing)
            raise CheckpointError(
                f"cannot resume from {path}: these settings differ from the interrupted run's and change the "
                f"result: {changes}. Resume with the run's settings (config.yaml), or start a new run in another "
                "output folder"
            )

    def result_config(self) -> dict[str, Any]:
        """The settings that decide what a run computes, flattened (dotted keys), as JSON values."""
        plain = json.loads(json.dumps(to_dict(self.config), default=str))
        flat = {k: v for k, v in flatten(plain).items() if not k.startswith(_HARMLESS_PREFIXES) and k not in _HARMLESS}
        # The loader actually used (auto resolves by device): DALI and torch resize and clip slightly differently.
        flat.update({"data_fingerprint": self.data_fingerprint, "world_size": self.proc.world_size,
                     "loader_backend": self.loader_backend})  # fmt: skip
        return flat

    # ------------------------------------------------------------------ training

    def train(self) -> TrainResult:
        if self.already_finished:
            logger.info("the run in %s already finished (%d steps): nothing to do", self.layout.root, self.step)
            if self.is_main and not self.layout.exported.exists():
                self.export()
            self.tracker.finish()
            return TrainResult(
                self.layout.root, self.layout.exported, self.step, None, self.failures.num_failed, already_finished=True
            )
        every = self.config.checkpoint_every_n_steps or DEFAULT_CHECKPOINT_EVERY_N_STEPS
        progress = Progress(total_steps=self.total_steps, start_step=self.step, enabled=self.is_main)
        self.method.train()
        self.method.teacher.eval()
        window_start, window_images = time.perf_counter(), 0
        epoch_start = time.perf_counter()
        try:
            while self.step < self.total_steps:
                for images in self._epoch_batches():
                    loss = self._train_step(images)
                    window_images += self.config.batch_size
                    if self.step % self.config.log_every_n_steps == 0 or self.step == self.total_steps:
                        elapsed = time.perf_counter() - window_start
                        self._log_step(loss, window_images / elapsed, progress)
                        window_start, window_images = time.perf_counter(), 0
                    else:
                        progress.update(self.step)
                    if self.step % every == 0 and self.step < self.total_steps:
                        self.save_checkpoint()
                    if self.step >= self.total_steps:
                        break
                else:
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                    if self.is_main:
                        self.tracker.log_epoch(self.epoch, time.perf_counter() - epoch_start)
                    epoch_start = time.perf_counter()
                    due = time.monotonic() - self.last_save >= EPOCH_END_MIN_INTERVAL_S
                    # Rank 0's clock decides: saving is collective, and the ranks' clocks differ by a little.
                    if distributed.broadcast_object(due) and self.step < self.total_steps:
                        self.save_checkpoint()
        finally:
            progress.close()
        if self.is_main and self.batch_in_epoch:  # the last epoch ended by the step limit, not the loader
            self.tracker.log_epoch(self.epoch + 1, time.perf_counter() - epoch_start)
        self.save_checkpoint()
        if self.is_main:
            self.export()
            self.folder.push(*self.exported_files(), self.layout.metrics, self.layout.train_log)
        logger.info("finished %d steps; student exported to %s", self.step,
                    storage.join(self.folder.uri, "exported", self.layout.exported.name))  # fmt: skip
        if self.is_main:
            self.tracker.finish(artifacts=self._tracked_artifacts())
        return TrainResult(
            self.layout.root, self.layout.exported, self.step, self.last_loss, self.failures.num_failed
        )

    def _epoch_batches(self):
        """Batches of the current epoch from where the run stands: a resumed run skips the batches it already
        trained on without loading them, and gets the same images and augmentations as an uninterrupted run."""
        self.loader.sampler.set_epoch(self.epoch, start=self.batch_in_epoch * self.per_device_batch)
        for batch in self.loader:
            if batch["failures"]:
                self._record_failures(batch["failures"])
            self.batch_in_epoch += 1
            yield batch["image"]

    def _record_failures(self, failures: list[tuple[str, str]]) -> None:
        """Note this rank's unreadable images; ``_sync_failures`` counts them with the other ranks' at the next
        log step. A rank whose own share already passes the limit stops at once (torchrun then stops the others)."""
        known = set(self.failures.failed_paths) | {path for path, _ in self._pending_failures}
        for path, reason in failures:
            if path not in known:
                logger.warning("skipped unreadable image %s (%s)", path, reason)
                self._pending_failures.append((path, reason))
                known.add(path)
        if self._pending_failures:
            alone = FailureCounter(self.failures.total_images, self.failures.max_bad_fraction)
            alone.load_state_dict(self.failures.state_dict())
            alone.update(self._pending_failures)  # raises DataError past loader_args.max_bad_fraction

    def _sync_failures(self) -> None:
        """Merge every rank's new unreadable images into the shared count (the limit applies to the dataset, not
        to one rank's share of it) and stop past loader_args.max_bad_fraction, on every rank at once."""
        gathered = [f for part in distributed.all_gather_object(self._pending_failures) for f in part]
        self._pending_failures = []
        if gathered:
            before = self.failures.num_failed
            self.failures.update(gathered)  # raises DataError past loader_args.max_bad_fraction
            if self.failures.num_failed > before:
                logger.warning("%d unreadable image(s) skipped so far", self.failures.num_failed)

    def _train_step(self, images: torch.Tensor) -> torch.Tensor:
        set_lr(self.optimizer, self.schedule[self.step])
        self.mixup_generator.manual_seed(step_seed(self.config.seed, self.proc.rank, self.step))
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        loss = self.model(
            images,
            gather=distributed.all_gather,
            generator=self.mixup_generator,
            teacher_autocast=self.precision.teacher_autocast(self.device),
            student_autocast=self.precision.student_autocast(self.device),
        )
        self._note_nonfinite(loss)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        clip = self.config.optim_args.gradient_clip_val
        if clip is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(self.trainable, clip)
        self.scaler.step(self.optimizer)  # skipped when a scaled gradient overflowed (fp16)
        self.scaler.update()
        self.step += 1
        return loss.detach()

    def _note_nonfinite(self, loss: torch.Tensor) -> None:
        """Remember the first step whose loss was not finite, on the device: reading the loss every step would
        make the host wait for the GPU. ``_raise_if_nonfinite`` looks at log steps and before checkpoints."""
        bad = ~torch.isfinite(loss.detach())
        self._first_nonfinite = torch.where(bad & (self._first_nonfinite < 0), self.step + 1, self._first_nonfinite)

    def _raise_if_nonfinite(self) -> None:
        """Stop every rank, naming the first step any rank's loss was NaN or infinite (before any checkpoint
        could keep the damaged weights)."""
        steps = [s for s in distributed.all_gather(self._first_nonfinite.view(1)).tolist() if s >= 0]
        if steps:
            last = self.layout.last_checkpoint
            where = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
            raise NonFiniteLossError(
                f"the loss was not finite at step {min(steps)}; {where}. Lower optim_args.lr or use "
                "precision=32-true, then resume or restart"
            )

    def _log_step(self, loss: torch.Tensor, images_per_second: float, progress: Progress) -> None:
        self._raise_if_nonfinite()
        self._sync_failures()
        self.last_loss = float(distributed.mean_across_ranks(loss))
        record = {
            "step": self.step,
            "epoch": self.epoch,
            "loss": self.last_loss,
            "lr": self.schedule[self.step - 1],
            "images_per_second": images_per_second,
        }
        if self.is_main:
            self.metrics.write(record)
            self.tracker.log_step(record)
        progress.update(self.step, loss=self.last_loss, images_per_second=images_per_second)

    # ------------------------------------------------------------------ outputs

    def save_checkpoint(self) -> None:
        self.last_save = time.monotonic()
        self._raise_if_nonfinite()  # every rank calls this: the checks are collectives
        self._sync_failures()
        if not self.is_main:
            return
        state: dict[str, Any] = {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "total_steps": self.total_steps,
            "queue_size": self.queue_size,
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "failures": self.failures.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            },
            "config": self.result_config(),
        }
        path = save_checkpoint(state, self.layout.checkpoints, step=self.step, keep=KEEP_CHECKPOINTS)
        self.folder.push_checkpoint(path, keep=KEEP_CHECKPOINTS)
        logger.info("checkpoint written: %s", storage.join(self.folder.uri, "checkpoints", path.name))

    def export(self) -> Path:
        cfg = self.config
        metadata = StudentMetadata(
            model=cfg.model,
            feature_dim=self.method.student.feature_dim,
            image_size=tuple(cfg.transform_args.image_size),
            mean=tuple(cfg.transform_args.normalize.mean),
            std=tuple(cfg.transform_args.normalize.std),
        )
        student: Student = self.method.student
        export_student(student, metadata, self.layout.exported, provenance=self.provenance())
        return self.layout.exported

    def exported_files(self) -> list[Path]:
        """student.pt, student.json and <model>_backbone.pt."""
        exported = self.layout.exported
        return [exported, exported.with_suffix(".json"), backbone_file(exported, self.config.model)]

    def provenance(self) -> dict[str, Any]:
        """What produced this student: the teacher, its weights file's sha256, the data's fingerprint."""
        return {"teacher": self.config.method_args.teacher, "teacher_sha256": self.teacher_sha256,
                "dataset_fingerprint": self.data_fingerprint}  # fmt: skip

    def _tracked_artifacts(self) -> list[tuple[Path, str | None]]:
        """(file, MLflow artifact folder) pairs uploaded when the run ends."""
        files: list[tuple[Path, str | None]] = [
            (self.layout.config, None), (self.layout.train_log, None), (self.layout.metrics, None)
        ]
        if self.tracker.log_model:
            files += [(path, "exported") for path in self.exported_files()]
        return files

    def resolved_config(self) -> dict[str, Any]:
        resolved = to_dict(self.config)
        resolved["resolved"] = {
            "num_images": self.num_images,
            "queue_size": self.queue_size,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "per_device_batch_size": self.per_device_batch,
            "world_size": self.proc.world_size,
            "lr": self.base_lr,
            "warmup_steps": self.warmup_steps,
            "precision": self.precision.name,
            "device": str(self.device),
            "failed_images": self.failures.num_failed,
            "data_fingerprint": self.data_fingerprint,
            "teacher_sha256": self.teacher_sha256,
            "remote_data": self.remote_mode,
            "loader_backend": self.loader_backend,
            "compile": self.compile_report.resolved(),
        }
        return resolved

    def cleanup(self, *, failed: bool = False) -> None:
        if hasattr(self, "failures") and self.failures.num_failed:
            logger.warning("%d image(s) could not be decoded and were skipped", self.failures.num_failed)
        # After a failure a peer may be dead: tearing the process group down would block on it, and the
        # process is about to exit anyway (torchrun restarts or fails the group).
        if failed:  # the tracker is inactive on ranks other than 0
            self.tracker.finish(artifacts=[(self.layout.train_log, None), (self.layout.metrics, None)], failed=True)
        if not failed:
            distributed.cleanup()
        close_logging()


def _train_in_process(values: dict[str, Any]) -> TrainResult:
    """One of the processes ``run_training`` started (picklable: a module-level function of plain values)."""
    from kubedistill.config import build_train_config

    return run_training(build_train_config(values))


def step_seed(seed: int, rank: int, step: int) -> int:
    """Seed of the per-step random draws of one rank (mixup's lambda and permutation)."""
    return ((seed * 1_000_003 + rank) * 2_147_483_647 + step) % (2**63 - 1)


def processes_to_start(config: TrainConfig) -> int:
    """How many processes this call must start itself: ``devices`` (or, with ``auto``, every visible GPU) when
    no launcher started this one and there is more than one; 0 to train here."""
    if distributed.is_launched():
        return 0
    devices = config.devices
    if devices == "auto":
        device = resolve_device(config.accelerator)
        devices = torch.cuda.device_count() if device.type == "cuda" else 1
    return devices if devices > 1 and config.num_nodes == 1 else 0


def run_training(config: TrainConfig) -> TrainResult:
    nprocs = processes_to_start(config)
    if nprocs:
        # devices=N without torchrun: start the N processes ourselves, as a LightlyTrain user expects.
        logger.info("starting %d training processes on this machine (devices=%s)", nprocs, config.devices)
        results = distributed.run_local_processes(nprocs, _train_in_process, to_dict(config))
        return results[0]
    trainer = Trainer(config)
    try:
        trainer.setup()
        result = trainer.train()
    except BaseException as error:
        trainer.cleanup(failed=True)
        if distributed.is_initialized():
            distributed.report_failure(error)  # abort_process exits before run_local_processes' wrapper sees it
            distributed.abort_process()
        raise
    trainer.cleanup()
    return result
