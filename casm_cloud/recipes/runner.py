"""The stage runner: order, hashes, skip/resume, updates, markers, progress.

It knows stages, not science.  A recipe (``casm_cloud.recipes.casm``, ...) is a
tuple of :class:`Stage`; each stage says which stages' outputs it reads, which
arguments it passes to library code (``params(recipe) -> dict``) and how it
runs (``run(ctx, params)``).  The run function never sees the recipe, only its
params, so the hash of a stage (its params and the hashes of the stages it
reads) covers by construction everything that made its output.  See
docs/architecture.md, "The runner".

A stage writes only under ``<run_root>/<stage>/`` (plus the user-facing output
its params name) and finishes by writing ``<run_root>/<stage>/_stage.json``
with its hash.  A stage whose marker holds the same hash is skipped, so a
killed run continues when the same command runs again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from casm_cloud import storage
from casm_cloud.errors import InputError, WorkersLostError

log = logging.getLogger(__name__)

__all__ = ["Stage", "Context", "stage_hashes", "stage_keys", "stage_state", "run_stages",
           "update_stages", "check_run_root"]


@dataclass(frozen=True)
class Stage:
    """One stage of a recipe.

    Parameters
    ----------
    name : str
        Also the folder under the run root the stage writes into.
    reads : tuple of str
        Stages whose outputs it reads (they run before it).
    params : callable
        ``params(recipe) -> dict``: exactly the arguments the stage passes to
        library code (JSON-able values, pydantic sections or grid windows).
    run : callable
        ``run(ctx, params)``: open inputs, call library code, hand the result to storage.
    update : callable, "rerun" or None
        For ``update``: extends the output to new months (``update(ctx, params)``);
        ``"rerun"`` runs ``run`` again on the grown inputs; ``None`` keeps the
        output as it is (fitted parameters and networks are not refitted).
    """

    name: str
    reads: tuple[str, ...]
    params: Callable[[Any], dict]
    run: Callable[[Context, dict], None]
    update: Callable[[Context, dict], None] | str | None = None


@dataclass
class Context:
    """What a running stage may use besides its params: where things are, the cluster."""

    run_root: str
    storage_options: dict
    client: Any = None
    dashboard: str | None = None
    progress: bool = True
    until: dt.date | None = None    # where updates took the data (None: the recipe's period)
    stage: str = ""                  # the stage running now
    config_hash: str = ""            # its hash (recorded in the stores it writes)
    timings: dict[str, float] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)  # filled after the run, for callers
    _task_bar: Any = field(default=None, repr=False)

    @property
    def so(self) -> dict:
        return dict(self.storage_options)

    def url(self, stage: str, *parts: str) -> str:
        """``<run_root>/<stage>/<parts>``."""
        return storage.join(self.run_root, stage, *parts)

    def out(self, *parts: str) -> str:
        """A path under the running stage's own folder."""
        return self.url(self.stage, *parts)

    def output(self, given: str | None, default: str) -> str:
        """A user-facing output: where the recipe puts it, or ``<run_root>/<default>``.

        Params carry the recipe's setting, not the resolved path, so a run root
        moved with its outputs inside still resumes.
        """
        return given or storage.join(self.run_root, default)

    def end(self, period_end: dt.date) -> dt.date:
        """Last day of data: the recipe's period end, or where updates took it."""
        return max(period_end, self.until or period_end)

    def write(self, ds, url: str) -> None:
        """Write a lazy dataset as a finished store (storage.write_dataset), with a progress bar."""
        with self.tasks_bar():
            storage.write_dataset(ds, url, self.so, config_hash=self.config_hash)

    def say(self, what: str) -> None:
        """A line under the running stage's (``[casm-cloud] <stage> <what>``), unless quiet."""
        _say(self, self.stage, what)

    @contextlib.contextmanager
    def chunk_bar(self, what: str) -> Iterator[Callable[[int, int], None] | None]:
        """A bar over a stage's chunks: yields ``progress(done, total)`` (None when quiet).

        While it runs, the stage's bar of cluster tasks is hidden (one bar at a time).
        """
        if not self.progress:
            yield None
            return
        from tqdm import tqdm

        # the line of the (paused) task bar: a second line would leave cursor moves on stderr
        bar = tqdm(desc=f"[casm-cloud]   {what}", unit="chunk", leave=False, position=0)

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        task_bar, self._task_bar = self._task_bar, None
        if task_bar is not None:
            task_bar.paused = True
        try:
            yield progress
        finally:
            bar.close()
            if task_bar is not None:
                task_bar.paused = False
            self._task_bar = task_bar

    @contextlib.contextmanager
    def tasks_bar(self) -> Iterator[None]:
        """A bar over the dask tasks the cluster finishes while the block runs.

        The runner opens one around every stage; nested calls add nothing.
        """
        if not self.progress or self.client is None or self._task_bar is not None:
            yield
            return
        with _TaskBar(self.client, self.stage) as bar:
            self._task_bar = bar
            try:
                yield
            finally:
                self._task_bar = None


