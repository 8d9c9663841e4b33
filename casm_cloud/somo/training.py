"""Training SoMo.ml's EA-LSTMs: windowed samples at station cells, one model per layer.

O & Orth (2021, Sci. Data 8, 170) and Kratzert et al. (2019, HESS 23, 5089):

* a sample is a (cell, day t) with a target on day t; its input is the
  window of days t − W + 1 … t (W = 365) of the dynamic inputs and the cell's
  static inputs;
* inputs are standardised with the means and standard deviations of the
  training cells over the training period, saved in the checkpoint (with
  the target's), so :func:`casm_cloud.somo.predict` applies them;
* with a ``reference`` (``model.target: era5``) the target is learnt in its
  ERA5 cell's units, (target − μ) / σ, and predicted as μ + σ · output
  (docs/science.md, "The target's units");
* the loss is the squared error over the target's variance at the sample's
  cell, mean((ŷ − y)² / σ²_cell) (in standardised units, σ floored at
  :data:`SIGMA_FLOOR`), so every cell weighs alike whatever its variability;
* the EA-LSTM (:class:`casm_cloud.models.ealstm.EALSTM`: 128 hidden, dropout
  0.5 on the last state, initial forget bias 5) trains with Adam; each epoch
  draws ``samples_per_epoch`` samples (all, shuffled, when ``None``) with a
  seeded generator.

For speed the EA-LSTM trains as the equivalent fused ``torch.nn.LSTM``
(:meth:`EALSTM.as_lstm`): the weights that the EA-LSTM does not have (the
input gate's dynamic and recurrent weights, the other gates' static
weights, the recurrent bias) start at zero and get zero gradients, so they
stay exactly zero and the trained network converts back exactly
(:func:`from_lstm`).  Same seed, data and thread count give identical weights.

:func:`train_variant` is one model (a CV fold or a final seed of one layer)
from URLs to a checkpoint plus its predictions at the station cells, which
the next layer of the same variant reads as a dynamic input; the recipe runs
the variants of a layer as parallel tasks on the workers.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from casm_cloud import storage

__all__ = ["SIGMA_FLOOR", "from_lstm", "cell_inputs", "fit_ealstm", "train_variant",
           "variant_done"]

#: Least per-cell target standard deviation (standardised units) in the loss.
SIGMA_FLOOR = 0.05


def from_lstm(model, lstm, head) -> None:
    """Copy a fused LSTM made by :meth:`EALSTM.as_lstm` (and trained) back into ``model``."""
    import torch

    nd, hid = model.architecture["n_dynamic"], model.hidden
    with torch.no_grad():
        w_ih, w_hh, b_ih = lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0
        b_hh = lstm.bias_hh_l0
        model.input_gate.weight.copy_(w_ih[:hid, nd:])
        model.input_gate.bias.copy_(b_ih[:hid] + b_hh[:hid])
        for ours, theirs in ((0, 1), (2, 2), (1, 3)):
            cols = slice(ours * hid, (ours + 1) * hid)
            rows = slice(theirs * hid, (theirs + 1) * hid)
            model.weight_ih[:, cols] = w_ih[rows, :nd].T
            model.weight_hh[:, cols] = w_hh[rows].T
            model.bias[cols] = b_ih[rows] + b_hh[rows]
        model.head.load_state_dict(head.state_dict())


def _masks(nd: int, ns: int, hid: int):
    """Which fused-LSTM weights are EA-LSTM weights (1) and which stay zero (0)."""
    import torch

    m_ih = torch.ones(4 * hid, nd + ns)
    m_ih[:hid, :nd] = 0.0          # input gate: statics only
    m_ih[hid:, nd:] = 0.0          # forget, cell, output gates: no statics
    m_hh = torch.ones(4 * hid, hid)
    m_hh[:hid] = 0.0               # input gate: not recurrent
    return m_ih, m_hh


# --------------------------------------------------------------------------- data
def _cells(ds: xr.Dataset, cy: np.ndarray, cx: np.ndarray) -> xr.Dataset:
    return ds.isel(y=xr.DataArray(cy, dims="cell"), x=xr.DataArray(cx, dims="cell"))


def cell_inputs(features_url: str, statics_url: str, targets_url: str, layer: str,
                dynamic: Sequence[str], static: Sequence[str], previous: Mapping[str, str],
                storage_options: Mapping | None = None,
                reference: Sequence[str] | None = None) -> dict:
    """NumPy inputs at the station cells: dynamic (cell, day, nd), static, target, times.

    ``previous`` maps the earlier layers' names (dynamic inputs of this
    layer) to the URLs of their predictions at the cells (same variant).
    ``reference`` names the statics' (mean, std) maps the target is learnt in the
    units of (:func:`casm_cloud.somo.features.reference_maps`): then ``reference``
    holds their values at the cells, (2, cell).
    """
    so = dict(storage_options or {})
    tg = storage.open_zarr(targets_url, so, require_complete=True)
    cy, cx = tg["cell_y"].values, tg["cell_x"].values
    feats = storage.open_zarr(features_url, so, require_complete=True)
    times = feats["time"].values
    own = [n for n in dynamic if n not in previous]
    dyn = _cells(feats[own], cy, cx).load()
    cols = [dyn[n].transpose("cell", "time").values.astype(np.float32) if n in own else None
            for n in dynamic]
    for k, n in enumerate(dynamic):
        if n in previous:
            p = storage.open_zarr(previous[n], so, require_complete=True)[n]
            cols[k] = p.reindex(time=times).transpose("cell", "time").values.astype(np.float32)
    names = list(dict.fromkeys([*static, *(reference or ())]))
    sta = _cells(storage.open_zarr(statics_url, so, require_complete=True)[names], cy, cx).load()
    target = tg[layer].reindex(time=times).transpose("cell", "time").values.astype(np.float32)
    out = {"dynamic": np.stack(cols, axis=-1),
           "static": np.stack([sta[n].values.astype(np.float32) for n in static], axis=-1),
           "target": target, "times": times, "cell_y": cy, "cell_x": cx}
    if reference:
        out["reference"] = np.stack([sta[n].values.astype(np.float32) for n in reference])
    return out


def _scaler(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = np.nanmean(x.reshape(-1, x.shape[-1]), axis=0)
    std = np.nanstd(x.reshape(-1, x.shape[-1]), axis=0)
    return mean, np.where(std > 0, std, 1.0)


def _samples(data: dict, train_cells: np.ndarray, t0: int, t1: int, window: int) -> np.ndarray:
    """(cell, day) index pairs with a target and a complete input window, days t0..t1-1."""
    from casm_cloud.somo.windowed import valid_windows

    ok_day = np.isfinite(data["dynamic"]).all(axis=2)
    ok = np.zeros_like(ok_day)
    ok[:, window - 1:] = valid_windows(ok_day, window)
    ok &= np.isfinite(data["target"]) & np.isfinite(data["static"]).all(axis=1)[:, None]
    keep = np.zeros(ok.shape[0], bool)
    keep[train_cells] = True
    ok &= keep[:, None]
    ok[:, :t0] = False
    ok[:, t1:] = False
    return np.argwhere(ok)


def fit_ealstm(data: dict, train_cells: np.ndarray, period: tuple[int, int], *, hidden: int,
               dropout: float, initial_forget_bias: float, window: int, epochs: int,
               batch_size: int, lr: float, samples_per_epoch: int | None, seed: int,
               predict_last_n: int = 1):
    """Train one EA-LSTM on the samples of ``train_cells`` in days ``period``.

    With ``predict_last_n`` n > 1 each window's last n states are scored
    against the targets of those days (those in the period), not only the last.

    Returns
    -------
    model : EALSTM (eval mode, CPU)
    scaler : dict with ``dyn``, ``sta``, ``target`` (mean, std) pairs
    history : list of dict (epoch, loss, seconds)

    Raises
    ------
    casm_cloud.somo.targets.TargetError
        If there is no sample.
    """
    import torch
    from torch import nn

    from casm_cloud.models.ealstm import EALSTM
    from casm_cloud.somo.targets import TargetError

    t0, t1 = period
    cells_days = _samples(data, train_cells, t0, t1, window)
    if cells_days.shape[0] == 0:
        raise TargetError("no training sample: no station cell has a target in the training "
                          f"period with {window} days of complete inputs before it")
    dyn, sta, tgt = data["dynamic"], data["static"], data["target"]
    if "reference" in data:                      # learn (target − mean) / std of ERA5's cell
        tgt = (tgt - data["reference"][0][:, None]) / data["reference"][1][:, None]
    span = slice(max(t0 - window + 1, 0), t1)
    d_mean, d_std = _scaler(dyn[train_cells, span])
    s_mean, s_std = _scaler(sta[train_cells][:, None, :])
    y_all = tgt[cells_days[:, 0], cells_days[:, 1]]
    y_mean, y_std = float(y_all.mean()), float(y_all.std() or 1.0)
    x = np.nan_to_num((dyn - d_mean) / d_std).astype(np.float32)
    s = np.nan_to_num((sta - s_mean) / s_std).astype(np.float32)
    y = ((tgt - y_mean) / y_std).astype(np.float32)
    sigma = np.full(tgt.shape[0], 1.0, np.float32)
    for c in np.unique(cells_days[:, 0]):
        v = y[c, cells_days[cells_days[:, 0] == c, 1]]
        sigma[c] = max(float(v.std()), SIGMA_FLOOR)

    torch.manual_seed(seed)
    model = EALSTM(dyn.shape[-1], sta.shape[-1], hidden, dropout, initial_forget_bias)
    lstm, head = model.as_lstm()
    lstm.train()
    lstm.bias_hh_l0.requires_grad_(False)
    m_ih, m_hh = _masks(dyn.shape[-1], sta.shape[-1], hidden)
    lstm.weight_ih_l0.register_hook(lambda g: g * m_ih)
    lstm.weight_hh_l0.register_hook(lambda g: g * m_hh)
    drop = nn.Dropout(dropout)
    params = [p for p in (*lstm.parameters(), *head.parameters()) if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    xt, st, yt = torch.from_numpy(x), torch.from_numpy(s), torch.from_numpy(y)
    sig = torch.from_numpy(sigma)
    steps = torch.arange(-window + 1, 1)
    last = max(1, min(int(predict_last_n), window))
    tail = torch.arange(-last + 1, 1)
    n = cells_days.shape[0]
    per_epoch = n if samples_per_epoch is None else min(int(samples_per_epoch), n)
    history = []
    for epoch in range(int(epochs)):
        t_start = time.perf_counter()
        rng = np.random.default_rng([int(seed), epoch, 11])
        order = rng.permutation(n)[:per_epoch]
        total = 0.0
        for lo in range(0, per_epoch, batch_size):
            idx = cells_days[order[lo:lo + batch_size]]
            c = torch.from_numpy(idx[:, 0])
            t = torch.from_numpy(idx[:, 1])
            xb = xt[c[:, None], t[:, None] + steps[None, :]]
            sb = st[c][:, None, :].expand(-1, window, -1)
            states, _ = lstm(torch.cat([xb, sb], dim=2))
            pred = head(drop(states[:, -last:])).squeeze(-1)         # (batch, last)
            days = t[:, None] + tail[None, :]
            target = yt[c[:, None], days]
            keep = torch.isfinite(target) & (days >= t0)
            err = (pred - torch.where(keep, target, 0.0)) ** 2 / sig[c, None] ** 2
            loss = err[keep].mean()
            if not bool(torch.isfinite(loss)):
                from casm_cloud.training import NonFiniteError

                raise NonFiniteError(f"the training loss became {loss.item()} (diverged); "
                                     "lower training.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.shape[0]
        history.append({"epoch": epoch, "loss": round(total / per_epoch, 6),
                        "seconds": round(time.perf_counter() - t_start, 3)})
    from_lstm(model, lstm, head)
    model.eval()
    scaler = {"dyn": (d_mean, d_std), "sta": (s_mean, s_std), "target": (y_mean, y_std),
              "n_samples": int(n)}
    return model, scaler, history


def _predict_cells(model, data: dict, scaler: dict, window: int, t0: int, t1: int
                   ) -> np.ndarray:
    """The model's output at every cell for days t0..t1-1 (NaN elsewhere), ≥ 0."""
    from casm_cloud.somo.windowed import WindowedModel

    (d_mean, d_std), (s_mean, s_std) = scaler["dyn"], scaler["sta"]
    y_mean, y_std = scaler["target"]
    out = np.full(data["target"].shape, np.nan, np.float32)
    lo = max(t0, window - 1)
    if t1 <= lo:
        return out
    x = ((data["dynamic"][:, lo - window + 1:t1] - d_mean) / d_std).astype(np.float32)
    s = ((data["static"] - s_mean) / s_std).astype(np.float32)
    y = WindowedModel(model, "cpu", "fp32", window=window)(x, s) * y_std + y_mean
    if "reference" in data:
        y = y * data["reference"][1][:, None] + data["reference"][0][:, None]
    out[:, lo:t1] = np.where(y < 0, 0.0, y)
    return out


