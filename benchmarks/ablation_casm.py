"""CASM recipe variants scored per era, and the AMSR-era diagnosis (docs/amsre_era.md).

Simulates a region once per simulator version (``new``: the defaults of
``casm_cloud.simulate``; ``legacy``: ``SimSettings.legacy()``, the simulator
before the AMSR-era fix), runs each recipe variant on one LocalCluster and
prints, per variant, the median cell R / ubRMSE / bias against the truth per
era, the bias step at each sensor change and the same per era against the
held-out ISMN-like stations.  ``--diagnose`` adds the tables of
docs/amsre_era.md: the simulator's dTB/dSM per channel, the signal-to-noise of
each channel's residuals, NN_AMSR2's skill per channel subset and the transfer
step (before / after fine-tuning, against NN_SMOS and against the truth).

    # quick (the tiny region; a minute or two per variant)
    .venv/bin/python benchmarks/ablation_casm.py --out /tmp/abl --region tiny
    # the figures of docs/amsre_era.md (the demo region, 2008-2017)
    .venv/bin/python benchmarks/ablation_casm.py --out /tmp/abl --region demo \\
        --physics legacy,new --variants paper,amsr12 --diagnose

Variants are recipe overrides on top of the demo recipe (``casm_cloud.config``);
``--members`` and ``--n-noise`` shrink the ensembles for speed (the demo's own
sizes by default).  Results also go to ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import yaml

PAPER4 = ["tb_10v", "tb_18h", "tb_36h", "tb_89v"]
ALL12 = [f"tb_{f}{p}" for f in ("06", "10", "18", "23", "36", "89") for p in "hv"]

#: Recipe overrides of each variant (on top of the demo recipe).
VARIANTS: dict[str, dict] = {
    "paper": {"preset": "paper"},
    "amsr12": {"preset": "amsr12"},
    # each change alone, on the paper preset
    "paper+6.9GHz": {"preset": "paper", "channels": {"amsr": ["tb_06h", "tb_06v", *PAPER4]}},
    "paper+10.65H": {"preset": "paper", "channels": {"amsr": ["tb_10h", *PAPER4]}},
    "paper-latlon": {"preset": "paper", "channels": {"latlon": False}},
    "paper+freeze0": {"preset": "paper", "training": {"freeze_first": 0}},
    "amsr12-latlon": {"preset": "amsr12", "channels": {"latlon": False}},
}

#: Channel subsets of NN_AMSR2 (the diagnosis; lat/lon always added).
SUBSETS: dict[str, list[str]] = {
    "paper (10V 18H 36H 89V)": PAPER4,
    "89V 36H (temperature)": ["tb_36h", "tb_89v"],
    "10V": ["tb_10v"],
    "10V 10H": ["tb_10h", "tb_10v"],
    "6.9 + 10.65 H/V": ["tb_06h", "tb_06v", "tb_10h", "tb_10v"],
    "paper + 6.9 H/V": ["tb_06h", "tb_06v", *PAPER4],
    "H only (6 ch.)": [c for c in ALL12 if c.endswith("h")],
    "all 12": ALL12,
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def simulate(out: Path, physics: str, region: str, start: str, end: str) -> Path:
    """The sources of one simulator version (written once, reused)."""
    from casm_cloud.simulate import SimSettings, write_simulation

    src = out / f"sources-{physics}-{region}-{start}-{end}"
    if not (src / "catalog.yaml").exists():
        settings = SimSettings.legacy() if physics == "legacy" else SimSettings()
        t0 = time.perf_counter()
        write_simulation(str(src), region=region, grid="M25", start=start, end=end, seed=0,
                         amsre_ease1=True, settings=settings)
        print(f"simulated {physics} {region} in {time.perf_counter() - t0:.0f} s", flush=True)
    return src


def recipe_for(out: Path, src: Path, physics: str, variant: str, region: str, start: str,
               end: str, members: int | None, n_noise: int | None):
    from casm_cloud.config import recipe_from_dict
    from casm_cloud.config.casm import DEMO_YAML

    raw = yaml.safe_load(DEMO_YAML)
    run = out / f"run-{physics}-{region}-{variant}"
    raw.update(name=f"{variant} ({physics} simulator)", run_root=str(run),
               period={"start": start, "end": end},
               outputs={"product": str(run / "product.zarr"), "export": str(run / "casm"),
                        "report": str(run / "report")})
    raw["grid"] = {"name": "M25", "region": region}
    raw["sources"] = {**raw["sources"], "catalog": str(src / "catalog.yaml"),
                      "stations": str(src / "stations")}
    if members:
        raw["ensemble"] = {**raw.get("ensemble", {}), "members": members}
    if n_noise:
        raw["ensemble"] = {**raw.get("ensemble", {}), "n_noise": n_noise}
    if region == "tiny":
        raw["training"] = {**raw["training"], "block_size": 2}
    return recipe_from_dict(_merge(raw, VARIANTS[variant]))


# --------------------------------------------------------------------------- diagnosis
def sensitivity_table(vwcs=(0.25, 0.5, 1.0, 2.0)) -> list[dict]:
    """dTB/dSM (K per 0.01 m3 m-3, SM 0.15-0.25) per channel and VWC, both simulators."""
    from casm_cloud.simulate import SimSettings
    from casm_cloud.simulate.emission import brightness_temperature
    from casm_cloud.simulate.sensors import teff_weight

    chans = [("L H (SMOS)", 1.413, "H", 42.5), ("L V (SMOS)", 1.413, "V", 42.5)] + [
        (f"{f:g} {p}", f, p, 55.0) for f in (6.925, 10.65, 18.7, 36.5, 89.0) for p in "HV"]
    rows = []
    for physics, s in (("legacy", SimSettings.legacy()), ("new", SimSettings())):
        for name, f, p, inc in chans:
            row = {"simulator": physics, "channel": name}
            for vwc in vwcs:
                # a night overpass: skin 290 K, daily mean 295 K, soil at T_eff
                t_skin, t_deep = 290.0, 295.0
                t_soil = t_deep + teff_weight(f, s.teff_c) * (t_skin - t_deep)
                tb = [brightness_temperature(np.array(m), t_soil, t_skin, vwc, 0.4, 0.22,
                                             (1 - 0.44) * 2.66, freq_ghz=f, pol=p,
                                             incidence_deg=inc, roughness_h=s.roughness_h,
                                             h_exponent=s.h_exponent, b_lband=s.b_lband,
                                             b_exponent=s.b_exponent, omega=s.omega)
                      for m in (0.15, 0.25)]
                row[f"VWC {vwc:g}"] = float(tb[1] - tb[0]) / 10.0
            rows.append(row)
    for physics in ("legacy", "new"):
        lh = next(r for r in rows if r["simulator"] == physics and r["channel"] == "L H (SMOS)")
        for r in rows:
            if r["simulator"] == physics:
                for vwc in vwcs:
                    r[f"ratio {vwc:g}"] = r[f"VWC {vwc:g}"] / lh[f"VWC {vwc:g}"]
    return rows


def _open(run: Path, stage: str, name: str):
    from casm_cloud import storage

    return storage.open_zarr(str(run / stage / name))


def snr_table(run: Path) -> list[dict]:
    """Per channel: median over cells of R(TB residual, truth residual), slope, SNR.

    Residuals of the 3-day means (the aggregate stage) from each one's seasonal
    cycle; SNR = R² / (1 - R²), the SM-driven over the rest of the residual variance.
    """
    import xarray as xr

    from casm_cloud.report.scores import harmonic_anomaly
    from casm_cloud.validation.metrics import pearson_r

    truth = _open(run, "aggregate", "truth.zarr")["sm_l1"]
    rows = []
    for kind in ("smos", "amsre", "amsr2"):
        ds = _open(run, "aggregate", f"{kind}.zarr")
        t = truth.sel(time=ds["time"])
        ta = harmonic_anomaly(t)
        for v in sorted(ds.data_vars):
            a = harmonic_anomaly(ds[v])
            both = a.notnull() & ta.notnull()
            am, tm = a.where(both), ta.where(both)
            cov = ((am - am.mean("time")) * (tm - tm.mean("time"))).mean("time")
            r, slope, sd = xr.Dataset.compute(xr.Dataset(
                {"r": pearson_r(a, ta), "s": cov / tm.var("time") / 100.0,
                 "sd": am.std("time")})).data_vars.values()
            r = r.values
            rows.append({"sensor": kind, "channel": v, "R": float(np.nanmedian(r)),
                         "slope K/0.01": float(np.nanmedian(slope.values)),
                         "residual sd K": float(np.nanmedian(sd.values)),
                         "SNR": float(np.nanmedian(r ** 2 / (1 - r ** 2)))})
    return rows


def _truth_residual(run: Path, times, rows, cols) -> np.ndarray:
    from casm_cloud.seasonal import cycle_values

    tr = _open(run, "aggregate", "truth.zarr")["sm_l1"]
    p = _open(run, "seasonal", "truth.zarr").sel(variable="sm_l1")
    tt = tr["time"].values
    ti = np.searchsorted(tt, np.asarray(times, dtype=tt.dtype))
    ok = (ti < tt.size) & (tt[np.minimum(ti, tt.size - 1)] == times)
    ti = np.minimum(ti, tt.size - 1)
    cube = cycle_values(p["amplitude"].values, p["phase"].values, p["offset"].values, tt)
    return np.where(ok, tr.values[ti, rows, cols] - cube[ti, rows, cols], np.nan)


def _predict(paths, table, split: str | None = "test"):
    """Ensemble-mean prediction (target units) of checkpoints on a sample table."""
    import json as _json

    import torch

    from casm_cloud.models.checkpoint import load_checkpoint

    if split is not None:
        a, b = _json.loads(table.attrs["split_offsets"])[split]
    else:
        a, b = 0, table.sizes["sample"]
    feats = [str(f) for f in table["feature"].values]
    x_all = table["features"].values[a:b]
    preds = []
    for path in paths:
        ck = load_checkpoint(str(path))
        names = ck.meta["inputs"]
        mean = np.array([ck.meta["scaler"]["mean"][n] for n in names], dtype=np.float32)
        std = np.array([ck.meta["scaler"]["std"][n] for n in names], dtype=np.float32)
        x = (x_all[:, [feats.index(n) for n in names]] - mean) / std
        with torch.inference_mode():
            y = ck.model(torch.from_numpy(x.astype(np.float32))).numpy().reshape(-1)
        tgt = ck.meta["target"]
        preds.append(y * ck.meta["scaler"]["std"][tgt] + ck.meta["scaler"]["mean"][tgt])
    return np.mean(preds, axis=0), slice(a, b)


def _r(a, b) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[ok], b[ok])[0, 1]) if ok.sum() > 2 else float("nan")


def subset_skill(run: Path, client, epochs: int = 12) -> list[dict]:
    """NN_AMSR2 (one member, the demo's network) per channel subset: test R against the
    SMAP residual and against the truth residual (test = unseen spatial blocks)."""
    from casm_cloud.pairs import open_pairs
    from casm_cloud.training import train_ensemble

    url = str(run / "pairs" / "nn_amsr2.zarr")
    table = open_pairs(url)
    have = [str(f) for f in table["feature"].values]
    rows = []
    for label, chans in SUBSETS.items():
        if not set(chans) <= set(have):
            continue
        for latlon in ((True, False) if label in ("paper (10V 18H 36H 89V)", "all 12")
                       else (True,)):
            feats = [*chans, *(["lat", "lon"] if latlon else [])]
            out = run / "diagnose" / f"nn_amsr2_{'_'.join(chans)}_{int(latlon)}"
            paths = train_ensemble(url, str(out), n_members=1, seed=0, client=client,
                                   hidden=[128] * 4, epochs=epochs, batch_size=1024, lr=1e-3,
                                   patience=4, features=feats)
            pred, sl = _predict(paths, table)
            tgt = table["target"].values[sl]
            tres = _truth_residual(run, table["time"].values[sl], table["row"].values[sl],
                                   table["col"].values[sl])
            rows.append({"channels": label, "lat/lon": latlon, "test R vs SMAP": _r(pred, tgt),
                         "test R vs truth": _r(pred, tres),
                         "SMAP vs truth": _r(tgt, tres)})
            print(rows[-1], flush=True)
    return rows


def transfer_skill(run: Path) -> list[dict]:
    """The transfer step on the AMSR-E/SMOS overlap (all samples of transfer/pairs.zarr):
    NN_AMSR2 as it is and fine-tuned, against NN_SMOS's output and against the truth."""
    from casm_cloud.pairs import open_pairs

    table = open_pairs(str(run / "transfer" / "pairs.zarr"))
    members = {net: sorted((run / stage / net).glob("member_*"))
               for net, stage in (("nn_amsr2", "train"), ("nn_amsre", "transfer"))}
    rows = []
    for split in ("test", None):
        tgt = None
        for label, net in (("before (NN_AMSR2 on AMSR-E)", "nn_amsr2"),
                           ("after (NN_AMSR-E, fine-tuned)", "nn_amsre")):
            pred, sl = _predict(members[net], table, split)
            tgt = table["target"].values[sl]
            tres = _truth_residual(run, table["time"].values[sl], table["row"].values[sl],
                                   table["col"].values[sl])
            rows.append({"samples": split or "all", "network": label,
                         "R vs NN_SMOS": _r(pred, tgt), "R vs truth": _r(pred, tres)})
        rows.append({"samples": split or "all", "network": "NN_SMOS (the target)",
                     "R vs NN_SMOS": 1.0, "R vs truth": _r(tgt, tres)})
    return rows


# --------------------------------------------------------------------------- output
def _md(rows: list[dict], fmt: str = "{:.2f}") -> str:
    if not rows:
        return "(none)"
    keys = list(rows[0])
    head = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys)
    body = ["| " + " | ".join(fmt.format(r[k]) if isinstance(r[k], float) else str(r[k])
                              for k in keys) + " |" for r in rows]
    return "\n".join([head, *body])


