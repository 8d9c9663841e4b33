"""What the CASM recipe's stages share: the recipe's keys they all pass, the stores they read."""

from __future__ import annotations

import datetime as dt

import numpy as np
import xarray as xr

from casm_cloud import storage
from casm_cloud.config import DEFAULT_OUTPUTS
from casm_cloud.recipes.stage import Context

#: SMAP's science data start: the networks trained against SMAP use this overlap.
SMAP_FROM = dt.date(2015, 3, 31)
#: Networks trained directly against SMAP: name -> input source kind.
DIRECT_NETS = {"nn_smos": "smos", "nn_amsr2": "amsr2"}


# --------------------------------------------------------------------------- shared params
#: The variables each canonical source contributes, in the model's input order.
_CHANNELS = {"smos": lambda r: list(r.channels.smos), "amsre": lambda r: list(r.channels.amsr),
             "amsr2": lambda r: list(r.channels.amsr), "smap": lambda r: ["sm"],
             "truth": lambda r: ["sm_l1"]}


def _channels(r, kind: str) -> list[str]:
    return _CHANNELS[kind](r)


def _kinds(r) -> list[str]:
    """The canonical sources the recipe aggregates (truth only when named)."""
    return ["smos", "amsre", "amsr2", "smap", *(["truth"] if r.sources.truth else [])]


def _split(r) -> dict:
    t = r.training
    return dict(split=t.split, block_size=t.block_size, val_fraction=t.val_fraction,
                test_fraction=t.test_fraction, seed=t.seed)


def _fit(r, epochs: str = "epochs") -> dict:
    """The fit loop's arguments; ``epochs`` names the key of the epoch count."""
    t = r.training
    return dict(epochs=getattr(t, epochs), batch_size=t.batch_size, lr=t.lr,
                patience=t.patience)


def _predict(r) -> dict:
    return dict(n_noise=r.ensemble.n_noise, noise_scale=r.ensemble.noise_scale,
                batch_size=r.predict.batch_size, device=r.predict.device,
                precision=r.predict.precision, tolerance=r.predict.tolerance)


def _bins(r) -> dict:
    return dict(n_days=r.aggregate.n_days, anchor=r.aggregate.anchor)


def _sensor_changes(r) -> dict[str, str]:
    """Where the merged record changes network: SMOS joins, then AMSR-E leaves."""
    return {"AMSR-E → AMSR-E + SMOS": str(r.periods.smos_from),
            "AMSR-E + SMOS → SMOS": str(r.periods.amsre_until)}


def _eras(r) -> dict[str, str | None]:
    """The record's eras, each from its first day: the sensor changes and SMAP's start."""
    return {"AMSR-E": None, "AMSR-E + SMOS": str(r.periods.smos_from),
            "SMOS": str(r.periods.amsre_until), "SMOS, SMAP years": str(SMAP_FROM)}


def _product(ctx: Context, p: dict) -> str:
    """The product's URL: ``outputs.product``, or ``<run_root>/product.zarr``."""
    return ctx.output(p["product"], DEFAULT_OUTPUTS["product"])


def _open(ctx: Context, stage: str, name: str) -> xr.Dataset:
    return storage.open_zarr(ctx.url(stage, name), ctx.so, require_complete=True)


def _aggregate(ctx: Context, kind: str, channels: list[str]) -> xr.Dataset:
    """A source's n-day means, its channels in the recipe's order (the model's input order)."""
    return _open(ctx, "aggregate", f"{kind}.zarr")[channels]


def _next_bin(ctx: Context, p: dict, url: str, stage: str) -> np.datetime64:
    """Start of the first n-day bin a store still needs.

    The bin after the stage's last finished run (its marker), or after the
    store's last time where that is earlier (a source that had no data at the
    end of the last run), so an update killed while it grew the store writes
    the same bins again rather than leaving a hole.
    """
    from casm_cloud.recipes.runner import stage_state

    step = np.timedelta64(p["n_days"], "D")
    prev = (stage_state(ctx.run_root, stage, ctx.so) or {}).get("until", str(p["end"]))
    anchor = np.datetime64(p["anchor"], "D")
    k = (np.datetime64(prev, "D") + np.timedelta64(1, "D") - anchor).astype(int) // p["n_days"]
    last = storage.open_zarr(url, ctx.so)["time"].values[-1].astype("datetime64[D]")
    return min(anchor + k * step, last + step)


def _members(ctx: Context, stage: str, net: str) -> list[str]:
    root_url = ctx.url(stage, net)
    fs, root = storage.url_to_fs(root_url, ctx.so)
    names = sorted(q.rstrip("/").rsplit("/", 1)[-1] for q in fs.ls(root, detail=False))
    members = [storage.join(root_url, n) for n in names if n.startswith("member")]
    if not members:
        raise storage.StoreError(f"no trained members under {root_url}")
    return members
