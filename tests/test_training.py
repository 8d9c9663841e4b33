"""Training on simulated data: skill on held-out blocks, transfer learning, ensembles, safety."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
import xarray as xr
from test_pairs import fit_params  # the seasonal fit (the seasonal stage's where present)

from casm_cloud.grid import EASE2Grid
from casm_cloud.models import build_model
from casm_cloud.models.checkpoint import load_checkpoint
from casm_cloud.pairs import (
    PairsError,
    SampleLoader,
    build_pairs,
    cycle_values,
    open_pairs,
    write_pairs,
)
from casm_cloud.training import (
    ArrayLoader,
    NonFiniteError,
    fine_tune,
    fine_tune_ensemble,
    fit,
    train_dense,
    train_ensemble,
)

simulate = pytest.importorskip("casm_cloud.simulate").simulate

WINDOW = EASE2Grid("M25").window(lat=(36.0, 40.5), lon=(-102.0, -97.5))  # 18 x 17 cells
SMALL = {"hidden": [64] * 4, "batch_size": 512, "lr": 1e-3}


def _scene(tmp, sensor, start, end, target):
    """Pairs of ``sensor`` TB residuals -> SM residual on simulated data; truth residuals.

    ``target="smap"``: the simulated SMAP retrieval.  ``target="reference"``:
    truth plus retrieval-like noise, standing in for the NN_SMOS outputs the
    CASM scheme fine-tunes on (no SMAP before 2015).
    """
    srcs = ["truth", sensor, *(["smap"] if target == "smap" else [])]
    sim = simulate(WINDOW, start, end, seed=0, sources=srcs)
    tb, truth = sim[sensor].compute(), sim["truth"]["sm_l1"].compute()
    if target == "smap":
        tg = sim["smap"]["sm"].compute()
    else:
        noise = np.random.default_rng(1).normal(0, 0.03, truth.shape).astype(np.float32)
        tg = (truth + noise).rename("sm")
    tb, tg, truth = xr.align(tb, tg, truth, join="inner")
    pairs = build_pairs(tb, tg, fit_params(tb.to_dataarray("variable")), fit_params(tg),
                        block_size=4, seed=0)
    url = str(tmp / f"{sensor}.zarr")
    write_pairs(pairs, url, chunk_size=8192)
    p = fit_params(truth)
    t = truth["time"].values
    truth_res = truth.values - cycle_values(p.amplitude.values, p.phase.values, p.offset.values, t)
    return {"url": url, "truth_res": truth_res, "time": t}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("training")
    return {"smos": _scene(tmp, "smos", "2015-04-01", "2016-12-31", "smap"),
            "amsr2": _scene(tmp, "amsr2", "2015-04-01", "2016-12-31", "smap"),
            "amsre": _scene(tmp, "amsre", "2010-01-17", "2011-10-03", "reference")}


def skill_vs_truth(ck_path: str, scene: dict, split: str = "test") -> tuple[float, float]:
    """(R, RMSE) of a checkpoint's SM residuals against the truth residuals on a split."""
    ck = load_checkpoint(ck_path)
    meta = ck.meta
    loader = SampleLoader(scene["url"], split, 8192, meta["inputs"], meta["target"],
                          meta["scaler"])
    with torch.no_grad():
        pred = np.concatenate([ck.model(x).numpy().ravel() for x, _ in loader])
    pred = pred * meta["scaler"]["std"]["sm"] + meta["scaler"]["mean"]["sm"]
    table = open_pairs(scene["url"]).isel(sample=slice(loader.start, loader.stop)).compute()
    ti = np.searchsorted(scene["time"], table["time"].values)
    truth = scene["truth_res"][ti, table["row"].values, table["col"].values]
    return float(np.corrcoef(pred, truth)[0, 1]), float(np.sqrt(np.mean((pred - truth) ** 2)))


