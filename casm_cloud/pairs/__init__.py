"""Training samples: where every input and the target are valid at the same (time, y, x).

:mod:`casm_cloud.pairs.table` builds and writes the sample table (residuals
from :mod:`casm_cloud.seasonal`, splits, the training scaler);
:mod:`casm_cloud.pairs.loader` streams one split of it to torch.
"""

from casm_cloud.pairs.loader import SampleLoader
from casm_cloud.pairs.table import (
    FEATURES_ATTR,
    OFFSETS_ATTR,
    SCALER_ATTR,
    SPLITS,
    TARGET_ATTR,
    PairsError,
    build_pairs,
    cycle_values,
    open_pairs,
    scaler_arrays,
    split_map,
    write_pairs,
)

__all__ = ["SPLITS", "PairsError", "build_pairs", "write_pairs", "open_pairs", "split_map",
           "scaler_arrays", "SampleLoader", "cycle_values", "FEATURES_ATTR", "TARGET_ATTR",
           "OFFSETS_ATTR", "SCALER_ATTR"]
