"""A FIFO queue of teacher vectors that serves as the pseudo classifier."""

from __future__ import annotations

import torch
from torch import nn

# (dataset size upper bound, queue size): the queue holds roughly 25-50% of the images of its bucket, so
# it is never dominated by copies of the same image from earlier epochs.
QUEUE_SIZE_TABLE: tuple[tuple[float, int], ...] = (
    (50, 16),
    (100, 32),
    (250, 64),
    (500, 128),
    (1_000, 256),
    (2_000, 512),
    (4_000, 1024),
    (10_000, 2048),
    (20_000, 4096),
    (float("inf"), 8192),
)


def auto_queue_size(num_images: int) -> int:
    """Queue size K for a dataset of ``num_images`` images (the first bucket with N < bound)."""
    for bound, size in QUEUE_SIZE_TABLE:
        if num_images < bound:
            return size
    raise AssertionError("unreachable: the last bound is infinite")


class TeacherQueue(nn.Module):
    """K x D teacher vectors, newest first. Slots not yet written are reported by ``mask``.

    The queue is a buffer, so it is saved and restored with the method's state_dict. It never does a
    collective: in multi-process training the caller enqueues the all-gathered batch, in the same order on
    every rank, so all ranks hold the same queue.
    """

    vectors: torch.Tensor
    num_filled: torch.Tensor

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be >= 1, got {size}")
        self.register_buffer("vectors", torch.zeros(size, dim))
        self.register_buffer("num_filled", torch.zeros((), dtype=torch.long))
        # A host-side copy of num_filled: reading the buffer every step would synchronise with the GPU.
        self._filled = 0

    @property
    def size(self) -> int:
        return self.vectors.shape[0]

    @torch.no_grad()
    def enqueue(self, batch: torch.Tensor) -> None:
        """Push (B, D) vectors to the front; the oldest B fall off the end.

        If B > K, the queue becomes K vectors spread evenly over the batch: with an all-gathered batch (rank 0's
        rows first, then rank 1's, ...) every rank's rows are represented, not only the first ranks'.
        """
        batch = batch.detach().to(self.vectors.dtype)
        if batch.shape[0] > self.size:
            picks = torch.arange(self.size, device=batch.device) * batch.shape[0] // self.size
            batch = batch[picks]
        num_new = min(batch.shape[0], self.size)
        if num_new < self.size:
            self.vectors[num_new:] = self.vectors[: self.size - num_new].clone()
        self.vectors[:num_new] = batch[:num_new]
        if self._filled < self.size:
            self._filled = min(self._filled + num_new, self.size)
            self.num_filled.fill_(self._filled)

    @property
    def filled(self) -> int:
        """Number of slots written so far (at most K)."""
        return self._filled

    @property
    def mask(self) -> torch.Tensor | None:
        """(K,) bool with True for filled slots, or None once the queue is full (nothing to mask)."""
        if self._filled >= self.size:
            return None
        return torch.arange(self.size, device=self.vectors.device) < self._filled

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._filled = int(self.num_filled)
