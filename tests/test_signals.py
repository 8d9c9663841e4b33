"""SIGTERM, as a Kubernetes job gets it before SIGKILL, is treated like Ctrl-C.

``casm-cloud run`` runs as a subprocess on its own LocalCluster (the tiny recipe over
four months, tests/test_store_faults.py); once its first stage is computing it gets
SIGTERM: it exits with 143 (128 + SIGTERM; Ctrl-C gives 130) and one line, its
scheduler and worker processes are gone, the interrupted stage has no marker, and the
same command run again completes.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from test_cluster import gateway_server  # noqa: F401  (the fixture)
from test_store_faults import lines, recipe_file, write_sources

from casm_cloud import storage

STAGE, UNTIL = "aggregate", "seasonal"


def _command() -> list[str]:
    exe = shutil.which("casm-cloud", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-c", "import sys; from casm_cloud.cli import "
                                                    "main; sys.exit(main())"]


class _Run:
    """``casm-cloud ARGS`` in a subprocess; stdout is read line by line as it comes."""

    def __init__(self, args: list[str], cwd: Path):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([*_command(), *args], cwd=cwd, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [threading.Thread(target=self._read, args=(s, b), daemon=True)
                         for s, b in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self._threads:
            t.start()

    @staticmethod
    def _read(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.out):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not printed (exit code {self.proc.poll()});\n"
                                     f"stdout:\n{''.join(self.out)}\nstderr:\n{''.join(self.err)}")
            time.sleep(0.05)

    def finish(self, timeout: float) -> tuple[int, str, str]:
        rc = self.proc.wait(timeout=timeout)
        for t in self._threads:
            t.join(timeout=10)
        return rc, "".join(self.out), "".join(self.err)


def _gone(procs: list[psutil.Process], timeout: float = 10.0) -> list[psutil.Process]:
    """Those of ``procs`` still alive (not a zombie) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for p in procs:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def test_sigterm_during_a_stage_stops_the_run_like_ctrl_c_and_the_run_continues(tmp_path):
    sources = write_sources(tmp_path / "sources")
    root = tmp_path / "run"
    recipe = recipe_file(sources, tmp_path, str(root))
    args = ["run", recipe, "--until-stage", UNTIL]

    run = _Run(args, tmp_path)
    try:
        run.wait_for(f"[casm-cloud] {STAGE:<14} running", timeout=180)
        # the stage's tasks are on the cluster: its worker processes are up
        deadline = time.monotonic() + 60
        me = psutil.Process(run.proc.pid)
        while len(children := me.children(recursive=True)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        children = me.children(recursive=True)
        assert len(children) >= 2, f"no worker processes under the command: {children}"
        assert run.proc.poll() is None, "the stage finished before SIGTERM was sent"
        run.proc.send_signal(signal.SIGTERM)
        rc, out, err = run.finish(timeout=120)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()

    assert rc == 128 + signal.SIGTERM, f"exit code {rc}\nstdout:\n{out}\nstderr:\n{err}"
    err_lines = lines(err)
    assert len(err_lines) == 1, f"expected one line, got:\n{err}"
    assert err_lines[0].startswith("casm-cloud: interrupted (SIGTERM)"), err_lines[0]
    assert "Traceback" not in out + err
    assert f"[casm-cloud] {STAGE:<14} done" not in out, "the stage was not interrupted"
    left = _gone(children)
    assert not left, f"processes of the cluster still running: {[p.cmdline() for p in left]}"
    assert storage.read_marker(str(root / STAGE / "_stage.json")) is None

    rc, out, err = _Run(args, tmp_path).finish(timeout=300)
    assert rc == 0, f"exit code {rc}\nstdout:\n{out}\nstderr:\n{err}"
    assert f"[casm-cloud] {STAGE:<14} running" in out
    for name in (STAGE, UNTIL):
        assert storage.read_marker(str(root / name / "_stage.json")) is not None, name


def test_sigterm_shuts_a_gateway_cluster_down(tmp_path, capsys, monkeypatch, request):
    """In process, on a real dask-gateway server (tests/test_cluster.py): SIGTERM while a
    stage runs leaves no gateway cluster behind, and no marker."""
    pytest.importorskip("dask_gateway_server")
    import dask
    from dask_gateway import Gateway

    from casm_cloud.cli import _logging, main
    from casm_cloud.cluster import _close_once
    from casm_cloud.recipes import casm
    from casm_cloud.recipes.stage import Stage

    server = request.getfixturevalue("gateway_server")

    def clusters() -> list[str]:
        gw = Gateway(**{k: server[k] for k in ("address", "proxy_address", "auth")})
        try:
            return [c.name for c in gw.list_clusters()]
        finally:
            _close_once(gw)

    up = []

    def terminated(ctx, p):
        up.append(clusters())
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the signal's handler interrupts this
        raise AssertionError("SIGTERM did not interrupt the stage")

    monkeypatch.setattr(casm, "STAGES", (Stage(STAGE, (), lambda r: {}, terminated),))
    sources = write_sources(tmp_path / "sources")
    recipe = recipe_file(sources, tmp_path, str(tmp_path / "run"))
    before = signal.getsignal(signal.SIGTERM)
    _logging(0)  # main sets these levels first; after it they must be what they were
    levels = {n: logging.getLogger(n).level for n in ("distributed", "asyncio")}
    with dask.config.set({
        "gateway.address": server["address"], "gateway.proxy-address": server["proxy_address"],
        "gateway.auth.type": "basic",
        "gateway.auth.kwargs": {"username": "casm", "password": server["password"]},
        "casm_cloud.cluster.gateway.timeout": 120,
    }):
        rc = main(["run", recipe, "--cluster", "gateway"])
    err = capsys.readouterr().err
    assert rc == 128 + signal.SIGTERM, err
    assert lines(err) == [ln for ln in lines(err) if ln.startswith("casm-cloud: interrupted")]
    assert len(lines(err)) == 1, err
    assert len(up) == 1 and len(up[0]) == 1  # the cluster was up while the stage ran
    assert clusters() == []
    assert not (tmp_path / "run" / STAGE / "_stage.json").exists()
    assert signal.getsignal(signal.SIGTERM) is before  # main put the handler back
    assert {n: logging.getLogger(n).level for n in levels} == levels  # and the log levels
