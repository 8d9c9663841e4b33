"""``casm-cloud somo …`` commands: import the published model, predict into Zarr.

:func:`add_commands` registers a ``somo`` command with two subcommands on
the ``casm-cloud`` subparsers (``casm_cloud.cli`` lists it in its command
registry); each handler imports its library function lazily::

    casm-cloud somo import-published MODEL.pt --forcing-scaler F.csv \\
        --static-scaler S.csv --out CKPT
    casm-cloud somo predict CKPT FEATURES.zarr STATICS.zarr --out SM.zarr \\
        [--start DAY] [--end DAY] [--precision auto|fp32|bf16|tf32] [--tolerance T] \\
        [--device auto|cpu|cuda]
    casm-cloud somo importance RECIPE [--out DIR] [--seed N] [--cluster SPEC]
"""

from __future__ import annotations

__all__ = ["add_commands"]


def _add_import(sub) -> None:
    p = sub.add_parser("import-published",
                       help="convert the published SoMo.ml state dict + scaler CSVs into a "
                            "casm_cloud checkpoint (never unpickles)")
    p.add_argument("model", metavar="MODEL.pt", help="the published state dict (.pt)")
    p.add_argument("--forcing-scaler", required=True, help="forcing scaler CSV (aveK/stdK rows)")
    p.add_argument("--static-scaler", required=True, help="static scaler CSV (aveK/stdK rows)")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--dynamic", nargs="+", default=None, metavar="NAME",
                   help="dynamic input names in weight order (default: the published six; "
                        "deeper layers add the upper layers' SM)")
    p.add_argument("--target", default="sm", help="name of the output variable (sm)")

    def run(a):
        from casm_cloud.somo import import_published

        out = import_published(a.model, forcing_scaler=a.forcing_scaler,
                               static_scaler=a.static_scaler, out=a.out, dynamic=a.dynamic,
                               target=a.target)
        print(out)

    p.set_defaults(func=run)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="windowed EA-LSTM prediction into a Zarr store "
                                       "(resumable; --append for new months)")
    p.add_argument("checkpoint", help="SoMo.ml checkpoint directory")
    p.add_argument("features", help="Zarr URL of the daily dynamic features")
    p.add_argument("statics", help="Zarr URL of the static features")
    p.add_argument("--out", required=True, help="output Zarr URL")
    p.add_argument("--start", default=None, help="first output day (default: first with a "
                                                 "full 365-day window)")
    p.add_argument("--end", default=None, help="last output day (default: last forcing day)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "tf32"), default="auto",
                   help="auto: the fastest within --tolerance of fp32 on the first chunk")
    p.add_argument("--tolerance", type=float, default=1e-3,
                   help="largest difference from fp32 auto accepts, m3 m-3 (1e-3)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--time-chunk", type=int, default=None, help="output days per chunk (365)")
    p.add_argument("--batch-size", type=int, default=None, help="windows per forward pass")
    p.add_argument("--append", action="store_true", help="grow the output's days (update)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an output made by another configuration")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="recompute finished chunks")
    p.add_argument("--scheduler", default=None,
                   help="address of a running dask scheduler (default: this process)")

    def run(a):
        from casm_cloud.somo import predict_to_zarr

        kw = dict(start=a.start, end=a.end, precision=a.precision, tolerance=a.tolerance,
                  device=a.device,
                  batch_size=a.batch_size, resume=a.resume, append=a.append,
                  overwrite=a.overwrite,
                  chunks={"time": a.time_chunk} if a.time_chunk else None)
        if a.scheduler:
            from distributed import Client

            with Client(a.scheduler) as client:
                s = predict_to_zarr(a.checkpoint, a.features, a.statics, a.out, client=client,
                                    **kw)
        else:
            s = predict_to_zarr(a.checkpoint, a.features, a.statics, a.out, **kw)
        print(f"{s.url}: {s.n_chunks} chunks, {s.computed} computed, {s.skipped} already "
              f"finished (config {s.predict_hash[:12]}); precision {s.precision}")

    p.set_defaults(func=run)


def _add_importance(sub) -> None:
    p = sub.add_parser("importance", help="permutation feature importance of a finished run's "
                                          "CV fold models (O & Orth 2021, Fig. 4)")
    p.add_argument("recipe", help="recipe YAML file of a finished SoMo.ml run")
    p.add_argument("--out", default=None, help="output folder (default <run_root>/importance)")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutations (0)")
    p.add_argument("--cluster", default=None, help="'local', 'gateway' or tcp://host:port "
                                                   "(overrides the recipe)")

    def run(a):
        from casm_cloud.cluster import get_client
        from casm_cloud.config import load_recipe
        from casm_cloud.somo.importance import check_finished, run_importance

        recipe = load_recipe(a.recipe)
        check_finished(recipe)  # before a cluster starts
        c = recipe.cluster
        with get_client(a.cluster or c.kind, n_workers=c.n_workers,
                        threads_per_worker=c.threads_per_worker, memory_limit=c.memory_limit,
                        gateway_options=dict(c.gateway)) as (client, _):
            res = run_importance(recipe, a.out, client=client, seed=a.seed)
        top = res["table"]
        top = top[(top["fold"] == "median") & (top["feature"] != "baseline")]
        for layer, sub in top.groupby("layer"):
            best = sub.sort_values("dNRMSE", ascending=False).iloc[0]
            print(f"{layer}: top feature {best['feature']} (median dNRMSE "
                  f"{best['dNRMSE']:+.3f}, dR {best['dR']:+.3f})")
        print(f"{res['csv']}\n{res['png']} ({res['n_tasks']} tasks)")

    p.set_defaults(func=run)


def add_commands(subparsers) -> None:
    """Add ``somo import-published`` and ``somo predict`` to ``casm-cloud``'s subparsers."""
    p = subparsers.add_parser("somo", help="SoMo.ml: import the published model, predict, "
                                                "permutation importance")
    sub = p.add_subparsers(dest="somo_command", required=True)
    _add_import(sub)
    _add_predict(sub)
    _add_importance(sub)