@pytest.fixture(scope="module")
def smos_net(scenes, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ck") / "nn_smos")
    return train_dense(scenes["smos"]["url"], out, epochs=8, patience=3, seed=0, **SMALL)


def test_dense_net_predicts_held_out_block_residuals(scenes, smos_net):
    r, rmse = skill_vs_truth(smos_net, scenes["smos"])
    assert r >= 0.5, f"R against truth residuals on held-out blocks is {r:.3f}"
    meta = load_checkpoint(smos_net).meta
    assert meta["inputs"] == ["tb_h", "tb_v", "lat", "lon"] and meta["target"] == "sm"
    m = meta["metrics"]
    assert m["val_loss"] == pytest.approx(min(h["val_loss"] for h in m["history"]), abs=1e-6)
    assert m["test_r"] > 0.4 and m["test_n"] > 1000 and meta["seed"] == 0


def test_transfer_learning_beats_the_untuned_network(scenes, tmp_path):
    base = train_dense(scenes["amsr2"]["url"], str(tmp_path / "nn_amsr"), epochs=8, patience=3,
                       seed=0, **SMALL)
    tuned = fine_tune(base, scenes["amsre"]["url"], out_path=str(tmp_path / "nn_amsre"),
                      freeze_first=3, epochs=4, patience=2, batch_size=512, lr=1e-3)
    r0, rmse0 = skill_vs_truth(base, scenes["amsre"])
    r1, rmse1 = skill_vs_truth(tuned, scenes["amsre"])
    assert r1 > r0 + 0.02 and rmse1 < rmse0, (r0, r1, rmse0, rmse1)
    a, b = load_checkpoint(base), load_checkpoint(tuned)
    for i in range(3):  # frozen: bit-identical
        for name in ("weight", "bias"):
            assert torch.equal(getattr(a.model.hidden_layers[i], name),
                               getattr(b.model.hidden_layers[i], name))
    assert not torch.equal(a.model.hidden_layers[3].weight, b.model.hidden_layers[3].weight)
    assert not torch.equal(a.model.head.weight, b.model.head.weight)
    assert b.meta["fine_tuned_from"]["content_hash"] == a.content_hash
    assert b.meta["scaler"] == a.meta["scaler"] and b.meta["inputs"] == a.meta["inputs"]


def test_same_seed_same_weights(scenes, tmp_path):
    url = scenes["smos"]["url"]
    kw = {"hidden": [16, 16], "epochs": 2, "batch_size": 1024, "lr": 1e-3}
    paths = [train_dense(url, str(tmp_path / name), seed=s, **kw)
             for name, s in (("a", 3), ("b", 3), ("c", 4))]
    blobs = [(tmp_path / n / "model.safetensors").read_bytes() for n in "abc"]
    assert blobs[0] == blobs[1] and blobs[0] != blobs[2]
    assert load_checkpoint(paths[0]).meta["seed"] == 3


def test_fine_tune_rejects_data_with_other_inputs(scenes, smos_net, tmp_path):
    with pytest.raises(PairsError, match=r"no feature\(s\) \['tb_h', 'tb_v'\]"):
        fine_tune(smos_net, scenes["amsre"]["url"], out_path=str(tmp_path / "x"), epochs=1)
    assert not (tmp_path / "x").exists()


def _dense_data(n=256, bad=None):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=gen)
    y = x[:, :1] * 2.0 + 0.1 * torch.randn(n, 1, generator=gen)
    if bad == "nan_feature":
        x[17, 1] = float("nan")
    if bad == "inf_target":
        y[5, 0] = float("inf")
    return ArrayLoader(x, y, batch_size=64, shuffle_seed=0, features=["tb_h", "tb_v", "lat"])


@pytest.mark.parametrize("bad, message", [("nan_feature", r"feature\(s\) \['tb_v'\]"),
                                          ("inf_target", "training target")])
def test_nan_or_infinite_data_is_a_clear_error(bad, message):
    model = build_model({"name": "dense", "n_inputs": 3, "hidden": [8]})
    with pytest.raises(NonFiniteError, match=message):
        fit(model, _dense_data(bad=bad), _dense_data(), epochs=2)


def test_a_diverged_loss_is_an_error_not_a_silent_nan():
    model = build_model({"name": "dense", "n_inputs": 3, "hidden": [8]})
    with torch.no_grad():
        model.head.weight.fill_(3e38)
        model.hidden_layers[0].weight.fill_(3e38)
    with pytest.raises(NonFiniteError, match="loss became"):
        fit(model, _dense_data(), _dense_data(), epochs=1)


def test_fit_keeps_the_best_state_and_stops_early():
    torch.manual_seed(0)
    model = build_model({"name": "dense", "n_inputs": 3, "hidden": [16]})
    best, history = fit(model, _dense_data(), _dense_data(64), epochs=200, lr=0.05, patience=3)
    assert len(history) < 200
    i = int(np.argmin([h["val_loss"] for h in history]))
    assert len(history) == i + 1 + 3
    for k, v in model.state_dict().items():
        assert torch.equal(v, best[k])


