"""The report page: tables, sections and the HTML assembly of :func:`write_report`."""

from __future__ import annotations

import html
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud.report import figures as fg
from casm_cloud.report.scores import (
    ReportError,
    _require,
    scores_against_truth,
    sensor_changes_from_source,
)

__all__ = ["write_report"]

log = logging.getLogger(__name__)

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
img{max-width:100%;border:1px solid #ddd;margin:.4em 0}table{border-collapse:collapse;
font-size:.85em;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:right}
h2{border-bottom:1px solid #aaa;margin-top:1.6em}.note{color:#555;font-size:.9em}"""


# --------------------------------------------------------------------------- sections
def _table_html(df: pd.DataFrame, csv: str | None) -> str:
    link = f'<p class="note">CSV: <a href="{html.escape(csv)}">{html.escape(csv)}</a></p>' \
        if csv else ""
    return df.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="–",
                      border=0) + link


def _figures(work: Path, product: xr.Dataset, sm: xr.DataArray, agg: Mapping,
             times: pd.DatetimeIndex, changes: Mapping[str, str], flags: Mapping[int, str],
             variable: str, truth: xr.DataArray | None) -> list[tuple[str, str]]:
    """Draw every figure of the product: ``[(heading, file name), ...]`` in page order."""
    figs = [("Mean and variability", fg.maps_figure(work, product, agg)),
            ("Hovmöller", fg.hovmoller_figure(work, product, agg, times, changes, variable)),
            ("Global mean", fg.global_mean_figure(work, sm, agg, times, changes, variable,
                                                  truth))]
    if flags:
        figs.append(("Sources", fg.source_share_figure(work, agg, times, flags, changes)))
    unc = [k for k in fg.UNCERTAINTIES if k in agg]
    if unc:
        figs.append(("Uncertainty", fg.uncertainty_figure(work, product, agg, unc)))
    return figs


def _summary_section(work: Path, sm: xr.DataArray, agg: Mapping, times: pd.DatetimeIndex,
                     variable: str, changes: Mapping[str, str]) -> str:
    """The summary table (written as ``summary.csv``) and the sensor changes."""
    space = [d for d in sm.dims if d != "time"]
    unc = [k for k in fg.UNCERTAINTIES if k in agg]
    summary = pd.DataFrame([
        {"quantity": "time steps", "value": len(times)},
        {"quantity": "first", "value": str(times[0].date()) if len(times) else "–"},
        {"quantity": "last", "value": str(times[-1].date()) if len(times) else "–"},
        {"quantity": "grid cells", "value": int(np.prod([sm.sizes[d] for d in space]))},
        {"quantity": f"mean {variable} (m³ m⁻³)",
         "value": f"{np.nanmean(np.asarray(agg['mean'])):.4f}"},
        {"quantity": "valid fraction", "value": f"{float(np.mean(agg['valid'])):.3f}"},
    ] + [{"quantity": f"mean {k.replace('_', ' ')} (m³ m⁻³)",
          "value": f"{np.nanmean(np.asarray(agg[k])):.4f}"} for k in unc])
    summary.to_csv(work / "summary.csv", index=False)
    out = "<h2>Summary</h2>" + _table_html(summary, "summary.csv")
    if changes:
        ch = pd.DataFrame({"change": list(changes), "date": list(changes.values())})
        out += "<h3>Sensor changes</h3>" + _table_html(ch, None)
    return out


def _scores_section(work: Path, scores: Mapping) -> str:
    """The scores against the truth (``scores_vs_truth.csv``, if any) and per era."""
    if "R" not in scores:  # no truth: only the scores against the stations per era
        out = "<h2>Scores per era</h2>"
    else:
        out = _truth_table(work, scores)
    for key, head, csv in _ERA_TABLES:
        if scores.get(key):
            eras = pd.DataFrame([{"era": k, **v} for k, v in scores[key].items()])
            eras.to_csv(work / csv, index=False)
            out += f"<h3>{html.escape(head)}</h3>" + _table_html(eras, csv)
    return out


_ERA_TABLES = (("eras", "Per era, against the truth (median cell)", "scores_by_era.csv"),
               ("station_eras", "Per era, against the stations (median station)",
                "station_scores_by_era.csv"))


