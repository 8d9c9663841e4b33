"""Sensors: overpass temperatures, TB per channel, noise, RFI, swath gaps, SMAP SM.

Plain NumPy on one block (T, ny, nx).  Swath gaps are a function of the
day, latitude and longitude only (hashed daily phase), so they are identical
whatever the chunking and spatially coherent: stripes of missed longitudes,
tilted with latitude like inclined ground tracks, that move from day to day.
"""

from __future__ import annotations

import numpy as np

from casm_cloud.simulate.emission import brightness_temperature
from casm_cloud.simulate.forcing import STREAMS, block_rng, hash_uniform, smooth_noise
from casm_cloud.simulate.settings import Sensor

__all__ = ["ORBIT_SPACING_DEG", "swath_mask", "overpass_temperature", "teff_weight",
           "observe"]

_SLAB = 32  # days per emission call

#: Longitude between successive ground tracks of a ~14.6 orbits/day sun-synchronous orbit.
ORBIT_SPACING_DEG = 360.0 / 14.57


def swath_mask(seed: int, sensor: str, days: np.ndarray, lat: np.ndarray, lon: np.ndarray,
               coverage: float) -> np.ndarray:
    """True where the sensor sees the cell on that day: (T, ny, nx) boolean.

    A cell is seen when its position across the track pattern,
    ``frac((lon + 0.2·lat) / spacing - phase(day))``, is below ``coverage``;
    the daily phase is a hashed uniform number, so the expected fraction seen
    is exactly ``coverage`` and the gaps are stripes tens of cells wide.
    """
    phase = hash_uniform(seed, STREAMS["swath"], STREAMS[sensor], np.asarray(days))
    pos = (lon[None, None, :] + 0.2 * lat[None, :, None]) / ORBIT_SPACING_DEG
    return np.mod(pos - phase[:, None, None], 1.0) < coverage


def overpass_temperature(skt_mean, skt_amp, hour: float):
    """Skin temperature at local solar ``hour`` from a cosine diurnal cycle peaking at 13:30."""
    return skt_mean + skt_amp * np.cos(2 * np.pi * (hour - 13.5) / 24.0)


def teff_weight(freq_ghz: float, table) -> float:
    """C of T_eff = T_deep + C (T_skin - T_deep) at ``freq_ghz`` (Choudhury et al. 1982).

    ``table`` is ``SimSettings.teff_c``: ``(wavelength cm, C)`` pairs,
    interpolated in log wavelength and held constant beyond their range.
    ``None`` is the rule before the AMSR-era fix: 0.5 below 5 GHz, else 1.
    """
    if table is None:
        return 0.5 if freq_ghz < 5 else 1.0
    lam, c = np.asarray(sorted(table), dtype=np.float64).T
    return float(np.interp(np.log(29.9792458 / freq_ghz), np.log(lam), c))


def observe(sensor_name: str, sensor: Sensor, seed: int, fields: dict, static: dict,
            rows: np.ndarray, cols: np.ndarray, lat: np.ndarray, lon: np.ndarray,
            days: np.ndarray, settings, *, noise: bool = True) -> dict[str, np.ndarray]:
    """What one sensor reports for a block: canonical variables, float32 (T, ny, nx).

    Parameters
    ----------
    sensor_name : str
        Key of the sensor (its random stream).
    sensor : Sensor
    fields : dict
        Daily state of the block (``sm_l1``, ``skt``, ``skt_amp``, ``vwc``, ...).
    static : dict
        Static maps of the block (texture, porosity).
    rows, cols, lat, lon : absolute indices and coordinates of the block.
    days : days since 1970-01-01 of the block's time steps.
    noise : bool
        False gives the noise-free, gap-free signal (for tests).
    """
    rng = block_rng(seed, sensor_name, rows[0], cols[0], days[0])
    shape = fields["sm_l1"].shape
    seen = swath_mask(seed, sensor_name, days, lat, lon, sensor.coverage) if noise else (
        np.ones(shape, dtype=bool))
    t_skin = overpass_temperature(fields["skt"], fields["skt_amp"], sensor.overpass_hour)
    t_skin = t_skin.astype(np.float32, copy=False)
    out = {}
    if sensor.product == "sm":
        bias = sensor.sm_bias_std * smooth_noise(seed, STREAMS["smap_bias"], rows, cols, 6)
        err = rng.standard_normal(shape) * sensor.sm_error if noise else 0.0
        sm = np.clip(fields["sm_l1"] + bias + err, 0.0, 0.75)
        ok = seen & (fields["vwc"] <= sensor.max_vwc) & (t_skin > 273.15)
        out["sm"] = np.where(ok, sm, np.nan).astype(np.float32)
        return out
    bulk = (1.0 - static["porosity"]) * 2.66
    for (name, freq, pol), nedt, offset in zip(sensor.channels, sensor.nedt_k, sensor.offset_k, strict=True):
        # the longer the wavelength, the deeper the emitting layer: between the skin
        # at the overpass and the daily mean below (Choudhury et al. 1982)
        c = np.float32(teff_weight(freq, settings.teff_c))
        t_soil = fields["skt"] + c * (t_skin - fields["skt"])
        tb = np.empty(shape, dtype=np.float32)
        for t in range(0, shape[0], _SLAB):  # slabs of days: bounded complex temporaries
            sl = slice(t, t + _SLAB)
            tb[sl] = brightness_temperature(
                fields["sm_l1"][sl], t_soil[sl], t_skin[sl], fields["vwc"][sl], static["sand"],
                static["clay"], bulk, freq_ghz=freq, pol=pol,
                incidence_deg=sensor.incidence_deg, roughness_h=settings.roughness_h,
                h_exponent=settings.h_exponent, b_lband=settings.b_lband,
                b_exponent=settings.b_exponent, omega=settings.omega,
            )
        tb += np.float32(offset)
        if noise:
            tb += nedt * rng.standard_normal(shape, dtype=np.float32)
            if sensor.rfi_fraction > 0:
                hit = rng.random(shape, dtype=np.float32) < sensor.rfi_fraction
                tb[hit] += rng.uniform(*sensor.rfi_k, size=int(hit.sum())).astype(np.float32)
        out[name] = np.where(seen, tb, np.nan).astype(np.float32)
    return out
