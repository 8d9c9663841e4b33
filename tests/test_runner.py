"""The runner: hashes follow exactly what each stage passes to library code; bad input is
refused before a cluster starts; a user error is one line, a bug keeps its traceback."""

from __future__ import annotations

import contextlib
import datetime as dt
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from casm_cloud.config import ConfigError, demo_recipe, recipe_from_dict
from casm_cloud.recipes import recipe_module, run_recipe
from casm_cloud.recipes.hashes import params_hash, recipe_leaves, stage_keys

#: Keys that say where and how a run happens, never what it computes: no stage reads them.
WHERE_AND_HOW = {"kind", "run_root", "storage_options", "cluster.kind", "cluster.n_workers",
                 "cluster.threads_per_worker", "cluster.memory_limit", "cluster.gateway"}
#: Keys valid only together (a window is given by both lat and lon, or by a region).
TOGETHER = {"grid.lat": {"grid.lat": [10.0, 20.0], "grid.lon": [-100.0, -90.0]},
            "grid.lon": {"grid.lat": [10.0, 20.0], "grid.lon": [-100.0, -90.0]}}

#: Keys whose other valid values are names, not arithmetic.
SPECIAL = {"grid.region": "tiny", "validation.references": {"ESA CCI": "esa_cci"},
           "search.candidates": {"hidden": [8, 16]}}