def _truth_table(work: Path, scores: Mapping) -> str:
    flat = {k: v for k, v in scores.items() if not isinstance(v, dict)}
    st = pd.DataFrame({"score": list(flat), "value": list(flat.values())})
    steps = scores.get("bias_steps") or {}
    st = pd.concat([st, pd.DataFrame({"score": [f"bias step: {k}" for k in steps],
                                      "value": list(steps.values())})], ignore_index=True)
    st.to_csv(work / "scores_vs_truth.csv", index=False)
    out = ("<h2>Scores against the truth</h2><p class='note'>Medians over pixels of "
           "Pearson R, ubRMSE and residual R (anomalies from each pixel's seasonal cycle, "
           "fitted as for the networks' training residuals), global scores of the "
           "spatial-mean series, and the step in the global mean bias (product − truth) "
           "across each sensor change.</p>" + _table_html(st, "scores_vs_truth.csv"))
    return out


def _checks_section(work: Path, checks: Mapping) -> str:
    """The consistency checks from the data (written as ``checks.csv``)."""
    rows = [{"check": f"product vs SMAP: {k}", "value": v}
            for k, v in checks.get("vs_smap", {}).items()]
    nets = checks.get("networks", {})
    rows += [{"check": f"{nets.get('names', 'networks')} ({nets.get('start')} – "
              f"{nets.get('end')}): {k}", "value": v}
             for k, v in nets.items() if k not in ("names", "start", "end")]
    rows += [{"check": f"step of the mean residual: {k}", "value": v}
             for k, v in checks.get("steps", {}).items()]
    rows += [{"check": f"median structural uncertainty: {k}", "value": v}
             for k, v in checks.get("uncertainty", {}).items()]
    table = pd.DataFrame(rows, columns=["check", "value"])
    table.to_csv(work / "checks.csv", index=False)
    return ("<h2>Consistency checks from the data</h2><p class='note'>No truth needed: "
            "median cell R and residual R of the product against SMAP over their overlap, "
            "of the two networks over the times both predicted, the step in the product's "
            "mean residual from its seasonal cycle at each sensor change, and the median "
            "structural uncertainty per era.</p>" + _table_html(table, "checks.csv"))


def _consistency_section(work: Path, consistency: pd.DataFrame) -> str:
    consistency.to_csv(work / "consistency.csv", index=False)
    return "<h2>Consistency at sensor changes</h2>" + _table_html(consistency,
                                                                   "consistency.csv")


def _validation_section(work: Path, validation: pd.DataFrame,
                        validation_pairs: Mapping[str, xr.Dataset] | None) -> str:
    validation.to_csv(work / "validation.csv", index=False)
    return ("<h2>Validation against stations</h2>"
            + "".join(fg.validation_figures(work, validation, validation_pairs))
            + _table_html(validation, "validation.csv"))


def _page(title: str, sections: list[str]) -> str:
    """The HTML page around its sections."""
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>"
            f"<p class='note'>Generated {pd.Timestamp.now(tz='UTC'):%Y-%m-%d %H:%M} UTC "
            f"by casm_cloud.</p>" + "\n".join(sections) + "</body></html>")


