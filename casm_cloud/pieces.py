"""Stages in pieces: bounded graphs, written by region, recorded, resumed where killed.

A stage over a long record hands the cluster one piece at a time instead of
one graph of the whole record (docs/architecture.md, "Stages in pieces"):

1. the output stores' templates are written first (metadata and coordinates
   of the whole record, no data; :func:`template_like` builds one from the
   first piece's structure and the record's time axis);
2. each piece is a block of days aligned with the stores' time chunks; its
   datasets are built lazily for those days only (``build(days)``), so its
   graph depends on the piece's size, not on the record's length;
3. a piece's writes are computed on the cluster (``client.compute``) a few
   pieces at a time (``in_flight``: enough to keep every worker busy, never
   all of them), and each finished piece is recorded in every store's
   :class:`~casm_cloud.storage.ChunkRecord`;
4. a run killed mid-way finds the templates (same configuration hash) and the
   record, and computes only the pieces not recorded: the same bits as an
   uninterrupted run, at most ``in_flight`` pieces lost;
5. ``storage.mark_complete`` closes every store at the end.

The runner knows pieces, not science: the stage gives the ``build`` function
and, where a piece's writes also give a result (the CASM aggregate's seasonal
sums), the ``writes`` that make it and the ``on_piece`` that keeps it before
the piece is recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import xarray as xr

from casm_cloud import storage

__all__ = ["time_pieces", "template_like", "write_pieces", "graph_tasks", "steps_per_piece",
           "IN_FLIGHT", "TASK_BUDGET"]

#: Pieces computed at once on a cluster: one being written while the next computes.
IN_FLIGHT = 2

#: Most tasks one piece's graph may hold: a dask scheduler is comfortable up to a few
#: hundred thousand tasks per graph, and the client builds 100,000 in seconds.
TASK_BUDGET = 100_000


def graph_tasks(*collections) -> int:
    """Tasks of the collections' graph after dask's optimisation (culling, fusion)."""
    import dask

    return sum(len(c.__dask_graph__()) for c in dask.optimize(*collections))


def steps_per_piece(tasks_of: Callable[[int], int], most: int, *, probe: int = 8,
                    budget: int | None = None) -> int:
    """The most time steps a piece may hold for its graph to stay within ``budget``.

    ``tasks_of(n)`` is the task count of a piece of ``n`` steps; it is called once, on a
    ``probe``-step piece, and scaled linearly (a graph's fixed part, counted per step,
    makes the estimate err on the small side).  At least 1, at most ``most``.
    """
    budget = TASK_BUDGET if budget is None else int(budget)
    n = max(1, min(int(probe), int(most)))
    per_step = max(tasks_of(n), 1) / n
    return int(max(1, min(int(most), budget // per_step)))


def time_pieces(n: int, size: int) -> list[slice]:
    """Index blocks ``[0, size), [size, 2·size), …`` covering ``n`` time steps."""
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def template_like(piece: xr.Dataset, times: np.ndarray, time_chunk: int) -> xr.Dataset:
    """The lazy all-NaN dataset of the whole record shaped as ``piece`` along ``times``.

    Variables, dtypes, attributes, non-time coordinates and the chunks of the
    other dimensions are ``piece``'s; the time axis is ``times`` in chunks of
    ``time_chunk``.  Nothing of ``piece``'s graph is kept.
    """
    import dask.array as dsa

    out = {}
    for name, v in piece.data_vars.items():
        shape = tuple(times.size if d == "time" else piece.sizes[d] for d in v.dims)
        chunks = tuple(time_chunk if d == "time" else (v.chunksizes.get(d, (v.sizes[d],))[0])
                       for d in v.dims)
        fill = np.nan if np.issubdtype(v.dtype, np.floating) else 0
        out[name] = xr.Variable(v.dims, dsa.full(shape, fill, dtype=v.dtype, chunks=chunks),
                                dict(v.attrs), encoding={})
    coords = {k: c.variable.compute() for k, c in piece.coords.items() if "time" not in c.dims}
    ds = xr.Dataset(out, coords={**coords, "time": ("time", times, piece["time"].attrs)})
    ds.attrs = dict(piece.attrs)
    return ds


def _prepared(url: str, template: xr.Dataset, so: Mapping, config_hash: str) -> bool:
    """Reuse the store of a killed run of this configuration, else write the template.

    Returns whether the store was reused (its record then holds the finished pieces).
    """
    state = storage.store_state(url, so)
    if state["exists"] and state["config_hash"] == config_hash:
        stored = storage.open_zarr(url, so)
        if "time" in stored.variables and np.array_equal(stored["time"].values,
                                                         template["time"].values):
            return True
    storage.write_template(template, url, so, config_hash=config_hash)
    return False


def write_pieces(build: Callable[[slice], Mapping[str, xr.Dataset]],
                 urls: Mapping[str, str], times: np.ndarray, *, piece_days: int,
                 config_hash: str, storage_options: Mapping | None = None, client=None,
                 in_flight: int = IN_FLIGHT,
                 progress: Callable[[int, int], object] | None = None,
                 time_chunk: int | None = None,
                 writes: Callable[[Mapping[str, xr.Dataset], slice], object] | None = None,
                 on_piece: Callable[[int, object], object] | None = None) -> dict:
    """Write the stores ``urls`` (name → URL) piece by piece over ``times``.

    ``build(index_slice)`` returns, per name, the lazy dataset of those time
    steps (``times[index_slice]``), chunked ``time_chunk`` (default
    ``piece_days``, of which it is a divisor) along time, as the stores are.
    ``writes(datasets, index_slice)``, if given, is a piece's writes as one
    lazy (dask) object (default: each dataset written by region into its
    store); ``on_piece(i, value)`` gets what piece ``i``'s writes computed to
    before the piece is recorded.  Returns ``{"pieces": n, "computed": k,
    "skipped": n - k, "largest_graph": tasks}``.
    """
    import dask

    so = dict(storage_options or {})
    pieces = time_pieces(times.size, piece_days)
    first = build(pieces[0])
    chunk = int(time_chunk or piece_days)
    if piece_days % chunk:
        raise ValueError(f"write_pieces: piece_days={piece_days} is not a multiple of the "
                         f"stores' time chunk {chunk}")
    reused = {name: _prepared(url, template_like(first[name], times, chunk), so,
                              config_hash) for name, url in urls.items()}
    records = {name: storage.ChunkRecord(url, so) for name, url in urls.items()}
    done = set.intersection(*(records[n].done() if reused[n] else set() for n in urls))
    todo = [(i, s) for i, s in enumerate(pieces) if storage.ChunkRecord.key((i,)) not in done]
    largest, n_done = 0, len(pieces) - len(todo)

    def piece(i: int, s: slice):
        """One piece's writes into every store, as one lazy object."""
        nonlocal largest
        datasets = first if i == 0 else build(s)
        if writes is not None:
            out = writes(datasets, s)
        else:
            out = dask.delayed(_all)(*(storage.region_writes(datasets[n], url, so,
                                                             region={"time": s})
                                       for n, url in urls.items()))
        largest = max(largest, len(dask.optimize(out)[0].__dask_graph__()))
        return out

    def finished(i: int, value) -> None:
        nonlocal n_done
        if on_piece is not None:
            on_piece(i, value)
        for r in records.values():
            r.mark((i,))
        n_done += 1
        if progress is not None:
            progress(n_done, len(pieces))

    if client is None:
        for i, s in todo:
            finished(i, piece(i, s).compute())
    else:
        from distributed import wait

        running: dict = {}
        try:
            for i, s in todo:
                while len(running) >= max(1, int(in_flight)):
                    for fut in wait(list(running), return_when="FIRST_COMPLETED").done:
                        finished(running[fut], fut.result())
                        running.pop(fut)
                running[client.compute(piece(i, s))] = i
            for fut in list(running):
                finished(running[fut], fut.result())
                running.pop(fut)
        except BaseException:
            client.cancel(list(running))
            raise
    for url in urls.values():
        storage.mark_complete(url, so, config_hash=config_hash)
    return {"pieces": len(pieces), "computed": len(todo), "skipped": len(pieces) - len(todo),
            "largest_graph": largest}


def _all(*_) -> None:
    """Joins a piece's writes into one task (each returns None)."""
