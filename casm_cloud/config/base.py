"""What every recipe kind shares: sections, the window, the cluster, the outputs."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from casm_cloud.errors import UserError

__all__ = ["ConfigError", "Period", "GridConfig", "Cluster", "Outputs", "DEFAULT_OUTPUTS"]


class ConfigError(UserError, ValueError):
    """A recipe that cannot be used; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Period(_Section):
    start: dt.date
    end: dt.date

    @model_validator(mode="after")
    def _ordered(self):
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        return self


class GridConfig(_Section):
    name: Literal["M36", "M25", "M09"] = "M25"
    region: str | None = "demo"
    lat: tuple[float, float] | None = None
    lon: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _one_window(self):
        if (self.lat is None) != (self.lon is None):
            raise ValueError("give both lat and lon, or neither (and a region)")
        if self.lat is None and self.region is None:
            raise ValueError("give a region name or lat and lon")
        from casm_cloud.grid import REGIONS

        if self.region is not None and self.region not in REGIONS:
            raise ValueError(f"unknown region {self.region!r}; expected one of {sorted(REGIONS)}")
        return self

    def window(self):
        """The window on the named grid (EASE2, or lat/lon for a recipe that allows it)."""
        from casm_cloud.grid import grid_by_name

        grid = grid_by_name(self.name)
        lat, lon, region = self.lat, self.lon, self.region
        if lat is not None:
            return grid.window(lat=lat, lon=lon)
        return grid.window_by_name(region)


def _no_credentials(options: dict) -> dict:
    from casm_cloud.storage import secret_keys

    bad = sorted(secret_keys(options))
    if bad:
        raise ValueError(
            f"credentials ({', '.join(bad)}) do not belong in a recipe; give them through "
            "the environment (e.g. GOOGLE_APPLICATION_CREDENTIALS, AWS_* variables)"
        )
    return options

class Cluster(_Section):
    kind: str = "local"  # "local", "gateway" or a scheduler address tcp://host:port
    n_workers: int | None = None
    threads_per_worker: int | None = None
    memory_limit: str | None = None
    gateway: dict[str, Any] = {}

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in ("local", "gateway") and "://" not in v:
            raise ValueError("expected 'local', 'gateway' or a scheduler address like tcp://host:8786")
        return v


#: Where each user-facing output goes under the run root when ``outputs`` does not say.
DEFAULT_OUTPUTS = {"product": "product.zarr", "export": "casm", "report": "report"}


class Outputs(_Section):
    """Where the user-facing results go (default: beside the run root)."""

    product: str | None = None
    export: str | None = None
    report: str | None = None


class _Recipe(_Section):
    """What every recipe kind shares: no credentials in ``storage_options``; its outputs."""

    @field_validator("storage_options", check_fields=False)
    @classmethod
    def _no_secrets(cls, v: dict) -> dict:
        return _no_credentials(v)

    def output(self, which: Literal["product", "export", "report"]) -> str:
        """Where a user-facing output goes: ``outputs.<which>``, or under the run root."""
        from casm_cloud.storage import join

        given = getattr(self.outputs, which)
        return given or join(self.run_root, DEFAULT_OUTPUTS[which])
