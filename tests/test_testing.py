"""The seeded factories of casm_cloud.testing: canonical, deterministic, lazy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from casm_cloud.grid import EASE2Grid
from casm_cloud.schema import validate
from casm_cloud.testing import make_product, make_tb_dataset, make_truth

WINDOW = EASE2Grid("M25").window_by_name("tiny")
TIMES = pd.date_range("2010-01-01", periods=40, freq="3D")


@pytest.mark.parametrize("kind", ["smos", "amsre", "amsr2"])
def test_tb_datasets_are_canonical(kind):
    ds = make_tb_dataset(WINDOW, TIMES, kind=kind, seed=1)
    validate(ds, kind, grid=WINDOW, values="all")
    assert all(ds[v].chunks is not None for v in ds.data_vars)
    assert 0.1 < float(ds[next(iter(ds.data_vars))].isnull().mean()) < 0.5


def test_truth_and_product_are_canonical_and_seeded():
    truth = make_truth(WINDOW, TIMES, seed=3)
    validate(truth, "truth", grid=WINDOW, values="all")
    product = make_product(WINDOW, TIMES, seed=3, truth=truth)
    validate(product, "product", grid=WINDOW, values="all")
    again = make_product(WINDOW, TIMES, seed=3, truth=make_truth(WINDOW, TIMES, seed=3))
    xr.testing.assert_identical(product.compute(), again.compute())
    other = make_product(WINDOW, TIMES, seed=4)
    assert not np.allclose(product["sm"].values, other["sm"].values, equal_nan=True)
    assert set(np.unique(product["source"].values)) <= set(product["source"].attrs["flag_values"])


def test_product_rejects_a_truth_of_another_shape():
    truth = make_truth(WINDOW, TIMES[:10], seed=0)
    with pytest.raises(ValueError, match="truth has sizes"):
        make_product(WINDOW, TIMES, truth=truth)
    with pytest.raises(ValueError, match="kind='modis'"):
        make_tb_dataset(WINDOW, TIMES, kind="modis")
