"""precision="auto": one resolver for both recipes, decided once per worker, pinned per store."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from casm_cloud import somo, storage  # noqa: E402
from casm_cloud.inference import precision as P  # noqa: E402
from casm_cloud.inference import speed as S  # noqa: E402
from casm_cloud.somo.testing import (  # noqa: E402
    make_features,
    make_statics,
    published_state,
    write_scalers,
)

DENSE = S.Probe.of({"name": "dense", "n_inputs": 4, "hidden": [64, 8]}, rows=16)
LSTM = S.Probe.of({"name": "ealstm", "n_dynamic": 6, "n_static": 10, "hidden": 64}, rows=4,
                  steps=3)


@pytest.fixture(autouse=True)
def _fresh_cache():
    S.bf16_time_ratio.cache_clear()
    yield
    S.bf16_time_ratio.cache_clear()


class _Clock:
    """A fake clock of the measurement that the fake runners advance by their cost."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _fake_runners(monkeypatch, cost: dict[str, float]) -> list:
    """Make the measurement see fp32/bf16 runs taking ``cost`` seconds; returns a call log."""
    clock, built = _Clock(), []

    def runners(device, probe):
        built.append((device, probe))

        def run(name):
            def go():
                clock.now += cost[name]
            return go
        return {"fp32": run("fp32"), "bf16": run("bf16")}

    monkeypatch.setattr(S, "_runners", runners)
    monkeypatch.setattr(S, "_now", clock)
    monkeypatch.setattr(S, "_sync", lambda device: None)
    return built


def test_cpu_without_amx_is_fp32_without_measuring(monkeypatch):
    monkeypatch.setattr(S, "cpu_has_amx", lambda: False)
    built = _fake_runners(monkeypatch, {"fp32": 1.0, "bf16": 0.1})   # bf16 "faster": unused
    for probe in (DENSE, LSTM):
        assert P.resolve_precision("auto", "cpu", probe) == "fp32"
    assert built == []
    assert P.resolve_precision("bf16", "cpu", DENSE) == "bf16"       # asked for: as asked
    assert P.resolve_precision("fp32", "cuda", DENSE) == "fp32"
    with pytest.raises(ValueError, match="precision"):
        P.resolve_precision("fp16", "cpu", DENSE)


@pytest.mark.parametrize(("cost", "want"), [({"fp32": 1.0, "bf16": 0.5}, "bf16"),
                                            ({"fp32": 1.0, "bf16": 0.8}, "fp32"),
                                            ({"fp32": 1.0, "bf16": 0.95}, "fp32"),
                                            ({"fp32": 1.0, "bf16": 2.0}, "fp32")])
def test_amx_cpu_measures_once_and_picks_bf16_only_when_clearly_faster(monkeypatch, cost, want):
    monkeypatch.setattr(S, "cpu_has_amx", lambda: True)
    built = _fake_runners(monkeypatch, cost)
    assert P.resolve_precision("auto", "cpu", LSTM) == want
    assert P.resolve_precision("auto", "cpu", LSTM) == want
    assert built == [("cpu", LSTM)]                                  # measured once per process
    P.resolve_precision("auto", "cpu", DENSE)                        # other shapes: measured
    assert built == [("cpu", LSTM), ("cpu", DENSE)]


def test_narrow_networks_are_fp32_without_measuring(monkeypatch):
    monkeypatch.setattr(S, "cpu_has_amx", lambda: True)
    built = _fake_runners(monkeypatch, {"fp32": 1.0, "bf16": 0.1})
    narrow = [S.Probe.of({"name": "dense", "n_inputs": 4, "hidden": [32] * 4}, rows=2048),
              S.Probe.of({"name": "ealstm", "n_dynamic": 6, "n_static": 10, "hidden": 24}, 256)]
    for probe in narrow:
        assert probe.width < S.MIN_WIDTH
        for device in ("cpu", "cuda"):
            assert P.resolve_precision("auto", device, probe) == "fp32"
    assert built == []
    assert P.resolve_precision("bf16", "cpu", narrow[0]) == "bf16"  # asked for: as asked
    assert DENSE.width == LSTM.width == 64


