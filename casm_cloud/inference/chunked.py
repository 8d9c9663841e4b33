"""What both predict stages share: the output store, its regions and the chunk tasks' run.

CASM's ensemble (:mod:`casm_cloud.inference.predict`) and SoMo.ml's windowed
EA-LSTM (:mod:`casm_cloud.somo.output`) write the same way, following the
storage protocol (:mod:`casm_cloud.storage`):

1. :func:`template` builds the lazy all-NaN dataset of the output;
2. :func:`prepare_store` writes it, or reuses a store of the same
   configuration (resume), or grows its time axis (append), or refuses a store
   of another configuration or a path holding other files;
3. :func:`regions` lays out the output chunks; each chunk is a task that
   writes its region and records itself in the store's ``ChunkRecord``;
4. :func:`run_pieces` runs the tasks in this process or one
   ``client.submit`` each (with ``resources={"GPU": 1}`` on GPU clusters:
   no graph optimisation can fuse the annotation away);
5. ``storage.mark_complete`` closes the store.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from casm_cloud import storage

__all__ = ["culled", "prepare_store", "regions", "run_pieces", "task_resources", "template"]


def template(dims: Sequence[str], sizes: Mapping[str, int], chunks: Mapping[str, int],
             coords: Mapping, variables: Mapping[str, Mapping], attrs: Mapping) -> xr.Dataset:
    """The lazy float32 all-NaN output over ``dims``: one variable per ``variables`` entry.

    ``variables`` maps names to their attributes; ``coords`` are xarray
    coordinates of the output (any subset of the dimensions, and others).
    """
    import dask.array as dsa

    shape = tuple(int(sizes[d]) for d in dims)
    data = {name: xr.Variable(tuple(dims), dsa.full(shape, np.nan, dtype=np.float32,
                                                    chunks=tuple(chunks[d] for d in dims)),
                              dict(var_attrs))
            for name, var_attrs in variables.items()}
    ds = xr.Dataset(data, coords=dict(coords))
    ds.attrs = dict(attrs)
    return ds


def regions(dims: Sequence[str], sizes: Mapping[str, int], chunks: Mapping[str, int]
            ) -> Iterator[tuple[tuple[int, ...], dict[str, slice]]]:
    """``(chunk index, region)`` of every output chunk, the first dimension slowest."""
    ranges = [range(0, sizes[d], chunks[d]) for d in dims]
    for starts in itertools.product(*ranges):
        region = {d: slice(s, min(s + chunks[d], sizes[d])) for d, s in zip(dims, starts,
                                                                               strict=True)}
        yield tuple(s // chunks[d] for d, s in zip(dims, starts, strict=True)), region


def prepare_store(out: str, so: Mapping, tpl: xr.Dataset, hashes: Mapping[str, str], *,
                  hash_attr: str, resume: bool, overwrite: bool, append: bool,
                  what: str = "prediction") -> dict | None:
    """Create, reuse or grow the output store; refuse one made by another configuration.

    Parameters
    ----------
    out, so : str, mapping
        The store and its fsspec options.
    tpl : xarray.Dataset
        The output's template (:func:`template`), with a ``time`` axis.
    hashes : mapping
        Attributes to record: ``hash_attr`` (the stage's own hash, compared with
        the stored one) and ``storage.HASH_ATTR`` (the pipeline's).
    resume, overwrite, append : bool
        As the predict functions' arguments.
    what : str
        What the configuration is of, for messages.

    Returns
    -------
    dict or None
        The stored attributes when the store is reused or grown (they hold what
        the first run decided, e.g. its precision); None when written anew.

    Raises
    ------
    casm_cloud.storage.StoreError
        ``out`` is another configuration's store, holds other times (without
        ``append``) or holds other files (without ``overwrite``).
    """
    state = storage.store_state(out, so)
    if not state["exists"] and not overwrite and _has_content(out, so):
        # write_template removes whatever is at ``out``: never a user's files unasked.
        raise storage.StoreError(
            f"output {out} exists and is not a Zarr store (a file, or a folder with other "
            "content); pass overwrite=True (--overwrite) to replace it, or choose another output")
    stored = storage.open_zarr(out, so) if state["exists"] and not overwrite else None
    if stored is not None and "time" not in stored.variables:
        stored = None  # a run killed while it wrote the template: write it again
    if stored is not None:
        made_by = stored.attrs.get(hash_attr)
        if made_by != hashes[hash_attr]:
            raise storage.StoreError(
                f"output {out} was written by a different {what} configuration "
                f"(hash {str(made_by)[:12]}, this run {hashes[hash_attr][:12]}); "
                "pass overwrite=True (--overwrite) to replace it, or choose another output")
        old, new = stored["time"].values, tpl["time"].values
        if resume and np.array_equal(old, new):
            if state["config_hash"] != hashes[storage.HASH_ATTR]:
                set_attrs(out, so, hashes)
            return dict(stored.attrs)
        if append and old.size < new.size and np.array_equal(old, new[:old.size]):
            # Grow the axis only: the new chunks are written region by region.
            storage.grow_time(tpl.isel(time=slice(old.size, None)), out, so,
                              attrs={**stored.attrs, **hashes}, compute=False)
            return dict(stored.attrs)
        if resume or append:
            raise storage.StoreError(
                f"output {out} holds times {old[0]!s:.19}..{old[-1]!s:.19} ({old.size}); this "
                f"run makes {new[0]!s:.19}..{new[-1]!s:.19} ({new.size}): pass append=True "
                "(--append) when it extends the stored times, or overwrite=True to start again")
    storage.write_template(tpl, out, so, config_hash=hashes[storage.HASH_ATTR])
    set_attrs(out, so, hashes)
    return None


def set_attrs(url: str, so: Mapping, attrs: Mapping) -> None:
    """Update the root attributes of a store."""
    storage.zarr_group(url, so).attrs.update(dict(attrs))


def _has_content(url: str, so: Mapping) -> bool:
    fs, path = storage.url_to_fs(url, so)
    try:
        return fs.isfile(path) or (fs.isdir(path) and bool(fs.ls(path, detail=False)))
    except FileNotFoundError:
        return False


def culled(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with its dask graph cut down to the keys it needs (small to ship)."""
    import dask

    if any(v.chunks is not None for v in ds.variables.values()):
        (ds,) = dask.optimize(ds)
    return ds


