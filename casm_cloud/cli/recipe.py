"""The recipe commands: ``demo``, ``run`` and ``update`` run a recipe's stages with the
runner (docs/architecture.md, "The runner") and print the run summary."""

from __future__ import annotations

import shlex

from casm_cloud.cli.summary import print_summary

__all__ = ["add_demo", "add_run", "add_update"]


def _add_common(p) -> None:
    """Options of the commands that run a recipe's stages."""
    p.add_argument("--from", dest="start_from", metavar="STAGE",
                   help="re-run from this stage on")
    p.add_argument("--until-stage", dest="until_stage", metavar="STAGE",
                   help="stop after this stage")
    p.add_argument("--cluster", help="'local', 'gateway' or tcp://host:port "
                   "(overrides the recipe)")


def add_demo(sub) -> None:
    from casm_cloud.recipes import RECIPES

    p = sub.add_parser("demo", help="simulate the demo region (if needed) and run the recipe")
    p.add_argument("--out", default=None, help="output folder (default ./<recipe>-demo)")
    p.add_argument("--recipe", default="casm", choices=sorted(RECIPES),
                   help="which recipe's demo (default: casm)")
    _add_common(p)

    def run(a):
        from casm_cloud.recipes import run_demo

        out = a.out or f"{a.recipe}-demo"
        ctx = run_demo(out, kind=a.recipe, start_from=a.start_from, until=a.until_stage,
                       cluster=a.cluster)
        print_summary(ctx)
        again = ["casm-cloud", "run", ctx.outputs["recipe"]]
        print(f"  recipe  : {ctx.outputs['recipe']}; edit it and run it again with\n    "
              + shlex.join(again + (["--cluster", a.cluster] if a.cluster else [])))

    p.set_defaults(func=run)


def add_run(sub) -> None:
    p = sub.add_parser("run", help="run (or resume) a recipe")
    p.add_argument("recipe", help="recipe YAML file")
    _add_common(p)

    def run(a):
        from casm_cloud.config import load_recipe
        from casm_cloud.recipes import run_recipe

        recipe = _with_cluster(load_recipe(a.recipe), a.cluster)
        print_summary(run_recipe(recipe, start_from=a.start_from, until=a.until_stage))

    p.set_defaults(func=run)


def add_update(sub) -> None:
    p = sub.add_parser("update", help="extend a finished run with new months of data")
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("--until", required=True, help="last day to include, YYYY-MM-DD")
    p.add_argument("--cluster", help="'local', 'gateway' or tcp://host:port")

    def run(a):
        from casm_cloud.config import load_recipe
        from casm_cloud.recipes import update_recipe

        recipe = _with_cluster(load_recipe(a.recipe), a.cluster)
        print_summary(update_recipe(recipe, a.until))

    p.set_defaults(func=run)


def _with_cluster(recipe, kind: str | None):
    """The recipe with ``--cluster`` as its cluster kind; its other cluster keys stay."""
    if not kind:
        return recipe
    from casm_cloud.config import recipe_from_dict

    raw = recipe.model_dump(mode="json")
    raw["cluster"] = {**raw["cluster"], "kind": kind}
    return recipe_from_dict(raw)

