"""Chunked ensemble inference into Zarr, with uncertainty (``docs/science.md``, "Predict").

One task per output chunk of ``(time, y, x)``: it reads its input region,
forms the residuals of the TB channels on the fly from the stored seasonal
parameters, gathers the valid samples, scales them, runs every ensemble
member on ``n_noise`` noisy copies of its input (noise
N(0, ``noise_scale`` · residual_std of each TB channel at that pixel, in
residual units), batched in one forward per member, writes its region of the
output store and marks the chunk finished in the store's ``ChunkRecord``.

Per sample, with member means m_k and member noise-stds s_k over the draws:

* ``sm_residual`` = mean over members and draws (= mean of m_k);
* ``structural_uncertainty`` = std over members of m_k;
* ``data_uncertainty`` = mean over members of s_k;
* ``seasonal_cycle`` = the target's cycle; ``sm`` = ``sm_residual`` + cycle.

Stds are population stds (ddof = 0), as ``numpy.std``.  Cells without valid
input stay NaN in every output variable.

Guarantees:

* The output is written template-first (metadata once, then one region per
  chunk, then the completion attribute), so a killed run resumes where it
  stopped (``resume=True`` skips recorded chunks).
* Noise is drawn from a generator seeded by (seed, time step, chunk origin,
  member, draw), so a chunk computed twice gives identical bits, also when an
  append grows a partially filled last time chunk.
* Models are loaded once per process (worker) through an ``lru_cache``
  keyed by path and content hash; tasks carry only paths and hashes.
* With a dask ``client`` whose workers declare a ``GPU`` resource, every
  model task is submitted with ``resources={"GPU": 1}``.  Each task is its
  own ``client.submit``, so no graph optimisation can fuse the annotation
  away (``docs/architecture.md``, "Known traps of this stack").

* ``precision="auto"`` (the default) runs bf16 only where the workers'
  hardware makes it faster (a GPU, or a CPU with AMX, confirmed by a short
  measurement of the members' network), decided once per store and recorded
  as ``casm_precision``; resumed and appended runs keep the recorded one.

Modules: :mod:`~casm_cloud.inference.kernel` (types, device, model cache,
the chunk task), :mod:`~casm_cloud.inference.predict` (checks, hashing,
:func:`predict_to_zarr`), :mod:`~casm_cloud.inference.chunked` (the output
store, regions and task runs that SoMo.ml's windowed prediction shares),
:mod:`~casm_cloud.inference.precision` (the one ``precision="auto"`` resolver
of both recipes, with its speed gate in :mod:`~casm_cloud.inference.speed`).
"""

from casm_cloud.inference.kernel import (
    PARAM_FIELDS,
    PREDICT_HASH_ATTR,
    PRODUCT_VARIABLES,
    PredictError,
    PredictSummary,
    resolve_device,
)
from casm_cloud.inference.kernel import (
    _cached_checkpoint as _cached_checkpoint,  # the per-process model cache
)
from casm_cloud.inference.predict import predict_config_hash, predict_to_zarr

__all__ = [
    "PredictError",
    "PRODUCT_VARIABLES",
    "PARAM_FIELDS",
    "PREDICT_HASH_ATTR",
    "PredictSummary",
    "predict_to_zarr",
    "predict_config_hash",
    "resolve_device",
]
