"""What a recipe module is made of: :class:`Stage`, and the :class:`Context` a stage runs in.

A recipe (``casm_cloud.recipes.casm``, ...) is a tuple of :class:`Stage`; each
stage says which stages' outputs it reads, which arguments it passes to library
code (``params(recipe) -> dict``) and how it runs (``run(ctx, params)``).  The
context holds where things are, the cluster, and the stage's lines and
progress bars.  The runner (:mod:`casm_cloud.recipes.runner`) orders and runs
the stages; see docs/architecture.md, "The runner".
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from casm_cloud import storage

__all__ = ["Context", "Stage", "stage_line"]


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
        stage_line(self, self.stage, what)

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



def stage_line(ctx: Context, name: str, what: str) -> None:
    """Print ``[casm-cloud] <stage> <what>``, unless the context is quiet."""
    if ctx.progress:
        print(f"[casm-cloud] {name:<14} {what}", flush=True)
