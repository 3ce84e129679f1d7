"""Feeding the training step: batches made ahead by worker threads, in order, and the
data-parallel shard of a TrainStream (framework-free; both backends use these).

The batches are exactly those of `augment.TrainStream.get(plan, i)`, in the order of i,
however many workers make them: the pipeline changes when a batch is made, never which.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from galmorph.core.errors import GalmorphError
from galmorph.data import augment


def ordered(make: Callable[[int], object], n: int, workers: int = 1, prefetch: int = 2) -> Iterator:
    """make(0), ..., make(n - 1), computed up to `prefetch` items ahead by `workers` threads.

    workers <= 1 uses one background thread (augment.prefetched); prefetch 0 makes every
    item in the consumer's thread when it is needed. numpy gathers release the GIL, so
    threads scale where cores are free.
    """
    if prefetch <= 0:
        return (make(i) for i in range(n))
    if workers <= 1:
        return augment.prefetched((make(i) for i in range(n)), prefetch)
    return _pool(make, n, workers, max(prefetch, workers))


def _pool(make, n, workers, depth):
    pool = ThreadPoolExecutor(workers, thread_name_prefix="galmorph-batches")
    pending: deque = deque()
    try:
        nxt = 0
        while nxt < n or pending:
            while nxt < n and len(pending) < depth:
                pending.append(pool.submit(make, nxt))
                nxt += 1
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def stream_batches(stream, epoch: int, workers: int = 1, prefetch: int = 2,
                   convert: Callable | None = None) -> Iterator:
    """One epoch of `stream` (TrainStream or Shard) as (x, y), optionally `convert`ed in the
    worker threads (e.g. pinned and copied to a GPU), made ahead of the consumer."""
    plan = stream.plan(epoch)
    if convert is None:
        return ordered(lambda i: stream.get(plan, i), len(stream), workers, prefetch)
    return ordered(lambda i: convert(*stream.get(plan, i)), len(stream), workers, prefetch)


class Shard:
    """The part of a TrainStream that replica `rank` of `world` trains on (DistributedSampler-like).

    `batch_size` is the stream's global batch; each replica gets batch_size / world. The
    epoch plan is padded (by repeating its start) to a whole number of global batches, and
    replica r takes plan elements r, r + world, ...: global step k of all replicas together
    covers exactly elements [k * batch_size, (k + 1) * batch_size) of the unsharded plan, so
    data-parallel training sees the batches single-device training sees. Every replica
    makes the same number of steps (a collective step must not wait for a missing peer).
    """

    def __init__(self, stream: augment.TrainStream, rank: int, world: int):
        if not 0 <= rank < world:
            raise GalmorphError(f"rank {rank} is not in a world of {world}")
        if stream.batch_size % world:
            raise GalmorphError(f"batch_size {stream.batch_size} must be a multiple of the {world} devices")
        self.stream, self.rank, self.world = stream, rank, world
        self.maker, self.labels = stream.maker, stream.labels
        self.batch_size = stream.batch_size // world
        n_global = -(-stream.images_per_epoch // stream.batch_size) * stream.batch_size
        if stream.drop_remainder:
            n_global = stream.images_per_epoch
        self._n_global = n_global

    @property
    def images_per_epoch(self) -> int:
        """Images this replica sees per epoch."""
        return self._n_global // self.world

    def __len__(self) -> int:
        return -(-self.images_per_epoch // self.batch_size)

    def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        idx, views = self.stream.plan(epoch)
        n = self.stream.images_per_epoch
        idx, views = idx[:n], views[:n]
        take = np.arange(self._n_global) % idx.size  # pad by wrapping to the plan's start
        take = take[self.rank :: self.world]
        return idx[take], views[take]

    def get(self, plan, i: int) -> tuple[np.ndarray, np.ndarray]:
        idx, views = plan
        sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return self.maker.batch(idx[sl], views[sl]), self.labels[idx[sl]]
