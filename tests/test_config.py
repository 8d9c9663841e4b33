import textwrap
from pathlib import Path

import pytest

from casm_cloud.config import (
    ConfigError,
    demo_recipe,
    demo_recipe_yaml,
    load_recipe,
    recipe_from_dict,
)

BASE = {
    "run_root": "run",
    "sources": {"catalog": "cat.yaml"},
    "period": {"start": "2010-01-01", "end": "2011-12-31"},
}


def _with(**changes):
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for dotted, value in changes.items():
        keys = dotted.split("__")
        d = raw
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = value
    return raw


def test_defaults_and_paths(tmp_path):
    r = recipe_from_dict(BASE, base=tmp_path)
    assert r.run_root == str(tmp_path / "run")
    assert r.sources.catalog == str(tmp_path / "cat.yaml")
    assert r.network.hidden == (1050,) * 7 and r.ensemble.members == 7
    assert r.aggregate.n_days == 3 and str(r.aggregate.anchor) == "2002-01-01"
    assert r.output("product") == str(tmp_path / "run" / "product.zarr")
    assert r.grid.window().shape[0] > 0


def test_urls_are_left_alone():
    r = recipe_from_dict(_with(run_root="gs://bucket/runs/a"))
    assert r.run_root == "gs://bucket/runs/a"
    assert r.output("report") == "gs://bucket/runs/a/report"


@pytest.mark.parametrize(
    ("changes", "key", "why"),
    [
        ({"trainig": {}}, "trainig", "unknown key"),
        ({"training__epohcs": 3}, "training.epohcs", "unknown key"),
        ({"training__epochs": "many"}, "training.epochs", "integer"),
        ({"period__start": "2015-02-30"}, "period.start", "date"),
        ({"period__end": "2009-01-01"}, "period", "before start"),
        ({"ensemble__members": 0}, "ensemble.members", "greater than or equal to 1"),
        ({"predict__precision": "fp8"}, "predict.precision", "fp32"),
        ({"cluster__kind": "kubernetes"}, "cluster.kind", "scheduler address"),
        ({"grid__name": "M42"}, "grid.name", "M36"),
        ({"storage_options": {"token": "abc"}}, "storage_options", "environment"),
    ],
)
def test_errors_name_the_key(changes, key, why):
    raw = _with(**{k: v for k, v in changes.items() if "__" in k})
    raw.update({k: v for k, v in changes.items() if "__" not in k})
    with pytest.raises(ConfigError) as info:
        recipe_from_dict(raw)
    msg = str(info.value)
    assert f"recipe key '{key}'" in msg and why in msg
    assert "abc" not in msg  # a secret value never shows in an error


def test_missing_required_key():
    with pytest.raises(ConfigError, match="recipe key 'run_root': required key is missing"):
        recipe_from_dict({k: v for k, v in BASE.items() if k != "run_root"})


def test_load_yaml_file(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(textwrap.dedent("""
        run_root: out/run
        sources: {catalog: sources/catalog.yaml}
        period: {start: 2012-01-01, end: 2013-01-01}
        training: {epochs: 3}
    """))
    r = load_recipe(p)
    assert r.training.epochs == 3 and r.run_root == str(tmp_path / "out" / "run")
    p.write_text("run_root: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")


def test_demo_recipe(tmp_path):
    r = demo_recipe(tmp_path / "d")
    assert r.run_root.endswith("d/run") and r.output("product").endswith("d/product.zarr")
    assert r.sources.truth == "truth"


@pytest.mark.parametrize("kind", ["casm", "somo"])
def test_demo_writes_the_recipe_it_runs_and_the_command_that_repeats_it(
        tmp_path, monkeypatch, capsys, kind):
    """``casm-cloud demo`` runs ``<out>/recipe.yaml`` as written; its relative paths follow
    the folder when it moves; the printed command is the one that repeats the run."""
    import shlex
    import shutil

    from casm_cloud import recipes
    from casm_cloud.cli import build_parser, main
    from casm_cloud.recipes.stage import Context

    ran = []

    def fake_run(recipe, **kw):  # the stages themselves: tests/test_recipe_*.py
        ran.append(recipe)
        return Context(run_root=recipe.run_root, storage_options={})

    monkeypatch.setattr(recipes, "run_recipe", fake_run)
    monkeypatch.setattr(recipes.recipe_module(kind), "demo_sources", lambda recipe, out: None)
    out = tmp_path / "my demo"
    assert main(["demo", "--recipe", kind, "--out", str(out), "--cluster", "local"]) == 0
    written = out / "recipe.yaml"
    assert ran[0].model_dump() == load_recipe(written, cluster={"kind": "local"}).model_dump()
    assert ran[0].run_root == str(out / "run") and ran[0].cluster.kind == "local"
    assert ran[0].model_dump(exclude={"cluster"}) == demo_recipe(out, kind=kind).model_dump(
        exclude={"cluster"})
    again = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])
    assert again[0] == "casm-cloud"
    args = build_parser().parse_args(again[1:])
    assert (args.recipe, args.cluster) == (str(written), "local")
    # the same demo again finds its own file and runs it; the folder moved, it follows
    assert main(["demo", "--recipe", kind, "--out", str(out)]) == 0
    moved = shutil.move(out, tmp_path / "moved")
    r = load_recipe(Path(moved) / "recipe.yaml")
    assert r.run_root == str(tmp_path / "moved" / "run")
    assert r.output("product") == str(tmp_path / "moved" / "product.zarr")


def test_demo_never_overwrites_an_edited_recipe(tmp_path, monkeypatch, capsys):
    from casm_cloud import recipes
    from casm_cloud.cli import main

    monkeypatch.setattr(recipes, "run_recipe", lambda *a, **k: pytest.fail("ran"))
    out = tmp_path / "d"
    out.mkdir()
    edited = demo_recipe_yaml(out).replace("epochs: 12", "epochs: 40")
    (out / "recipe.yaml").write_text(edited)
    assert main(["demo", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out / "recipe.yaml") in err
    assert "casm-cloud run" in err
    assert (out / "recipe.yaml").read_text() == edited
    assert sorted(p.name for p in out.iterdir()) == ["recipe.yaml"]  # nothing simulated


def test_presets_set_defaults_and_explicit_keys_win():
    from casm_cloud.config import AMSR_ALL, DEFAULT_PRESET, PRESETS

    paper = recipe_from_dict(_with(preset="paper"))
    assert paper.channels.amsr == ("tb_10v", "tb_18h", "tb_36h", "tb_89v")
    assert paper.channels.latlon and paper.training.freeze_first == 3
    default = recipe_from_dict(BASE)
    assert default.preset == DEFAULT_PRESET
    assert default.channels.amsr == tuple(PRESETS[DEFAULT_PRESET]["channels"]["amsr"])
    assert recipe_from_dict(_with(preset="amsr12")).channels.amsr == AMSR_ALL
    # a key the recipe gives wins over its preset; the keys it does not give keep it
    r = recipe_from_dict(_with(preset="paper", channels__latlon=False, training__epochs=3))
    assert not r.channels.latlon and r.channels.amsr == paper.channels.amsr
    assert r.training.epochs == 3 and r.training.freeze_first == 3
    # a dumped recipe reloads to itself whatever its preset
    assert recipe_from_dict(paper.model_dump(mode="json")) == paper
    with pytest.raises(ConfigError, match="recipe key 'preset'"):
        recipe_from_dict(_with(preset="nonsense"))