def test_ealstm_trains_with_the_per_cell_loss():
    gen = torch.Generator().manual_seed(1)
    n, steps = 512, 20
    xd = torch.randn(n, steps, 2, generator=gen)
    xs = torch.rand(n, 3, generator=gen)
    # Soil water as a leaky store of the forcing, leaking at a rate set by a static feature.
    keep = 0.6 + 0.3 * xs[:, :1]
    y = 0.3 * (xd[:, :, 0] * keep ** torch.arange(steps - 1, -1, -1.0)).sum(1, keepdim=True)
    sigma = 0.5 + xs[:, 1:2]  # per-cell standard deviation of the target
    train = ArrayLoader((xd[:400], xs[:400]), y[:400], sigma[:400], batch_size=64, shuffle_seed=0)
    val = ArrayLoader((xd[400:], xs[400:]), y[400:], sigma[400:], batch_size=128)
    torch.manual_seed(0)
    model = build_model({"name": "ealstm", "n_dynamic": 2, "n_static": 3, "hidden": 16,
                         "dropout": 0.1})
    _, history = fit(model, train, val, epochs=15, lr=5e-3, loss="nse_cell", patience=5)
    assert min(h["val_loss"] for h in history) < 0.5 * history[0]["val_loss"]
    with pytest.raises(ValueError, match="sigma_cell"):
        fit(model, ArrayLoader((xd, xs), y), val, epochs=1, loss="nse_cell")


def test_ensemble_members_train_as_parallel_tasks_on_workers(scenes, tmp_path):
    from distributed import Client, LocalCluster, get_task_stream

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        with get_task_stream(client) as ts:
            paths = train_ensemble(scenes["smos"]["url"], str(tmp_path / "ens"), n_members=2,
                                   seed=10, client=client, hidden=[16, 16], epochs=2,
                                   batch_size=1024, lr=1e-3)
        workers = {t["worker"] for t in ts.data if str(t["key"]).startswith("train-member")}
    assert len(workers) == 2  # one member per worker, at the same time
    cks = [load_checkpoint(p) for p in paths]
    assert [c.meta["seed"] for c in cks] == [10, 11]
    assert paths[1].endswith("member_01")
    assert not torch.equal(cks[0].model.head.weight, cks[1].model.head.weight)


@contextlib.contextmanager
def _torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_fine_tuned_members_run_as_parallel_tasks_and_equal_the_sequential_loop(scenes, tmp_path):
    """The transfer stage's members: one task per member, the same bits as one by one."""
    from distributed import Client, LocalCluster, get_task_stream

    base = train_ensemble(scenes["amsr2"]["url"], str(tmp_path / "nn_amsr2"), n_members=2,
                          seed=0, hidden=[16, 16], epochs=2, batch_size=1024, lr=1e-3)
    kw = {"freeze_first": 1, "epochs": 2, "batch_size": 1024, "lr": 1e-3, "patience": 2}
    data = scenes["amsre"]["url"]
    # Same bits for the same torch thread count (the fit loop's promise): the workers' one.
    # On an AMX Xeon, 2 threads and 1 gave other weights; on an AMD EPYC the same.
    with _torch_threads(1):
        sequential = [fine_tune(m, data, out_path=str(tmp_path / "seq" / f"member_{k:02d}"),
                                **kw) for k, m in enumerate(base)]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        with get_task_stream(client) as ts:
            paths = fine_tune_ensemble(base, data, str(tmp_path / "par"), client=client, **kw)
        workers = {t["worker"] for t in ts.data if str(t["key"]).startswith("fine-tune-member")}
    assert len(workers) == 2  # one member per worker, at the same time
    assert paths == [str(tmp_path / "par" / f"member_{k:02d}") for k in range(2)]
    for k, (p, s) in enumerate(zip(paths, sequential, strict=True)):
        assert (tmp_path / "par" / f"member_{k:02d}" / "model.safetensors").read_bytes() == \
            (tmp_path / "seq" / f"member_{k:02d}" / "model.safetensors").read_bytes()
        a, b = load_checkpoint(p).meta, load_checkpoint(s).meta
        assert a["fine_tuned_from"] == b["fine_tuned_from"]
        assert a["fine_tuned_from"]["path"].endswith(f"member_{k:02d}")
        assert [h["val_loss"] for h in a["metrics"]["history"]] == \
            [h["val_loss"] for h in b["metrics"]["history"]]
    # members differ (they start from different networks)
    assert (tmp_path / "par" / "member_00" / "model.safetensors").read_bytes() != \
        (tmp_path / "par" / "member_01" / "model.safetensors").read_bytes()
    # no client: the sequential loop itself
    with _torch_threads(1):
        local = fine_tune_ensemble(base, data, str(tmp_path / "loc"), **kw)
    assert (tmp_path / "loc" / "member_01" / "model.safetensors").read_bytes() == \
        (tmp_path / "seq" / "member_01" / "model.safetensors").read_bytes()
    assert local[1].endswith("member_01")


def test_fine_tune_ensemble_checks_its_options(tmp_path):
    from casm_cloud.errors import UserError
    from casm_cloud.training import TrainingError

    with pytest.raises(TrainingError, match="no members"):
        fine_tune_ensemble([], "pairs.zarr", str(tmp_path))
    with pytest.raises(UserError, match=r"unknown option\(s\) \['epoch'\]"):
        fine_tune_ensemble(["m0"], "pairs.zarr", str(tmp_path), epoch=3)
    assert not any(tmp_path.iterdir())
