"""Shared test fixtures: the real provider files beside the repository, object-store
servers on 127.0.0.1, and the tiny CASM and SoMo.ml runs (computed once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import casm_cloud  # noqa: F401  (loads pyproj before netCDF4; see casm_cloud/__init__.py)

REPO = Path(__file__).resolve().parents[1]

# gcsfs reads this at import (docs/architecture.md, "Known traps"): must be off for the GCS emulator.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def _real_data_dir() -> Path:
    return Path(os.environ.get("CASM_REAL_DATA", REPO.parent / "shared" / "data" / "real"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Folder of real provider files (``../shared/data/real`` or ``$CASM_REAL_DATA``)."""
    path = _real_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is absent (set CASM_REAL_DATA to its location)")
    return path


# ---- real object-store servers on 127.0.0.1 (gs:// and s3://) ------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(argv: list[str], port: int, name: str):
    """Start a server process and wait (up to 30 s) until its port accepts connections."""
    import shutil
    import socket
    import subprocess
    import sys
    import time

    exe = shutil.which(argv[0], path=str(Path(sys.executable).parent)) or shutil.which(argv[0])
    if exe is None:
        pytest.skip(f"{argv[0]} is not installed (needed by the {name} fixture)")
    proc = subprocess.Popen([exe, *argv[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{name} exited with code {proc.returncode} on start")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    pytest.fail(f"{name} did not listen on 127.0.0.1:{port} within 30 s")


def _stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except Exception:  # noqa: BLE001
        proc.kill()


@pytest.fixture(scope="session")
def gcs_emulator():
    """A real ``gcp-storage-emulator`` (in memory) with bucket ``casm-test``.

    Yields ``(url_root, storage_options)``: ``("gs://casm-test", {...})``.
    """
    import sys

    port = _free_port()
    # tests/_gcs_emulator.py runs the emulator with byte-exact multipart parsing (see there).
    proc = _start_server([sys.executable, str(REPO / "tests" / "_gcs_emulator.py"), "start",
                          "--host", "127.0.0.1", "--port",
                          str(port), "--in-memory", "--default-bucket", "casm-test", "-q"],
                         port, "gcs_emulator")
    endpoint = f"http://127.0.0.1:{port}"
    old = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = endpoint  # inherited by LocalCluster workers
    try:
        yield "gs://casm-test", {"token": "anon", "endpoint_url": endpoint}
    finally:
        if old is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = old
        _stop(proc)


@pytest.fixture(scope="session")
def s3_server():
    """A real ``moto_server`` with bucket ``casm-test``.

    Yields ``(url_root, storage_options)``: ``("s3://casm-test", {...})``.
    """
    port = _free_port()
    proc = _start_server(["moto_server", "-H", "127.0.0.1", "-p", str(port)], port, "s3_server")
    endpoint = f"http://127.0.0.1:{port}"
    # moto accepts any credentials; these are fakes, passed the way real ones would be.
    so = {"key": "testing", "secret": "testing", "endpoint_url": endpoint,
          "client_kwargs": {"region_name": "eu-west-1"}}
    try:
        import s3fs

        s3fs.S3FileSystem(skip_instance_cache=True, **so).mkdir("casm-test")
        yield "s3://casm-test", so
    finally:
        _stop(proc)


# ---- the tiny runs (tests/_tiny.py), each computed once per session ------------------------


@pytest.fixture(scope="module")
def client():
    """A LocalCluster of 2 processes of 1 thread for a module's runs."""
    from _tiny import local_client

    with local_client() as c:
        yield c


def _reference_run(raw: dict):
    """A tiny run, uninterrupted, on its own LocalCluster: (recipe, context)."""
    from _tiny import local_client

    from casm_cloud.config import recipe_from_dict
    from casm_cloud.recipes import run_recipe

    recipe = recipe_from_dict(raw)
    with local_client() as c:
        return recipe, run_recipe(recipe, client=c, progress=False)


@pytest.fixture(scope="session")
def casm_sources(tmp_path_factory) -> Path:
    from _tiny import write_casm_sources

    return write_casm_sources(tmp_path_factory.mktemp("casm-sources"))


@pytest.fixture(scope="session")
def casm_reference(casm_sources, tmp_path_factory):
    """The tiny CASM run, (recipe, context); tests change copies only."""
    from _tiny import casm_raw

    return _reference_run(casm_raw(casm_sources, tmp_path_factory.mktemp("casm-reference")))


@pytest.fixture(scope="session")
def somo_sources(tmp_path_factory) -> Path:
    from _tiny import write_somo_sources

    return write_somo_sources(tmp_path_factory.mktemp("somo-sources"))


@pytest.fixture(scope="session")
def somo_reference(somo_sources, tmp_path_factory):
    """The tiny SoMo.ml run, (recipe, context); tests change copies only."""
    from _tiny import somo_raw

    return _reference_run(somo_raw(somo_sources, tmp_path_factory.mktemp("somo-reference")))
