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

import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from casm_cloud.config import casm, somo
from casm_cloud.config.base import DEFAULT_OUTPUTS, ConfigError, Period, _Section
from casm_cloud.config.casm import AMSR_ALL, DEFAULT_PRESET, PRESETS, Recipe
from casm_cloud.config.somo import SomoRecipe

__all__ = ["ConfigError", "Recipe", "SomoRecipe", "load_recipe", "recipe_from_dict",
           "demo_recipe", "demo_recipe_yaml", "DEFAULT_OUTPUTS", "PRESETS", "DEFAULT_PRESET",
           "AMSR_ALL", "Period"]

#: Recipe models by ``kind`` (each recipe's typed configuration).
RECIPE_KINDS: dict[str, type[_Section]] = {"casm": Recipe, "somo": SomoRecipe}

#: The demo recipe of each kind (YAML; paths are filled in by :func:`demo_recipe_yaml`).
_DEMOS = {"casm": casm.DEMO_YAML, "somo": somo.DEMO_YAML}


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
