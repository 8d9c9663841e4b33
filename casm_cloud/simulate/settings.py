"""Simulator settings: sensors, noise, gaps and physical parameters.

One small frozen dataclass (:class:`SimSettings`) holds every level that a
test or a user may want to change; sensors are a registry (dict) of
:class:`Sensor` records.  Change a value with :func:`dataclasses.replace`
or :meth:`SimSettings.with_sensor`::

    s = SimSettings().with_sensor("smos", nedt_k=5.0, coverage=0.7)

Published figures behind the defaults
--------------------------------------
* SMOS L3 TB: radiometric accuracy of a few K per snapshot
  (Kerr et al. 2010, Proc. IEEE 98(5)), RFI outliers of tens of K
  (Oliva et al. 2012, IEEE TGRS 50(5)).
* AMSR-E / AMSR2: all twelve channels (6.925, 10.65, 18.7, 23.8, 36.5 and
  89.0 GHz, H and V) at 55°, descending pass 01:30 local solar time
  (Kawanishi et al. 2003, IEEE TGRS 41(2), table I; Imaoka et al. 2010,
  Proc. IEEE 98(5), table 1; AMSR2's extra 7.3 GHz channel is left out).
  NEΔT per channel from the same tables: AMSR-E 0.3, 0.6, 0.6, 0.6, 0.6,
  1.1 K; AMSR2 0.34, 0.7, 0.7, 0.6, 0.7, 1.2 K.  AMSR2 reads a few K warmer
  than AMSR-E after the gap, most at the low frequencies (Okuyama & Imaoka
  2015, IEEE TGRS 53(2)): the constant ``offset_k`` of AMSR2 here (3 K at
  6.9-10.65 GHz falling to 1.5 K at 89 GHz).
* SMAP L3 SM: ubRMSE about 0.04 m3 m-3 against core sites (Chan et al.
  2016, IEEE TGRS 54(8)).
* Daily coverage of 60-90 % at mid latitudes, in swath stripes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Sensor", "SimSettings", "DEFAULT_SENSORS", "MISSIONS"]


@dataclass(frozen=True)
class Sensor:
    """One satellite sensor of the simulator.

    Attributes
    ----------
    kind : str
        Canonical schema kind of its dataset (``smos``, ``amsre`` ...).
    product : {"tb", "sm"}
        Brightness temperatures or a soil-moisture retrieval.
    channels : tuple of (name, frequency GHz, polarisation)
        TB channels (empty for a retrieval).
    incidence_deg : float
        Incidence angle.
    overpass_hour : float
        Local solar time of the overpass used (physical temperature from
        the diurnal cycle at this hour).
    first_day, last_day : str
        Mission period (``last_day`` None: still flying).
    nedt_k : tuple of float
        Radiometric noise (K, one standard deviation) per channel.
    offset_k : tuple of float
        Constant calibration offset (K) per channel.
    coverage : float
        Fraction of the pixels observed each day (swath stripes).
    rfi_fraction : float
        Fraction of observations hit by an RFI outlier.
    rfi_k : (float, float)
        Range of the (positive) RFI excess, K.
    sm_error : float
        Retrieval noise (m3 m-3, the ubRMSE) for ``product="sm"``.
    sm_bias_std : float
        Standard deviation of the constant-in-time, smooth bias field.
    max_vwc : float
        Retrievals are dropped where vegetation water content exceeds this
        (kg m-2), as the SMAP L3 recommended-quality flag does.
    """

    kind: str
    product: Literal["tb", "sm"]
    channels: tuple[tuple[str, float, str], ...]
    incidence_deg: float
    overpass_hour: float
    first_day: str
    last_day: str | None
    nedt_k: tuple[float, ...] = ()
    offset_k: tuple[float, ...] = ()
    coverage: float = 0.75
    rfi_fraction: float = 0.0
    rfi_k: tuple[float, float] = (20.0, 60.0)
    sm_error: float = 0.0
    sm_bias_std: float = 0.0
    max_vwc: float = float("inf")

    def __post_init__(self):
        n = len(self.channels)
        if self.product == "tb" and not (len(self.nedt_k) == n and len(self.offset_k) == n):
            raise ValueError(
                f"sensor {self.kind}: nedt_k and offset_k need one value per channel ({n})"
            )
        if not 0.0 < self.coverage <= 1.0:
            raise ValueError(f"sensor {self.kind}: coverage {self.coverage} not in (0, 1]")
        if not 0.0 <= self.rfi_fraction < 1.0:
            raise ValueError(f"sensor {self.kind}: rfi_fraction {self.rfi_fraction} not in [0, 1)")

    @property
    def period(self) -> tuple[dt.date, dt.date | None]:
        last = dt.date.fromisoformat(self.last_day) if self.last_day else None
        return dt.date.fromisoformat(self.first_day), last


#: The AMSR-E / AMSR2 channels (schema names), H then V per frequency.
_AMSR_FREQS = (("06", 6.925), ("10", 10.65), ("18", 18.7), ("23", 23.8), ("36", 36.5),
               ("89", 89.0))
_AMSR = tuple((f"tb_{f}{p.lower()}", ghz, p) for f, ghz in _AMSR_FREQS for p in ("H", "V"))
# NEΔT (K) per frequency: Kawanishi et al. (2003) table I (AMSR-E); Imaoka et al.
# (2010) table 1 (AMSR2).
_NEDT_AMSRE = dict(zip(_AMSR_FREQS, (0.3, 0.6, 0.6, 0.6, 0.6, 1.1), strict=True))
_NEDT_AMSR2 = dict(zip(_AMSR_FREQS, (0.34, 0.7, 0.7, 0.6, 0.7, 1.2), strict=True))
# AMSR2 - AMSR-E (K) per frequency, the order of Okuyama & Imaoka (2015): largest at
# the low frequencies.
_OFFSET_AMSR2 = dict(zip(_AMSR_FREQS, (3.0, 3.0, 2.5, 2.5, 2.0, 1.5), strict=True))


def _per_channel(table: dict) -> tuple[float, ...]:
    return tuple(v for v in table.values() for _ in ("H", "V"))


#: The simulator before the AMSR-era fix (docs/amsre_era.md): four AMSR channels, one
#: NEΔT for all of them, no AMSR-E offset.  ``SimSettings.legacy()`` uses it.
_AMSR_LEGACY = (("tb_10v", 10.65, "V"), ("tb_18h", 18.7, "H"), ("tb_36h", 36.5, "H"),
                ("tb_89v", 89.0, "V"))

#: The default sensors, keyed by canonical kind.
DEFAULT_SENSORS: dict[str, Sensor] = {
    "smos": Sensor("smos", "tb", (("tb_h", 1.413, "H"), ("tb_v", 1.413, "V")), 42.5, 6.0,
                   "2010-01-12", None, nedt_k=(3.0, 3.0), offset_k=(0.0, 0.0),
                   coverage=0.70, rfi_fraction=0.01, rfi_k=(20.0, 60.0)),
    "amsre": Sensor("amsre", "tb", _AMSR, 55.0, 1.5, "2002-06-19", "2011-10-04",
                    nedt_k=_per_channel(_NEDT_AMSRE), offset_k=(0.0,) * len(_AMSR),
                    coverage=0.85),
    "amsr2": Sensor("amsr2", "tb", _AMSR, 55.0, 1.5, "2012-07-02", None,
                    nedt_k=_per_channel(_NEDT_AMSR2), offset_k=_per_channel(_OFFSET_AMSR2),
                    coverage=0.85),
    "smap": Sensor("smap", "sm", (), 40.0, 6.0, "2015-03-31", None, coverage=0.75,
                   sm_error=0.04, sm_bias_std=0.02, max_vwc=5.0),
}

#: Mission periods (first day, last day or None), from DEFAULT_SENSORS.
MISSIONS: dict[str, tuple[dt.date, dt.date | None]] = {
    k: s.period for k, s in DEFAULT_SENSORS.items()
}


@dataclass(frozen=True)
class SimSettings:
    """Physical parameters and sensor settings of the simulator.

    Attributes
    ----------
    sensors : dict of str to Sensor
        Sensor registry (defaults: :data:`DEFAULT_SENSORS`).
    spinup_days : int
        Days of bucket spin-up before ``start`` (from field capacity).
    precip_east, precip_west : float
        Mean precipitation (mm day-1) at the east and west edges of the
        window: the smooth climate gradient.
    precip_shape : float
        Shape of the gamma distribution of wet-day amounts.
    storm_cells : int
        Length scale (cells) of the spatially coherent wet/dry pattern.
    roughness_h : float
        Roughness parameter h in r_p exp(-h cos² θ) at L band.
    h_exponent : float
        h grows as (f / 1.4 GHz)^h_exponent.
    b_lband : float
        τ = b·VWC at 1.4 GHz; b grows as (f / 1.4 GHz)^b_exponent.
    b_exponent : float
        0.5 (0.7 before the AMSR-era fix; docs/amsre_era.md says why): the form
        b = c·λ^-x of Van de Griend & Wigneron (2004, IEEE TGRS 42(4)), with x
        set so that the X-band sensitivity dTB/dSM over light vegetation
        (VWC 0.5-1 kg m-2) is a third to a half of L band's and falls with
        VWC (docs/amsre_era.md compares the figures; Njoku et al. 2003,
        IEEE TGRS 41(2), on AMSR-E X band losing its sensitivity beyond about
        1.5 kg m-2); 0.7 gave a fifth at 1 kg m-2.
    omega : float
        Single-scattering albedo at L band; +0.0003 per GHz above (0.053 at
        10.65 GHz, near the 0.05-0.06 of C/X-band retrievals: Owe et al.
        2001, IEEE TGRS 39(8); Owe et al. 2008, J. Geophys. Res. 113, F01002).
    teff_c : tuple of (float, float), optional
        Effective soil temperature T_eff = T_deep + C (T_skin - T_deep)
        (Choudhury et al. 1982, J. Geophys. Res. 87(C2), 1301-1304, table 1:
        C = 0.246 at 21 cm, 0.480 at 11 cm, 0.667 at 6 cm, 0.802 at 2.8 cm
        wavelength; C = 1, the skin, at 0.82 cm and shorter, our assumption
        for sampling depths of a few mm) as ``(wavelength cm, C)`` pairs
        interpolated in log wavelength; T_deep is the daily-mean
        skin temperature.  ``None``: the rule before the AMSR-era fix (C = 0.5
        below 5 GHz, 1 above).
    layer_mm : (float, float, float)
        Layer thicknesses (0-10, 10-30, 30-50 cm).
    """

    sensors: dict[str, Sensor] = field(default_factory=lambda: dict(DEFAULT_SENSORS))
    spinup_days: int = 365
    precip_east: float = 2.6
    precip_west: float = 1.0
    precip_shape: float = 0.75
    storm_cells: int = 4
    roughness_h: float = 0.15
    h_exponent: float = 0.5
    b_lband: float = 0.10
    b_exponent: float = 0.5
    omega: float = 0.05
    teff_c: tuple[tuple[float, float], ...] | None = (
        (0.82, 1.0), (2.8, 0.802), (6.0, 0.667), (11.0, 0.480), (21.0, 0.246))
    layer_mm: tuple[float, float, float] = (100.0, 200.0, 200.0)

    @classmethod
    def legacy(cls, **changes) -> SimSettings:
        """The simulator before the AMSR-era fix (docs/amsre_era.md), for the "before" figures.

        Four AMSR channels (10.65 V, 18.7 H, 36.5 H, 89.0 V) with 0.6/0.9 K noise,
        ``b_exponent`` 0.7 and the old soil-temperature rule (``teff_c=None``).
        """
        sensors = dict(DEFAULT_SENSORS)
        sensors["amsre"] = dataclasses.replace(sensors["amsre"], channels=_AMSR_LEGACY,
                                               nedt_k=(0.6, 0.6, 0.6, 0.9),
                                               offset_k=(0.0, 0.0, 0.0, 0.0))
        sensors["amsr2"] = dataclasses.replace(sensors["amsr2"], channels=_AMSR_LEGACY,
                                               nedt_k=(0.6, 0.6, 0.6, 0.9),
                                               offset_k=(3.0, 2.5, 2.0, 1.5))
        return dataclasses.replace(cls(), sensors=sensors, b_exponent=0.7, teff_c=None,
                                   **changes)

    def with_sensor(self, name: str, **changes) -> SimSettings:
        """A copy with ``changes`` applied to sensor ``name``.

        Raises
        ------
        KeyError
            If there is no sensor ``name``.
        """
        if name not in self.sensors:
            raise KeyError(f"no sensor {name!r}; expected one of {sorted(self.sensors)}")
        sensors = dict(self.sensors)
        sensors[name] = dataclasses.replace(sensors[name], **changes)
        return dataclasses.replace(self, sensors=sensors)
