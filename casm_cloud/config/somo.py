"""The SoMo.ml recipe's configuration (``kind: somo``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from casm_cloud.config.base import (
    Cluster,
    GridConfig,
    Outputs,
    Period,
    _no_credentials,
    _Recipe,
    _Section,
)

__all__ = ["SomoRecipe", "DEMO_YAML"]


class SomoSources(_Section):
    """Catalog entries and the ISMN stations of a SoMo.ml run."""

    catalog: str
    era5: str = "era5"           # ERA5 forcing (daily or hourly) with swvl1..3
    # the static maps: one entry with every one (canonical ``static``), or several whose
    # variables together make them (``[etopo1, gldas_static]``: the providers' files)
    static: str | tuple[str, ...] = "static"
    stations: str                # ISMN folder or zip: the training targets
    truth: str | None = None     # the simulator's truth (scores against it)
    storage_options: dict[str, Any] = {}

    @field_validator("storage_options")
    @classmethod
    def _no_secrets(cls, v: dict) -> dict:
        return _no_credentials(v)


class SomoGrid(GridConfig):
    """The window, on ERA5's 0.25° grid by default (or an EASE2 grid)."""

    name: Literal["ERA5_0p25", "M36", "M25", "M09"] = "ERA5_0p25"


class SomoPeriods(_Section):
    """The product's days, the training targets' days, the climatology of the statics."""

    product: Period
    training: Period
    climatology: Period


class SomoModel(_Section):
    """The EA-LSTM (O & Orth 2021: 128 hidden, dropout 0.5, forget bias 5, 365 days)."""

    hidden: int = Field(128, ge=1)
    dropout: float = Field(0.5, ge=0, lt=1)
    initial_forget_bias: float = 5.0
    window: int = Field(365, ge=2)
    # the units each layer's network learns its target in: "era5" standardised by its ERA5
    # cell's mean and std (what the targets are rescaled to; docs/science.md, "The target's
    # units"); "absolute": m3 m-3 as in O & Orth (2021)
    target: Literal["era5", "absolute"] = "era5"
    dynamic: tuple[str, ...] = ("log_tp", "t2m", "snr", "ssrd", "q", "skt")
    static: tuple[str, ...] = ("elevation", "elevation_std", "mean_precip", "aridity", "clay",
                               "sand", "silt", "porosity_top", "porosity_mid",
                               "vegetation_class")


class SomoTraining(_Section):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0)
    samples_per_epoch: int | None = Field(None, ge=1)  # None: every sample each epoch
    # each window's last n days scored (neuralhydrology's predict_last_n); 1: the paper's
    predict_last_n: int = Field(1, ge=1)


class SomoTargets(_Section):
    # O & Orth (2021): a sensor's daily (UTC) mean needs at least min_subdaily good
    # sub-daily values that day; a sensor with fewer than min_days such days (two months)
    # over the targets' days is dropped; both before the rescaling to ERA5.
    min_subdaily: int = Field(6, ge=1)
    min_days: int = Field(60, ge=1)
    min_overlap: int = Field(30, ge=2)  # fewest common days of a station and its ERA5 cell


class SomoCV(_Section):
    folds: int = Field(5, ge=2)
    block_size: int = Field(4, ge=1)   # cells per side of a spatial block
    seed: int = 0


class SomoEnsemble(_Section):
    members: int = Field(5, ge=1)      # final runs on all cells, seeds seed .. seed+members-1
    seed: int = 0


