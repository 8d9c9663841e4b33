"""The GPU path (marker ``gpu``; ``pytest -m gpu`` on a machine with CUDA, else skipped):
CUDA prediction of both recipes equals the CPU fp32 product within the tolerance, fp32 means
TF32 off (restored after), GPU memory stays flat in the record's length, and the precision
chosen is recorded.  ``benchmarks/gpu_check.sh`` runs these and the GPU benchmarks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

from casm_cloud import somo, storage  # noqa: E402
from casm_cloud.grid import LatLonGrid  # noqa: E402
from casm_cloud.inference.precision import numerics  # noqa: E402
from casm_cloud.somo.testing import (  # noqa: E402
    make_features,
    make_statics,
    published_state,
    write_scalers,
)

TOLERANCE = 1e-3  # m3 m-3: the predict stages' default (docs/science.md)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A random published-format EA-LSTM (128 hidden, the paper's size) imported."""
    tmp = tmp_path_factory.mktemp("gpu-ckpt")
    torch.save(published_state(0, hidden=128), tmp / "model.pt")
    write_scalers(tmp)
    return somo.import_published(str(tmp / "model.pt"),
                                 forcing_scaler=str(tmp / "forcing_scaler.csv"),
                                 static_scaler=str(tmp / "static_scaler.csv"),
                                 out=str(tmp / "ckpt"))


def _inputs(days: int):
    win = LatLonGrid("ERA5_0p25").window_by_name("tiny")
    times = pd.date_range("2001-01-01", periods=days, freq="D")
    coords = dict(win.coords())
    f = make_features(times, ("y", "x"), win.shape).assign_coords(coords)
    s = make_statics(("y", "x"), win.shape).assign_coords(coords)
    f.attrs.update(win.identity())
    return f.chunk({"time": 365, "y": 7, "x": 7}), s.chunk({"y": 7, "x": 7})


def test_fp32_on_cuda_is_ieee_fp32_and_the_settings_come_back():
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    with numerics("cuda", "fp32"):
        assert not torch.backends.cuda.matmul.allow_tf32
        assert not torch.backends.cudnn.allow_tf32
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    with numerics("cuda", "tf32"):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32


def test_somo_on_cuda_equals_cpu_fp32_and_records_its_precision(ckpt, tmp_path):
    feats, stat = _inputs(365 + 60)
    kw = dict(chunks={"time": 365, "y": 7, "x": 7})
    cpu = str(tmp_path / "cpu.zarr")
    somo.predict_to_zarr(ckpt, feats, stat, cpu, device="cpu", precision="fp32", **kw)
    ref = storage.open_zarr(cpu, require_complete=True)["sm"].values
    for precision in ("fp32", "auto"):
        out = str(tmp_path / f"cuda-{precision}.zarr")
        somo.predict_to_zarr(ckpt, feats, stat, out, device="cuda", precision=precision, **kw)
        got = storage.open_zarr(out, require_complete=True)
        diff = float(np.nanmax(np.abs(got["sm"].values - ref)))
        print(f"SoMo.ml cuda {precision} ({got.attrs['casm_precision']}) vs cpu fp32: "
              f"max |diff| {diff:.2e}")
        assert diff <= TOLERANCE
        assert got.attrs["casm_precision"] in ("fp32", "tf32", "bf16")
        assert got.attrs["casm_precision_error"] <= TOLERANCE
        if precision == "fp32":
            assert got.attrs["casm_precision"] == "fp32" and diff <= 1e-4


def test_somo_gpu_memory_is_flat_in_the_record_length(ckpt, tmp_path):
    peaks = {}
    for years in (1, 3):
        feats, stat = _inputs(365 * years + 364)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        somo.predict_to_zarr(ckpt, feats, stat, str(tmp_path / f"{years}.zarr"), device="cuda",
                             precision="fp32", chunks={"time": 365, "y": 7, "x": 7})
        peaks[years] = torch.cuda.max_memory_allocated()
    print(f"SoMo.ml peak GPU memory: 1 year {peaks[1] / 2**20:.1f} MiB, 3 years "
          f"{peaks[3] / 2**20:.1f} MiB")
    assert peaks[3] <= 1.1 * peaks[1], peaks


def test_casm_on_cuda_equals_cpu_fp32(casm_reference, tmp_path):
    """The tiny CASM run's predict_smos stage, on CPU and on CUDA, both fp32."""
    from _tiny import copy_run

    from casm_cloud.recipes import run_recipe

    got = {}
    for device in ("cpu", "cuda"):
        recipe = copy_run(casm_reference[0], tmp_path / device,
                          **{"predict.device": device, "predict.precision": "fp32"})
        run_recipe(recipe, start_from="predict_smos", until="predict_smos", progress=False)
        got[device] = storage.open_zarr(f"{recipe.run_root}/predict_smos/nn_smos.zarr",
                                        require_complete=True)
    assert got["cuda"].attrs["casm_precision"] == "fp32"
    diff = float(np.nanmax(np.abs(got["cpu"]["sm"].values - got["cuda"]["sm"].values)))
    print(f"CASM nn_smos cuda fp32 vs cpu fp32: max |diff| {diff:.2e}")
    assert diff <= TOLERANCE
