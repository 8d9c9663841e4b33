import textwrap

import pytest

from casm_cloud.config import ConfigError, demo_recipe, load_recipe, recipe_from_dict

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
