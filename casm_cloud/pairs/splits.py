"""How samples are dealt to train / val / test (docs/architecture.md: ``pairs/``).

Splits: ``spatial_blocks`` (default) assigns whole ``block_size`` x
``block_size`` blocks of pixels to one split, so validation and test pixels
are unseen in training; ``random`` is the paper's 80/20 split with 20 % of
the training part for validation, decided per sample by a hash of its
(time, y, x) position so the labels do not depend on the chunking.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["SPLITS", "random_codes", "split_map"]

#: Split names by code (the ``split`` variable stores the code).
SPLITS: tuple[str, ...] = ("train", "val", "test")


def _uniform_hash(index: np.ndarray, seed: int) -> np.ndarray:
    """Uniform [0, 1) numbers from integer positions (splitmix64): chunking-independent."""
    with np.errstate(over="ignore"):
        z = index.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15) * np.uint64(seed + 1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _codes_from_uniform(u: np.ndarray, val_fraction: float, test_fraction: float) -> np.ndarray:
    val_edge = test_fraction + (1.0 - test_fraction) * val_fraction
    return np.where(u < test_fraction, 2, np.where(u < val_edge, 1, 0)).astype(np.int8)


def random_codes(index: np.ndarray, seed: int, val_fraction: float,
                 test_fraction: float) -> np.ndarray:
    """Split codes of ``random``: per sample, from a hash of its flat (time, y, x) position."""
    return _codes_from_uniform(_uniform_hash(index, seed), val_fraction, test_fraction)


def split_map(shape: tuple[int, int], *, block_size: int = 8, val_fraction: float = 0.2,
              test_fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """Split code (0 train, 1 val, 2 test) of every pixel for ``spatial_blocks``.

    Blocks of ``block_size`` x ``block_size`` pixels are shuffled (seeded) and
    dealt out in exact proportions: ``test_fraction`` of the blocks to test,
    ``val_fraction`` of the rest to validation, at least one block each when
    the fraction is positive and there are enough blocks.

    Parameters
    ----------
    shape : (int, int)
        (ny, nx) of the window.
    block_size, val_fraction, test_fraction, seed
        See :func:`casm_cloud.pairs.table.build_pairs`.

    Returns
    -------
    numpy.ndarray of int8, shape (ny, nx)
    """
    ny, nx = shape
    by, bx = math.ceil(ny / block_size), math.ceil(nx / block_size)
    nb = by * bx
    n_test = round(nb * test_fraction)
    n_val = round((nb - n_test) * val_fraction)
    if test_fraction > 0 and nb >= 3:
        n_test = max(n_test, 1)
    if val_fraction > 0 and nb - n_test >= 2:
        n_val = max(n_val, 1)
    codes = np.zeros(nb, dtype=np.int8)
    order = np.random.default_rng(seed).permutation(nb)
    codes[order[:n_test]] = 2
    codes[order[n_test:n_test + n_val]] = 1
    blocks = codes.reshape(by, bx)
    return np.repeat(np.repeat(blocks, block_size, 0), block_size, 1)[:ny, :nx]
