"""Where the work runs: a LocalCluster, a dask-gateway cluster, or a scheduler address.

One entry point, :func:`get_client`, a context manager that yields a
``distributed.Client`` and the dashboard link and cleans up on exit::

    with get_client("local") as (client, dashboard):
        ...
    with get_client("gateway", n_workers=4, resources={"GPU": 1},
                    gateway_options={"image": "ghcr.io/example/casm-cloud:0.1.0"}) as (client, _):
        ...
    with get_client("tcp://10.0.0.5:8786") as (client, _):
        ...

Settings come from ``dask.config`` (package defaults in
``casm_cloud/resources/casm_cloud.yaml``, overridable by YAML files and
``DASK_CASM_CLOUD__...`` environment variables) and, for the gateway, from
dask-gateway's own configuration (``DASK_GATEWAY__ADDRESS``,
``DASK_GATEWAY__AUTH__TYPE``, ``DASK_GATEWAY__CLUSTER__OPTIONS__<NAME>``), so
the same code serves a laptop, a JupyterHub session and a CronJob.

Known traps (docs/architecture.md, "Known traps"): the gateway server must start workers with
``dask worker --resources GPU=1`` on the command line (resources given by
environment variable arrive lower-cased as ``gpu``); deploy/ configures this.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import dask
import yaml

from casm_cloud.errors import UserError

__all__ = ["get_client", "gateway_cluster_options", "CONNECTION_KEYS", "ClusterError"]

log = logging.getLogger(__name__)

_DEFAULTS = os.path.join(os.path.dirname(__file__), "resources", "casm_cloud.yaml")

#: Keys of ``gateway_options`` that describe the connection, not the cluster.
CONNECTION_KEYS = ("address", "proxy_address", "public_address", "auth")

#: Set in local worker processes (as deploy/Dockerfile sets it in the image):
#: glibc's malloc asks for transparent huge pages.  Zarr's codecs malloc every
#: chunk they read and decode (tens of MB), and under dask's
#: ``MALLOC_TRIM_THRESHOLD_`` each is a fresh mapping faulted in 4 KiB pages;
#: in 2 MiB pages the seasonal stage took 7.2 s instead of 9.3 s
#: (benchmarks/bench_seasonal.py against its ``--no-hugepages`` run).
#: glibc >= 2.35; older ones ignore it, as do systems with THP off.
WORKER_ENV = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


class ClusterError(UserError, ValueError):
    """A cluster that cannot be had as asked (spec, options, gateway address)."""


#: Cluster options of the deployed gateway (deploy/helm/dask-gateway-values.yaml) that
#: ``threads_per_worker`` and ``memory_limit`` set where ``gateway_options`` does not.
GATEWAY_CORES, GATEWAY_MEMORY = "worker_cores", "worker_memory"


def _load_defaults() -> None:
    # As dask-gateway does with gateway.yaml: package defaults under user config.
    with open(_DEFAULTS, encoding="utf-8") as f:
        defaults = yaml.safe_load(f)
    dask.config.update_defaults(defaults)


_load_defaults()


def _cfg(key: str, value=None):
    """``value`` if given, else ``casm_cloud.cluster.<key>`` from dask.config."""
    return dask.config.get(f"casm_cloud.cluster.{key}") if value is None else value


@contextlib.contextmanager
def get_client(spec: str | None = "local", *, n_workers: int | None = None,
               threads_per_worker: int | None = None, memory_limit: str | int | None = None,
               resources: Mapping[str, float] | None = None,
               gateway_options: Mapping[str, Any] | None = None,
               dashboard: bool = True) -> Iterator[tuple[Any, str | None]]:
    """A dask ``Client`` for the given cluster spec; closes what it started on exit.

    Parameters
    ----------
    spec : str or None
        ``"local"``: a ``LocalCluster`` sized to the machine (or as given);
        ``"gateway"``: a new dask-gateway cluster; ``"<scheme>://host:port"``:
        an existing scheduler (``tcp://``, ``tls://``, ``ws://``, ``wss://``,
        ``inproc://``).  ``None`` reads ``casm_cloud.cluster.spec``
        (``DASK_CASM_CLOUD__CLUSTER__SPEC``).
    n_workers : int, optional
        Local: number of worker processes; gateway: workers to scale to
        (default ``casm_cloud.cluster.gateway.n-workers``).  Ignored for an
        address.
    threads_per_worker : int, optional
        Threads per worker.  Gateway: sets the ``worker_cores`` cluster option
        (unless ``gateway_options`` does); default: the server's.
    memory_limit : str or int, optional
        Memory per worker (``"4GiB"``, bytes; local also ``"auto"``).  Gateway:
        sets ``worker_memory`` (in GiB) unless ``gateway_options`` does.
    resources : mapping, optional
        Worker resources, e.g. ``{"GPU": 1}``.  Local: given to every worker.
        Gateway: ``GPU`` sets the cluster option named by
        ``casm_cloud.cluster.gateway.gpu-option`` (``worker_gpus``); the
        server turns it into ``--resources GPU=<n>`` on the worker command.
    gateway_options : mapping, optional
        Gateway only.  ``address``, ``proxy_address``, ``public_address`` and
        ``auth`` configure the connection (default: dask-gateway's config);
        every other key is a cluster option offered by the server (e.g.
        ``image``, ``worker_cores``, ``worker_memory``, ``worker_gpus``),
        applied over dask-gateway's configured defaults.
    dashboard : bool
        Local only: serve the dashboard (on a free port).

    Yields
    ------
    (distributed.Client, str or None)
        The client and the dashboard link (None when there is none).

    Raises
    ------
    ClusterError
        (a :class:`~casm_cloud.errors.UserError`, also a ``ValueError``) For an unknown spec, a cluster option the gateway does not offer (it
        lists those it does), options given for the wrong spec, or no gateway
        address.
    ImportError
        For ``"gateway"`` without dask-gateway installed (the ``gateway`` extra).
    TimeoutError
        If gateway workers do not arrive within ``casm_cloud.cluster.gateway.timeout``.
    """
    spec = dask.config.get("casm_cloud.cluster.spec") if spec is None else spec
    if not isinstance(spec, str) or not spec:
        raise ClusterError(f"cluster spec {spec!r}: expected 'local', 'gateway' or a scheduler "
                         "address such as 'tcp://host:8786'")
    if spec != "gateway" and gateway_options:
        raise ClusterError(f"gateway_options given, but cluster spec is {spec!r}, not 'gateway'")
    if spec == "local":
        factory = _local(n_workers, threads_per_worker, memory_limit, resources, dashboard)
    elif spec == "gateway":
        factory = _gateway(n_workers, resources, gateway_options or {},
                           threads_per_worker=threads_per_worker, memory_limit=memory_limit)
    elif "://" in spec:
        if resources:
            raise ClusterError(f"resources={dict(resources)!r} cannot be given to an existing "
                             f"scheduler at {spec}; start its workers with --resources")
        factory = _address(spec)
    else:
        raise ClusterError(f"unknown cluster spec {spec!r}: expected 'local', 'gateway' or a "
                         "scheduler address such as 'tcp://host:8786'")
    with factory as (client, link):
        if link:
            log.info("dask dashboard: %s", link)
        yield client, link


@contextlib.contextmanager
def _local(n_workers, threads_per_worker, memory_limit, resources, dashboard):
    from distributed import Client, LocalCluster

    kwargs = {
        "n_workers": _cfg("local.n-workers", n_workers),
        "threads_per_worker": _cfg("local.threads-per-worker", threads_per_worker),
        "memory_limit": _cfg("local.memory-limit", memory_limit),
        "dashboard_address": dask.config.get("casm_cloud.cluster.local.dashboard-address")
        if dashboard else None,
    }
    if resources:
        kwargs["resources"] = dict(resources)
    # None lets LocalCluster size itself to the machine's cores.
    kwargs = {k: v for k, v in kwargs.items() if v is not None or k == "dashboard_address"}
    if not dashboard:
        # The scheduler's HTTP server (health, metrics) still starts without the
        # dashboard; keep it off the default port 8787 that a user may hold.
        kwargs["scheduler_kwargs"] = {"dashboard_address": "127.0.0.1:0"}
    # The user's own setting (dask config or environment) wins.
    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    for key, value in WORKER_ENV.items():
        if key not in env and key not in os.environ:
            env[key] = value
    with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
        cluster = LocalCluster(**kwargs)
    with cluster, Client(cluster) as client:
        try:
            yield client, (client.dashboard_link if dashboard else None)
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM (casm_cloud.cli): the workers, whose stderr is the user's
            # terminal, would log the comms that the shutdown closes under their transfers.
            with contextlib.suppress(Exception):
                client.run(_quiet_distributed_logs)
            raise


def _quiet_distributed_logs() -> None:
    """In a worker process: distributed's loggers say only CRITICAL from now on."""
    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] == "distributed"]
    for name in ["distributed", *names]:
        logging.getLogger(name).setLevel(logging.CRITICAL)


