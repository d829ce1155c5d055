"""Stage-2 sample order ("seeded-shards-v1") and the DataLoader pieces that serve it.

Order of epoch e: the manifest's shards are permuted by rng(seed, e); their samples, in file order, form one
stream; the stream is cut into windows of WINDOW samples and each window is permuted by rng(seed, e, window).
Global batch b is stream positions [b*G, (b+1)*G) (the last partial batch is dropped); rank r of R takes the
r-th slice of G/R. Sample i of epoch e is augmented with a seed derived from (seed, e, i). So the data a step
sees is a pure function of (seed, epoch, step), whatever the number of loader workers, and a resume at step k
of an epoch just skips k batches.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from io import BytesIO
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image

from pisweep.errors import TrainingError
from pisweep.job.signals import ignore_stop_signals
from pisweep.train.augment import apply_seeded
from pisweep.train.determinism import (
    STREAM_AUGMENT,
    STREAM_LOADER,
    STREAM_SHARD_ORDER,
    STREAM_WINDOW,
    derive_seed,
    rng,
    torch_generator,
)
from pisweep.train.shards import SampleTable, read_range

WINDOW = 1 << 18  # samples per shuffle window (~26 shards of 10k): part of the "seeded-shards-v1" definition


def epoch_order(shard_counts: list[int], seed: int, epoch: int, window: int = WINDOW) -> np.ndarray:
    """The sample ids of one epoch in training order (ids number samples shard by shard, in manifest order)."""
    starts = np.concatenate([[0], np.cumsum(shard_counts)]).astype(np.int64)
    perm = rng(seed, epoch, STREAM_SHARD_ORDER).permutation(len(shard_counts))
    stream = np.concatenate([np.arange(starts[s], starts[s + 1]) for s in perm]) if len(perm) else np.zeros(0)
    stream = stream.astype(np.int64)
    for w, lo in enumerate(range(0, len(stream), window)):
        block = stream[lo:lo + window]
        stream[lo:lo + window] = block[rng(seed, epoch, STREAM_WINDOW, w).permutation(len(block))]
    return stream


class EpochBatchSampler:
    """Yields this rank's batches of ``(epoch, sample id)`` for one epoch, from a start batch on: one per optimizer
    step, holding its slice of each of the step's ``accumulation`` micro-batches in turn.

    The DataLoader keeps one sampler for its whole life (so persistent workers survive epochs); call
    :meth:`set_epoch` before iterating.
    """

    def __init__(self, shard_counts: list[int], seed: int, global_batch: int, rank: int = 0, world_size: int = 1,
                 accumulation: int = 1):
        if global_batch % (world_size * accumulation):
            raise TrainingError(f"global batch {global_batch} is not divisible by {world_size} ranks x "
                                f"{accumulation} accumulation steps")
        self.shard_counts = list(shard_counts)
        self.seed = seed
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.micro = global_batch // accumulation  # samples of one forward pass, over all ranks
        self.accumulation = accumulation
        self.world_size = world_size
        self.rank = rank
        self.epoch = 1
        self.start_batch = 0
        self._order: np.ndarray | None = None

    @property
    def batches_per_epoch(self) -> int:
        return sum(self.shard_counts) // self.global_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch
        self._order = epoch_order(self.shard_counts, self.seed, epoch)

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        if self._order is None:
            self.set_epoch(self.epoch, self.start_batch)
        order = self._order
        per_rank = self.micro // self.world_size
        for b in range(self.start_batch, self.batches_per_epoch):
            # micro-batch m of optimizer step b is the same samples at every rank count; this rank's batch is its
            # slice of each micro-batch in turn (the step splits it into ``accumulation`` equal, contiguous parts)
            rows = [order[b * self.global_batch + m * self.micro + self.rank * per_rank:][:per_rank]
                    for m in range(self.accumulation)]
            yield [(self.epoch, int(i)) for i in np.concatenate(rows)]


class ShardDataset(torch.utils.data.Dataset):
    """Map-style view of a :class:`SampleTable`: ``(epoch, sample id) -> (image tensor, token ids)``."""

    def __init__(self, table: SampleTable, transform: Callable[[Any], torch.Tensor],
                 tokenizer: Callable[[list[str]], torch.Tensor], seed: int, max_open: int = 64):
        self.table = table
        self.transform = transform
        self.tokenizer = tokenizer
        self.seed = seed
        self.max_open = max_open
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.table)

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # forked into a worker: descriptors are shared with the parent, reopen
            self._fds, self._pid = OrderedDict(), os.getpid()
        fd = self._fds.get(shard)
        if fd is not None:
            self._fds.move_to_end(shard)
            return fd
        path = self.table.paths[shard]
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise TrainingError(f"shard {path} is missing or unreadable: {exc}") from exc
        self._fds[shard] = fd
        if len(self._fds) > self.max_open:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def read(self, sid: int) -> tuple[bytes, str]:
        """The raw image bytes and caption of sample ``sid``."""
        t = self.table
        shard = int(t.shard[sid])
        fd, path = self._fd(shard), t.paths[shard]
        img = read_range(fd, path, t.img_off[sid], t.img_len[sid])
        txt = read_range(fd, path, t.txt_off[sid], t.txt_len[sid]).decode("utf-8", errors="replace")
        return img, txt

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, sid = key
        data, caption = self.read(sid)
        path = self.table.paths[int(self.table.shard[sid])]
        try:
            with Image.open(BytesIO(data)) as im:
                im.load()
                img = im.convert("RGB")
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt data
            raise TrainingError(f"shard {path}: image of sample {sid} cannot be decoded: {exc}") from exc
        x = apply_seeded(self.transform, img, derive_seed(self.seed, epoch, sid, STREAM_AUGMENT))
        return x, self.tokenizer([caption.strip()])[0]

    def __del__(self) -> None:
        if getattr(self, "_pid", None) == os.getpid():
            for fd in getattr(self, "_fds", {}).values():
                try:
                    os.close(fd)
                except OSError:
                    pass


def make_loader(dataset: torch.utils.data.Dataset, sampler: Any, workers: int, pin_memory: bool,
                seed: int) -> torch.utils.data.DataLoader:
    """One DataLoader for the whole training: persistent workers, order preserved (in_order), and its own
    generator, so creating an epoch's iterator does not draw from the global torch RNG. Its workers ignore stop
    signals (see workers.py): only the rank decides when to stop."""
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, pin_memory=pin_memory,
        generator=torch_generator(seed, STREAM_LOADER),
        worker_init_fn=ignore_stop_signals if workers > 0 else None,
        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
        multiprocessing_context="fork" if workers > 0 and os.name == "posix" else None)
