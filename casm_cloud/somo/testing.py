"""Seeded synthetic SoMo.ml fixtures: a random model in the published layout, scalers, features.

Used by the tests and the benchmark; nothing here is read by the pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud import schema
from casm_cloud.somo.features import DYNAMIC_FEATURES
from casm_cloud.somo.published import STATIC_COLUMNS

__all__ = ["FORCING_COLUMNS", "published_state", "write_scalers", "make_features",
           "make_statics"]

#: Columns of the published forcing scaler CSV.
FORCING_COLUMNS = ("t2m", "log_tp", "snr", "ssrd", "skt", "q", "sm")
_STATIC_BASE = {"elevation": (500, 200), "elevation_std": (20, 5), "mean_precip": (700, 150),
                "aridity": (1.5, 0.4), "clay": (0.2, 0.05), "sand": (0.4, 0.1),
                "silt": (0.4, 0.1), "porosity_top": (0.45, 0.03), "porosity_mid": (0.42, 0.03),
                "vegetation_class": (10, 2)}


def published_state(seed: int, n_dyn: int = 6, n_sta: int = 10, hidden: int = 16) -> dict:
    """Random weights (torch tensors) in the published SoMo.ml state-dict layout."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.3):
        return torch.randn(*shape, generator=g) * scale

    return {"lstm.weight_ih": r(n_dyn, 3 * hidden), "lstm.weight_hh": r(hidden, 3 * hidden),
            "lstm.weight_sh": r(n_sta, hidden), "lstm.bias": r(3 * hidden),
            "lstm.bias_s": r(hidden), "fc.weight": r(1, hidden), "fc.bias": r(1, scale=0.1)}


def write_scalers(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write ``forcing_scaler.csv`` and ``static_scaler.csv`` (rows aveK, stdK) into ``folder``."""
    folder = Path(folder)
    fs = pd.DataFrame([[285, 0.5, 8, 17, 286, 0.007, 0.25], [9, 0.8, 5, 7, 10, 0.003, 0.08]],
                      index=["aveK", "stdK"], columns=list(FORCING_COLUMNS))
    ss = pd.DataFrame([[500, 20, 700, 1.5, 0.2, 0.4, 0.4, 0.45, 0.42, 10],
                       [250, 6, 200, 0.5, 0.06, 0.12, 0.1, 0.04, 0.04, 3]],
                      index=["aveK", "stdK"], columns=list(STATIC_COLUMNS))
    fs.to_csv(folder / "forcing_scaler.csv")
    ss.to_csv(folder / "static_scaler.csv")
    return fs, ss


def make_features(times, dims: Sequence[str], shape: Sequence[int], seed: int = 0) -> xr.Dataset:
    """Daily dynamic features with a seasonal cycle and noise, over ``time`` and ``dims``."""
    rng = np.random.default_rng(seed)
    nt, shape = len(times), tuple(shape)
    doy = pd.DatetimeIndex(times).day_of_year.values.reshape((nt,) + (1,) * len(shape))
    season = np.sin(2 * np.pi * doy / 365.25)
    full = (nt, *shape)
    tp = rng.gamma(0.4, 5.0, full)
    vals = {"log_tp": np.log1p(tp), "t2m": 285 + 10 * season + rng.normal(0, 2, full),
            "snr": 8 + 6 * season + rng.normal(0, 1, full),
            "ssrd": 17 + 8 * season + rng.normal(0, 2, full),
            "q": 0.007 + 0.003 * season + rng.normal(0, 5e-4, full),
            "skt": 286 + 11 * season + rng.normal(0, 2, full), "tp": tp}
    return xr.Dataset({k: (("time", *dims), v.astype(np.float32),
                           {"units": DYNAMIC_FEATURES[k][0]}) for k, v in vals.items()},
                      coords={"time": times})


def make_statics(dims: Sequence[str], shape: Sequence[int], seed: int = 1) -> xr.Dataset:
    """The ten static features (schema units), random around typical values."""
    rng = np.random.default_rng(seed)
    return xr.Dataset({k: (tuple(dims), (m + s * rng.standard_normal(tuple(shape))).astype(
        np.float32), {"units": schema.spec("static", k).units})
        for k, (m, s) in _STATIC_BASE.items()})
