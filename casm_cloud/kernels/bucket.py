"""Private numba kernel: the three-layer soil-water bucket (docs/science.md, "Simulator").

NumPy in, NumPy out.  Called by :mod:`casm_cloud.simulate.bucket`.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _bucket_run(precip, pet, theta0, porosity, fc, wp, kdrain, depth, roots):  # pragma: no cover
    """Run the bucket model through ``T`` days.

    Parameters
    ----------
    precip, pet : float32 (T, N)
        Daily precipitation and potential evapotranspiration, mm day-1.
    theta0 : float64 (3, N)
        Volumetric water content of the three layers at the start.
    porosity, fc, wp : float64 (N,)
        Saturation, field capacity and wilting point (m3 m-3).
    kdrain : float64 (3, N)
        Drainage rate of each layer above field capacity, day-1.
    depth : float64 (3,)
        Layer thicknesses, mm.
    roots : float64 (3,)
        Share of the evapotranspiration demand taken from each layer.

    Returns
    -------
    theta : float32 (3, T, N)
        End-of-day water content per layer.
    state : float64 (3, N)
        Water content after the last day.
    """
    T, N = precip.shape
    out = np.empty((3, T, N), dtype=np.float32)
    state = theta0.copy()
    for t in range(T):
        for n in range(N):
            por = porosity[n]
            f = fc[n]
            w = wp[n]
            resid = 0.5 * w
            # infiltration into the top layer; saturation excess runs off
            room = (por - state[0, n]) * depth[0]
            inflow = precip[t, n]
            if inflow > room:
                inflow = room
            state[0, n] += inflow / depth[0]
            for layer in range(3):
                th = state[layer, n]
                # evapotranspiration, beta rising linearly from wp to fc
                beta = (th - w) / (f - w)
                if beta < 0.0:
                    beta = 0.0
                elif beta > 1.0:
                    beta = 1.0
                et = pet[t, n] * roots[layer] * beta
                th -= et / depth[layer]
                if th < resid:
                    th = resid
                # drainage above field capacity feeds the layer below
                d = kdrain[layer, n] * (th - f) * depth[layer] if th > f else 0.0
                if layer < 2 and d > 0.0:
                    below_room = (por - state[layer + 1, n]) * depth[layer + 1]
                    if d > below_room:
                        d = below_room
                    state[layer + 1, n] += d / depth[layer + 1]
                th -= d / depth[layer]
                state[layer, n] = th
                out[layer, t, n] = th
    return out, state