class SomoPredict(_Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # As Predict.precision: one chooser, once per store (inference.precision).  An LSTM's
    # bf16 error grows over its window's 365 steps: on AMX CPUs the published model
    # drifted by 0.13 m3 m-3, so "auto" keeps fp32 there.
    precision: Literal["auto", "fp32", "bf16", "tf32"] = "auto"
    tolerance: float = Field(1e-3, gt=0)
    batch_size: int | None = None
    chunks: dict[Literal["time", "y", "x"], int] = {"time": 365, "y": 64, "x": 64}


class SomoValidation(_Section):
    min_obs: int = Field(30, ge=2)     # fewest paired days of a cell's scores
    # gridded products scored at the same stations and days as SoMo.ml and ERA5's layers:
    # name -> catalog entry (layers sm_l1..3, or one surface sm: a CASM product, ESA CCI)
    references: dict[str, str] = {}


class SomoImportance(_Section):
    """The paper's permutation importance (Fig. 4) as a stage: each (layer, fold,
    permutation) one task over the CV folds' models; seeded, so a rerun gives the same table."""

    enabled: bool = True
    seed: int = 0


#: Where each hyper-parameter of ``search.candidates`` lives in the recipe.
SEARCHABLE = {"hidden": "model", "dropout": "model", "initial_forget_bias": "model",
              "lr": "training", "epochs": "training", "batch_size": "training",
              "samples_per_epoch": "training", "predict_last_n": "training"}


class SomoSearch(_Section):
    """Hyper-parameter search by the spatial CV (O & Orth 2021): per layer, every
    combination of the candidates trained on every fold; the combination with the best
    CV ``metric`` (median over the held-out cells, mean over the folds) is the layer's."""

    candidates: dict[Literal[tuple(SEARCHABLE)], tuple[float, ...]] = {}
    metric: Literal["NRMSE", "R", "anomaly_R"] = "NRMSE"

    @field_validator("candidates")
    @classmethod
    def _valid_values(cls, v: dict) -> dict:
        """Each value passes the check of the key it stands for (model.*, training.*)."""
        out = {}
        for key, values in v.items():
            if not values:
                raise ValueError(f"{key}: give at least one candidate value")
            section = SomoModel if SEARCHABLE[key] == "model" else SomoTraining
            checked = []
            for x in values:
                try:
                    checked.append(getattr(section(**{key: x}), key))
                except ValidationError as err:
                    raise ValueError(f"{key} candidate {x!r}: "
                                     f"{err.errors()[0]['msg']}") from None
            out[key] = tuple(checked)
        return out


class SomoRecipe(_Recipe):
    """A SoMo.ml recipe (``kind: somo``): ERA5 + statics + ISMN → one EA-LSTM per layer."""

    kind: Literal["somo"] = "somo"
    name: str = "somo"
    run_root: str
    storage_options: dict[str, Any] = {}
    sources: SomoSources
    grid: SomoGrid = SomoGrid()
    periods: SomoPeriods
    model: SomoModel = SomoModel()
    training: SomoTraining = SomoTraining()
    targets: SomoTargets = SomoTargets()
    cv: SomoCV = SomoCV()
    ensemble: SomoEnsemble = SomoEnsemble()
    predict: SomoPredict = SomoPredict()
    validation: SomoValidation = SomoValidation()
    importance: SomoImportance = SomoImportance()
    search: SomoSearch = SomoSearch()
    cluster: Cluster = Cluster()
    outputs: Outputs = Outputs()


    @property
    def period(self) -> Period:
        """The product's period (what ``casm-cloud update`` extends)."""
        return self.periods.product

DEMO_YAML = """
kind: somo
name: somo-demo
run_root: PLACEHOLDER
sources: {catalog: PLACEHOLDER, stations: PLACEHOLDER, era5: era5, static: static,
          truth: truth}
grid: {name: ERA5_0p25, region: demo}
periods:
  product: {start: 2015-01-01, end: 2015-12-31}
  training: {start: 2011-01-01, end: 2015-12-31}
  climatology: {start: 2011-01-01, end: 2015-12-31}
model: {hidden: 24, window: 120}
training: {epochs: 20, batch_size: 128, lr: 0.02, samples_per_epoch: 2048, predict_last_n: 30}
cv: {folds: 5, block_size: 2}
ensemble: {members: 5}
predict: {chunks: {time: 365, y: 16, x: 16}}
"""
