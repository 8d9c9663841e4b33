"""Recipes on one runner: ``run``, ``update`` and ``demo`` dispatch on the recipe's ``kind``.

``RECIPES`` maps a kind to its module, which provides ``STAGES`` (a tuple of
:class:`~casm_cloud.recipes.stage.Stage`), ``check(recipe)`` (what can be
checked before a cluster starts) and ``demo_sources(recipe, out)``.  See
docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
from collections.abc import Iterator
from types import ModuleType

from casm_cloud.errors import InputError
from casm_cloud.recipes.hashes import stage_hashes
from casm_cloud.recipes.runner import (
    check_run_root,
    require_finished,
    run_stages,
    stage_state,
    update_stages,
    validate_names,
)
from casm_cloud.recipes.stage import Context

__all__ = ["RECIPES", "check_recipe", "recipe_module", "stages_of", "run_recipe",
           "update_recipe", "run_demo", "stage_hashes", "stage_state"]

#: Recipe kind -> module (imported when first used).
RECIPES = {"casm": "casm_cloud.recipes.casm", "somo": "casm_cloud.recipes.somo"}


def recipe_module(kind: str) -> ModuleType:
    if kind not in RECIPES:
        raise InputError(f"recipe kind {kind!r}: expected one of {', '.join(sorted(RECIPES))}")
    return importlib.import_module(RECIPES[kind])


def stages_of(recipe) -> tuple:
    return recipe_module(recipe.kind).STAGES


@contextlib.contextmanager
def _context(recipe, client, progress: bool) -> Iterator[Context]:
    """A context on ``client``, or on a cluster built from ``recipe.cluster`` (closed after)."""
    ctx = Context(recipe.run_root, dict(recipe.storage_options), progress=progress)
    if client is not None:
        ctx.client, ctx.dashboard = client, getattr(client, "dashboard_link", None)
        with _current(client):
            yield ctx
        return
    from casm_cloud.cluster import get_client

    c = recipe.cluster
    # get_client shuts the cluster down when the block ends, also on an error or Ctrl-C.
    with get_client(c.kind, n_workers=c.n_workers, threads_per_worker=c.threads_per_worker,
                    memory_limit=c.memory_limit, gateway_options=dict(c.gateway)) as (cl, dash):
        ctx.client, ctx.dashboard = cl, dash
        if progress and dash:
            print(f"[casm-cloud] dask dashboard: {dash}", flush=True)
        with _current(cl):
            yield ctx


@contextlib.contextmanager
def _current(client) -> Iterator[None]:
    """Every dask computation of the stages runs on ``client``'s cluster.

    Library code that submits tasks takes the client it is given; the rest
    (``dask.compute``, ``to_zarr``) uses dask's scheduler setting.  A
    dask-gateway client is not the process's default client (a notebook's own
    stays so), so without this those computations would run on threads here,
    or fail with "No clients found" where ``scheduler="dask.distributed"`` is
    set.  ``as_current`` sets that scheduler and makes ``Client.current()``
    (and ``distributed.get_client()``) return this client in this thread.
    Not ``dask.config.set(scheduler=client)``: nannies pickle the dask config
    into every worker they restart, and a client does not pickle (a worker
    killed mid-stage would never come back).
    """
    with client.as_current():
        yield


def _with_outputs(ctx: Context, recipe) -> Context:
    """Name the run's user-facing outputs for the caller's summary (after the stages ran)."""
    from casm_cloud.config import DEFAULT_OUTPUTS

    ctx.outputs = {k: recipe.output(k) for k in DEFAULT_OUTPUTS if hasattr(recipe, "output")}
    return ctx


def check_recipe(recipe) -> None:
    """Everything a run checks before a cluster starts: the catalog has the entries the
    recipe names, the stations exist, the run root can be written (one-line errors)."""
    import yaml

    try:
        recipe_module(recipe.kind).check(recipe)
    except yaml.YAMLError as err:  # the catalog (the one YAML a check reads)
        from casm_cloud.catalog import CatalogError

        raise CatalogError(f"sources.catalog: {recipe.sources.catalog} is not valid YAML: "
                           f"{err}") from None
    check_run_root(recipe.run_root, recipe.storage_options)


def run_recipe(recipe, *, start_from: str | None = None, until: str | None = None,
               client=None, progress: bool = True) -> Context:
    """Run (or resume) a recipe; returns the context with timings and summary.

    Parameters
    ----------
    recipe
        A validated recipe (:func:`casm_cloud.config.load_recipe`).
    start_from : str, optional
        Re-run this stage and all after it, whatever their markers say.
    until : str, optional
        Stop after this stage.
    client : distributed.Client, optional
        Use this client; otherwise one is built from ``recipe.cluster``.
    progress : bool
        One line per stage, bars for the stages that compute chunk by chunk.

    Raises
    ------
    casm_cloud.errors.UserError
        An unknown stage, a missing catalog, entry or station folder, a run
        root that cannot be written: all found before a cluster starts.
    """
    stages = stages_of(recipe)
    validate_names(stages, start_from, until)
    check_recipe(recipe)
    with _context(recipe, client, progress) as ctx:
        return _with_outputs(
            run_stages(stages, recipe, ctx, start_from=start_from, until_stage=until), recipe)


def update_recipe(recipe, until, *, client=None, progress: bool = True) -> Context:
    """Extend a finished run with new months up to ``until`` (the monthly update).

    Stored seasonal parameters and trained networks are reused as they are;
    each stage's ``update`` appends or redoes what the new data touch.  Each
    stage records how far it got, so the same update twice changes nothing,
    and a killed update continues.

    Raises
    ------
    casm_cloud.errors.UserError
        If ``until`` is not a date after the recipe's period, or the run has
        not finished with this recipe (run it first).
    """
    try:
        until = until if isinstance(until, dt.date) else dt.date.fromisoformat(str(until))
    except ValueError:
        raise InputError(f"--until {until!r}: expected a date YYYY-MM-DD") from None
    if until <= recipe.period.end:
        raise InputError(f"--until {until}: the recipe's period already ends on "
                         f"{recipe.period.end}; an update extends past it")
    stages = stages_of(recipe)
    require_finished(stages, recipe, recipe.run_root, recipe.storage_options)
    check_recipe(recipe)
    with _context(recipe, client, progress) as ctx:
        return _with_outputs(update_stages(stages, recipe, ctx, until, recipe.period.end), recipe)


def run_demo(out: str = "casm-demo", *, kind: str = "casm", start_from: str | None = None,
             until: str | None = None, cluster: str | None = None, client=None) -> Context:
    """The embedded default: simulate the demo region if needed, then run its recipe.

    Layout under ``out``: ``recipe.yaml`` (the recipe it ran, which ``casm-cloud run``
    repeats), ``sources/`` (simulated inputs, ``truth.zarr``, ``stations/``,
    ``catalog.yaml``), ``run/`` (stage outputs), ``product.zarr``, the export and
    ``report/index.html``.

    Raises
    ------
    InputError
        If ``<out>/recipe.yaml`` is there and is not this demo's recipe (a user's
        edit, which the demo does not overwrite; ``casm-cloud run`` runs it).
    """
    from casm_cloud.config import demo_recipe_yaml, load_recipe, recipe_from_dict
    from casm_cloud.storage import join, read_text, write_text

    text = demo_recipe_yaml(out, kind=kind)
    path = join(str(out), "recipe.yaml")
    if read_text(path) not in (None, text):
        raise InputError(f"{path} is not the {kind} demo's recipe (edited?); the demo "
                         f"does not overwrite it: run it with 'casm-cloud run {path}', or "
                         f"give the demo another --out")
    write_text(path, text)
    recipe = load_recipe(path)
    if cluster:
        recipe = recipe_from_dict({**recipe.model_dump(mode="json"), "cluster": {"kind": cluster}})
    recipe_module(recipe.kind).demo_sources(recipe, out)
    ctx = run_recipe(recipe, start_from=start_from, until=until, client=client)
    ctx.outputs["recipe"] = path
    return ctx
