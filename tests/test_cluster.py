"""get_client: LocalCluster, a real dask-gateway server on 127.0.0.1, a scheduler address.

The gateway server runs in a subprocess with the UnsafeLocalBackend and a
SimpleAuthenticator, configured with the very options block of
deploy/helm/dask-gateway-values.yaml, so the test checks what is deployed:
GPU workers are asked for through a cluster option and must arrive with the
``GPU`` resource on the worker command line.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import dask
import dask.array as da
import pytest
from distributed import WorkerPlugin

from casm_cloud.cluster import _close_once, get_client

REPO = Path(__file__).resolve().parents[1]
VALUES = REPO / "deploy" / "helm" / "dask-gateway-values.yaml"
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_SERVER_CONFIG = """
import yaml
from dask_gateway_server.backends.local import LocalClusterConfig

c.DaskGateway.address = "127.0.0.1:{api_port}"
c.Proxy.address = "127.0.0.1:{proxy_port}"
c.DaskGateway.backend_class = "dask_gateway_server.backends.local.UnsafeLocalBackend"
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
c.SimpleAuthenticator.password = {password!r}
c.LocalBackend.clusters_directory = {clusters!r}

# The deployed options block, unchanged.
with open({values!r}) as f:
    exec(yaml.safe_load(f)["gateway"]["extraConfig"]["casm-options"])

# The local backend has no image or pod settings: keep the keys it knows.
_known = set(LocalClusterConfig.class_trait_names())
_deployed = c.Backend.cluster_options.handler
c.Backend.cluster_options.handler = lambda options, user: {{
    k: v for k, v in _deployed(options, user).items() if k in _known}}
