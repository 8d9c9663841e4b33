"""Static maps and daily forcing: climate gradient, precipitation, radiation.

Plain NumPy on one spatial block.  Random fields come in two kinds:

* **chunk-independent** fields (static maps, storm pattern, bias fields)
  are hashed from (seed, stream, absolute grid row/column, day), so they are
  continuous across blocks and identical whatever the chunking;
* **per-block** draws (rain amounts) use a NumPy
  ``Generator`` seeded from (seed, stream, block origin, first day).
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter
from scipy.special import ndtr, ndtri

__all__ = ["STREAMS", "hash_uniform", "smooth_noise", "static_fields", "daily_forcing",
           "block_rng", "extraterrestrial_radiation"]

#: Random streams: one integer per use, so that no two uses share draws.
STREAMS: dict[str, int] = {
    "precip_mean": 1, "sand": 2, "clay": 3, "elevation": 4, "elevation_std": 5,
    "storm": 6, "forcing": 7, "era5_bias": 8, "smos": 11, "amsre": 12, "amsr2": 13,
    "smap": 14, "smap_bias": 15, "swath": 16, "stations": 17, "weather": 18, "cloud": 19,
}

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    # splitmix64 finaliser (Steele et al. 2014): a counter-based generator,
    # so a value depends on its key only, not on which block asked for it.
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def hash_uniform(seed: int, stream: int, *keys) -> np.ndarray:
    """Uniform (0, 1) numbers, a pure function of the integer keys (broadcast)."""
    with np.errstate(over="ignore"):
        h = _mix(np.uint64(seed) * _GOLDEN + np.uint64(stream))
        for k in keys:
            k = np.asarray(k).astype(np.int64).view(np.uint64)
            h = _mix(h ^ (k + _GOLDEN + (h << np.uint64(6)) + (h >> np.uint64(2))))
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53


def smooth_noise(seed: int, stream: int, rows: np.ndarray, cols: np.ndarray, scale: float,
                 days: np.ndarray | None = None) -> np.ndarray:
    """Standard-normal noise, smooth over ``scale`` cells, chunk-independent.

    Normal values on a lattice of nodes every ``scale`` cells (absolute grid
    indices) are interpolated bilinearly and rescaled to unit variance.

    Returns
    -------
    numpy.ndarray
        (rows, cols), or (days, rows, cols) if ``days`` is given.
    """
    def axis(idx):
        p = (np.asarray(idx, dtype=np.float64) + 0.5) / scale - 0.5
        k = np.floor(p).astype(np.int64)
        return k, p - k

    kr, wr = axis(rows)
    kc, wc = axis(cols)
    nr = np.arange(kr.min(), kr.max() + 2)
    nc = np.arange(kc.min(), kc.max() + 2)
    if days is None:
        g = ndtri(hash_uniform(seed, stream, nr[:, None], nc[None, :]))[None]
    else:
        g = ndtri(hash_uniform(seed, stream, np.asarray(days)[:, None, None], nr[None, :, None],
                               nc[None, None, :]))
    ir = kr - nr[0]
    ic = kc - nc[0]
    a = g[:, ir, :] * (1 - wr)[None, :, None] + g[:, ir + 1, :] * wr[None, :, None]
    b = a[:, :, ic] * (1 - wc)[None, None, :] + a[:, :, ic + 1] * wc[None, None, :]
    norm = np.sqrt((1 - wr) ** 2 + wr ** 2)[:, None] * np.sqrt((1 - wc) ** 2 + wc ** 2)[None, :]
    out = b / norm
    return out[0] if days is None else out


def block_rng(seed: int, stream: str, row0: int, col0: int, day0: int) -> np.random.Generator:
    """The generator of one block: seeded from (seed, stream, block origin, first day)."""
    return np.random.default_rng([int(seed), STREAMS[stream], int(row0), int(col0),
                                  int(day0) + 1_000_000])


def extraterrestrial_radiation(lat_deg: np.ndarray, doy: np.ndarray) -> np.ndarray:
    """Daily top-of-atmosphere radiation, MJ m-2 day-1 (FAO-56, Allen et al. 1998, eq. 21)."""
    phi = np.deg2rad(lat_deg)
    dr = 1 + 0.033 * np.cos(2 * np.pi * doy / 365.0)
    decl = 0.409 * np.sin(2 * np.pi * doy / 365.0 - 1.39)
    ws = np.arccos(np.clip(-np.tan(phi) * np.tan(decl), -1.0, 1.0))
    return (24 * 60 / np.pi * 0.0820 * dr
            * (ws * np.sin(phi) * np.sin(decl) + np.cos(phi) * np.cos(decl) * np.sin(ws)))


def _season(doy, lat, peak_doy):
    """cos of the annual cycle peaking on ``peak_doy`` (shifted half a year south)."""
    shift = np.where(lat < 0, 182.6, 0.0)
    return np.cos(2 * np.pi * (doy - peak_doy - shift) / 365.25)


def _pet_priestley_taylor(ssr_mj, t2m_k):
    """Potential evapotranspiration (mm day-1), Priestley & Taylor (1972).

    PET = α Δ/(Δ+γ) Rn/λ, α = 1.26, Rn from net shortwave minus a net
    longwave loss (0.75 ssr - 1 MJ, the form of FAO-56 eq. 39 with typical
    humidity and cloudiness), λ = 2.45 MJ kg-1.
    """
    tc = t2m_k - 273.15
    es = 0.6108 * np.exp(17.27 * tc / (tc + 237.3))
    delta = 4098.0 * es / (tc + 237.3) ** 2
    rn = np.maximum(0.75 * ssr_mj - 1.0, 0.0)
    return 1.26 * delta / (delta + 0.066) * rn / 2.45


def _q_sat(t_k, p_pa):
    tc = t_k - 273.15
    es = 610.94 * np.exp(17.625 * tc / (tc + 243.04))  # Alduchov & Eskridge (1996)
    return 0.622 * es / (p_pa - 0.378 * es)


# IGBP class -> (minimum, maximum) vegetation water content, kg m-2
_VWC = {4: (4.0, 7.0), 12: (0.3, 3.5), 10: (0.2, 1.5), 7: (0.1, 0.8)}


def static_fields(seed: int, rows: np.ndarray, cols: np.ndarray, lat: np.ndarray,
                  lon: np.ndarray, u: np.ndarray, settings) -> dict[str, np.ndarray]:
    """Static maps of one block (float64, (ny, nx)).

    Parameters
    ----------
    rows, cols : absolute grid row / column indices of the block.
    lat, lon : per row / per column, degrees.
    u : per column, 0 at the west edge of the window and 1 at the east edge
        (the climate gradient: dry west, humid east).

    Returns
    -------
    dict
        Canonical static variables plus the bucket parameters ``fc``, ``wp``
        and the vegetation range ``vwc_min``, ``vwc_max``.
    """
    s = settings
    ny, nx = rows.size, cols.size

    def noise(name, scale):
        return smooth_noise(seed, STREAMS[name], rows, cols, scale)

    uu = np.broadcast_to(u[None, :], (ny, nx))
    la = np.broadcast_to(lat[:, None], (ny, nx))
    mean_precip = (s.precip_west + (s.precip_east - s.precip_west) * uu) * np.exp(
        0.15 * noise("precip_mean", 8))
    sand = np.clip(0.40 + 0.15 * noise("sand", 6) + 0.15 * (0.5 - uu), 0.05, 0.90)
    clay = np.clip(0.22 + 0.08 * noise("clay", 6) + 0.05 * uu, 0.03, 0.55)
    over = np.maximum(sand + clay - 0.95, 0.0)
    sand = sand - over
    silt = 1.0 - sand - clay
    # Cosby et al. (1984), Water Resour. Res. 20(6), table 4: saturation from texture.
    porosity = 0.505 - 0.142 * sand - 0.037 * clay
    # the subsoil is denser (less organic matter, more compaction): a few % less pore space
    porosity_top = np.clip(porosity + 0.02, 0.0, 0.9)
    porosity_mid = np.clip(porosity - 0.03, 0.0, 0.9)
    wp = 0.02 + 0.40 * clay
    fc = np.minimum(wp + 0.10 + 0.10 * (1.0 - sand), porosity - 0.05)
    elevation = np.maximum(300.0 + 900.0 * (1.0 - uu) + 150.0 * noise("elevation", 8), 0.0)
    elevation_std = 20.0 * np.exp(0.6 * noise("elevation_std", 4))
    # aridity from the noise-free annual PET of a clear-ish sky (tau = 0.6)
    doy = np.arange(1, 366, 15, dtype=np.float64)[:, None, None]
    t_mean, t_amp = _temperature_climate(la, elevation)
    t2m = t_mean + t_amp * _season(doy, la, 200.0)
    ssr = 0.8 * 0.6 * extraterrestrial_radiation(la, doy)
    pet_mean = _pet_priestley_taylor(ssr, t2m).mean(axis=0)
    dryness = pet_mean / mean_precip
    veg = np.select([dryness < 0.8, dryness < 1.5, dryness < 3.0], [4, 12, 10], 7).astype(
        np.float64)
    # Budyko's radiative dryness index: net radiation (0.75 ssr - 1 MJ, as in the
    # PET) as mm of evaporation (lambda = 2.45 MJ kg-1) over precipitation
    aridity = np.maximum(0.75 * ssr - 1.0, 0.0).mean(axis=0) / 2.45 / mean_precip
    vwc_min = np.zeros_like(veg)
    vwc_max = np.zeros_like(veg)
    for cls, (lo, hi) in _VWC.items():
        vwc_min[veg == cls] = lo
        vwc_max[veg == cls] = hi
    return {
        "clay": clay, "sand": sand, "silt": silt, "porosity": porosity,
        "porosity_top": porosity_top, "porosity_mid": porosity_mid,
        "elevation": elevation, "elevation_std": elevation_std, "vegetation_class": veg,
        "mean_precip": 365.25 * mean_precip, "precip_mm_day": mean_precip,
        "aridity": aridity, "land_mask": np.ones((ny, nx)),
        "fc": fc, "wp": wp, "vwc_min": vwc_min, "vwc_max": vwc_max,
        "t_mean": t_mean, "t_amp": t_amp, "humid": uu, "lat2d": np.asarray(la),
    }


def _temperature_climate(lat2d, elevation):
    """Annual mean (K) and half-amplitude (K) of 2 m temperature."""
    alat = np.abs(lat2d)
    return 300.5 - 0.36 * alat - 0.0065 * elevation, 2.0 + 0.30 * alat


def daily_forcing(seed: int, static: dict, rows: np.ndarray, cols: np.ndarray,
                  days: np.ndarray, doy: np.ndarray, rng: np.random.Generator,
                  t_anom0: np.ndarray, settings) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Daily forcing of one block for ``days`` (days since 1970-01-01).

    Returns
    -------
    forcing : dict of (T, ny, nx) float64
        ``tp_mm``, ``t2m``, ``q``, ``ssrd``, ``ssr``, ``str`` (J m-2), ``pet`` (mm),
        ``atm_tau`` (clear-sky fraction) and ``vwc``.
    t_anom : (ny, nx)
        The synoptic temperature anomaly after the last day (carried on).
    """
    s = settings
    la = static["lat2d"]
    T = days.size
    d = doy[:, None, None].astype(np.float64)
    hemi_season_t = _season(d, la, 200.0)
    season_p = _season(d, la, 170.0)
    # wet / dry days: a smooth (storm-sized) Gaussian field against the
    # seasonal wet-day probability; amounts from a gamma distribution
    pw0 = np.clip(0.10 + 0.07 * static["precip_mm_day"], 0.08, 0.5)
    p_wet = np.clip(pw0 * (1.0 + 0.5 * season_p), 0.02, 0.9)
    z = smooth_noise(seed, STREAMS["storm"], rows, cols, s.storm_cells, days=days)
    wet = ndtr(z) < p_wet
    mean_amount = static["precip_mm_day"] / pw0
    amount = rng.gamma(s.precip_shape, 1.0 / s.precip_shape, size=wet.shape) * mean_amount
    tp_mm = np.where(wet, amount, 0.0)
    # synoptic temperature anomaly: AR(1) in time (rho 0.7, sd 3 K, carried
    # across chunks) of innovations that are smooth in space (weather systems)
    rho, sd = 0.7, 3.0
    eps = smooth_noise(seed, STREAMS["weather"], rows, cols, 4 * s.storm_cells, days=days)
    anom, _ = lfilter([sd * np.sqrt(1 - rho ** 2)], [1.0, -rho], eps, axis=0,
                      zi=(rho * t_anom0)[None])
    t2m = static["t_mean"] + static["t_amp"] * hemi_season_t + anom - 1.5 * wet
    cloud = smooth_noise(seed, STREAMS["cloud"], rows, cols, s.storm_cells, days=days)
    atm_tau = np.clip(0.72 - 0.32 * wet + 0.05 * cloud, 0.15, 0.78)
    ssrd_mj = atm_tau * extraterrestrial_radiation(la, d)
    albedo = 0.20
    ssr_mj = (1 - albedo) * ssrd_mj
    pressure = 101325.0 * np.exp(-static["elevation"] / 8400.0)
    rh = np.clip(0.40 + 0.30 * static["humid"] + 0.20 * wet, 0.15, 0.95)
    q = rh * _q_sat(t2m, pressure)
    str_mj = _net_longwave(t2m, q, pressure, atm_tau)
    pet = _pet_priestley_taylor(ssr_mj, t2m)
    vseason = 0.5 * (1 + _season(d, la, 215.0))
    vwc = static["vwc_min"] + (static["vwc_max"] - static["vwc_min"]) * vseason ** 1.5
    assert tp_mm.shape[0] == T
    return {"tp_mm": tp_mm, "t2m": t2m, "q": q, "ssrd": ssrd_mj * 1e6, "ssr": ssr_mj * 1e6,
            "str": str_mj * 1e6, "pet": pet, "atm_tau": atm_tau, "vwc": vwc}, anom[-1]


def _net_longwave(t2m_k, q, p_pa, atm_tau):
    """Surface net thermal radiation (MJ m-2 day-1, negative: a loss), FAO-56 eq. 39.

    Rnl = σ T⁴ (0.34 − 0.14 √e_a) (1.35 Rs/Rso − 0.35), σ = 4.903e-9 MJ K-4 m-2 day-1,
    e_a (kPa) from q and p, Rs/Rso the clear-sky fraction ``atm_tau / 0.75``.
    """
    e_a = q * p_pa / (0.622 + 0.378 * q) / 1000.0
    rs_rso = np.clip(atm_tau / 0.75, 0.3, 1.0)
    return -4.903e-9 * t2m_k ** 4 * (0.34 - 0.14 * np.sqrt(e_a)) * (1.35 * rs_rso - 0.35)
