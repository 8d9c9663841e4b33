"""Recipes: one typed, validated configuration per kind (``casm``, ``somo``).

A recipe is YAML; ``load_recipe(path)`` turns it into a frozen
:class:`Recipe`.  Unknown keys, wrong types and impossible dates are errors
that name the key (``ConfigError: recipe key 'training.epochs': …``).  Paths
and dates are parsed at load time; relative paths resolve against the
recipe's folder.  Stages hash the values they read (see
``casm_cloud.recipes.runner``), so changing, say, the number of training
epochs re-runs training and what follows, never the aggregation.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from casm_cloud.errors import UserError

__all__ = ["ConfigError", "Recipe", "load_recipe", "recipe_from_dict", "demo_recipe",
           "demo_recipe_yaml"]


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


def _no_credentials(options: dict) -> dict:
    from casm_cloud.storage import secret_keys

    bad = sorted(secret_keys(options))
    if bad:
        raise ValueError(
            f"credentials ({', '.join(bad)}) do not belong in a recipe; give them through "
            "the environment (e.g. GOOGLE_APPLICATION_CREDENTIALS, AWS_* variables)"
        )
    return options


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



#: Recipe models by ``kind`` (a registry: each recipe module's typed configuration).
RECIPE_KINDS: dict[str, type[_Section]] = {"casm": Recipe}


def _jsonable(obj):
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    return obj


def _is_url(s: str) -> bool:
    return "://" in s


def _resolve_paths(raw: dict, base: Path) -> dict:
    """Relative local paths in the recipe resolve against the recipe's folder."""

    def fix(v):
        if isinstance(v, str) and v and not _is_url(v) and not os.path.isabs(v):
            return str((base / v).resolve())
        return v

    raw = dict(raw)
    if "run_root" in raw:
        raw["run_root"] = fix(raw["run_root"])
    if isinstance(raw.get("sources"), dict):
        src = dict(raw["sources"])
        for k in ("catalog", "stations"):
            if k in src:
                src[k] = fix(src[k])
        raw["sources"] = src
    if isinstance(raw.get("outputs"), dict):
        raw["outputs"] = {k: fix(v) for k, v in raw["outputs"].items()}
    return raw


def recipe_from_dict(raw: dict, *, base: str | Path = ".") -> Recipe:
    """Validate a recipe given as a dict.

    Raises
    ------
    ConfigError
        Naming the first offending key (``recipe key 'a.b': why``).
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"a recipe must be a mapping of keys, got {type(raw).__name__}")
    kind = raw.get("kind", "casm")
    if kind not in RECIPE_KINDS:
        raise ConfigError(f"recipe key 'kind': {kind!r} is not a recipe kind; expected one of "
                          f"{', '.join(sorted(RECIPE_KINDS))}")
    try:
        return RECIPE_KINDS[kind].model_validate(_resolve_paths(raw, Path(base)))
    except ValidationError as err:
        e = err.errors()[0]
        key = ".".join(str(p) for p in e["loc"]) or "<recipe>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (misspelt?)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        raise ConfigError(f"recipe key '{key}': {msg}") from None


def load_recipe(path: str | Path, **overrides) -> Recipe:
    """Read and validate a recipe YAML file.

    Parameters
    ----------
    path : str or Path
        The YAML file (a local path or an fsspec URL).
    **overrides
        Top-level keys replacing those in the file (e.g. ``period=...``).

    Raises
    ------
    ConfigError
        Unknown keys, wrong types, impossible dates, unreadable YAML.
        Also when the file does not exist.
    """
    if _is_url(str(path)):  # a recipe in a bucket (its paths are URLs)
        from casm_cloud.storage import read_text

        text, base = read_text(str(path)), Path(".")
        if text is None:
            raise ConfigError(f"recipe {path} does not exist")
    else:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe {path} does not exist")
        text, base = path.read_text(), path.parent
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {path} is not valid YAML: {err}") from None
    if isinstance(raw, dict):
        raw.update(overrides)
    return recipe_from_dict(raw, base=base)


def demo_recipe_yaml(out: str | Path, *, kind: str = "casm") -> str:
    """The demo recipe as ``casm-cloud demo`` writes it to ``<out>/recipe.yaml``.

    Its paths are relative to ``out`` when ``out`` is a local folder (the folder can
    be moved, the file edited and run again with ``casm-cloud run``), URLs under
    ``out`` otherwise.
    """
    if kind not in _DEMOS:
        raise ConfigError(f"no demo for recipe kind {kind!r}; expected one of {sorted(_DEMOS)}")
    from casm_cloud.storage import join

    out = str(out)

    def under(*parts: str) -> str:
        return join(out, *parts) if _is_url(out) else "/".join(parts)

    raw = yaml.safe_load(_DEMOS[kind])
    raw["run_root"] = under("run")
    raw["sources"]["catalog"] = under("sources", "catalog.yaml")
    raw["sources"]["stations"] = under("sources", "stations")
    raw["outputs"] = {"product": under("product.zarr"), "export": under(kind),
                      "report": under("report")}
    return (f"# The {kind} demo recipe `casm-cloud demo` ran; edit it and run it again with\n"
            f"#   casm-cloud run <this file>\n"
            + yaml.safe_dump(raw, sort_keys=False, default_flow_style=None))


def demo_recipe(out: str | Path, *, kind: str = "casm") -> Recipe:
    """The embedded default: the demo region and a configuration sized for
    a few minutes on 2 cores (small networks and ensembles)."""
    text = demo_recipe_yaml(out, kind=kind)
    return recipe_from_dict(yaml.safe_load(text), base=str(out) if not _is_url(str(out)) else ".")


_DEMO_YAML = """
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

#: The demo recipe of each kind (YAML; paths are filled in by :func:`demo_recipe_yaml`).
_DEMOS = {"casm": _DEMO_YAML}


# --------------------------------------------------------------------------- SoMo.ml
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
    dynamic: tuple[str, ...] = ("log_tp", "t2m", "snr", "ssrd", "q", "skt")
    static: tuple[str, ...] = ("elevation", "elevation_std", "mean_precip", "aridity", "clay",
                               "sand", "silt", "porosity_top", "porosity_mid",
                               "vegetation_class")


class SomoTraining(_Section):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0)
    samples_per_epoch: int | None = Field(None, ge=1)  # None: every sample each epoch


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
    cluster: Cluster = Cluster()
    outputs: Outputs = Outputs()


    @property
    def period(self) -> Period:
        """The product's period (what ``casm-cloud update`` extends)."""
        return self.periods.product



RECIPE_KINDS["somo"] = SomoRecipe

_SOMO_DEMO_YAML = """
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
training: {epochs: 20, batch_size: 128, lr: 0.02, samples_per_epoch: 2048}
cv: {folds: 5, block_size: 2}
ensemble: {members: 5}
predict: {chunks: {time: 365, y: 16, x: 16}}
"""
_DEMOS["somo"] = _SOMO_DEMO_YAML
