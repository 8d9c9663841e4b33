"""Windowed SoMo.ml inference against an explicit NumPy implementation of the published model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

torch = pytest.importorskip("torch")

from casm_cloud import somo, storage  # noqa: E402
from casm_cloud.errors import UserError  # noqa: E402
from casm_cloud.grid import LatLonGrid  # noqa: E402
from casm_cloud.models.ealstm import EALSTM  # noqa: E402
from casm_cloud.somo.features import PUBLISHED_DYNAMIC, PUBLISHED_STATIC, FeatureError  # noqa: E402
from casm_cloud.somo.published import STATIC_COLUMNS  # noqa: E402
from casm_cloud.somo.testing import (  # noqa: E402
    make_features,
    make_statics,
    published_state,
    write_scalers,
)
from casm_cloud.somo.windowed import WindowedModel, segment_steps  # noqa: E402

HIDDEN = 16


def _published_state(seed, n_dyn=6):
    return published_state(seed, n_dyn=n_dyn, hidden=HIDDEN)


_features, _statics, _scalers = make_features, make_statics, write_scalers


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """(checkpoint dir, state dict, forcing scaler, static scaler) of a random published model."""
    tmp = tmp_path_factory.mktemp("published")
    sd = _published_state(0)
    torch.save(sd, tmp / "model.pt")
    fs, ss = _scalers(tmp)
    ckpt = somo.import_published(str(tmp / "model.pt"), forcing_scaler=str(tmp / "forcing_scaler.csv"),
                                 static_scaler=str(tmp / "static_scaler.csv"),
                                 out=str(tmp / "ckpt"))
    return ckpt, sd, fs, ss


# ---------------------------------------------------------------- the explicit reference
def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def reference_windowed(sd, fs, ss, features: xr.Dataset, statics: xr.Dataset, cells_dim: str):
    """Every day from its own 365-day window, zero state, float64, the published equations."""
    p = {k: v.double().numpy() for k, v in sd.items()}
    hid = p["lstm.weight_hh"].shape[0]
    x = np.stack([(features[n].transpose(cells_dim, "time").values - fs.at["aveK", n])
                  / fs.at["stdK", n] for n in PUBLISHED_DYNAMIC], axis=-1).astype(np.float64)
    cols = {v: k for k, v in STATIC_COLUMNS.items()}
    s = np.stack([(statics[n].values - ss.at["aveK", cols[n]]) / ss.at["stdK", cols[n]]
                  for n in PUBLISHED_STATIC], axis=-1)
    i_gate = _sigmoid(s @ p["lstm.weight_sh"] + p["lstm.bias_s"])
    n_out = x.shape[1] - 364
    out = np.empty((x.shape[0], n_out))
    for t0 in range(n_out):
        h = np.zeros((x.shape[0], hid))
        c = np.zeros_like(h)
        for t in range(t0, t0 + 365):
            z = x[:, t] @ p["lstm.weight_ih"] + h @ p["lstm.weight_hh"] + p["lstm.bias"]
            f, o, g = z[:, :hid], z[:, hid:2 * hid], z[:, 2 * hid:]
            c = _sigmoid(f) * c + i_gate * np.tanh(g)
            h = _sigmoid(o) * np.tanh(c)
        out[:, t0] = (h @ p["fc.weight"].T)[:, 0] + p["fc.bias"][0]
    y = out * fs.at["stdK", "sm"] + fs.at["aveK", "sm"]
    return np.maximum(y, 0.0).T                                   # (time, cells)


# ---------------------------------------------------------------- the fused LSTM
def test_fused_lstm_equals_explicit_ealstm_cell():
    torch.manual_seed(0)
    m = EALSTM(7, 10, hidden=32).eval()
    with torch.no_grad():
        for q in m.parameters():
            q.normal_(0, 0.3)
    x, s = torch.randn(16, 365, 7), torch.randn(16, 10)
    lstm, head = m.as_lstm()
    with torch.no_grad():
        want = m(x, s)
        _, (h, _) = lstm(torch.cat([x, s[:, None].expand(-1, 365, -1)], dim=2))
        got = head(h[-1])
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5, rtol=0)
    # the windowed runner gives the same for the windows it runs
    run = WindowedModel(m, "cpu", "fp32", batch=5)
    y = run(x.numpy(), s.numpy())
    np.testing.assert_allclose(y[:, 0], want.numpy()[:, 0], atol=1e-5, rtol=0)


def test_bf16_close_to_fp32():
    torch.manual_seed(1)
    m = EALSTM(6, 10, hidden=32).eval()
    x = np.random.default_rng(0).standard_normal((8, 380, 6)).astype(np.float32)
    s = np.random.default_rng(1).standard_normal((8, 10)).astype(np.float32)
    a = WindowedModel(m, "cpu", "fp32")(x, s)
    b = WindowedModel(m, "cpu", "bf16")(x, s)
    assert a.shape == (8, 16)
    # bf16 rounds inputs, weights and states over 365 steps: small on average, a
    # few windows differ by up to ~0.2 (standardised units, i.e. ~0.02 m3 m-3)
    err = np.abs(b - a)
    assert np.median(err) < 0.01 and err.mean() < 0.02 and err.max() < 0.3


def test_a_windows_bits_do_not_depend_on_its_batch():
    # An append recomputes a grown partial chunk with other batches: the days it
    # shares with the stored chunk must keep their bits (the head is not a matmul).
    # The batch also sets the LSTM's steps per call on CPU (segment_steps): a few
    # steps per call for batch 4096, the whole window for the others; the bits stay.
    assert segment_steps("cpu", 4096, HIDDEN, 4) < 364 // 2
    assert segment_steps("cpu", 20, HIDDEN, 4) == 365
    torch.manual_seed(2)
    m = EALSTM(7, 10, hidden=HIDDEN).eval()
    x = np.random.default_rng(0).standard_normal((4, 364 + 12, 7)).astype(np.float32)
    s = np.random.default_rng(1).standard_normal((4, 10)).astype(np.float32)
    ref = WindowedModel(m, "cpu", "fp32", batch=4096)(x, s).view(np.uint32)
    for batch in (1, 7, 20):
        got = WindowedModel(m, "cpu", "fp32", batch=batch)(x, s).view(np.uint32)
        np.testing.assert_array_equal(got, ref, err_msg=f"batch {batch}")
    short = WindowedModel(m, "cpu", "fp32", batch=4096)(x[:, :364 + 5], s).view(np.uint32)
    np.testing.assert_array_equal(short, ref[:, :5])
    # and the head is the model's: the fused runner equals EALSTM.forward
    with torch.no_grad():
        want = m(torch.from_numpy(x[:, :365]), torch.from_numpy(s)).numpy()[:, 0]
    np.testing.assert_allclose(ref.view(np.float32)[:, 0], want, atol=1e-5, rtol=0)


def test_missing_inputs_give_nan_windows_only():
    m = EALSTM(6, 10, hidden=8).eval()
    x = np.zeros((2, 370, 6), np.float32)
    x[0, 3, 2] = np.nan                        # inside the windows ending on days 364..367
    s = np.zeros((2, 10), np.float32)
    y = WindowedModel(m, "cpu", "fp32")(x, s)
    assert np.isnan(y[0, :4]).all() and np.isfinite(y[0, 4:]).all() and np.isfinite(y[1]).all()


# ---------------------------------------------------------------- published model, predict
def test_import_published_and_predict_match_numpy_reference(published):
    ckpt, sd, fs, ss = published
    times = pd.date_range("2001-01-01", periods=365 + 30, freq="D")
    feats = _features(times, ("station",), (4,)).assign_coords(station=["a", "b", "c", "d"])
    stat = _statics(("station",), (4,)).assign_coords(station=["a", "b", "c", "d"])
    out = somo.predict(ckpt, feats.chunk({"time": 100}), stat, chunks={"time": 7},
                       precision="fp32")
    assert out["sm"].dims == ("time", "station") and out["sm"].chunks[0][0] == 7
    assert out["time"].values[0] == np.datetime64("2001-12-31")
    got = out["sm"].values
    want = reference_windowed(sd, fs, ss, feats, stat, "station")
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)
    assert (got >= 0).all() and got.std() > 0
    part = somo.predict(ckpt, feats, stat, start="2002-01-10", end="2002-01-12",
                        precision="fp32")
    np.testing.assert_allclose(part["sm"].values, want[10:13], atol=2e-5, rtol=0)


def test_import_published_refuses_pickles_and_wrong_shapes(published, tmp_path):
    from casm_cloud.models.checkpoint import CheckpointError

    _scalers(tmp_path)
    kw = dict(forcing_scaler=str(tmp_path / "forcing_scaler.csv"),
              static_scaler=str(tmp_path / "static_scaler.csv"), out=str(tmp_path / "c"))
    torch.save(EALSTM(6, 10, hidden=8), tmp_path / "module.pt")       # a pickled module
    with pytest.raises(CheckpointError, match="not a plain PyTorch state dict"):
        somo.import_published(str(tmp_path / "module.pt"), **kw)
    torch.save(_published_state(0, n_dyn=7), tmp_path / "l2.pt")
    with pytest.raises(CheckpointError, match="7 dynamic inputs"):
        somo.import_published(str(tmp_path / "l2.pt"), **kw)
    with pytest.raises(CheckpointError, match=r"lack \['sm_l1'\]"):
        somo.import_published(str(tmp_path / "l2.pt"), dynamic=[*PUBLISHED_DYNAMIC, "sm_l1"], **kw)
    assert not (tmp_path / "c" / "model.json").exists()


@pytest.mark.parametrize("content, reason", [
    ("pickle", "Unsupported operand"),            # a plain pickle (protocol 4: torch warns)
    ("cut", "cut short or damaged"),              # a checkpoint whose download stopped
    ("text", "no PyTorch file at all (it begins b'<html>"),  # a login page
])
def test_import_published_refuses_a_file_in_one_line_without_warnings(tmp_path, capsys,
                                                                      content, reason):
    import pickle
    import warnings

    from casm_cloud.cli import main

    _scalers(tmp_path)
    model = tmp_path / "model.pt"
    if content == "pickle":
        model.write_bytes(pickle.dumps({"lstm.weight_sh": [1.0]}, protocol=4))
    elif content == "cut":
        torch.save(_published_state(0), model)
        model.write_bytes(model.read_bytes()[:300])
    else:
        model.write_text("<html>please log in</html>")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main(["somo", "import-published", str(model), "--out", str(tmp_path / "c"),
                   "--forcing-scaler", str(tmp_path / "forcing_scaler.csv"),
                   "--static-scaler", str(tmp_path / "static_scaler.csv")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "model.pt" in err and reason in err and "\x1b" not in err, err
    assert not [str(w.message) for w in caught]
    assert not (tmp_path / "c").exists()


def test_extra_dynamic_input_for_deeper_layers(tmp_path):
    sd = _published_state(3, n_dyn=7)
    torch.save(sd, tmp_path / "l2.pt")
    fs, _ = _scalers(tmp_path)
    fs.insert(6, "sm_l1", [0.25, 0.07])
    fs.to_csv(tmp_path / "forcing_scaler.csv")
    ckpt = somo.import_published(str(tmp_path / "l2.pt"), dynamic=[*PUBLISHED_DYNAMIC, "sm_l1"],
                                 target="sm_l2", forcing_scaler=str(tmp_path / "forcing_scaler.csv"),
                                 static_scaler=str(tmp_path / "static_scaler.csv"),
                                 out=str(tmp_path / "ckpt"))
    times = pd.date_range("2001-01-01", periods=370, freq="D")
    feats = _features(times, ("station",), (2,))
    feats["sm_l1"] = feats["t2m"] * 0 + np.float32(0.3)
    feats["sm_l1"].attrs = {"units": "m3 m-3"}
    out = somo.predict(ckpt, feats, _statics(("station",), (2,)))
    assert list(out.data_vars) == ["sm_l2"] and out["sm_l2"].shape == (6, 2)
    with pytest.raises(FeatureError, match=r"features lack \['sm_l1'\]"):
        somo.predict(ckpt, feats.drop_vars("sm_l1"), _statics(("station",), (2,)))


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(("change", "match"), [
    (lambda f, s: (f.drop_vars("q"), s), r"features lack \['q'\]"),
    (lambda f, s: (f.assign(t2m=(f.t2m - 273.15).assign_attrs(units="degC")), s),
     "'t2m' has units 'degC'; the checkpoint expects 'K'"),
    (lambda f, s: (f, s.drop_vars("clay")), r"statics lack \['clay'\]"),
    (lambda f, s: (f.isel(time=slice(1, None)), s), "needs 364 days of forcing before it"),
    (lambda f, s: (f, s.isel(station=slice(0, 2))), "'station' has 2 cells"),
])
def test_bad_input_is_one_clear_user_error(published, tmp_path, change, match):
    ckpt = published[0]
    times = pd.date_range("2001-01-01", periods=370, freq="D")
    f, s = change(_features(times, ("station",), (3,)), _statics(("station",), (3,)))
    with pytest.raises(UserError, match=match):
        somo.predict(ckpt, f, s, start="2001-12-31")
    with pytest.raises(UserError, match=match):
        somo.predict_to_zarr(ckpt, f, s, str(tmp_path / "out.zarr"), start="2001-12-31")
    assert not (tmp_path / "out.zarr").exists()


def test_checkpoint_that_is_not_somo(tmp_path):
    from casm_cloud.models import build_model
    from casm_cloud.models.checkpoint import CheckpointError, save_checkpoint

    m = build_model({"name": "dense", "n_inputs": 2, "hidden": [4]})
    save_checkpoint(m, str(tmp_path / "dense"), {"inputs": ["a", "b"], "target": "sm", "scaler": {
        "mean": {"a": 0, "b": 0, "sm": 0}, "std": {"a": 1, "b": 1, "sm": 1}}})
    times = pd.date_range("2001-01-01", periods=370, freq="D")
    with pytest.raises(CheckpointError, match="not a SoMo.ml EA-LSTM"):
        somo.predict(str(tmp_path / "dense"), _features(times, ("station",), (1,)),
                     _statics(("station",), (1,)))


# ---------------------------------------------------------------- Zarr: resume, append
def _grid_inputs(days: int):
    win = LatLonGrid("ERA5_0p25").window_by_name("tiny")
    times = pd.date_range("2001-01-01", periods=days, freq="D")
    f = _features(times, ("y", "x"), win.shape).assign_coords(
        {k: v for k, v in win.coords().items()})
    s = _statics(("y", "x"), win.shape).assign_coords({k: v for k, v in win.coords().items()})
    f.attrs.update(win.identity())
    return f.chunk({"time": 64, "y": 4, "x": 4}), s.chunk({"y": 4, "x": 4})


class _Kill(Exception):
    pass


def test_predict_to_zarr_resumes_bit_identical_and_appends(published, tmp_path):
    ckpt = published[0]
    feats, stat = _grid_inputs(365 + 44)
    kw = dict(chunks={"time": 16, "y": 4, "x": 4}, precision="fp32")
    full = str(tmp_path / "full.zarr")
    s = somo.predict_to_zarr(ckpt, feats, stat, full, **kw)
    assert s.n_chunks == 3 * 2 * 2 and s.computed == 12
    ref = storage.open_zarr(full, require_complete=True)
    lazy = somo.predict(ckpt, feats, stat, **kw)
    np.testing.assert_array_equal(ref["sm"].values, lazy["sm"].values)
    assert ref.attrs["latlon_grid"] == "ERA5_0p25" and "lat" in ref.coords

    killed = str(tmp_path / "killed.zarr")

    def kill(done, total):
        if done == 5:
            raise _Kill

    with pytest.raises(_Kill):
        somo.predict_to_zarr(ckpt, feats, stat, killed, progress=kill, **kw)
    assert not storage.store_state(killed)["complete"]
    again = somo.predict_to_zarr(ckpt, feats, stat, killed, **kw)
    assert again.skipped == 5 and again.computed == 7
    np.testing.assert_array_equal(storage.open_zarr(killed)["sm"].values, ref["sm"].values)

    # the monthly update: a store made from a shorter forcing grows to the full run
    short = str(tmp_path / "short.zarr")
    somo.predict_to_zarr(ckpt, feats.isel(time=slice(0, 365 + 20)), stat, short, **kw)
    with pytest.raises(storage.StoreError, match="append=True"):
        somo.predict_to_zarr(ckpt, feats, stat, short, **kw)
    grown = somo.predict_to_zarr(ckpt, feats, stat, short, append=True, **kw)
    assert grown.computed == 2 * 4 and grown.skipped == 4    # grown partial chunk + new chunk
    got = storage.open_zarr(short, require_complete=True)
    np.testing.assert_array_equal(got["time"].values, ref["time"].values)
    np.testing.assert_array_equal(got["sm"].values, ref["sm"].values)


def test_predict_to_zarr_on_a_local_cluster(published, tmp_path):
    distributed = pytest.importorskip("distributed")
    ckpt = published[0]
    feats, stat = _grid_inputs(365 + 10)
    with distributed.Client(n_workers=1, threads_per_worker=1, processes=False,
                            dashboard_address=":0") as client:
        s = somo.predict_to_zarr(ckpt, feats, stat, str(tmp_path / "c.zarr"), client=client,
                                 chunks={"time": 8, "y": 7, "x": 7}, device="auto")
    assert s.computed == 2
    out = storage.open_zarr(str(tmp_path / "c.zarr"), require_complete=True)
    lazy = somo.predict(ckpt, feats, stat, chunks={"time": 8, "y": 7, "x": 7})
    np.testing.assert_array_equal(out["sm"].values, lazy["sm"].values)
