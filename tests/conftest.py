"""Shared test fixtures: the real provider files beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import casm_cloud  # noqa: F401  (loads pyproj before netCDF4; see casm_cloud/__init__.py)

REPO = Path(__file__).resolve().parents[1]


def _real_data_dir() -> Path:
    return Path(os.environ.get("CASM_REAL_DATA", REPO.parent / "shared" / "data" / "real"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Folder of real provider files (``../shared/data/real`` or ``$CASM_REAL_DATA``)."""
    path = _real_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is absent (set CASM_REAL_DATA to its location)")
    return path