def test_cuda_is_measured_even_without_amx(monkeypatch):
    monkeypatch.setattr(S, "cpu_has_amx", lambda: False)
    built = _fake_runners(monkeypatch, {"fp32": 1.0, "bf16": 0.3})
    assert P.resolve_precision("auto", "cuda", DENSE) == "bf16"
    assert built == [("cuda", DENSE)]


def test_cpu_capability_or_cpuinfo_tells_amx(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    real_open = open

    def cpuinfo(flags):
        def fake(path, *a, **k):
            if path == "/proc/cpuinfo":
                (tmp_path / "cpuinfo").write_text(f"flags\t: fpu sse {flags}\n")
                return real_open(tmp_path / "cpuinfo", *a, **k)
            return real_open(path, *a, **k)
        return fake

    monkeypatch.setattr("builtins.open", cpuinfo("avx512f avx512_bf16"))
    assert not S.cpu_has_amx()                                       # AVX512-BF16 is not AMX
    monkeypatch.setattr("builtins.open", cpuinfo("avx512f amx_bf16 amx_tile"))
    assert S.cpu_has_amx()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AMX")
    monkeypatch.setattr("builtins.open", cpuinfo("avx2"))
    assert S.cpu_has_amx()


@pytest.mark.parametrize("probe", [DENSE, LSTM])
def test_the_real_measurement_runs_the_models_shapes(monkeypatch, probe):
    # On this machine, with AMX pretended: the measurement builds and times the model.
    monkeypatch.setattr(S, "cpu_has_amx", lambda: True)
    runners = S._runners("cpu", probe)
    assert set(runners) == {"fp32", "bf16"}
    assert P.resolve_precision("auto", "cpu", probe) in ("fp32", "bf16")


def test_pinned_precision_reads_the_stores_decision():
    assert P.pinned_precision(None, "auto") is None
    assert P.pinned_precision({"casm_precision": "bf16", "casm_precision_requested": "auto"},
                              "auto") == "bf16"
    assert P.pinned_precision({"casm_precision": "fp32"}, "fp32") == "fp32"       # older stores
    assert P.pinned_precision({"casm_precision": "auto"}, "auto") is None        # undecided
    assert P.pinned_precision({"casm_precision": "bf16", "casm_precision_requested": "bf16"},
                              "auto") is None


# ---------------------------------------------------------------- pinned in a SoMo.ml store
@pytest.fixture(scope="module")
def somo_inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("somo_prec")
    torch.save(published_state(0, hidden=8), tmp / "model.pt")
    write_scalers(tmp)
    ckpt = somo.import_published(str(tmp / "model.pt"),
                                 forcing_scaler=str(tmp / "forcing_scaler.csv"),
                                 static_scaler=str(tmp / "static_scaler.csv"),
                                 out=str(tmp / "ckpt"))
    times = pd.date_range("2001-01-01", periods=365 + 11, freq="D")
    feats = make_features(times, ("station",), (3,))
    stat = make_statics(("station",), (3,))
    return ckpt, feats, stat


class _Kill(Exception):
    pass


def test_somo_store_keeps_its_first_decision_on_resume(monkeypatch, tmp_path, somo_inputs):
    ckpt, feats, stat = somo_inputs
    kw = dict(chunks={"time": 4}, precision="auto", device="cpu")
    ref = somo.predict_to_zarr(ckpt, feats, stat, str(tmp_path / "fp32.zarr"),
                               **{**kw, "precision": "fp32"})
    monkeypatch.setattr(S, "cpu_has_amx", lambda: True)
    monkeypatch.setattr(S, "MIN_WIDTH", 8)                           # the test model: 8 wide
    _fake_runners(monkeypatch, {"fp32": 1.0, "bf16": 0.5})          # a worker where bf16 wins
    whole = str(tmp_path / "whole.zarr")
    s_whole = somo.predict_to_zarr(ckpt, feats, stat, whole, **kw)
    assert storage.open_zarr(whole).attrs["casm_precision"] == "bf16"
    assert storage.open_zarr(whole).attrs["casm_precision_requested"] == "auto"

    killed = str(tmp_path / "killed.zarr")

    def kill(done, total):
        if done == 1:
            raise _Kill

    with pytest.raises(_Kill):
        somo.predict_to_zarr(ckpt, feats, stat, killed, progress=kill, **kw)
    # Resumed where the measurement now says fp32: the store's decision (bf16) holds.
    monkeypatch.setattr(S, "cpu_has_amx", lambda: False)
    S.bf16_time_ratio.cache_clear()
    again = somo.predict_to_zarr(ckpt, feats, stat, killed, **kw)
    assert again.skipped == 1 and again.computed == 2
    assert again.predict_hash == s_whole.predict_hash                # no hardware in the hash
    got, want = storage.open_zarr(killed), storage.open_zarr(whole)
    assert got.attrs["casm_precision"] == "bf16"
    np.testing.assert_array_equal(got["sm"].values.view(np.uint32),
                                  want["sm"].values.view(np.uint32))
    # and a new store decided on this (AMX-less) machine is fp32, bit for bit the fp32 run
    fresh = str(tmp_path / "fresh.zarr")
    assert somo.predict_to_zarr(ckpt, feats, stat, fresh, **kw).predict_hash == s_whole.predict_hash
    assert storage.open_zarr(fresh).attrs["casm_precision"] == "fp32"
    np.testing.assert_array_equal(storage.open_zarr(fresh)["sm"].values.view(np.uint32),
                                  storage.open_zarr(ref.url)["sm"].values.view(np.uint32))
    assert not np.array_equal(got["sm"].values, storage.open_zarr(ref.url)["sm"].values)


# ---------------------------------------------------------------- faster only within the tolerance
def _first_chunk_error(a: str, b: str, days: int) -> float:
    x, y = (storage.open_zarr(u)["sm"].values[:days] for u in (a, b))
    return float(np.nanmax(np.abs(x.astype(np.float64) - y)))


def test_auto_takes_bf16_only_where_its_error_on_the_runs_data_is_within_tolerance(
        monkeypatch, tmp_path, somo_inputs):
    """bf16 faster (AMX pretended) but measured on the run's first chunk: over the
    tolerance, auto keeps fp32 (bit for bit) and records what bf16 would have cost;
    within it, bf16 with its measured error, as a bf16 run asked for by name records."""
    ckpt, feats, stat = somo_inputs
    kw = dict(chunks={"time": 4}, device="cpu")
    fp32, bf16 = str(tmp_path / "fp32.zarr"), str(tmp_path / "bf16.zarr")
    somo.predict_to_zarr(ckpt, feats, stat, fp32, precision="fp32", **kw)
    named = somo.predict_to_zarr(ckpt, feats, stat, bf16, precision="bf16", **kw)
    err = _first_chunk_error(fp32, bf16, days=4)
    attrs = storage.open_zarr(bf16).attrs
    assert err > 0 and attrs["casm_precision_error"] == pytest.approx(err, rel=1e-6)
    assert attrs["casm_precision_samples"] == 12 and "bf16 (max |diff|" in named.precision
    assert storage.open_zarr(fp32).attrs["casm_precision_error"] == 0.0

    monkeypatch.setattr(S, "cpu_has_amx", lambda: True)
    monkeypatch.setattr(S, "MIN_WIDTH", 8)
    _fake_runners(monkeypatch, {"fp32": 1.0, "bf16": 0.3})          # bf16 far faster
    strict, loose = str(tmp_path / "strict.zarr"), str(tmp_path / "loose.zarr")
    s = somo.predict_to_zarr(ckpt, feats, stat, strict, tolerance=err / 2, **kw)
    got = storage.open_zarr(strict)
    assert got.attrs["casm_precision"] == "fp32" and got.attrs["casm_precision_error"] == 0.0
    assert json.loads(got.attrs["casm_precision_checked"])["bf16"] == pytest.approx(err, rel=1e-6)
    assert s.precision.startswith("fp32 (bf16 off by")
    np.testing.assert_array_equal(got["sm"].values.view(np.uint32),
                                  storage.open_zarr(fp32)["sm"].values.view(np.uint32))
    somo.predict_to_zarr(ckpt, feats, stat, loose, tolerance=err * 2, **kw)
    got = storage.open_zarr(loose)
    assert got.attrs["casm_precision"] == "bf16"
    assert got.attrs["casm_precision_error"] == pytest.approx(err, rel=1e-6)
    assert got.attrs["casm_precision_tolerance"] == err * 2
    np.testing.assert_array_equal(got["sm"].values.view(np.uint32),
                                  storage.open_zarr(bf16)["sm"].values.view(np.uint32))


def test_the_lazy_predict_chooses_once_and_says_so(monkeypatch, somo_inputs):
    ckpt, feats, stat = somo_inputs
    monkeypatch.setattr(S, "cpu_has_amx", lambda: True)
    monkeypatch.setattr(S, "MIN_WIDTH", 8)
    _fake_runners(monkeypatch, {"fp32": 1.0, "bf16": 0.3})
    out = somo.predict(ckpt, feats, stat, chunks={"time": 4}, tolerance=1e-9, device="cpu")
    assert out.attrs["casm_precision"] == "fp32" and out.attrs["casm_precision_samples"] == 12
    assert json.loads(out.attrs["casm_precision_checked"])["bf16"] > 1e-9
    ref = somo.predict(ckpt, feats, stat, chunks={"time": 4}, precision="fp32", device="cpu")
    np.testing.assert_array_equal(out["sm"].values, ref["sm"].values)


def test_choose_precision_rules(monkeypatch):
    _fake_runners(monkeypatch, {"fp32": 1.0, "bf16": 0.3})
    sample = {"fp32": np.array([0.2, np.nan, 0.3]), "bf16": np.array([0.2004, np.nan, 0.3]),
              "tf32": np.array([0.2, np.nan, 0.30001])}
    run = lambda p: sample[p]  # noqa: E731
    c = P.choose_precision("bf16", "cpu", DENSE, tolerance=1e-5, sample=run)
    assert (c.precision, c.samples) == ("bf16", 2) and c.error == pytest.approx(4e-4)  # as asked
    assert P.choose_precision("bf16", "cpu", DENSE).error is None   # not measured: said so
    assert P.choose_precision("fp32", "cpu", DENSE, sample=run).error == 0.0
    empty = {k: np.full(3, np.nan) for k in sample}                # nothing to check on: exact
    assert P.choose_precision("auto", "cuda", DENSE, sample=empty.get).precision == "fp32"
    with pytest.raises(ValueError, match="tf32.*CUDA only"):
        with P.numerics("cpu", "tf32"):
            pass


def test_auto_on_cuda_checks_bf16_then_tf32(monkeypatch):
    _fake_runners(monkeypatch, {"fp32": 1.0, "bf16": 0.3})
    sample = {"fp32": np.array([0.2]), "bf16": np.array([0.21]), "tf32": np.array([0.2002])}
    c = P.choose_precision("auto", "cuda", DENSE, tolerance=1e-3, sample=sample.get)
    assert c.precision == "tf32" and c.error == pytest.approx(2e-4)
    assert [k for k, _ in c.checked] == ["bf16", "tf32"]


def test_fp32_turns_tf32_off_on_cuda_and_restores_it():
    """Settable without a GPU: torch keeps the flags either way."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32
    try:
        matmul.allow_tf32 = cudnn.allow_tf32 = True                 # cuDNN's own default
        with P.numerics("cuda", "fp32"):
            assert not matmul.allow_tf32 and not cudnn.allow_tf32
        assert matmul.allow_tf32 and cudnn.allow_tf32
        matmul.allow_tf32 = cudnn.allow_tf32 = False
        with P.numerics("cuda", "tf32"):
            assert matmul.allow_tf32 and cudnn.allow_tf32
        assert not matmul.allow_tf32 and not cudnn.allow_tf32
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


def test_a_product_records_every_precision_and_the_largest_error():
    stores = [P.Choice("bf16", "auto", 1e-3, 2e-4, 10).attrs(),
              P.Choice("fp32", "auto", 1e-3, 0.0, 10, (("bf16", 5e-3),)).attrs()]
    got = P.summary_attrs(stores)
    assert got["casm_precision"] == "bf16,fp32" and got["casm_precision_error"] == 2e-4
    assert got["casm_precision_samples"] == 20 and P.summary_attrs([]) == {}
    assert "bf16,fp32 (max |diff| vs fp32 0.0002 over 20 values" in P.summary_line(got)
    exact = P.summary_attrs([P.Choice("fp32", "auto", 1e-3).attrs()])
    assert P.summary_line(exact).startswith("fp32 (the reference; no faster precision")
