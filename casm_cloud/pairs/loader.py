"""Stream one split of a Zarr sample table to torch in scaled, shuffled batches."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np

from casm_cloud import storage
from casm_cloud.pairs.splits import SPLITS
from casm_cloud.pairs.store import scaler_arrays
from casm_cloud.pairs.table import (
    FEATURES_ATTR,
    OFFSETS_ATTR,
    SCALER_ATTR,
    TARGET_ATTR,
    PairsError,
)

__all__ = ["SampleLoader"]


class SampleLoader:
    """Stream one split of a Zarr sample table to torch in scaled batches.

    Reads table chunks (never the whole table), in a new seeded order each
    epoch, shuffles samples within a buffer of ``buffer_chunks`` chunks, and
    prepares the next buffer in a background thread (its chunks read
    concurrently, then shuffled and scaled) while the current one is used,
    so the consumer only slices batches (views, no copies).  Two loaders
    with the same ``shuffle_seed`` yield identical batches, epoch by epoch.

    Parameters
    ----------
    url : str
        Sample table written by :func:`write_pairs`.
    split : {"train", "val", "test"}
    batch_size : int
    features : sequence of str, optional
        Feature columns, in model order (default: all of the table's).
    target : str, optional
        Must be the table's target (checked).
    scaler : mapping, optional
        ``{"mean": {...}, "std": {...}}``; default: the table's training scaler.
    shuffle_seed : int, optional
        Seed of the per-epoch order; ``None`` reads in table order, unshuffled.
    storage_options : mapping, optional
    buffer_chunks : int
        Table chunks mixed in one shuffle buffer.
    drop_last : bool
        Drop a final batch smaller than ``batch_size``.

    Raises
    ------
    PairsError
        If the table is unfinished, a feature or the target is not in it.
    """

    def __init__(self, url: str, split: Literal["train", "val", "test"], batch_size: int,
                 features: Sequence[str] | None = None, target: str | None = None,
                 scaler: Mapping | None = None, shuffle_seed: int | None = None, *,
                 storage_options: Mapping | None = None, buffer_chunks: int = 4,
                 drop_last: bool = False):
        if split not in SPLITS:
            raise PairsError(f"split={split!r}: expected one of {SPLITS}")
        group = storage.zarr_group(url, storage_options, mode="r")
        attrs = dict(group.attrs)
        if not attrs.get(storage.COMPLETE_ATTR):
            raise PairsError(f"sample table {url} is unfinished (no completion mark)")
        table_feats = list(attrs[FEATURES_ATTR])
        self.features = list(features) if features is not None else table_feats
        lack = [f for f in self.features if f not in table_feats]
        if lack:
            raise PairsError(f"sample table {url} has no feature(s) {lack}; it has {table_feats}")
        self.target = attrs[TARGET_ATTR]
        if target is not None and target != self.target:
            raise PairsError(f"sample table {url} has target {self.target!r}, not {target!r}")
        self.scaler = dict(scaler) if scaler is not None else attrs[SCALER_ATTR]
        self._cols = np.asarray([table_feats.index(f) for f in self.features])
        self._xmean, self._xstd = scaler_arrays(self.scaler, self.features)
        tm, ts = scaler_arrays(self.scaler, [self.target])
        self._ymean, self._ystd = float(tm[0]), float(ts[0])
        self.start, self.stop = json.loads(attrs[OFFSETS_ATTR])[split]
        self.split, self.url, self.batch_size = split, url, int(batch_size)
        self.shuffle_seed, self.buffer_chunks, self.drop_last = shuffle_seed, buffer_chunks, drop_last
        self._x, self._y = group["features"], group["target"]
        step = self._x.chunks[0]
        first = self.start // step * step
        self._ranges = [(max(s, self.start), min(s + step, self.stop))
                        for s in range(first, self.stop, step)]
        self.epoch = 0

    @property
    def n_samples(self) -> int:
        return self.stop - self.start

    def __len__(self) -> int:
        n = self.n_samples / self.batch_size
        return math.floor(n) if self.drop_last else math.ceil(n)

    def _read(self, ranges: list[tuple[int, int]], seed: int | None,
              io: ThreadPoolExecutor) -> tuple[np.ndarray, np.ndarray]:
        """One shuffle buffer: read ``ranges``, shuffle (with a seed), select and scale.

        Runs in the background thread; the table chunks are read concurrently
        on ``io`` (one request each, which matters on object stores).
        """
        if not ranges:
            return np.empty((0, self._cols.size), np.float32), np.empty(0, np.float32)
        jobs = [(arr, a, b) for arr in (self._x, self._y) for a, b in ranges]
        parts = list(io.map(lambda job: job[0][job[1]:job[2]], jobs))
        x = np.concatenate(parts[:len(ranges)])
        y = np.concatenate(parts[len(ranges):])
        if seed is not None:
            perm = np.random.default_rng(seed).permutation(y.size)
            x, y = np.take(x, perm, axis=0), np.take(y, perm)
        if not np.array_equal(self._cols, np.arange(x.shape[1])):
            x = x[:, self._cols]
        # In place, in float32: the batches are views of these two arrays.
        x = x.astype(np.float32, copy=False)
        y = y.astype(np.float32, copy=False)
        x -= self._xmean
        x /= self._xstd
        y -= np.float32(self._ymean)
        y /= np.float32(self._ystd)
        return x, y

    def __iter__(self) -> Iterator:
        import torch  # lazy: the table is useful without torch

        rng = (np.random.default_rng([self.shuffle_seed, self.epoch])
               if self.shuffle_seed is not None else None)
        self.epoch += 1
        ranges = [self._ranges[i] for i in rng.permutation(len(self._ranges))] \
            if rng is not None else list(self._ranges)
        groups = [ranges[i:i + self.buffer_chunks] for i in range(0, len(ranges),
                                                                     self.buffer_chunks)]
        # One seed per buffer, drawn here in order: the shuffle runs in the
        # background thread and is still the same for the same seed and epoch.
        seeds = ([int(s) for s in rng.integers(0, 2**63 - 1, size=len(groups))]
                 if rng is not None else [None] * len(groups))
        bs = self.batch_size
        carry_x: list[np.ndarray] = []  # the head of a batch that spans two buffers
        carry_y: list[np.ndarray] = []
        n_carry = 0
        with ThreadPoolExecutor(2 * max(1, self.buffer_chunks)) as io, \
                ThreadPoolExecutor(1) as pool:
            nxt = pool.submit(self._read, groups[0], seeds[0], io) if groups else None
            for gi in range(len(groups)):
                x, y = nxt.result()
                nxt = (pool.submit(self._read, groups[gi + 1], seeds[gi + 1], io)
                       if gi + 1 < len(groups) else None)
                i = 0
                if n_carry:
                    i = min(bs - n_carry, y.size)
                    carry_x.append(x[:i])
                    carry_y.append(y[:i])
                    n_carry += i
                    if n_carry < bs:
                        continue
                    yield (torch.from_numpy(np.concatenate(carry_x)),
                           torch.from_numpy(np.concatenate(carry_y)[:, None]))
                    carry_x, carry_y, n_carry = [], [], 0
                n_full = i + (y.size - i) // bs * bs
                for j in range(i, n_full, bs):
                    yield torch.from_numpy(x[j:j + bs]), torch.from_numpy(y[j:j + bs, None])
                if n_full < y.size:
                    carry_x, carry_y, n_carry = [x[n_full:]], [y[n_full:]], y.size - n_full
        if n_carry and not self.drop_last:
            yield (torch.from_numpy(np.concatenate(carry_x)),
                   torch.from_numpy(np.concatenate(carry_y)[:, None]))