def _changed(value, annotation):
    """A different valid value of a recipe leaf."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 0.9 if value else 0.5
    if isinstance(value, dt.date):
        return value + dt.timedelta(days=1)
    if isinstance(value, str):
        options = typing.get_args(annotation)
        others = [o for o in options if isinstance(o, str) and o != value]
        return others[0] if others else value + "-changed"
    if isinstance(value, tuple | list):
        return [*value[:-1], _changed(value[-1], None)] if value else [1]
    if isinstance(value, dict):
        return {**value, next(iter(value)): _changed(next(iter(value.values())), None)} \
            if value else {"anon": True}
    if value is None:
        if "int" in str(annotation):
            return 512
        if "date" in str(annotation):
            return dt.date(2012, 1, 1)
        if "float" in str(annotation):
            return 260.0
        return "changed"
    raise TypeError(f"no change rule for {value!r}")


def _with(recipe, key: str, value) -> dict:
    raw = recipe.model_dump(mode="python")
    node = raw
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    return raw


def _field(recipe, key: str):
    obj = recipe
    *parents, leaf = key.split(".")
    for p in parents:
        obj = getattr(obj, p)
    return getattr(obj, leaf), type(obj).model_fields[leaf].annotation


def _variants(recipe, key: str) -> list:
    """Recipes that differ from ``recipe`` in ``key`` alone (a date both a little and a lot,
    since a stage may clip it to a period of its own)."""
    if key in TOGETHER:
        raw = recipe.model_dump(mode="python")
        raw["grid"] = {**raw["grid"], "region": None,
                       **{k.split(".")[1]: v for k, v in TOGETHER[key].items()}}
        return [recipe_from_dict(raw)]
    value, annotation = _field(recipe, key)
    if isinstance(value, dt.date):
        values = [value + dt.timedelta(days=d) for d in (1, 800, 2700, -2500)]
    else:
        values = [SPECIAL.get(key, _changed(value, annotation))]
    if value is not None and type(None) in typing.get_args(annotation):
        values.append(None)  # an optional key switched off
    out = []
    for v in values:
        with contextlib.suppress(ConfigError):
            out.append(recipe_from_dict(_with(recipe, key, v)))
    assert out, key
    return out


@pytest.mark.parametrize("kind", ["casm", "somo"])
def test_every_key_changes_exactly_the_stages_that_read_it(kind, tmp_path):
    recipe = demo_recipe(tmp_path, kind=kind)
    stages = recipe_module(kind).STAGES
    keys = {s.name: stage_keys(s, recipe) for s in stages}
    read = set().union(*keys.values())
    # no key is read by nobody: a dead key is either wired or removed
    assert recipe_leaves(recipe) - read == WHERE_AND_HOW
    base = {s.name: params_hash(s.params(recipe)) for s in stages}
    for key in sorted(recipe_leaves(recipe) - WHERE_AND_HOW):
        changed = {s.name for other in _variants(recipe, key) for s in stages
                   if params_hash(s.params(other)) != base[s.name]}
        readers = {name for name, ks in keys.items() if key in ks or (
            key in TOGETHER and ks & set(TOGETHER[key]))}
        assert changed == readers, key


def test_network_activation_reaches_the_network():
    from casm_cloud.recipes.casm import train_params

    raw = demo_recipe("/tmp/unused").model_dump(mode="json")
    raw["network"] = {**raw["network"], "activation": "tanh"}
    p = train_params(recipe_from_dict(raw))
    from casm_cloud.models import build_model

    model = build_model({"name": "dense", "n_inputs": 3, "hidden": p["hidden"],
                         "activation": p["activation"]})
    assert type(model.act).__name__ == "Tanh"


def _recipe_file(tmp_path: Path, **changes) -> Path:
    raw = demo_recipe(tmp_path / "demo").model_dump(mode="json")
    raw.update(changes)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _cli(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "casm-cloud"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)


def test_missing_catalog_fails_in_one_line_without_a_cluster(tmp_path, monkeypatch, capsys):
    path = _recipe_file(tmp_path)
    res = _cli("run", str(path))
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "sources.catalog" in lines[0] and "no catalog" in lines[0], lines
    assert "distributed" not in res.stderr and "Traceback" not in res.stderr
    # found before a cluster starts: no cluster is ever asked for
    from casm_cloud import cli, cluster

    def no_cluster(*args, **kwargs):
        raise AssertionError("a cluster was started before the recipe was checked")

    monkeypatch.setattr(cluster, "get_client", no_cluster)
    assert cli.main(["run", str(path)]) == 2
    assert "no catalog" in capsys.readouterr().err


def test_missing_entry_and_stations_are_named(tmp_path):
    from casm_cloud.catalog import CatalogError, make_entry, write_catalog

    cat = tmp_path / "catalog.yaml"
    entry = make_entry("canonical_zarr", str(tmp_path / "smos.zarr"), kind="smos")
    write_catalog({"smos": entry}, str(cat))
    raw = demo_recipe(tmp_path / "demo").model_dump(mode="json")
    raw["sources"] = {**raw["sources"], "catalog": str(cat)}
    with pytest.raises(CatalogError, match="sources.amsre: catalog .* has no entry 'amsre'"):
        run_recipe(recipe_from_dict(raw), progress=False)


def test_run_root_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    from casm_cloud.errors import InputError
    from casm_cloud.recipes import casm

    monkeypatch.setattr(casm, "check", lambda r: None)
    (tmp_path / "file").write_text("not a folder")
    raw = demo_recipe(tmp_path / "demo").model_dump(mode="json")
    raw["run_root"] = str(tmp_path / "file" / "run")
    with pytest.raises(InputError, match="run_root .* cannot be written"):
        run_recipe(recipe_from_dict(raw), progress=False)


def test_unknown_stage_and_kind_are_user_errors(tmp_path):
    res = _cli("run", str(_recipe_file(tmp_path)), "--from", "nonsense")
    assert res.returncode == 2 and "unknown stage 'nonsense'" in res.stderr
    res = _cli("run", str(_recipe_file(tmp_path, kind="beans")))
    assert res.returncode == 2 and "recipe key 'kind'" in res.stderr


def test_a_bug_keeps_its_traceback(monkeypatch, capsys):
    from casm_cloud import cli

    def broken(args):
        raise ValueError("an internal bug, not the user's input")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    args = parser.parse_args(["export-casm", "x", "--out", "y"])
    args.func = broken
    monkeypatch.setattr(parser, "parse_args", lambda argv=None: args)
    with pytest.raises(ValueError, match="internal bug"):
        cli.main(["export-casm", "x", "--out", "y"])
    res = _cli("export-casm", "/nonexistent/product.zarr", "--out", "/tmp/none")
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_params_are_plain_data(tmp_path):
    """What a stage passes on is JSON-able, so its hash is what it uses."""
    recipe = demo_recipe(tmp_path)
    for s in recipe_module("casm").STAGES:
        assert isinstance(s.params(recipe), dict)
        params_hash(s.params(recipe))
    assert issubclass(type(recipe), BaseModel)


@pytest.mark.parametrize("kind", ["casm", "somo"])
def test_architecture_doc_holds_each_recipes_stage_table(kind, tmp_path):
    from casm_cloud.recipes.hashes import stage_table

    doc = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()
    table = stage_table(recipe_module(kind).STAGES, demo_recipe(tmp_path, kind=kind))
    assert table in doc, f"docs/architecture.md: the {kind} stage table is out of date:\n{table}"


def test_code_cites_only_files_in_the_repository():
    repo = Path(__file__).resolve().parents[1]
    for path in [*repo.glob("casm_cloud/**/*.py"), *repo.glob("benchmarks/*.py")]:
        assert "DESIGN.md" not in path.read_text(), path
