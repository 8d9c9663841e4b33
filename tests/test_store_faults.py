"""The object store stopped in the middle of a stage, then back (issue 18, item 4).

The run root is a bucket of the GCS emulator in its on-disk mode
(``tests/_gcs_emulator.py``, :class:`OnDisk`), so the emulator can be killed
(SIGKILL: the store gone at once) and started again on the same objects.  The
recipe is the tiny one over four months in which every sensor has data (the
simulator's sensors all start on ``START`` here), run ``--until-stage aggregate``:
aggregate is the first stage and the one that writes the most objects.

gcsfs retries a refused connection six times (about 30 s) before it gives up, so
each failure below takes that long.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from _gcs_emulator import OnDisk
from _tiny import casm_raw

from casm_cloud import storage
from casm_cloud.cli import main
from casm_cloud.errors import StoreUnreachableError

START, END = "2011-01-01", "2011-04-30"
STAGE = "aggregate"


def write_sources(out: Path) -> Path:
    """Four months of the tiny region with every sensor (AMSR-E, AMSR2, SMOS, SMAP) on."""
    from casm_cloud.simulate import write_simulation
    from casm_cloud.simulate.settings import SimSettings

    base = SimSettings()
    settings = dataclasses.replace(base, sensors={
        k: dataclasses.replace(s, first_day=START, last_day=None) for k, s in base.sensors.items()})
    write_simulation(str(out), region="tiny", start=START, end=END, seed=0, settings=settings)
    return Path(out)


def recipe_file(sources: Path, tmp: Path, run_root: str,
                storage_options: dict | None = None) -> str:
    """The tiny recipe over :func:`write_sources`' months, as a YAML file in ``tmp``."""
    raw = casm_raw(sources, tmp)
    raw.update(run_root=run_root, storage_options=storage_options or {},
               period={"start": START, "end": END},
               periods={"transfer": {"start": START, "end": END}, "smos_from": START,
                        "amsre_until": END})
    path = tmp / f"recipe-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def lines(err: str) -> list[str]:
    """The lines of stderr other than the progress bars (``[casm-cloud]   stage: 40%|...``,
    redrawn after carriage returns)."""
    parts = (p.strip() for line in err.splitlines() for p in line.split("\r"))
    return [p for p in parts if p and not p.startswith("[casm-cloud]")]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    return write_sources(tmp_path_factory.mktemp("store-fault-sources"))


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """The on-disk GCS emulator with bucket ``casm-test`` (restarted by the tests)."""
    em = OnDisk(tmp_path_factory.mktemp("gcs-disk"))
    em.start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORAGE_EMULATOR_HOST", em.endpoint)  # inherited by LocalCluster workers
        try:
            yield em
        finally:
            em.kill()


def _stores(run_root: str, so: dict | None = None) -> dict[str, xr.Dataset]:
    """Every store the stage wrote, loaded."""
    fs, root = storage.url_to_fs(storage.join(run_root, STAGE), so)
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)
                   if p.endswith(".zarr"))
    return {n: storage.open_zarr(storage.join(run_root, STAGE, n), so,
                                 require_complete=True).load() for n in names}


@pytest.fixture
def store(gcs) -> OnDisk:
    """The emulator, running (again, where a test before stopped it)."""
    if not gcs.running:
        gcs.start()
    return gcs


@pytest.fixture(scope="module")
def reference(sources, tmp_path_factory):
    """The stage's stores from an undisturbed run (local run root)."""
    tmp = tmp_path_factory.mktemp("store-fault-reference")
    root = str(tmp / "run")
    assert main(["run", recipe_file(sources, tmp, root), "--until-stage", STAGE]) == 0
    stores = _stores(root)
    assert {"smos.zarr", "amsre.zarr", "amsr2.zarr", "smap.zarr"} <= set(stores), sorted(stores)
    return stores


def _looks_complete(gcs: OnDisk, run_root: str) -> list[str]:
    """Objects under the run root that say something finished: stage markers, stores
    with the ``casm_complete`` attribute."""
    import gcsfs

    fs = gcsfs.GCSFileSystem(endpoint_url=gcs.endpoint, token="anon", skip_instance_cache=True)
    prefix = run_root.removeprefix("gs://")
    found = []
    for name in gcs.objects():
        if not name.startswith(prefix + "/"):
            continue
        if name.endswith("/_stage.json"):
            found.append(name)
        elif name.endswith("/zarr.json"):
            attrs = json.loads(fs.cat(name)).get("attributes", {})
            if attrs.get(storage.COMPLETE_ATTR):
                found.append(name)
    return found


