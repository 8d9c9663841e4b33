"""The whole CASM recipe on a real dask-gateway cluster (``casm-cloud run --cluster gateway``).

The gateway server is the one of tests/test_cluster.py (UnsafeLocalBackend on
127.0.0.1, the deployed options block).  The tiny recipe run there gives a
product bit-identical to the LocalCluster run; workers are sized by the
recipe's ``cluster:`` section; the cluster is gone after the run, also when a
stage raises or the run is interrupted.
"""

from __future__ import annotations

from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr
import yaml
from _tiny import CASM_PRODUCT_VARS as PRODUCT_VARS
from _tiny import casm_raw as _raw
from _tiny import product as _product
from test_cluster import gateway_server  # noqa: F401  (the fixture)

from casm_cloud.cli import main
from casm_cloud.cluster import _close_once

pytest.importorskip("dask_gateway_server")


@pytest.fixture(scope="module")
def sources(casm_sources) -> Path:
    return casm_sources


@pytest.fixture(scope="module")
def local_product(casm_reference) -> xr.Dataset:
    """The product of the session's LocalCluster run (2 processes of 1 thread)."""
    return _product(casm_reference[0])


@pytest.fixture
def gateway_config(gateway_server):  # noqa: F811
    """dask-gateway's own settings, as DASK_GATEWAY__* set them on the hub and the CronJob."""
    with dask.config.set({
        "gateway.address": gateway_server["address"],
        "gateway.proxy-address": gateway_server["proxy_address"],
        "gateway.auth.type": "basic",
        "gateway.auth.kwargs": {"username": "casm", "password": gateway_server["password"]},
        "casm_cloud.cluster.gateway.timeout": 120,
    }):
        yield gateway_server


def _running_clusters(server) -> list[str]:
    from dask_gateway import Gateway

    gw = Gateway(**{k: server[k] for k in ("address", "proxy_address", "auth")})
    try:
        return [c.name for c in gw.list_clusters()]
    finally:
        _close_once(gw)


def _recipe_file(sources: Path, tmp: Path, **cluster) -> Path:
    raw = _raw(sources, tmp)
    raw["cluster"] = {"n_workers": 2, "threads_per_worker": 1, **cluster}
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_whole_recipe_on_a_gateway_equals_the_local_run(sources, local_product, gateway_config,
                                                        tmp_path, capsys, monkeypatch):
    import casm_cloud.recipes as recipes

    seen = {}
    original = recipes.run_stages

    def spy(stages, recipe, ctx, **kw):
        info = ctx.client.scheduler_info(n_workers=-1)["workers"].values()
        seen["workers"] = sorted((w["nthreads"], w["memory_limit"]) for w in info)
        seen["type"] = type(ctx.client.cluster).__name__
        return original(stages, recipe, ctx, **kw)

    monkeypatch.setattr(recipes, "run_stages", spy)
    path = _recipe_file(sources, tmp_path, memory_limit="1.5GiB")
    assert main(["run", str(path), "--cluster", "gateway"]) == 0
    out = capsys.readouterr().out
    # Sized by the recipe's cluster section: 2 workers of 1 thread and 1.5 GiB.
    assert seen == {"type": "GatewayCluster", "workers": [(1, int(1.5 * 2**30))] * 2}
    dash = [ln for ln in out.splitlines() if ln.startswith("[casm-cloud] dask dashboard: ")]
    assert len(dash) == 1 and gateway_config["address"] in dash[0], out
    assert "report" in out and (tmp_path / "run" / "report" / "index.html").is_file()
    got = xr.open_zarr(tmp_path / "run" / "product.zarr", consolidated=False).load()
    for name in PRODUCT_VARS:
        np.testing.assert_array_equal(got[name].values, local_product[name].values,
                                      err_msg=name)
    assert _running_clusters(gateway_config) == []


@pytest.mark.parametrize("exc", [RuntimeError("a bug in a stage"), KeyboardInterrupt()],
                         ids=["error", "ctrl-c"])
def test_the_gateway_cluster_is_shut_down_when_a_stage_fails(sources, gateway_config, tmp_path,
                                                             monkeypatch, exc):
    from casm_cloud.recipes import casm
    from casm_cloud.recipes.stage import Stage

    up = []

    def fails(ctx, p):
        up.append(_running_clusters(gateway_config))
        raise exc

    monkeypatch.setattr(casm, "STAGES", (Stage("aggregate", (), lambda r: {}, fails),))
    path = _recipe_file(sources, tmp_path, n_workers=1)
    if isinstance(exc, KeyboardInterrupt):
        assert main(["run", str(path), "--cluster", "gateway"]) == 130
    else:
        with pytest.raises(RuntimeError, match="a bug in a stage"):
            main(["run", str(path), "--cluster", "gateway"])
    assert len(up) == 1 and len(up[0]) == 1  # the cluster was up while the stage ran
    assert _running_clusters(gateway_config) == []
    assert not (tmp_path / "run" / "aggregate" / "_stage.json").exists()
