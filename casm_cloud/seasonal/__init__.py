"""Seasonal cycle: fit, evaluate and remove a one-year sinusoid per pixel.

The one owner of the year phase, the cycle formula, the residuals and the
fallbacks (docs/science.md, "Seasonal cycle"; docs/architecture.md, "Where
each concept lives").

* :mod:`casm_cloud.seasonal.fit`: the year phase and the fit (nine per-pixel
  sums, numba kernels in :mod:`casm_cloud.kernels.seasonal`);
* :mod:`casm_cloud.seasonal.cycle`: the cycle and the residuals (NumPy and lazy);
* :mod:`casm_cloud.seasonal.stage`: the stage's datasets and parameter stores;
* :mod:`casm_cloud.seasonal.sums`: the fit's reduced partial sums taken
  while another pass holds the data (the CASM ``aggregate`` stage), stored,
  and the parameters finished from them.
"""

from casm_cloud.seasonal.cycle import cycle_values, deseasonalize, residual_values, seasonal_cycle
from casm_cloud.seasonal.fit import (  # noqa: F401  (private names: tests, benchmarks)
    METHODS,
    PARAM_NAMES,
    SeasonalError,
    _aggregate,
    _combine,
    _partial_block,
    fit_seasonal_cycle,
    year_phase,
)
from casm_cloud.seasonal.stage import seasonal_params, seasonal_residuals, write_seasonal
from casm_cloud.seasonal.sums import (
    SUMS_KBUF,
    lazy_sums,
    merge_sums,
    open_sums,
    params_from_sums,
    sums_usable,
    write_sums,
)

__all__ = [
    "METHODS", "PARAM_NAMES", "SeasonalError", "year_phase", "cycle_values", "residual_values",
    "fit_seasonal_cycle", "seasonal_cycle", "deseasonalize", "seasonal_params",
    "seasonal_residuals", "write_seasonal",
    "SUMS_KBUF", "lazy_sums", "write_sums", "open_sums", "merge_sums", "params_from_sums",
    "sums_usable",
]