def _index(times: np.ndarray, day) -> int:
    return int(np.searchsorted(times.astype("datetime64[D]"), np.datetime64(str(day), "D")))


def variant_done(out: str, job_hash: str, storage_options: Mapping | None = None) -> bool:
    """Whether ``out`` holds this job's finished model and predictions."""
    marker = storage.read_marker(storage.join(out, "_done.json"), storage_options)
    return bool(marker) and marker.get("job") == job_hash


def train_variant(job: Mapping) -> dict:
    """One model of one layer (a CV fold or a final seed), as a worker task.

    ``job`` holds URLs and options only: ``features``, ``statics``,
    ``targets``, ``previous`` (layer → URL of the same variant's earlier
    predictions), ``layer``, ``dynamic``, ``static``, ``train_cells`` (indices
    into the targets' cells), ``period`` (training start, end),
    ``predict_from`` (first day of the predictions at the cells), ``model``
    (hidden, dropout, initial_forget_bias, window), ``fit`` (epochs,
    batch_size, lr, samples_per_epoch, predict_last_n), ``seed``, ``out`` and
    ``storage_options``.  Writes ``out/model.*`` (checkpoint), ``out/cells.zarr``
    (the layer's predictions at every station cell) and, last, ``out/_done.json``.
    A job already done (same ``_done.json``) is skipped.

    Returns
    -------
    dict
        ``out``, ``n_samples``, ``seconds``, ``final_loss``, ``skipped``.
    """

    from casm_cloud.models.checkpoint import save_checkpoint
    from casm_cloud.somo.features import feature_units
    from casm_cloud.training.loop import worker_threads

    so = dict(job.get("storage_options") or {})
    job_hash = hashlib.sha256(json.dumps(_plain(job), sort_keys=True, default=str).encode()
                              ).hexdigest()[:16]
    out = job["out"]
    if variant_done(out, job_hash, so):
        return {"out": out, "skipped": True}
    t_start = time.perf_counter()
    with worker_threads():
        data = cell_inputs(job["features"], job["statics"], job["targets"], job["layer"],
                           job["dynamic"], job["static"], job["previous"], so,
                           reference=job.get("reference"))
        times = data["times"]
        period = (_index(times, job["period"][0]), _index(times, job["period"][1]) + 1)
        m, f = job["model"], job["fit"]
        model, scaler, history = fit_ealstm(
            data, np.asarray(job["train_cells"], np.int64), period, hidden=m["hidden"],
            dropout=m["dropout"], initial_forget_bias=m["initial_forget_bias"],
            window=m["window"], epochs=f["epochs"], batch_size=f["batch_size"], lr=f["lr"],
            samples_per_epoch=f["samples_per_epoch"], seed=int(job["seed"]),
            predict_last_n=f.get("predict_last_n", 1))
        pred = _predict_cells(model, data, scaler, m["window"],
                              _index(times, job["predict_from"]), period[1])
    dyn, sta, layer = list(job["dynamic"]), list(job["static"]), job["layer"]
    (d_mean, d_std), (s_mean, s_std) = scaler["dyn"], scaler["sta"]
    mean = {**dict(zip(dyn, map(float, d_mean), strict=True)),
            **dict(zip(sta, map(float, s_mean), strict=True)), layer: scaler["target"][0]}
    std = {**dict(zip(dyn, map(float, d_std), strict=True)),
           **dict(zip(sta, map(float, s_std), strict=True)), layer: scaler["target"][1]}
    units = feature_units([*dyn, *sta, layer])
    meta = {"inputs": [*dyn, *sta], "dynamic_inputs": dyn, "static_inputs": sta,
            "target": layer, "scaler": {"mean": mean, "std": std}, "units": units,
            "window": int(m["window"]), "clip_min": 0.0, "seed": int(job["seed"]),
            "target_reference": list(job.get("reference") or []),
            "metrics": {"n_samples": scaler["n_samples"], "history": history},
            "training": {"period": [str(p) for p in job["period"]], **dict(f),
                         "loss": "mse_over_cell_variance", "variant": job.get("variant"),
                         "train_cells": [int(c) for c in job["train_cells"]]}}
    storage.remove(storage.join(out, "_done.json"), so)
    save_checkpoint(model.to("cpu"), out, meta, so)
    cells = xr.Dataset({layer: (("cell", "time"), pred, {"units": "m3 m-3"})},
                       coords={"cell": np.arange(pred.shape[0]), "time": times})
    storage.write_dataset(cells, storage.join(out, "cells.zarr"), so, config_hash=job_hash)
    storage.write_marker(storage.join(out, "_done.json"), {"job": job_hash}, so)
    return {"out": out, "skipped": False, "n_samples": scaler["n_samples"],
            "seconds": round(time.perf_counter() - t_start, 2),
            "final_loss": history[-1]["loss"] if history else math.nan}


def _plain(obj):
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
