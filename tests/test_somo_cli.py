"""``casm-cloud somo import-published`` and ``somo predict``, end to end on small files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from casm_cloud import storage  # noqa: E402
from casm_cloud.cli import main  # noqa: E402
from casm_cloud.somo.testing import make_features as _features  # noqa: E402
from casm_cloud.somo.testing import make_statics as _statics  # noqa: E402
from casm_cloud.somo.testing import published_state  # noqa: E402
from casm_cloud.somo.testing import write_scalers as _scalers  # noqa: E402


def test_import_then_predict(tmp_path, capsys):
    torch.save(published_state(0), tmp_path / "model.pt")
    _scalers(tmp_path)
    assert main(["somo", "import-published", str(tmp_path / "model.pt"),
                  "--forcing-scaler", str(tmp_path / "forcing_scaler.csv"),
                  "--static-scaler", str(tmp_path / "static_scaler.csv"),
                  "--out", str(tmp_path / "ckpt")]) == 0
    assert (tmp_path / "ckpt" / "model.json").exists()
    times = pd.date_range("2001-01-01", periods=375, freq="D")
    _features(times, ("station",), (3,)).to_zarr(tmp_path / "f.zarr", zarr_format=3,
                                                  consolidated=False)
    stat = _statics(("station",), (3,))
    stat.to_zarr(tmp_path / "s.zarr", zarr_format=3, consolidated=False)
    args = ["somo", "predict", str(tmp_path / "ckpt"), str(tmp_path / "f.zarr"),
            str(tmp_path / "s.zarr"), "--out", str(tmp_path / "sm.zarr"), "--precision", "fp32",
            "--device", "cpu", "--time-chunk", "5"]
    assert main(args) == 0
    assert "3 chunks, 3 computed" in capsys.readouterr().out
    out = storage.open_zarr(str(tmp_path / "sm.zarr"), require_complete=True)
    assert out["sm"].shape == (11, 3) and np.isfinite(out["sm"].values).all()
    said = capsys.readouterr().out if main(args) == 0 else ""
    assert "0 computed, 3 already finished" in said and "precision fp32" in said
    assert storage.open_zarr(str(tmp_path / "sm.zarr")).attrs["casm_precision_error"] == 0.0
    # bad statics: one line naming the variable, exit code 2
    stat.drop_vars("clay").to_zarr(tmp_path / "bad.zarr", zarr_format=3, consolidated=False)
    args[4] = str(tmp_path / "bad.zarr")
    args[6] = str(tmp_path / "sm2.zarr")
    assert main(args) == 2
    assert "statics lack ['clay']" in capsys.readouterr().err
    assert not (tmp_path / "sm2.zarr").exists()


def test_registered_in_the_casm_cloud_cli_when_the_lead_wires_it(tmp_path):
    from casm_cloud import cli

    parser = cli.build_parser()
    choices = parser._subparsers._group_actions[0].choices
    if "somo" not in choices:
        pytest.skip("casm_cloud.cli does not register the somo commands yet")
    assert cli.main(["somo", "import-published", str(tmp_path / "missing.pt"),
                     "--forcing-scaler", "f.csv", "--static-scaler", "s.csv",
                     "--out", str(tmp_path / "c")]) == 2