def era_rows(name: str, summary: dict) -> list[dict]:
    s = summary.get("scores") or {}
    rows = []
    for label, e in (s.get("eras") or {}).items():
        st = (summary.get("station_eras") or {}).get(label, {})
        rows.append({"variant": name, "era": label, "R": e["R"], "ubRMSE": e["ubRMSE"],
                     "bias": e["bias"], "stations R": st.get("R", float("nan")),
                     "stations ubRMSE": st.get("ubRMSE", float("nan"))})
    rows.append({"variant": name, "era": "whole record", "R": s.get("R", float("nan")),
                 "ubRMSE": s.get("ubRMSE", float("nan")), "bias": s.get("bias", float("nan")),
                 "stations R": float("nan"), "stations ubRMSE": float("nan")})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--region", default="tiny")
    ap.add_argument("--start", default="2008-01-01")
    ap.add_argument("--end", default="2017-12-31")
    ap.add_argument("--physics", default="new", help="comma list of new, legacy")
    ap.add_argument("--variants", default="paper,amsr12", help=f"comma list of {list(VARIANTS)}")
    ap.add_argument("--members", type=int, default=None)
    ap.add_argument("--n-noise", type=int, default=None)
    ap.add_argument("--diagnose", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    from distributed import Client, LocalCluster

    from casm_cloud.recipes import run_recipe

    results = {"args": vars(a), "variants": {}}
    if a.diagnose:
        results["sensitivity"] = sensitivity_table()
        print("\n## dTB/dSM (K per 0.01 m3 m-3) and ratio to L-band H\n")
        print(_md(results["sensitivity"]))
    with LocalCluster(n_workers=a.workers, threads_per_worker=1) as cluster, \
            Client(cluster) as client:
        for physics in a.physics.split(","):
            src = simulate(out, physics, a.region, a.start, a.end)
            for variant in a.variants.split(","):
                recipe = recipe_for(out, src, physics, variant, a.region, a.start, a.end,
                                    a.members, a.n_noise)
                t0 = time.perf_counter()
                ctx = run_recipe(recipe, client=client, progress=False)
                if not ctx.summary.get("scores"):  # a finished run: only the report again
                    ctx = run_recipe(recipe, client=client, progress=False,
                                     start_from="report", until="report")
                key = f"{physics}/{variant}"
                results["variants"][key] = {
                    "seconds": round(time.perf_counter() - t0, 1),
                    "scores": ctx.summary.get("scores"),
                    "station_eras": ctx.summary.get("station_eras")}
                print(f"\n## {key} ({results['variants'][key]['seconds']} s)\n")
                print(_md(era_rows(key, ctx.summary), "{:.3f}"))
                steps = (ctx.summary.get("scores") or {}).get("bias_steps") or {}
                print("bias steps: " + ", ".join(f"{k} {v:+.4f}" for k, v in steps.items()))
                (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
                if a.diagnose:
                    run = Path(recipe.run_root)
                    d = results.setdefault("diagnose", {}).setdefault(key, {})
                    d["snr"] = snr_table(run)
                    print("\n### residual signal-to-noise per channel\n\n" + _md(d["snr"]))
                    d["transfer"] = transfer_skill(run)
                    print("\n### transfer step\n\n" + _md(d["transfer"]))
                    if len(recipe.channels.amsr) == 12:
                        d["subsets"] = subset_skill(run, client)
                        print("\n### NN_AMSR2 per channel subset\n\n" + _md(d["subsets"]))
                    (out / "results.json").write_text(json.dumps(results, indent=1,
                                                                 default=str))


if __name__ == "__main__":
    main()
