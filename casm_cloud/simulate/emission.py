"""Microwave emission of vegetated soil: Dobson dielectric, Fresnel, tau-omega.

Plain NumPy, vectorised over any shape.  The chain (docs/science.md, "Simulator"):

1. free water: Debye relaxation with the temperature-dependent static
   permittivity and relaxation time of Stogryn (1971) / Ulaby et al.
   (1986, Microwave Remote Sensing vol. III, E.15-E.16);
2. soil: the semi-empirical mixing model of **Dobson et al. (1985)**, IEEE
   TGE 23(1), 35-46 (eqs. 28-30, α = 0.65, ε_s = (1.01 + 0.44 ρ_s)² - 0.062,
   effective conductivity of Peplinski et al. 1995 eq. 10 for the loss
   term); the model is calibrated on 1.4-18 GHz and used beyond it at 36.5
   and 89 GHz, where vegetation dominates the signal anyway;
3. smooth-surface Fresnel reflectivity at the incidence angle, then the
   roughness correction r_p ← r_p exp(-h cos² θ) (Choudhury et al. 1979);
4. tau-omega (Mo et al. 1982): TB_p = T_s (1 - r_p) γ + T_c (1 - ω)(1 - γ)
   (1 + r_p γ), γ = exp(-τ / cos θ), τ = b·VWC.

The L-band sensitivity that results, about -2 to -3 K per 0.01 m3 m-3 at
H polarisation over low vegetation, is the published order (Njoku &
Entekhabi 1996, J. Hydrol. 184, 101-129; Jackson & Schmugge 1989, Remote
Sens. Environ. 27, 203-212); ``tests/test_simulate.py`` checks it.

These equations are short closed forms that no maintained package in the
stack provides (pytesmo and ismn have no emission model), hence written here.
"""

from __future__ import annotations

import numpy as np

__all__ = ["water_permittivity", "dobson_permittivity", "fresnel", "tau_omega",
           "brightness_temperature"]

_EPS0 = 8.854e-12  # vacuum permittivity, F m-1
_RHO_S = 2.66      # specific density of soil solids, g cm-3


def water_permittivity(freq_ghz, t_k):
    """Complex permittivity ε' - jε'' of free water (Debye; Ulaby et al. 1986, E.15-E.16).

    Returns ``(eps_real, eps_imag_relaxation)``; the conductive loss of soil
    water is added by :func:`dobson_permittivity`.
    """
    tc = np.asarray(t_k, dtype=np.float64) - 273.15
    eps_w0 = 88.045 - 0.4147 * tc + 6.295e-4 * tc ** 2 + 1.075e-5 * tc ** 3
    two_pi_tau = 1.1109e-10 - 3.824e-12 * tc + 6.938e-14 * tc ** 2 - 5.096e-16 * tc ** 3
    eps_inf = 4.9
    ft = freq_ghz * 1e9 * two_pi_tau
    denom = 1.0 + ft ** 2
    return eps_inf + (eps_w0 - eps_inf) / denom, ft * (eps_w0 - eps_inf) / denom


def dobson_permittivity(mv, sand, clay, bulk_density, freq_ghz, t_k):
    """Soil permittivity (complex, ε' + jε'') after Dobson et al. (1985).

    Parameters
    ----------
    mv : array_like
        Volumetric water content, m3 m-3.
    sand, clay : array_like
        Mass fractions (0-1).
    bulk_density : array_like
        g cm-3.
    freq_ghz : float
    t_k : array_like
        Soil temperature, K.
    """
    mv = np.maximum(np.asarray(mv, dtype=np.float64), 1e-3)
    ew_r, ew_i = water_permittivity(freq_ghz, t_k)
    # effective conductivity, S m-1 (Peplinski et al. 1995 eq. 10, 1.4-18 GHz form)
    sigma = np.maximum(-1.645 + 1.939 * bulk_density - 2.25622 * sand + 1.594 * clay, 0.0)
    ew_i = ew_i + sigma / (2 * np.pi * _EPS0 * freq_ghz * 1e9) * (_RHO_S - bulk_density) / (
        _RHO_S * mv)
    alpha = 0.65
    beta_r = 1.2748 - 0.519 * sand - 0.152 * clay
    beta_i = 1.33797 - 0.603 * sand - 0.166 * clay
    eps_s = (1.01 + 0.44 * _RHO_S) ** 2 - 0.062
    er = (1 + bulk_density / _RHO_S * (eps_s ** alpha - 1) + mv ** beta_r * ew_r ** alpha
          - mv) ** (1 / alpha)
    ei = (mv ** beta_i * ew_i ** alpha) ** (1 / alpha)
    return er + 1j * ei


