"""Training samples: where every input and the target are valid at the same (time, y, x).

:mod:`casm_cloud.pairs.table` builds the sample table (residuals from
:mod:`casm_cloud.seasonal`), :mod:`casm_cloud.pairs.splits` deals its samples
to train / val / test, :mod:`casm_cloud.pairs.store` writes it with the
training scaler and opens it, :mod:`casm_cloud.pairs.loader` streams one split
of it to torch.
"""

from casm_cloud.pairs.loader import SampleLoader
from casm_cloud.pairs.splits import SPLITS, split_map
from casm_cloud.pairs.store import open_pairs, scaler_arrays, write_pairs
from casm_cloud.pairs.table import (
    FEATURES_ATTR,
    OFFSETS_ATTR,
    SCALER_ATTR,
    TARGET_ATTR,
    PairsError,
    build_pairs,
)
from casm_cloud.seasonal import cycle_values

__all__ = ["SPLITS", "PairsError", "build_pairs", "write_pairs", "open_pairs", "split_map",
           "scaler_arrays", "SampleLoader", "cycle_values", "FEATURES_ATTR", "TARGET_ATTR",
           "OFFSETS_ATTR", "SCALER_ATTR"]