"""


@pytest.fixture(scope="module")
def gateway_server(tmp_path_factory):
    """A dask-gateway server on 127.0.0.1 (random ports); yields connection options."""
    pytest.importorskip("dask_gateway_server")
    from dask_gateway import BasicAuth

    tmp = tmp_path_factory.mktemp("gateway")
    api_port, proxy_port = _free_port(), _free_port()
    password = secrets.token_hex(8)
    config = tmp / "dask_gateway_config.py"
    config.write_text(_SERVER_CONFIG.format(api_port=api_port, proxy_port=proxy_port,
                                            password=password, clusters=str(tmp / "clusters"),
                                            values=str(VALUES)))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = open(tmp / "server.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([str(BIN / "dask-gateway-server"), "-f", str(config)],
                            cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
    address = f"http://127.0.0.1:{proxy_port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{address}/api/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.close()
            pytest.fail("dask-gateway-server did not start:\n" + (tmp / "server.log").read_text())
        time.sleep(0.2)
    try:
        yield {"address": address, "proxy_address": f"gateway://127.0.0.1:{proxy_port}",
               "auth": BasicAuth("casm", password), "password": password}
    finally:
        proc.terminate()  # the server stops its clusters on shutdown
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _worker_resources(client) -> dict:
    return client.run(lambda dask_worker: dict(dask_worker.state.total_resources))


def test_gateway_gpu_workers(gateway_server):
    conn = {k: gateway_server[k] for k in ("address", "proxy_address", "auth")}
    with get_client("gateway", n_workers=2, resources={"GPU": 1},
                    gateway_options={**conn, "worker_cores": 1, "worker_memory": 1.0}) as (client,
                                                                                           link):
        assert len(client.scheduler_info()["workers"]) == 2
        assert link and link.startswith(gateway_server["address"])
        assert list(_worker_resources(client).values()) == [{"GPU": 1.0}, {"GPU": 1.0}]
        x = da.arange(10_000, chunks=1_000)
        assert client.compute(x.sum()).result() == 49_995_000
        # A GPU-annotated task runs (it would wait forever without the resource).
        assert client.submit(lambda v: v + 1, 41, resources={"GPU": 1}).result(timeout=60) == 42
        cluster_name = client.cluster.name
    from dask_gateway import Gateway

    gw = Gateway(**conn)
    try:  # the cluster is gone after the context
        assert cluster_name not in [c.name for c in gw.list_clusters()]
    finally:
        _close_once(gw)


def test_gateway_from_dask_config(gateway_server):
    """Address, auth and default options from config, as DASK_GATEWAY__* would set them."""
    with dask.config.set({
        "gateway.address": gateway_server["address"],
        "gateway.proxy-address": gateway_server["proxy_address"],
        "gateway.auth.type": "basic",
        "gateway.auth.kwargs": {"username": "casm", "password": gateway_server["password"]},
        "gateway.cluster.options": {"worker_cores": 1, "worker_memory": 1.0},
        "casm_cloud.cluster.gateway.n-workers": 1,
        "casm_cloud.cluster.spec": "gateway",
    }):
        with get_client(None) as (client, _):
            assert list(_worker_resources(client).values()) == [{}]  # CPU worker
            info = client.scheduler_info()["workers"]
            assert [w["nthreads"] for w in info.values()] == [1]


def test_gateway_unknown_option_is_named(gateway_server):
    conn = {k: gateway_server[k] for k in ("address", "proxy_address", "auth")}
    with pytest.raises(ValueError, match="'worker_gpu'.*worker_gpus"):
        with get_client("gateway", gateway_options={**conn, "worker_gpu": 1}):
            pass
    with pytest.raises(ValueError, match="worker_gpus"):
        with get_client("gateway", gateway_options={**conn, "worker_gpus": 5}):
            pass


def test_local_cluster_with_resources():
    with get_client("local", n_workers=1, threads_per_worker=1, memory_limit="1GiB",
                    resources={"GPU": 1}) as (client, link):
        assert list(_worker_resources(client).values()) == [{"GPU": 1.0}]
        assert link.startswith("http://127.0.0.1:")
        assert client.submit(sum, [1, 2], resources={"GPU": 1}).result() == 3
        cluster = client.cluster
    assert cluster.status.name == "closed"


def test_local_workers_get_the_worker_environment(monkeypatch):
    import os

    from casm_cloud.cluster import WORKER_ENV

    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    with get_client("local", n_workers=1, threads_per_worker=1, dashboard=False) as (client, _):
        env = client.run(lambda: {k: os.environ.get(k) for k in WORKER_ENV})
    assert list(env.values()) == [WORKER_ENV]
    # A user's own value wins.
    monkeypatch.setenv("GLIBC_TUNABLES", "x=1")
    with get_client("local", n_workers=1, threads_per_worker=1, dashboard=False) as (client, _):
        assert list(client.run(os.environ.get, "GLIBC_TUNABLES").values()) == ["x=1"]


def test_local_cluster_without_dashboard():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "Port 8787 is already in use"
        with get_client("local", n_workers=1, threads_per_worker=1, dashboard=False) as (client,
                                                                                        link):
            assert link is None
            assert client.submit(abs, -3).result() == 3


class _LogsOnClose(WorkerPlugin):
    """A worker plugin that logs an ERROR as its worker closes (as a cut transfer does)."""

    def teardown(self, worker):
        import logging

        logging.getLogger("distributed.worker").error("error-while-the-worker-closes")


@pytest.mark.parametrize("interrupted", [False, True])
def test_an_interrupt_quiets_the_local_workers_logs(capfd, interrupted):
    # Ctrl-C / SIGTERM: the cluster goes down without workers printing the comms it cuts.
    with pytest.raises(KeyboardInterrupt) if interrupted else contextlib.nullcontext():
        with get_client("local", n_workers=1, threads_per_worker=1, dashboard=False) as (c, _):
            c.register_plugin(_LogsOnClose())
            if interrupted:
                raise KeyboardInterrupt
    err = capfd.readouterr().err
    assert ("error-while-the-worker-closes" in err) is not interrupted, err


def test_existing_scheduler_is_left_running():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address="127.0.0.1:0") as cluster:
        with get_client(cluster.scheduler_address) as (client, link):
            assert client.submit(lambda: 7).result() == 7
            assert link == client.dashboard_link
        assert cluster.status.name == "running"


@pytest.mark.parametrize(("spec", "kwargs", "message"), [
    ("kubernetes", {}, "unknown cluster spec 'kubernetes'"),
    ("", {}, "expected 'local', 'gateway'"),
    ("local", {"gateway_options": {"image": "x"}}, "gateway_options given"),
    ("tcp://127.0.0.1:1", {"resources": {"GPU": 1}}, "--resources"),
])
def test_bad_specs_are_named(spec, kwargs, message):
    with pytest.raises(ValueError, match=message):
        with get_client(spec, **kwargs):
            pass


def test_gateway_without_address_says_how_to_set_it():
    pytest.importorskip("dask_gateway")
    with dask.config.set({"gateway.address": None}):
        with pytest.raises(ValueError, match="DASK_GATEWAY__ADDRESS"):
            with get_client("gateway"):
                pass


def test_package_defaults_are_in_dask_config():
    assert dask.config.get("casm_cloud.cluster.spec") == "local"
    assert dask.config.get("casm_cloud.cluster.gateway.gpu-option") == "worker_gpus"
    # Environment variables override them (as for every dask setting).
    code = textwrap.dedent("""
        import dask, casm_cloud.cluster
        print(dask.config.get("casm_cloud.cluster.gateway.n-workers"))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "DASK_CASM_CLOUD__CLUSTER__GATEWAY__N_WORKERS": "7"})
    assert out.stdout.strip() == "7"
