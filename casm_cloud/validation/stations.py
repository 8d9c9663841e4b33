"""ISMN in-situ stations: read a download, apply the selection rules.

Reading is done by the ``ismn`` package (TU Wien's reader for every ISMN
format: header+values and CEOP files, folders and zip archives, the 2026 file
names with a sensor suffix), never re-implemented here.  Its metadata cache
always goes to a scratch folder, so the data folder is never written to.

The result is one ``(station, time)`` dataset: one row per sensor (two
sensors at one station are two rows), hourly values and their ISMN quality
flags, with the ISMN metadata (network, station name, instrument, depths,
coordinates, Köppen-Geiger climate class, ESA CCI land cover …) as
per-station coordinates.  Station files are small (hourly points), so they
are read eagerly; everything after this is labelled xarray.

Selection (``docs/science.md``, "Validate"): sensors in the surface layer (0–5 cm),
only 'G' (good) flagged values, at least 90 % good values, at least 100
n-day means, n-day means in the product's anchored bins
(:func:`casm_cloud.aggregate.nday_mean`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud.aggregate import nday_mean
from casm_cloud.errors import UserError
from casm_cloud.validation.exceptions import MissingInputError, ValidationError

__all__ = ["read_ismn", "select_stations", "selection_report", "StationSelectionError",
           "METADATA_KEYS"]

log = logging.getLogger(__name__)

#: ISMN metadata keys copied onto the station dimension when present
METADATA_KEYS = ("elevation", "climate_KG", "climate_insitu", "lc_2000", "lc_2005", "lc_2010",
                 "lc_insitu", "clay_fraction", "sand_fraction", "silt_fraction",
                 "organic_carbon", "saturation")
# numeric ISMN metadata (soil fractions in %, land cover codes, saturation)
_NUMERIC_KEYS = {"depth_from", "depth_to", "lat", "lon", "elevation", "lc_2000", "lc_2005",
                 "lc_2010", "clay_fraction", "sand_fraction", "silt_fraction", "organic_carbon",
                 "saturation"}


class StationSelectionError(UserError, ValueError):
    """No station (or sensor) survives the reading or selection rules."""


def read_ismn(path: str | Path, *, depth: tuple[float, float] = (0.0, 0.05),
              variable: str = "soil_moisture", meta_path: str | Path | None = None,
              depth_tolerance: float = 0.001) -> xr.Dataset:
    """Read an ISMN download into one ``(station, time)`` dataset.

    Parameters
    ----------
    path : str or Path
        ISMN download: a folder (network/station/files, or network/files) or
        a ``.zip`` archive as the ISMN portal delivers it.
    depth : (from, to)
        Depth range in metres; a sensor is kept when its whole measuring
        range lies inside ``[from, to + depth_tolerance]``.
    variable : str
        ISMN variable name (``soil_moisture``, ``soil_temperature`` …).
    meta_path : str or Path, optional
        Folder for the ``ismn`` package's metadata cache and log; a temporary
        folder (removed afterwards) when not given.  Never the data folder.
    depth_tolerance : float
        Slack (m) on the deep end of the range: SCAN and USCRN probes are
        installed at 2 inches and listed at 0.0508 m, which the 5 cm rule
        means to include; 0.001 m keeps them without admitting 6 cm sensors.

    Returns
    -------
    xarray.Dataset
        Dimensions ``(station, time)``; ``time`` is the union of all
        sensors' (hourly) time stamps.  Variables ``<variable>`` (float32,
        NaN where a sensor has no value) and ``<variable>_flag`` (ISMN
        quality flag strings, ``""`` where no value).  Coordinates along
        ``station``: ``station`` (unique id ``network/station/instrument/
        depth_from-depth_to``), ``network``, ``station_name``,
        ``instrument``, ``depth_from``, ``depth_to``, ``lat``, ``lon``, and
        whichever of :data:`METADATA_KEYS` the download has.  Attributes
        ``ismn_variable``, ``depth_range`` and ``skipped`` (sensors of the
        variable outside the depth range).

    Raises
    ------
    MissingInputError
        If ``path`` does not exist (a ``FileNotFoundError``).
    ValidationError
        If ``depth`` is not a range, ``path`` is a file but no zip archive, or
        ismn cannot read some of its files (the message names the first).
    StationSelectionError
        If the download has no ``variable`` at all, or none in the depth
        range (the message lists the depths it does have).
    """
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"ISMN download {path} does not exist")
    lo, hi = float(depth[0]), float(depth[1])
    if not lo <= hi:
        raise ValidationError(f"depth={depth!r}: expected (from, to) with from <= to, in metres")
    if path.is_file() and not zipfile.is_zipfile(path):
        raise ValidationError(f"ISMN download {path}: expected a folder or a .zip archive as "
                              f"the ISMN portal delivers it; this file is no zip archive "
                              f"(a download cut short?)")
    with tempfile.TemporaryDirectory(prefix="casm-ismn-") as scratch:
        meta_dir = Path(meta_path) if meta_path is not None else Path(scratch)
        records = list(_iter_sensors(path, variable, meta_dir, Path(scratch)))
    if not records:
        raise StationSelectionError(
            f"{path}: no ISMN sensor measures {variable!r} (is this an ISMN download?)"
        )
    kept, skipped = [], []
    for meta, frame in records:
        d0, d1 = meta["depth_from"], meta["depth_to"]
        if lo <= d0 and d1 <= hi + depth_tolerance:
            kept.append((meta, frame))
        else:
            skipped.append(f"{meta['network']}/{meta['station_name']}/{meta['instrument']}: "
                           f"depth {d0:g}-{d1:g} m outside {lo:g}-{hi:g} m")
    if not kept:
        have = sorted({(m["depth_from"], m["depth_to"]) for m, _ in records})
        raise StationSelectionError(
            f"{path}: no {variable!r} sensor at depth {lo:g}-{hi:g} m (rule: depth); "
            f"{len(records)} sensor(s) at depths {[f'{a:g}-{b:g} m' for a, b in have]}"
        )
    ds = _to_dataset(kept, variable)
    ds.attrs.update({"ismn_variable": variable, "depth_range": [lo, hi],
                     "skipped": skipped, "source": str(path)})
    return ds


_SKIPPED = re.compile(r"potentially malformed file\(s\).*?listed in: (.+?)\.?$", re.S | re.M)


def _refuse_skipped_files(path: Path, chatter: str) -> None:
    """Stop when ismn left files out of the download (it says so in one printed note).

    ismn logs a file it cannot read (a damaged archive member, a malformed .stm)
    and reads on without it; a validation that silently lost stations would
    report scores over a different network than the one downloaded.  ismn hands back
    no list of those files: its printed note names the log that lists them.
    """
    found = _SKIPPED.search(chatter)
    if not found:
        return
    summary = Path(found.group(1).strip()).read_text().split("Erroneous Files -----", 1)[-1]
    # A station without its static-metadata csv is listed too (as <station>/*missing*);
    # ismn reads its data with placeholder metadata, as real downloads often need.
    lost = [ln.strip() for ln in summary.splitlines() if ln.strip().endswith(".stm")]
    if not lost:
        return
    fix = ("the archive is damaged; download it again" if path.is_file()
           else "fix or remove them")
    raise ValidationError(f"ISMN download {path}: {len(lost)} data file(s) cannot be read "
                          f"(first: {Path(lost[0]).name}) and would be left out of the "
                          f"validation; {fix}")


def _iter_sensors(path: Path, variable: str, meta_dir: Path, scratch: Path):
    """Yield ``(metadata dict, DataFrame)`` for every sensor of ``variable``."""
    from ismn.interface import ISMN_Interface

    meta_dir.mkdir(parents=True, exist_ok=True)
    chatter = io.StringIO()  # ismn prints progress and notes; keep them in the log
    # ismn's metadata collector logs every file at INFO through its own logger
    # (and a file handler in meta_dir); keep that out of the user's console
    # and close the handler before the scratch folder goes away.
    collector = logging.getLogger("ismn_meta_collector")
    handlers, propagate = list(collector.handlers), collector.propagate
    collector.propagate = False
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(chatter), \
                contextlib.redirect_stderr(chatter):
            warnings.simplefilter("ignore")
            iface = ISMN_Interface(path, meta_path=meta_dir, temp_root=scratch)
        ids = iface.get_dataset_ids(variable, min_depth=-np.inf, max_depth=np.inf)
    except TypeError:
        # ISMN_Interface wants network/station/file folders; single-file
        # layouts (network/file, as in ISMN's own format samples) are read
        # file by file with the same package's DataFile reader.
        yield from _iter_loose_files(path, variable, scratch)
        return
    finally:
        collector.propagate = propagate
        for h in [h for h in collector.handlers if h not in handlers]:
            collector.removeHandler(h)
            h.close()
        if chatter.getvalue():
            log.info("ismn: %s", chatter.getvalue().strip())
    _refuse_skipped_files(path, chatter.getvalue())
    for i in ids:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas deprecations inside ismn
            frame, meta = iface.read_ts(i, return_meta=True)
        yield _meta_dict(meta), frame
    iface.close_files()


def _iter_loose_files(path: Path, variable: str, scratch: Path):
    from ismn.filehandlers import DataFile

    if not path.is_dir():
        return
    for f in sorted(path.rglob("*.stm")):
        handler = DataFile(path, f.relative_to(path).as_posix(), temp_root=scratch)
        meta = handler.metadata.to_pd()
        if meta.get(("variable", "val")) != variable:
            continue
        yield _meta_dict(meta), handler.read_data()


def _meta_dict(meta: pd.Series) -> dict:
    """Flatten the ``ismn`` metadata Series ((variable, key) index) to a dict."""
    def get(var, key="val", default=None):
        value = meta.get((var, key), default)
        return default if value is None or (isinstance(value, float) and np.isnan(value)) \
            else value

    out = {
        "network": str(get("network")),
        "station_name": str(get("station")),
        "instrument": str(get("instrument")),
        "depth_from": float(get("instrument", "depth_from", get("variable", "depth_from"))),
        "depth_to": float(get("instrument", "depth_to", get("variable", "depth_to"))),
        "lat": float(get("latitude")),
        "lon": float(get("longitude")),
    }
    for key in METADATA_KEYS:
        value = get(key)
        if value is not None:
            out[key] = value
    return out


def _to_dataset(records: list[tuple[dict, pd.DataFrame]], variable: str) -> xr.Dataset:
    ids = [f"{m['network']}/{m['station_name']}/{m['instrument']}/"
           f"{m['depth_from']:g}-{m['depth_to']:g}" for m, _ in records]
    if len(set(ids)) != len(ids):  # the same sensor in two files: number them
        ids = [f"{s}#{i}" for i, s in enumerate(ids)]
    time = pd.DatetimeIndex(np.unique(np.concatenate(
        [f.index.to_numpy(dtype="datetime64[ns]") for _, f in records])))
    values = np.full((len(records), time.size), np.nan, dtype=np.float32)
    flags = np.full((len(records), time.size), "", dtype=object)
    flag_col = f"{variable}_flag"
    for i, (_, frame) in enumerate(records):
        frame = frame[~frame.index.duplicated()]
        pos = time.get_indexer(frame.index)
        values[i, pos] = frame[variable].to_numpy(dtype=np.float32, na_value=np.nan)
        if flag_col in frame:
            flags[i, pos] = frame[flag_col].fillna("").astype(str).to_numpy()
    coords: dict = {"station": ("station", np.array(ids, dtype=object)), "time": time}
    keys = ["network", "station_name", "instrument", "depth_from", "depth_to", "lat", "lon"]
    keys += [k for k in METADATA_KEYS if any(k in m for m, _ in records)]
    for key in keys:
        col = [m.get(key) for m, _ in records]
        if key in _NUMERIC_KEYS:
            coords[key] = ("station", np.array([_number(v) for v in col],
                                               dtype=np.float64))
        else:
            coords[key] = ("station", np.array(["" if v is None else str(v) for v in col],
                                               dtype=object))
    units = "m3 m-3" if variable == "soil_moisture" else ""
    ds = xr.Dataset(
        {variable: (("station", "time"), values, {"units": units, "long_name": f"ISMN {variable}"}),
         flag_col: (("station", "time"), flags,
                    {"long_name": "ISMN quality flag (G = good; see ISMN flag table)"})},
        coords=coords,
    )
    ds["lat"].attrs = {"standard_name": "latitude", "units": "degrees_north"}
    ds["lon"].attrs = {"standard_name": "longitude", "units": "degrees_east"}
    ds["depth_from"].attrs = {"units": "m"}
    ds["depth_to"].attrs = {"units": "m"}
    return ds


def _number(value) -> float:
    """A metadata value as float; NaN for absent or non-numeric ("unknown")."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