@contextlib.contextmanager
def _address(address):
    from distributed import Client

    with Client(address) as client:
        yield client, client.dashboard_link


def _import_gateway():
    try:
        import dask_gateway
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "the 'gateway' cluster needs dask-gateway: pip install 'casm-cloud[gateway]'"
        ) from err
    return dask_gateway


def gateway_cluster_options(gateway, options: Mapping[str, Any]):
    """The server's cluster ``Options`` with ``options`` set over the configured defaults.

    Parameters
    ----------
    gateway : dask_gateway.Gateway
    options : mapping
        Option name -> value, e.g. ``{"image": ..., "worker_gpus": 1}``.

    Returns
    -------
    dask_gateway.options.Options

    Raises
    ------
    ClusterError
        Naming an option the server does not offer (listing those it does),
        or a value it rejects.
    """
    available = gateway.cluster_options()  # server fields + dask-gateway config defaults
    for key, value in options.items():
        if key not in available:
            raise ClusterError(
                f"gateway cluster option {key!r} is not offered by the server at "
                f"{gateway.address}; it offers {sorted(available)}"
            )
        try:
            available[key] = value
        except (TypeError, ValueError) as err:
            raise ClusterError(f"gateway cluster option {key!r}={value!r}: {err}") from None
    return available


def _close_once(gateway) -> None:
    """Close a ``dask_gateway.Gateway`` and make later ``close()`` calls no-ops.

    dask-gateway 2026.3's ``Gateway.__del__`` calls ``close()`` again after an
    explicit close; its event loop is stopped by then, so garbage collection
    prints an "Exception ignored ... RuntimeError" for every gateway.
    """
    try:
        gateway.close()
    finally:
        gateway.close = lambda: None