def fresnel(eps, incidence_deg: float, pol: str):
    """Smooth-surface reflectivity |r_p|² (p = "H" or "V") at the incidence angle."""
    th = np.deg2rad(incidence_deg)
    c, s2 = np.cos(th), np.sin(th) ** 2
    root = np.sqrt(eps - s2)
    if pol == "H":
        r = (c - root) / (c + root)
    elif pol == "V":
        r = (eps * c - root) / (eps * c + root)
    else:
        raise ValueError(f"polarisation {pol!r}: expected 'H' or 'V'")
    return np.abs(r) ** 2


def tau_omega(reflectivity, t_soil, t_canopy, tau, omega, incidence_deg: float):
    """TB (K) of the tau-omega model (Mo et al. 1982, J. Geophys. Res. 87(C13))."""
    gamma = np.exp(-tau / np.cos(np.deg2rad(incidence_deg)))
    return (t_soil * (1 - reflectivity) * gamma
            + t_canopy * (1 - omega) * (1 - gamma) * (1 + reflectivity * gamma))


def brightness_temperature(mv, t_soil, t_canopy, vwc, sand, clay, bulk_density, *,
                           freq_ghz: float, pol: str, incidence_deg: float,
                           roughness_h: float = 0.15, h_exponent: float = 0.5,
                           b_lband: float = 0.10,
                           b_exponent: float = 0.5, omega: float = 0.05):
    """Brightness temperature (K) of one channel.

    Parameters
    ----------
    mv : array_like
        Surface soil moisture, m3 m-3.
    t_soil, t_canopy : array_like
        Effective soil and canopy temperatures, K.
    vwc : array_like
        Vegetation water content, kg m-2.
    sand, clay, bulk_density : array_like
        Soil texture (fractions) and bulk density (g cm-3).
    freq_ghz, pol, incidence_deg
        The channel.
    roughness_h, h_exponent : float
        h in r_p exp(-h cos² θ) at L band; h grows as (f / 1.4 GHz)^h_exponent
        since the same surface is rougher at shorter wavelengths (h ∝ (kσ)²,
        Choudhury et al. 1979, saturating).
    b_lband, b_exponent : float
        τ = b(f)·VWC with b(f) = b_lband (f / 1.4 GHz)^b_exponent.
    omega : float
        Single-scattering albedo at L band, +0.0003 per GHz above 1.4 GHz.

    Returns
    -------
    numpy.ndarray
    """
    # The liquid share of soil water drops when frozen (linear from 273 to 268 K).
    liquid = np.clip((np.asarray(t_soil) - 268.0) / 5.0, 0.05, 1.0)
    eps = dobson_permittivity(mv * liquid, sand, clay, bulk_density, freq_ghz,
                              np.maximum(t_soil, 273.15))
    th = np.deg2rad(incidence_deg)
    h = roughness_h * (freq_ghz / 1.4) ** h_exponent
    r = fresnel(eps, incidence_deg, pol) * np.exp(-h * np.cos(th) ** 2)
    b = b_lband * (freq_ghz / 1.4) ** b_exponent
    w = omega + 3e-4 * max(freq_ghz - 1.4, 0.0)
    return tau_omega(r, t_soil, t_canopy, b * vwc, w, incidence_deg)
