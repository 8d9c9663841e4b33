"""The product report: figures, tables and one HTML page.

:func:`write_report` draws, beside ``index.html``: maps of the mean soil
moisture and its coefficient of variation, a Hovmöller diagram of zonal
(per-row) means with the sensor changes marked, the global-mean series, the
share of each network (``source``) over time, maps of the structural and
data uncertainty, validation figures when a station table is given, and, on
simulated data (``truth`` given), scores against the truth
(:func:`scores_against_truth`).  Tables are written as CSV and shown in the
page.

Everything large stays lazy: the report asks dask for small aggregates only
(time means, zonal and spatial means, per-pixel sums), in a few
``dask.compute`` calls that stream over the time chunks.

Modules: :mod:`~casm_cloud.report.scores` (scores against the truth, sensor
changes), :mod:`~casm_cloud.report.figures` (one function per figure),
:mod:`~casm_cloud.report.page` (tables, sections, the page).

Public API::

    write_report(out_dir, product=product, truth=truth, validation=table)
    write_somo_report(out_dir, product=somo_product, cv=cv_table)   # the SoMo.ml page
    scores_against_truth(product, truth, min_obs=40)
    sensor_changes_from_source(product)
"""

from casm_cloud.report.page import write_report
from casm_cloud.report.scores import (
    MissingVariableError,
    ReportError,
    harmonic_anomaly,
    scores_against_truth,
    sensor_changes_from_source,
)
from casm_cloud.report.somo import write_somo_report

__all__ = ["write_report", "write_somo_report", "scores_against_truth", "sensor_changes_from_source",
           "harmonic_anomaly", "ReportError", "MissingVariableError"]