def select_stations(ds: xr.Dataset, *, good_fraction: float = 0.9, min_obs: int = 100,
                    n_days: int = 3, anchor: str = "2002-01-01", min_values: int = 6,
                    period: tuple[str, str] | None = None) -> xr.Dataset:
    """Apply the selection rules and average into anchored n-day bins.

    Rules, in order (each removed station is named in the report):

    1. ``flag``: only values flagged exactly ``G`` (good) are used;
    2. ``good_fraction``: a station needs at least this fraction of its
       reported values flagged ``G``;
    3. n-day means in the anchored bins of :func:`casm_cloud.aggregate.nday_mean`
       (bin k covers ``[anchor + n·k, anchor + n·(k+1))``, label = bin start),
       a bin needing ``min_values`` good values (6, as for daily means from
       hourly data in SoMo.ml);
    4. ``min_obs``: a station needs at least this many valid n-day means.

    Parameters
    ----------
    ds : xarray.Dataset
        Output of :func:`read_ismn`.
    good_fraction : float
        Fewest share of good flags among reported values (0–1).
    min_obs : int
        Fewest valid n-day means.
    n_days : int
        Bin length in days (3 for CASM).
    anchor : str
        Start of bin 0 (the product's anchor).
    min_values : int
        Fewest good values in a bin.
    period : (start, end), optional
        Use only values in this period (e.g. the product's years), before
        the rules are applied.

    Returns
    -------
    xarray.Dataset
        ``(station, time)`` with the n-day means of the survivors, the same
        station coordinates, ``n_good_fraction`` and ``n_obs`` per station,
        and ``attrs["selection"]``: one line per removed station naming the
        rule (see :func:`selection_report`).

    Raises
    ------
    StationSelectionError
        If no station survives; the message names each rule and what it
        removed.
    ValidationError
        For a dataset that is not from :func:`read_ismn`, or ``good_fraction``
        outside [0, 1].
    """
    variable = ds.attrs.get("ismn_variable")
    if variable is None or variable not in ds or f"{variable}_flag" not in ds:
        raise ValidationError("select_stations: expected the output of read_ismn "
                         "(attribute 'ismn_variable' and its value and flag variables)")
    if not 0.0 <= good_fraction <= 1.0:
        raise ValidationError(f"good_fraction={good_fraction!r}: expected a fraction in [0, 1]")
    if period is not None:
        ds = ds.sel(time=slice(*period))
    values, flags = ds[variable], ds[f"{variable}_flag"]
    reported = values.notnull()
    good = reported & (flags == "G")
    n_reported = reported.sum("time")
    frac = (good.sum("time") / n_reported.where(n_reported > 0)).fillna(0.0)
    removed: list[str] = list(ds.attrs.get("skipped", []))
    ok_frac = (frac >= good_fraction).values
    for sid, f, n in zip(ds.station.values, frac.values, n_reported.values, strict=True):
        if f < good_fraction:
            removed.append(f"{sid}: good_fraction {f:.1%} < {good_fraction:.0%} "
                           f"({int(n)} values reported)")
    kept = ds.isel(station=np.flatnonzero(ok_frac))
    means = nday_mean(kept[[variable]].where(kept[f"{variable}_flag"] == "G"),
                      n=n_days, anchor=anchor, min_count=min_values).compute()
    n_obs = means[variable].notnull().sum("time")
    ok_obs = (n_obs >= min_obs).values
    for sid, n in zip(means.station.values, n_obs.values, strict=True):
        if n < min_obs:
            removed.append(f"{sid}: min_obs {int(n)} {n_days}-day means < {min_obs}")
    out = means.isel(station=np.flatnonzero(ok_obs))
    if out.sizes["station"] == 0:
        where = f"{ds.attrs['source']}: " if ds.attrs.get("source") else ""
        raise StationSelectionError(
            f"{where}no station left after the selection rules (depth {ds.attrs.get('depth_range')}, "
            f"flag == 'G', good_fraction >= {good_fraction}, {n_days}-day means with "
            f">= {min_values} values, min_obs >= {min_obs}): " + "; ".join(removed)
        )
    out = out.assign_coords(good_fraction=("station", frac.sel(station=out.station).values),
                            n_obs=("station", n_obs.sel(station=out.station).values.astype(int)))
    out.attrs = {**ds.attrs, "selection": removed, "n_days": int(n_days), "anchor": str(anchor),
                 "good_fraction_min": float(good_fraction), "min_obs": int(min_obs)}
    for line in removed:
        log.info("station removed: %s", line)
    return out


def selection_report(ds: xr.Dataset) -> pd.DataFrame:
    """Which rule removed which station, as a table.

    Parameters
    ----------
    ds : xarray.Dataset
        Output of :func:`select_stations`.

    Returns
    -------
    pandas.DataFrame
        Columns ``station`` and ``reason`` (empty when nothing was removed).
    """
    rows = [line.split(": ", 1) for line in ds.attrs.get("selection", [])]
    return pd.DataFrame(rows, columns=["station", "reason"])
