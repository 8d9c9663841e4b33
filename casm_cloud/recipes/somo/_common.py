"""What the SoMo.ml stages share: the layers, their lead-ins, the run's own stores and tables."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import xarray as xr

from casm_cloud import storage
from casm_cloud.config import DEFAULT_OUTPUTS
from casm_cloud.recipes.stage import Context

LAYERS = ("sm_l1", "sm_l2", "sm_l3")
_K = len(LAYERS)


def _lead(window: int, k: int) -> dt.timedelta:
    """How far before a period layer k (0-based) starts predicting."""
    return dt.timedelta(days=(_K - 1 - k) * (window - 1))


def _layer_start(day: dt.date, window: int, k: int) -> dt.date:
    return day - _lead(window, k)


def _product(ctx: Context, p: dict) -> str:
    return ctx.output(p["product"], DEFAULT_OUTPUTS["product"])


def _open(ctx: Context, stage: str, *parts: str) -> xr.Dataset:
    return storage.open_zarr(ctx.url(stage, *parts), ctx.so, require_complete=True)


def _catalog(p: dict):
    from casm_cloud.catalog import open_catalog

    return open_catalog(p["catalog"], storage_options=p["catalog_options"])


def _write_csv(url: str, df: pd.DataFrame, so: dict) -> None:
    storage.write_text(url, df.to_csv(index=False), so)


def _read_csv(url: str, so: dict) -> pd.DataFrame | None:
    import io

    text = storage.read_text(url, so)
    return None if text is None else pd.read_csv(io.StringIO(text))
