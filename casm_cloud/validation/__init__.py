"""Validation against in-situ stations (``docs/science.md``, "Validate").

Public API::

    from casm_cloud.validation import read_ismn, select_stations, validate_product
    stations = select_stations(read_ismn("ISMN_download.zip"))
    table = validate_product(product, stations, variable="sm")
    aggregate_metrics(table, by="network")
    consistency_steps(product, reference, ["2015-03-31"])

    # the whole run (CLI ``casm-cloud validate`` and the recipe's validate stage):
    run_validation({"CASM": "gs://bucket/run/product.zarr"}, "ISMN_download.zip",
                   "gs://bucket/run/validate", storage_options={...})

Modules: :mod:`.stations` (ISMN ingest and selection), :mod:`.metrics`
(vectorised pairwise metrics, equal to pytesmo: closed forms of the pair
moments of :mod:`.moments`), :mod:`.anomaly` (short-term anomalies and
their R), :mod:`.collocate` (station to cell or location), :mod:`.evaluate`
(the per-station table and its aggregation), :mod:`.consistency` (steps at
sensor changes), :mod:`.figures` (matplotlib, imported on use),
:mod:`.workflow` (the validation run: tables, figures and summary into a
folder URL) and :mod:`.exceptions` (the user errors;
:class:`casm_cloud.errors.UserError`).
"""

from casm_cloud.validation.collocate import CollocationError, collocate
from casm_cloud.validation.consistency import consistency_steps
from casm_cloud.validation.evaluate import (
    aggregate_metrics,
    matched_pairs,
    score_pairs,
    validate_product,
)
from casm_cloud.validation.exceptions import MissingInputError, MissingKeyError, ValidationError
from casm_cloud.validation.metrics import (
    METRICS,
    anomaly,
    anomaly_r,
    bias,
    n_pairs,
    nrmsd,
    nrmse,
    pearson_r,
    r2,
    rel_bias,
    rmse,
    ubrmse,
)
from casm_cloud.validation.stations import (
    StationSelectionError,
    read_ismn,
    select_stations,
    selection_report,
)
from casm_cloud.validation.workflow import open_product, run_validation

__all__ = [
    "read_ismn", "select_stations", "selection_report", "StationSelectionError",
    "collocate", "CollocationError", "matched_pairs", "score_pairs", "validate_product", "aggregate_metrics",
    "consistency_steps",
    "METRICS", "pearson_r", "rmse", "ubrmse", "bias", "nrmse", "nrmsd", "rel_bias", "anomaly_r",
    "anomaly", "r2", "n_pairs",
    "run_validation", "open_product",
    "ValidationError", "MissingKeyError", "MissingInputError",
]
