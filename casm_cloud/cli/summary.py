"""The run summary ``casm-cloud demo``, ``run`` and ``update`` print after a recipe run."""

from __future__ import annotations

__all__ = ["print_summary"]


def print_summary(ctx) -> None:
    """Print what a recipe run made: its outputs, scores, per-era tables, the validate
    stage's tables, the most important inputs and the stages' timings."""
    print("\ncasm-cloud summary")
    for name, url in ctx.outputs.items():
        if name == "recipe":
            continue
        print(f"  {name:<8}: {storage_join(url, 'index.html') if name == 'report' else url}")
    if ctx.dashboard:
        print(f"  dask dashboard (while running): {ctx.dashboard}")
    if ctx.summary.get("preset"):
        print(f"  preset  : {ctx.summary['preset']}")
    scores = ctx.summary.get("scores")
    if scores:
        print("  scores against the simulated truth (median over cells):")
        for k, v in scores.items():
            if isinstance(v, (int, float)):
                print(f"    {k:<28} {v:.3f}")
        for k, v in (scores.get("bias_steps") or {}).items():
            print(f"    bias step {k:<18} {v:+.4f}")
    for key, what, n in (("eras", "the simulated truth (median cell)", "n_pixels"),
                         ("station_eras", "the stations (median station)", "n_stations")):
        eras = (scores or {}).get(key) if key == "eras" else ctx.summary.get(key)
        if eras:
            print(f"  per era, against {what}:")
            print(f"    {'era':<18} {'from':<10}  {'to':<10}  {'R':>6} {'ubRMSE':>7} "
                  f"{'bias':>7} {n:>10}")
            for label, e in eras.items():
                print(f"    {label:<18} {e['start']:<10}  {e['end']:<10}  {e['R']:6.3f} "
                      f"{e['ubRMSE']:7.4f} {e['bias']:+7.4f} {e[n]:>10}")
    _print_validate_tables(ctx)
    top = ctx.summary.get("importance")
    if top:
        print("  permutation importance, the input whose permutation costs most (median NRMSE):")
        print("    " + ", ".join(f"{layer} {feature}" for layer, feature in top.items()))
    if ctx.timings:
        print(f"  stages run: {', '.join(f'{k} {v:.0f}s' for k, v in ctx.timings.items())}")


#: The SoMo.ml validate stage's tables the summary prints, in order, with what each holds.
_VALIDATE_TABLES = (
    ("cv", "cross validation at held-out station cells (median cell per fold; 'mean' over "
           "folds)"),
    ("era5", "the product against ERA5's own layers (median cell of the window)"),
    ("references", "the products at the stations, ranked by anomaly R (median cell)"),
    ("truth", "scores against the simulated truth at cells no fold trained on (median cell)"),
)


def _print_validate_tables(ctx) -> None:
    """Print the validate stage's ``cv.csv``, ``era5.csv`` and ``truth.csv`` as the run root
    holds them.

    Read from the stage's outputs, so a run that found validate up to date prints
    them too.  Printed only when they are current: the stage's marker is there and
    no stage before it finished later (a run stopped before validate after an
    upstream stage ran again leaves the old tables, which are then not printed).
    """
    import datetime as dt

    import pandas as pd

    from casm_cloud.recipes.runner import stage_state
    from casm_cloud.storage import exists, url_to_fs

    urls = {key: storage_join(ctx.run_root, "validate", f"{key}.csv") for key, _ in
            _VALIDATE_TABLES}
    found = {key: url for key, url in urls.items() if exists(url, ctx.so)}
    marker = stage_state(ctx.run_root, "validate", ctx.so) if found else None
    if not marker:
        return
    from casm_cloud.recipes import recipe_module

    names = [s.name for s in recipe_module("somo").STAGES]
    finished = dt.datetime.fromisoformat(marker["finished"])
    for name in names[:names.index("validate")]:
        st = stage_state(ctx.run_root, name, ctx.so) or {}
        if st.get("finished") and dt.datetime.fromisoformat(st["finished"]) > finished:
            print(f"  validate tables not shown: stage {name!r} ran after validate "
                  f"({st['finished'][:19]} > {marker['finished'][:19]}); run validate again")
            return
    for key, what in _VALIDATE_TABLES:
        if key not in found:
            continue
        fs, path = url_to_fs(found[key], ctx.so)
        with fs.open(path) as f:
            table = pd.read_csv(f, dtype={"fold": str})
        if len(table):
            print(f"  {what}:")
            print(f"    ({found[key]}, validate finished {marker['finished'][:19]})")
            print("    " + table.to_string(index=False, float_format=lambda v: f"{v:.3f}")
                  .replace("\n", "\n    "))


def storage_join(*parts: str) -> str:
    from casm_cloud.storage import join

    return join(*parts)