def test_store_stopped_while_workers_write_fails_in_one_line_then_completes(
        store, sources, reference, tmp_path, monkeypatch, capfd, caplog):
    gcs = store
    so = {"token": "anon", "endpoint_url": gcs.endpoint}
    run_root = f"gs://casm-test/store-fault-{uuid.uuid4().hex[:8]}/run"
    recipe = recipe_file(sources, tmp_path, run_root, so)

    # The store stops right after the stage has written its first store's template (in this
    # process): every chunk of it is then written, and fails, in a worker's task.
    write_template, stopped = storage.write_template, []

    def template_then_the_store_stops(template, url, *args, **kwargs):
        write_template(template, url, *args, **kwargs)
        if not stopped:
            gcs.kill()
            stopped.append(url)

    monkeypatch.setattr(storage, "write_template", template_then_the_store_stops)
    caplog.set_level("DEBUG", logger="casm_cloud")
    capfd.readouterr()
    rc = main(["run", recipe, "--until-stage", STAGE])
    out, err = capfd.readouterr()
    err_lines = lines(err)
    assert stopped and f"{run_root}/{STAGE}/" in stopped[0], stopped
    assert rc == 2, f"exit code {rc}; stderr:\n{err}"
    assert len(err_lines) == 1, f"expected one line, got:\n{err}"
    assert err_lines[0].startswith(
        f"casm-cloud: error: the store {stopped[0]} could not be reached"), err_lines[0]
    assert "run the same command again" in err_lines[0]
    assert "Traceback" not in out + err and "gcsfs" not in err and "aiohttp." not in err, err
    # the error was raised in a worker's task and reached this process as the same type
    (record,) = [r for r in caplog.records if r.name == "casm_cloud" and r.exc_info]
    error = record.exc_info[1]
    assert type(error) is StoreUnreachableError, repr(error)
    tb, frames = error.__traceback__, []
    while tb is not None:
        frames.append((Path(tb.tb_frame.f_code.co_filename).name, tb.tb_frame.f_code.co_name))
        tb = tb.tb_next
    # (the task that writes a chunk of means and adds it to the seasonal sums runs only there)
    assert ("sums.py", "__call__") in frames, frames

    gcs.start()  # the same objects, the same port
    assert not _looks_complete(gcs, run_root), "something looks complete after the failure"

    capfd.readouterr()
    assert main(["run", recipe, "--until-stage", STAGE]) == 0
    got = _stores(run_root, so)
    assert sorted(got) == sorted(reference)
    for name, want in reference.items():
        xr.testing.assert_identical(got[name], want)
        for v in want.data_vars:
            np.testing.assert_array_equal(got[name][v].values, want[v].values, err_msg=name)
    assert storage.read_marker(f"{run_root}/{STAGE}/_stage.json", so) is not None


@pytest.mark.slow  # the test above runs the same command in this process (default tests)
def test_store_stopped_under_the_command_line_prints_one_line(store, sources, tmp_path):
    """``casm-cloud run`` as a user runs it (its own process, logging and LocalCluster): the
    store is killed as soon as the stage's first object appears (in practice while the
    command writes the first store's template); stderr holds the error's line and nothing
    else."""
    gcs = store
    import os
    import subprocess
    import sys
    import threading
    import time

    so = {"token": "anon", "endpoint_url": gcs.endpoint}
    run_root = f"gs://casm-test/store-fault-cli-{uuid.uuid4().hex[:8]}/run"
    recipe = recipe_file(sources, tmp_path, run_root, so)
    prefix = f"{run_root.removeprefix('gs://')}/{STAGE}/"
    done = threading.Event()
    seen: list[str] = []

    def stop_the_store_once_the_stage_writes():
        while not done.is_set():
            hits = [n for n in gcs.objects() if n.startswith(prefix)]
            if hits:
                gcs.kill()
                seen.append(hits[0])
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=stop_the_store_once_the_stage_writes, daemon=True)
    watcher.start()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", "import sys; from casm_cloud.cli import main; sys.exit(main())",
             "run", recipe, "--until-stage", STAGE],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
            env={**os.environ, "STORAGE_EMULATOR_HOST": gcs.endpoint})
    finally:
        done.set()
        watcher.join(timeout=10)
        if not gcs.running:
            gcs.start()
    err_lines = lines(proc.stderr)
    assert seen, f"the stage wrote nothing (exit code {proc.returncode}):\n{proc.stderr}"
    assert proc.returncode == 2, f"exit code {proc.returncode}; stderr:\n{proc.stderr}"
    assert len(err_lines) == 1, f"expected one line, got:\n{proc.stderr}"
    assert err_lines[0].startswith(f"casm-cloud: error: the store {run_root}/{STAGE}/"), \
        err_lines[0]
    assert "could not be reached" in err_lines[0], err_lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not _looks_complete(gcs, run_root), "something looks complete after the failure"


def test_only_the_records_that_repeat_a_user_error_are_dropped():
    """casm_cloud's log filters (casm_cloud/__init__.py): a worker's "Compute Failed" of a
    user error and gcsfs' give-up on an unreachable store go; a bug's records stay."""
    import logging

    def record(name, msg, args=(), exc=None):
        return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args,
                                 (type(exc), exc, None) if exc else None)

    def kept(rec):
        return all(f.filter(rec) for f in logging.getLogger(rec.name).filters)

    failed = "Compute Failed\nKey: %s\nState: %s\nTask: %s\nException: %r\nTraceback: %r\n"
    user = StoreUnreachableError("the store gs://b/x could not be reached")
    assert not kept(record("distributed.worker", failed, ("k", "executing", "t", repr(user), "")))
    assert kept(record("distributed.worker", failed,
                       ("k", "executing", "t", repr(RuntimeError("a bug")), "")))
    refused = ConnectionRefusedError(111, "Connect call failed")
    gave_up = "_request out of retries on exception: %s"
    assert not kept(record("gcsfs", gave_up, (refused,), refused))
    assert kept(record("gcsfs", gave_up, (ValueError("x"),), ValueError("x")))
    assert kept(record("gcsfs", "some other message"))
    assert kept(record("distributed.nanny", "Worker process %d exited with status %d", (1, 1)))
