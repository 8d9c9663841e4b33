"""Training: the fit loop, CASM dense networks, transfer learning and deep ensembles.

* :mod:`~casm_cloud.training.loop` — :func:`fit` (Adam, a loss from
  :data:`LOSSES`, early stopping on the validation loss, the best state kept;
  same seed and data on CPU give identical weights), :func:`evaluate`,
  :func:`freeze_layers`, :class:`ArrayLoader`.
* :mod:`~casm_cloud.training.dense` — :func:`train_dense`: a CASM network
  from a Zarr sample table (:mod:`casm_cloud.pairs`) to a checkpoint
  (:mod:`casm_cloud.models.checkpoint`); :func:`fine_tune`: transfer
  learning, a copy with its first hidden layers frozen (bit-identical).
* :mod:`~casm_cloud.training.ensemble` — :func:`train_ensemble` and
  :func:`fine_tune_ensemble`: members with different seeds as separate dask
  tasks on the cluster's workers (GPU workers where the cluster has them);
  tasks receive URLs only, every worker reads the sample table itself.
"""

from casm_cloud.training.dense import fine_tune, train_dense
from casm_cloud.training.ensemble import fine_tune_ensemble, train_ensemble
from casm_cloud.training.loop import (
    LOSSES,
    ArrayLoader,
    NonFiniteError,
    TrainingError,
    evaluate,
    fit,
    freeze_layers,
)

__all__ = ["LOSSES", "NonFiniteError", "ArrayLoader", "fit", "evaluate", "freeze_layers",
           "train_dense", "fine_tune", "train_ensemble", "fine_tune_ensemble", "TrainingError"]
