"""The CASM recipe's configuration (``kind: casm``, the default kind)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from casm_cloud.config.base import (
    Cluster,
    GridConfig,
    Outputs,
    Period,
    _no_credentials,
    _Recipe,
    _Section,
)

__all__ = ["Recipe", "PRESETS", "DEFAULT_PRESET", "AMSR_ALL", "DEMO_YAML"]


class Sources(_Section):
    """Catalog entry names of each input (``None``: not used)."""

    catalog: str
    smos: str = "smos"
    amsre: str = "amsre"
    amsr2: str = "amsr2"
    smap: str = "smap"
    truth: str | None = None
    era5: str | None = None      # ERA5 entry whose skin temperature screens frozen soil
    stations: str | None = None  # ISMN folder or zip (path or URL)
    # fsspec options to reach the catalog (the run root's are Recipe.storage_options)
    storage_options: dict[str, Any] = {}

    @field_validator("storage_options")
    @classmethod
    def _no_secrets(cls, v: dict) -> dict:
        return _no_credentials(v)


class Channels(_Section):
    """The networks' inputs: TB channels per sensor, and lat/lon as two more."""

    smos: tuple[str, ...] = ("tb_h", "tb_v")
    amsr: tuple[str, ...] = ("tb_10v", "tb_18h", "tb_36h", "tb_89v")
    latlon: bool = True


#: The twelve AMSR-E / AMSR2 channels (6.9-89 GHz, H and V).
AMSR_ALL = tuple(f"tb_{f}{p}" for f in ("06", "10", "18", "23", "36", "89") for p in "hv")

#: Named configurations: each sets the defaults of the keys it governs (a key the
#: recipe gives wins).  ``paper`` is Skulovich & Gentine (2023): four AMSR channels,
#: lat/lon as inputs, the three-stage transfer (NN_SMOS, NN_AMSR2, NN_AMSR2 fine-tuned
#: on AMSR-E -> NN_SMOS with its first three hidden layers frozen).  ``amsr12`` is the
#: measured improvement of docs/amsre_era.md: all twelve AMSR channels (6.9 GHz too,
#: which the paper had and did not use), the rest as the paper.
PRESETS: dict[str, dict] = {
    "paper": {"channels": {"amsr": ["tb_10v", "tb_18h", "tb_36h", "tb_89v"], "latlon": True},
              "training": {"freeze_first": 3}},
    "amsr12": {"channels": {"amsr": list(AMSR_ALL), "latlon": True},
               "training": {"freeze_first": 3}},
}
#: The preset of a recipe that names none (the best measured record).
DEFAULT_PRESET = "amsr12"


def _with_defaults(raw: dict, defaults: dict) -> dict:
    """``raw`` with the keys of ``defaults`` it lacks (nested sections merged)."""
    out = dict(raw)
    for k, v in defaults.items():
        if isinstance(v, dict) and isinstance(out.get(k, {}), dict):
            out[k] = _with_defaults(out.get(k) or {}, v)
        elif k not in out:
            out[k] = v
    return out


class SciencePeriods(_Section):
    """The CASM training scheme's periods (docs/science.md)."""

    transfer: Period = Period(start=dt.date(2010, 1, 17), end=dt.date(2011, 10, 3))
    smos_from: dt.date = dt.date(2010, 1, 12)
    amsre_until: dt.date = dt.date(2011, 10, 4)


class Aggregate(_Section):
    n_days: int = Field(3, ge=1, le=31)
    anchor: dt.date = dt.date(2002, 1, 1)
    min_count: int = Field(1, ge=1)
    # Days whose ERA5 daily-mean skin temperature (sources.era5) is below this leave
    # the satellite means: over frozen soil TB stops following soil moisture and
    # SMAP retrieves none.  None keeps every day.
    frozen_skt_k: float | None = Field(273.15, gt=0)


class Seasonal(_Section):
    min_obs: int = Field(40, ge=4)


class Network(_Section):
    hidden: tuple[int, ...] = (1050,) * 7
    activation: Literal["relu", "tanh", "gelu"] = "relu"


class Training(_Section):
    epochs: int = Field(100, ge=1)
    fine_tune_epochs: int = Field(20, ge=1)
    freeze_first: int = Field(3, ge=0)
    batch_size: int = Field(1024, ge=1)
    lr: float = Field(2e-4, gt=0)
    patience: int = Field(10, ge=1)
    split: Literal["spatial_blocks", "random"] = "spatial_blocks"
    block_size: int = Field(8, ge=1)
    val_fraction: float = Field(0.2, gt=0, lt=1)
    test_fraction: float = Field(0.2, ge=0, lt=1)
    seed: int = 0


class Ensemble(_Section):
    members: int = Field(7, ge=1)
    n_noise: int = Field(10, ge=1)
    noise_scale: float = Field(0.1, ge=0)


class Predict(_Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # "auto": the fastest precision (bf16 where the hardware makes it faster, TF32 on
    # CUDA) whose largest difference from fp32 on the run's first chunk is within
    # `tolerance` (m3 m-3), else fp32; chosen once per store on a worker and recorded
    # in it with the measured difference; the stage hash holds "auto", not the
    # decision (casm_cloud.inference.precision).
    precision: Literal["auto", "fp32", "bf16", "tf32"] = "auto"
    tolerance: float = Field(1e-3, gt=0)
    batch_size: int | None = None
    chunks: dict[Literal["time", "y", "x"], int] = {"time": 60, "y": 64, "x": 64}


class Validation(_Section):
    depth: tuple[float, float] = (0.0, 0.05)
    good_fraction: float = Field(0.9, ge=0, le=1)
    min_obs: int = Field(100, ge=1)

class Recipe(_Recipe):
    """A CASM recipe (``kind: casm``, the default for recipes that name no kind)."""

    kind: Literal["casm"] = "casm"
    name: str = "casm"
    # Named configuration setting the defaults of the keys it governs (PRESETS).
    preset: Literal["paper", "amsr12"] = DEFAULT_PRESET
    run_root: str
    storage_options: dict[str, Any] = {}
    sources: Sources
    grid: GridConfig = GridConfig()
    period: Period
    periods: SciencePeriods = SciencePeriods()
    channels: Channels = Channels()
    aggregate: Aggregate = Aggregate()
    seasonal: Seasonal = Seasonal()
    network: Network = Network()
    training: Training = Training()
    ensemble: Ensemble = Ensemble()
    predict: Predict = Predict()
    validation: Validation = Validation()
    cluster: Cluster = Cluster()
    outputs: Outputs = Outputs()


    @model_validator(mode="before")
    @classmethod
    def _preset_defaults(cls, data):
        """The preset's values under the keys the recipe does not give.

        An unknown preset is left to the field check, which names the key.
        """
        if isinstance(data, dict):
            name = data.get("preset", DEFAULT_PRESET)
            if isinstance(name, str) and name in PRESETS:
                data = _with_defaults(data, PRESETS[name])
        return data

    # -- derived --------------------------------------------------------


DEMO_YAML = """
name: demo
run_root: PLACEHOLDER
sources:
  catalog: PLACEHOLDER
  truth: truth
  era5: era5
grid: {name: M25, region: demo}
period: {start: 2008-01-01, end: 2017-12-31}
network: {hidden: [128, 128, 128, 128]}
training: {epochs: 12, fine_tune_epochs: 6, batch_size: 1024, lr: 0.001, patience: 4,
           block_size: 4}
ensemble: {members: 3, n_noise: 10}
predict: {chunks: {time: 120, y: 32, x: 32}}
validation: {min_obs: 50}
"""