def task_resources(client, device: str) -> dict | None:
    """``{"GPU": 1}`` when the cluster has GPU workers and ``device`` allows them, else None.

    Raises
    ------
    casm_cloud.inference.PredictError
        ``device="cuda"`` on a cluster without a GPU worker.
    """
    from casm_cloud.inference.kernel import PredictError

    if client is None or device == "cpu":
        return None
    workers = client.scheduler_info(n_workers=-1)["workers"]
    gpus = [a for a, w in workers.items() if (w.get("resources") or {}).get("GPU", 0) >= 1]
    if device == "cuda" and not gpus:
        raise PredictError("device='cuda' but no worker of the cluster declares a GPU resource "
                           "(start workers with --resources GPU=1)")
    return {"GPU": 1} if gpus else None


def run_pieces(fn: Callable, task: Any, pieces: Sequence, *, client=None,
               resources: Mapping | None = None, key: str = "predict", skipped: int = 0,
               n_total: int | None = None,
               progress: Callable[[int, int], Any] | None = None) -> None:
    """``fn(task, piece)`` for every piece, here or one task each on ``client``.

    ``progress(done, n_total)`` is called after each piece (``done`` counts
    the ``skipped`` ones); on an error the outstanding tasks are cancelled.
    """
    total = skipped + len(pieces) if n_total is None else n_total
    if client is None:
        for i, piece in enumerate(pieces, 1):
            fn(task, piece)
            if progress is not None:
                progress(skipped + i, total)
        return
    from distributed import as_completed

    run = uuid.uuid4().hex[:8]
    futures = [client.submit(fn, task, p, resources=dict(resources) if resources else None,
                             pure=False, key=f"{key}-{run}-{i}")
               for i, p in enumerate(pieces)]
    try:
        for i, fut in enumerate(as_completed(futures), 1):
            fut.result()
            if progress is not None:
                progress(skipped + i, total)
    except BaseException:
        client.cancel(futures)
        raise