# --------------------------------------------------------------------------- the report
def write_report(out_dir: str | os.PathLike, *, product: xr.Dataset,
                 truth: xr.Dataset | None = None, validation: pd.DataFrame | None = None,
                 consistency: pd.DataFrame | None = None,
                 sensor_changes: Mapping[str, str] | None = None, scores: dict | None = None,
                 title: str = "casm_cloud report",
                 validation_pairs: Mapping[str, xr.Dataset] | None = None,
                 variable: str = "sm", truth_variable: str = "sm_l1",
                 min_obs: int = 40,
                 storage_options: Mapping | None = None,
                 checks: Mapping | None = None) -> Path | str:
    """Write ``index.html`` with its figures and tables into ``out_dir``.

    Parameters
    ----------
    out_dir : str or path-like
        A local folder (created) or an fsspec URL (the report is drawn in a
        temporary folder and uploaded).  Files of an earlier report there are
        replaced.
    product : xarray.Dataset
        The product: ``sm`` (time, y, x) and optionally ``sm_residual``,
        ``seasonal_cycle``, ``structural_uncertainty``, ``data_uncertainty``,
        ``source`` (CF flags); ``lat(y)``, ``lon(x)`` coordinates.
    truth : xarray.Dataset, optional
        Simulated truth (``sm_l1``): adds the scores section.
    validation : pandas.DataFrame, optional
        Per-station metrics (:func:`casm_cloud.validation.validate_product`):
        box plots, a station map and the table.
    consistency : pandas.DataFrame, optional
        Steps at sensor changes (:func:`casm_cloud.validation.consistency_steps`).
    sensor_changes : mapping of label -> date, optional
        Marked on time axes; default: from ``source``
        (:func:`sensor_changes_from_source`).
    checks : mapping, optional
        The consistency checks from the data
        (:func:`casm_cloud.report.checks.data_checks`): adds their section.
    scores : dict, optional
        Scores against the truth if already computed (else computed when
        ``truth`` is given).
    title : str
    validation_pairs : mapping of name -> Dataset, optional
        Matched pairs (:func:`casm_cloud.validation.matched_pairs`) for
        scatter plots.
    variable, truth_variable : str
        Soil-moisture variables of the product and the truth.
    min_obs : int
        ``min_obs`` of the seasonal fit behind the residual scores (when
        they are computed here; see :func:`scores_against_truth`).
    storage_options : mapping, optional
        fsspec options to reach ``out_dir`` when it is a URL (the run root's).

    Returns
    -------
    pathlib.Path or str
        The path (or URL) of ``index.html``.

    Raises
    ------
    casm_cloud.report.MissingVariableError
        If ``variable`` (or ``truth_variable``) is missing (a ``KeyError``).
    casm_cloud.report.ReportError
        If the product has no ``time`` dimension, truth and product share
        no cell, or ``out_dir`` is a folder that holds something else.
    """
    sm = _require(product, variable, "product")
    if truth is not None:
        _require(truth, truth_variable, "truth")
    args = dict(product=product, sm=sm, truth=truth, validation=validation,
                consistency=consistency, sensor_changes=sensor_changes, scores=scores,
                title=title, validation_pairs=validation_pairs, variable=variable,
                truth_variable=truth_variable, min_obs=min_obs, checks=checks)
    url = str(out_dir)
    if "://" in url and not url.startswith("file://"):
        with tempfile.TemporaryDirectory(prefix="casm-report-") as tmp:
            _write_local(Path(tmp), **args)
            from casm_cloud.storage import join, url_to_fs

            fs, path = url_to_fs(url, storage_options)
            fs.put(tmp.rstrip("/") + "/", path, recursive=True)
            return join(url, "index.html")
    return _write_local(Path(url.removeprefix("file://")), **args)


def _write_local(out: Path, **args) -> Path:
    """Draw the report in a fresh folder beside ``out``, then move it in place.

    So an interrupted report never leaves an ``index.html`` that mixes two runs.
    """
    if out.exists() and any(out.iterdir()) and not (out / "index.html").exists():
        raise ReportError(f"report folder {out} exists and holds no index.html; refusing to "
                          "replace a folder that is not a report")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".report-", dir=out.parent))
    try:
        sections = _sections(work, **args)
        (work / "index.html").write_text(_page(args["title"], sections), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log.info("report written to %s", out / "index.html")
    return out / "index.html"


def _sections(work: Path, *, product, sm, truth, validation, consistency, sensor_changes,
              scores, title, validation_pairs, variable, truth_variable, min_obs,
              checks=None) -> list[str]:
    """Draw every figure and table into ``work``; the page's sections, in order."""
    changes = dict(sensor_changes) if sensor_changes is not None else (
        sensor_changes_from_source(product) if "source" in product.data_vars else {})
    flags = fg.source_flags(product)
    agg = fg.aggregates(product, sm, flags)
    times = pd.DatetimeIndex(sm["time"].values)
    figs = _figures(work, product, sm, agg, times, changes, flags, variable,
                    truth[truth_variable] if truth is not None else None)
    sections = [_summary_section(work, sm, agg, times, variable, changes)]
    sections += [f'<h2>{html.escape(head)}</h2><img src="{name}" alt="{head}">'
                 for head, name in figs]
    if truth is not None and scores is None:
        scores = scores_against_truth(product, truth, variable=variable,
                                      truth_variable=truth_variable,
                                      sensor_changes=changes or None, min_obs=min_obs)
    if scores is not None:
        sections.append(_scores_section(work, scores))
    if checks is not None:
        sections.append(_checks_section(work, checks))
    if consistency is not None:
        sections.append(_consistency_section(work, consistency))
    if validation is not None:
        sections.append(_validation_section(work, validation, validation_pairs))
    return sections