def _shutdown(cluster) -> None:
    try:
        cluster.shutdown()  # closes the cluster's own Gateway too
    finally:
        cluster.gateway.close = lambda: None


def _sized(gateway, options: dict, threads_per_worker, memory_limit) -> dict:
    """``options`` with ``worker_cores`` / ``worker_memory`` from the threads and memory asked."""
    from dask.utils import parse_bytes

    asked = {}
    if threads_per_worker is not None:
        asked[GATEWAY_CORES] = ("threads_per_worker", int(threads_per_worker))
    if memory_limit not in (None, "auto"):
        gib = (parse_bytes(memory_limit) if isinstance(memory_limit, str) else memory_limit) / 2**30
        asked[GATEWAY_MEMORY] = ("memory_limit", float(gib))
    asked = {k: v for k, v in asked.items() if k not in options}
    if not asked:
        return options
    offered = gateway.cluster_options()
    for key, (name, value) in asked.items():
        if key not in offered:
            raise ClusterError(f"cluster.{name}={value}: the gateway at {gateway.address} offers "
                               f"no {key!r} option to set it; it offers {sorted(offered)}")
    return {**options, **{k: v for k, (_, v) in asked.items()}}


@contextlib.contextmanager
def _gateway(n_workers, resources, gateway_options, *, threads_per_worker=None,
             memory_limit=None):
    dask_gateway = _import_gateway()
    connection = {k: gateway_options[k] for k in CONNECTION_KEYS if k in gateway_options}
    options = {k: v for k, v in gateway_options.items() if k not in CONNECTION_KEYS}
    extra = dict(resources or {})
    if "GPU" in extra:
        options.setdefault(dask.config.get("casm_cloud.cluster.gateway.gpu-option"),
                           int(extra.pop("GPU")))
    if extra:
        raise ClusterError(f"resources {sorted(extra)}: only 'GPU' can be requested from a "
                         "gateway (other worker resources are the server's configuration)")
    n = _cfg("gateway.n-workers", n_workers)
    maximum = dask.config.get("casm_cloud.cluster.gateway.adaptive-maximum")
    timeout = float(dask.config.get("casm_cloud.cluster.gateway.timeout"))
    try:
        gateway = dask_gateway.Gateway(**connection)
    except ValueError as err:
        raise ClusterError(f"dask-gateway: {err} (set DASK_GATEWAY__ADDRESS or "
                         "gateway_options['address'])") from None
    with contextlib.ExitStack() as stack:
        stack.callback(_close_once, gateway)
        options = _sized(gateway, options, threads_per_worker, memory_limit)
        cluster_options = gateway_cluster_options(gateway, options)
        cluster = gateway.new_cluster(cluster_options, shutdown_on_close=True)
        stack.callback(_shutdown, cluster)  # also when scaling or waiting fails
        if maximum:
            cluster.adapt(minimum=n, maximum=int(maximum))
        else:
            cluster.scale(n)
        # Not the process's default client: the runner makes it current for its stages
        # (recipes._context), and library code takes the client it is given.
        client = cluster.get_client(set_as_default=False)
        stack.callback(client.close)
        log.info("dask-gateway cluster %s: waiting for %d worker(s)", cluster.name, n)
        try:
            client.wait_for_workers(n, timeout=timeout)
        except TimeoutError:
            raise ClusterError(
                f"dask-gateway cluster {cluster.name} at {gateway.address}: {n} worker(s) did "
                f"not arrive within {timeout:g} s (casm_cloud.cluster.gateway.timeout); ask "
                "for fewer or smaller workers, or wait longer") from None
        yield client, cluster.dashboard_link
