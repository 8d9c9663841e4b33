"""The three-layer soil-water bucket on one block (wrapper of the numba kernel)."""

from __future__ import annotations

import numpy as np

from casm_cloud.kernels.bucket import _bucket_run

__all__ = ["initial_state", "run_bucket", "drainage_rates", "ROOT_SHARE"]

#: Share of the evapotranspiration demand met by each layer (0-10, 10-30, 30-50 cm).
ROOT_SHARE = np.array([0.45, 0.35, 0.20])


def drainage_rates(static: dict) -> np.ndarray:
    """Drainage rate above field capacity (day-1) per layer, (3, ny, nx): faster in sand."""
    base = np.array([0.5, 0.25, 0.1])[:, None, None]
    return base * (0.5 + static["sand"])[None]


def initial_state(static: dict) -> np.ndarray:
    """All layers at field capacity, (3, ny, nx)."""
    return np.repeat(static["fc"][None], 3, axis=0).astype(np.float64)


def run_bucket(precip_mm: np.ndarray, pet_mm: np.ndarray, state: np.ndarray, static: dict,
               layer_mm) -> tuple[np.ndarray, np.ndarray]:
    """Run the bucket through the days of ``precip_mm``.

    Parameters
    ----------
    precip_mm, pet_mm : (T, ny, nx)
        Daily precipitation and potential evapotranspiration, mm.
    state : (3, ny, nx)
        Water content of the layers before the first day.
    static : dict
        ``porosity``, ``fc``, ``wp``, ``sand`` maps.
    layer_mm : sequence of 3 floats

    Returns
    -------
    theta : float32 (3, T, ny, nx)
    state : float64 (3, ny, nx)
    """
    T, ny, nx = precip_mm.shape
    n = ny * nx

    def flat(a):
        return np.ascontiguousarray(a, dtype=np.float64).reshape(-1, n)

    theta, end = _bucket_run(
        np.ascontiguousarray(precip_mm, dtype=np.float32).reshape(T, n),
        np.ascontiguousarray(pet_mm, dtype=np.float32).reshape(T, n),
        flat(state), flat(static["porosity"])[0], flat(static["fc"])[0], flat(static["wp"])[0],
        flat(drainage_rates(static)), np.asarray(layer_mm, dtype=np.float64), ROOT_SHARE,
    )
    return theta.reshape(3, T, ny, nx), end.reshape(3, ny, nx)
