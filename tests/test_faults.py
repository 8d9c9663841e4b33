"""Faults survived: a worker SIGKILLed in the middle of ``train`` or ``predict``, the object
store stopped in the middle of a stage.

On a LocalCluster of 2 processes of 1 thread (each test its own): a background thread watches the
workers, and once a task of the stage is executing it kills that worker's
process (``os.kill(pid, SIGKILL)``); the nanny restarts it and the scheduler
runs the lost tasks again.  Member and chunk tasks are pure (same inputs →
same bits, written to their own paths), so the run completes without a
restart of the command, with a product bit-identical to an undisturbed run.

The reference run is the session's tiny run (tests/conftest.py) and each fault run starts
from a copy of it with the stage under test and those after it removed.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
from _tiny import CASM_PRODUCT_VARS as PRODUCT_VARS
from _tiny import local_client
from _tiny import product as _product
from test_recipe_casm import STAGE_NAMES

from casm_cloud.config import recipe_from_dict
from casm_cloud.recipes import run_recipe

# The killer's worker-side function travels by value: workers cannot import this module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

UNTIL = "merge"  # the product is written by merge; validate/report/export only read it


@pytest.fixture(scope="module")
def reference(casm_reference):
    """The session's undisturbed tiny run: (recipe, product)."""
    recipe, _ = casm_reference
    return recipe, _product(recipe)


def _from_stage(reference, root: Path, stage: str):
    """The reference run under ``root`` without ``stage`` and the stages after it."""
    recipe, _ = reference
    shutil.copytree(Path(recipe.run_root), root / "run")
    for name in STAGE_NAMES[STAGE_NAMES.index(stage):]:
        shutil.rmtree(root / "run" / name, ignore_errors=True)
    shutil.rmtree(root / "run" / "product.zarr", ignore_errors=True)
    raw = recipe.model_dump(mode="json")
    raw.update(run_root=str(root / "run"), outputs={})
    return recipe_from_dict(raw)


class WorkerKiller(threading.Thread):
    """SIGKILL the process of the first worker seen executing a task whose key starts
    with ``prefix`` (after ``delay`` seconds of it executing)."""

    def __init__(self, client, prefix: str, delay: float = 0.0):
        super().__init__(daemon=True)
        self.client, self.prefix, self.delay = client, prefix, delay
        self.killed: list[tuple[str, str]] = []
        self.seen: set[str] = set()
        self._done = threading.Event()

    @staticmethod
    def _executing(dask_worker=None) -> tuple[int, list[str]]:
        return os.getpid(), [str(k) for k, ts in dask_worker.state.tasks.items()
                             if ts.state == "executing"]

    def run(self) -> None:
        first: dict[str, float] = {}
        while not self._done.is_set() and not self.killed:
            try:
                states = self.client.run(self._executing, on_error="ignore")
            except Exception:  # noqa: BLE001 - a worker restarting
                states = {}
            now = time.monotonic()
            for addr, (pid, keys) in states.items():
                self.seen.update(k.split("-")[0] for k in keys)
                hits = [k for k in keys if k.startswith(self.prefix)]
                if not hits:
                    continue
                first.setdefault(addr, now)
                if now - first[addr] >= self.delay:
                    os.kill(pid, signal.SIGKILL)
                    self.killed.append((addr, hits[0]))
                    return
            time.sleep(0.05)

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=10)


@pytest.mark.parametrize(("stage", "prefix", "delay"), [
    ("train", "train-member", 0.0),         # members fit in about a second here
    ("predict_smos", "casm-predict", 0.0),  # chunks take a fraction of a second
], ids=["train", "predict"])
def test_a_worker_killed_in_the_middle_of_a_stage(reference, tmp_path, stage, prefix, delay):
    recipe = _from_stage(reference, tmp_path, stage)
    # A cluster of its own: nothing after this test depends on the killed worker coming back
    # (once on CI its nanny had not restarted it 60 s after the run).
    with local_client() as client:
        killer = WorkerKiller(client, prefix, delay)
        killer.start()
        try:
            ctx = run_recipe(recipe, until=UNTIL, client=client, progress=False)
        finally:
            killer.stop()
    assert killer.killed, f"no {prefix} task was seen executing (saw {sorted(killer.seen)})"
    assert list(ctx.timings) == STAGE_NAMES[STAGE_NAMES.index(stage):STAGE_NAMES.index(UNTIL) + 1]
    got, want = _product(recipe), reference[1]
    for name in PRODUCT_VARS:
        np.testing.assert_array_equal(got[name].values, want[name].values, err_msg=name)


def test_workers_that_die_under_a_stage_end_it_in_one_line(reference, tmp_path, capsys):
    """A task that kills every worker it runs on (a worker over its memory, here a SIGKILL)
    ends ``casm-cloud run`` in one line naming the stage, the task and the workers' memory,
    exit 2, the stage unmarked so that the same command continues."""
    import dask
    import yaml

    from casm_cloud.cli import main

    recipe = _from_stage(reference, tmp_path, "train")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    # dask retries a task on 3 more workers before it gives up; one death is enough here.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), local_client() as client:
        killer = WorkerKiller(client, "train-member")
        killer.start()
        try:
            rc = main(["run", str(path), "--cluster", client.scheduler.address,
                       "--until-stage", "train"])
        finally:
            killer.stop()
    text = capsys.readouterr().err
    # Besides the progress bar and distributed's log of each death as it happens: one line.
    err = [ln for ln in text.splitlines() if ln.startswith("casm-cloud")]
    assert killer.killed and rc == 2, text
    assert "Traceback" not in text and "KilledWorker" not in text, text
    assert len(err) == 1 and err[0].startswith("casm-cloud: error: stage 'train': "), err
    assert "'train-member'" in err[0] and "memory per worker now: " in err[0], err
    assert "cluster.memory_limit" in err[0] and "run the same command again" in err[0], err
    assert not (Path(recipe.run_root) / "train" / "_stage.json").exists()
