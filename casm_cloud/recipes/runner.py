"""The stage runner: order, skip/resume, updates, markers.

It knows stages, not science.  A recipe (``casm_cloud.recipes.casm``, ...) is a
tuple of :class:`~casm_cloud.recipes.stage.Stage`; each stage says which
stages' outputs it reads, which arguments it passes to library code
(``params(recipe) -> dict``) and how it runs (``run(ctx, params)``, with the
:class:`~casm_cloud.recipes.stage.Context`).  The run function never sees the
recipe, only its params, so the hash of a stage (its params and the hashes of
the stages it reads; :mod:`casm_cloud.recipes.hashes`) covers by construction
everything that made its output.  See docs/architecture.md, "The runner".

A stage writes only under ``<run_root>/<stage>/`` (plus the user-facing output
its params name) and finishes by writing ``<run_root>/<stage>/_stage.json``
with its hash.  A stage whose marker holds the same hash is skipped, so a
killed run continues when the same command runs again.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from casm_cloud import storage
from casm_cloud.errors import InputError, WorkersLostError
from casm_cloud.recipes.hashes import stage_hashes
from casm_cloud.recipes.stage import Context, Stage, stage_line

log = logging.getLogger(__name__)

__all__ = ["check_run_root", "require_finished", "run_stages", "stage_state", "update_stages",
           "validate_names"]


def _marker_url(run_root: str, name: str) -> str:
    return storage.join(run_root, name, "_stage.json")


def stage_state(run_root: str, name: str, storage_options: Mapping | None = None) -> dict | None:
    """The stage's marker (``config_hash``, ``seconds``, ``finished``, ``until``), or None."""
    return storage.read_marker(_marker_url(run_root, name), storage_options)


def _mark(ctx: Context, name: str, h: str, seconds: float) -> None:
    marker = {"stage": name, "config_hash": h, "seconds": round(seconds, 2),
              "finished": dt.datetime.now(dt.UTC).isoformat()}
    if ctx.until is not None:
        marker["until"] = str(ctx.until)
    storage.write_marker(_marker_url(ctx.run_root, name), marker, ctx.so)


def check_run_root(run_root: str, storage_options: Mapping | None = None) -> None:
    """Refuse a run root that cannot be created or written, naming it."""
    try:
        storage.check_writable(run_root, storage_options)
    except (OSError, ValueError) as err:
        raise InputError(f"run_root {run_root!r} cannot be written: "
                         f"{getattr(err, 'strerror', None) or err}") from None


def validate_names(stages: Sequence[Stage], *names: str | None) -> None:
    known = [s.name for s in stages]
    for name in names:
        if name is not None and name not in known:
            raise InputError(f"unknown stage {name!r}; expected one of {', '.join(known)}")


def _execute(ctx: Context, s: Stage, fn: Callable, recipe, h: str, what: str) -> None:
    from distributed import KilledWorker

    stage_line(ctx, s.name, what)
    ctx.stage, ctx.config_hash = s.name, h
    t0 = time.perf_counter()
    try:
        with ctx.tasks_bar():
            fn(ctx, s.params(recipe))
    except KilledWorker as err:
        raise WorkersLostError(_workers_lost(ctx, s.name, err)) from err
    ctx.timings[s.name] = time.perf_counter() - t0
    _mark(ctx, s.name, h, ctx.timings[s.name])
    stage_line(ctx, s.name, f"done in {ctx.timings[s.name]:.1f} s")


def _workers_lost(ctx: Context, stage: str, err) -> str:
    """One line on a stage whose task killed every worker that ran it (dask's KilledWorker)."""
    from dask.utils import format_bytes, key_split

    try:
        limits = {w.get("memory_limit") for w in ctx.client.scheduler_info()["workers"].values()}
        memory = ", ".join(sorted(format_bytes(m) if m else "no limit" for m in limits))
    except Exception:  # noqa: BLE001 - the cluster may be gone; the line matters more
        memory = "unknown"
    tries = getattr(err, "allowed_failures", None)
    tries = f"{tries + 1} workers in turn" if isinstance(tries, int) else "its workers"
    return (f"stage {stage!r}: dask workers died running its task {key_split(err.task)!r} "
            f"({tries}; memory per worker now: {memory}). The usual cause is a worker over "
            f"its memory limit: give workers more memory (cluster.memory_limit, or "
            f"worker_memory on dask-gateway) or make the chunks smaller; the worker logs "
            f"say why. The stage is not marked finished: run the same command again to "
            f"continue")


def run_stages(stages: Sequence[Stage], recipe, ctx: Context, *, start_from: str | None = None,
               until_stage: str | None = None) -> Context:
    """Run (or resume) ``stages`` in order on ``ctx``; returns it with timings and summary."""
    validate_names(stages, start_from, until_stage)
    hashes = stage_hashes(stages, recipe)
    first = stage_state(ctx.run_root, stages[0].name, ctx.so) or {}
    ctx.until = dt.date.fromisoformat(first["until"]) if first.get("until") else None
    forced = False
    for s in stages:
        forced = forced or s.name == start_from
        st = stage_state(ctx.run_root, s.name, ctx.so)
        if not forced and st is not None and st.get("config_hash") == hashes[s.name]:
            log.info("stage %s: up to date, skipped", s.name)
            stage_line(ctx, s.name, "up to date")
        else:
            _execute(ctx, s, s.run, recipe, hashes[s.name], "running ...")
        if s.name == until_stage:
            break
    return ctx


def update_stages(stages: Sequence[Stage], recipe, ctx: Context, until: dt.date,
                  period_end: dt.date) -> Context:
    """Extend a finished run to ``until``: each stage's ``update`` (see :class:`Stage`).

    Each stage records how far it got, so the same update twice changes
    nothing and a killed update continues.
    """
    hashes = stage_hashes(stages, recipe)
    ctx.until = until
    for s in stages:
        done = dt.date.fromisoformat((stage_state(ctx.run_root, s.name, ctx.so) or {}).get(
            "until", str(period_end)))
        if done >= until:
            stage_line(ctx, s.name, f"up to date (until {done})")
        elif s.update is None:
            stage_line(ctx, s.name, "kept (not refitted)")
            ctx.stage = s.name
            _mark(ctx, s.name, hashes[s.name], 0.0)
        else:
            fn = s.run if s.update == "rerun" else s.update
            _execute(ctx, s, fn, recipe, hashes[s.name], f"updating to {until} ...")
    return ctx


def require_finished(stages: Sequence[Stage], recipe, run_root: str,
                     storage_options: Mapping | None = None) -> None:
    """Refuse to update a run that has not finished with this recipe."""
    hashes = stage_hashes(stages, recipe)
    for s in stages:
        st = stage_state(run_root, s.name, storage_options)
        if st is None or st.get("config_hash") != hashes[s.name]:
            why = "has not run" if st is None else "ran with another recipe"
            raise storage.StoreError(
                f"stage {s.name!r} {why} under {run_root}: run the recipe first "
                f"(casm-cloud run), then update it")