class _TaskBar:
    """tqdm over the scheduler's finished tasks, polled from a thread (any client kind).

    Counts come from the scheduler's task groups (``states`` per group), so
    the bar works the same for a LocalCluster, a gateway or an address, and
    for work submitted by library code this module never sees.
    """

    def __init__(self, client, what: str, every: float = 0.5):
        self.client, self.what, self.every = client, what, every
        self.paused = False

    @staticmethod
    def _counts(dask_scheduler=None) -> tuple[int, int]:
        done = total = 0
        for group in dask_scheduler.task_groups.values():
            states = group.states
            total += sum(states.values())
            done += states.get("memory", 0) + states.get("released", 0) + \
                states.get("forgotten", 0) + states.get("erred", 0)
        return done, total

    def _poll(self) -> None:
        from tqdm import tqdm

        bar = None
        while not self._stop.wait(self.every):
            try:
                done, total = self.client.run_on_scheduler(self._counts)
            except Exception:  # noqa: BLE001 - a bar never breaks a stage
                return
            done, total = done - self._base[0], total - self._base[1]
            if total <= 0 or self.paused:
                continue
            if bar is None:
                bar = tqdm(desc=f"[casm-cloud]   {self.what}", unit="task", leave=False,
                           total=total)
            bar.total = total
            bar.update(done - bar.n)
        if bar is not None:
            bar.close()

    def __enter__(self):
        import threading

        try:
            self._base = self.client.run_on_scheduler(self._counts)
        except Exception:  # noqa: BLE001
            self._base = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        if self._base is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


# --------------------------------------------------------------------------- hashes
def _jsonable(obj):
    if isinstance(obj, _Recorder):
        return _jsonable(obj._unwrap())
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if hasattr(obj, "identity"):
        return obj.identity()
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (dt.date, dt.datetime)):
        return obj.isoformat()
    return obj


def params_hash(params: Mapping) -> str:
    blob = json.dumps(_jsonable(params), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def stage_hashes(stages: Sequence[Stage], recipe) -> dict[str, str]:
    """Each stage's hash: its params and the hashes of the stages it reads.

    A change re-runs exactly the stages whose params hold the changed key and
    those downstream of them.
    """
    out: dict[str, str] = {}
    for s in stages:
        ups = ",".join(out[u] for u in s.reads)
        own = params_hash(s.params(recipe))
        out[s.name] = hashlib.sha256(f"{s.name}|{own}|{ups}".encode()).hexdigest()[:16]
    return out


class _Recorder:
    """A read-only view of a recipe that records which leaf keys are read."""

    def __init__(self, obj: BaseModel, path: str, seen: set[str]):
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_seen", seen)

    def _key(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    def _unwrap(self):
        self._seen.update(_leaves(self._obj, self._path))
        return self._obj

    def __getattr__(self, name: str):
        if name in type(self._obj).model_fields:
            value = getattr(self._obj, name)
            if isinstance(value, BaseModel):
                return _Recorder(value, self._key(name), self._seen)
            self._seen.add(self._key(name))
            return value
        # A method or property runs on this view, so the keys it reads are recorded too.
        attr = getattr(type(self._obj), name, None)
        if isinstance(attr, property):
            return attr.fget(self)
        if callable(attr) and hasattr(attr, "__get__"):
            return attr.__get__(self)
        self._seen.update(_leaves(self._obj, self._path))
        return getattr(self._obj, name)


def _leaves(obj: BaseModel, path: str = "") -> set[str]:
    out = set()
    for name in type(obj).model_fields:
        key = f"{path}.{name}" if path else name
        value = getattr(obj, name)
        out |= _leaves(value, key) if isinstance(value, BaseModel) else {key}
    return out


def stage_keys(stage: Stage, recipe) -> set[str]:
    """The recipe's leaf keys (``"training.epochs"``) that ``stage.params`` reads."""
    seen: set[str] = set()
    _jsonable(stage.params(_Recorder(recipe, "", seen)))
    return seen


def recipe_leaves(recipe) -> set[str]:
    return _leaves(recipe)


# --------------------------------------------------------------------------- markers
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


def _say(ctx: Context, name: str, what: str) -> None:
    if ctx.progress:
        print(f"[casm-cloud] {name:<14} {what}", flush=True)


def validate_names(stages: Sequence[Stage], *names: str | None) -> None:
    known = [s.name for s in stages]
    for name in names:
        if name is not None and name not in known:
            raise InputError(f"unknown stage {name!r}; expected one of {', '.join(known)}")


def _execute(ctx: Context, s: Stage, fn: Callable, recipe, h: str, what: str) -> None:
    from distributed import KilledWorker

    _say(ctx, s.name, what)
    ctx.stage, ctx.config_hash = s.name, h
    t0 = time.perf_counter()
    try:
        with ctx.tasks_bar():
            fn(ctx, s.params(recipe))
    except KilledWorker as err:
        raise WorkersLostError(_workers_lost(ctx, s.name, err)) from err
    ctx.timings[s.name] = time.perf_counter() - t0
    _mark(ctx, s.name, h, ctx.timings[s.name])
    _say(ctx, s.name, f"done in {ctx.timings[s.name]:.1f} s")


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
            _say(ctx, s.name, "up to date")
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
            _say(ctx, s.name, f"up to date (until {done})")
        elif s.update is None:
            _say(ctx, s.name, "kept (not refitted)")
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


def stage_table(stages: Sequence[Stage], recipe) -> str:
    """The recipe's stage table in Markdown: each stage, the stages it reads, its keys.

    docs/architecture.md holds this table for every recipe; a test keeps it true.
    """
    rows = ["| stage | reads | recipe keys |", "| --- | --- | --- |"]
    for s in stages:
        keys = ", ".join(f"`{k}`" for k in sorted(stage_keys(s, recipe)))
        rows.append(f"| `{s.name}` | {', '.join(s.reads) or '(catalog)'} | {keys} |")
    return "\n".join(rows)
