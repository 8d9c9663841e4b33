"""Deep ensembles as parallel dask tasks: members trained, or fine-tuned, on the workers."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence

from casm_cloud.storage import join
from casm_cloud.training.dense import fine_tune, train_dense
from casm_cloud.training.loop import TrainingError, worker_threads


def _with_worker_threads(fn: Callable[..., str], *args, **kwargs) -> str:
    with worker_threads():
        return fn(*args, **kwargs)


def _member_task(pairs_url: str, out_path: str, kwargs: dict) -> str:
    """One ensemble member inside a dask worker: torch uses the worker's threads."""
    return _with_worker_threads(train_dense, pairs_url, out_path, **kwargs)


def _fine_tune_task(checkpoint: str, data: str, out_path: str, kwargs: dict) -> str:
    """One fine-tuned member inside a dask worker: torch uses the worker's threads."""
    return _with_worker_threads(fine_tune, checkpoint, data, out_path=out_path, **kwargs)


def _submit_members(client, task: Callable[..., str], jobs: Sequence[tuple], name: str,
                    token: str) -> list[str]:
    """One task per member on the workers (``{"GPU": 1}`` and CUDA where workers have GPUs).

    ``jobs`` holds ``(*urls, kwargs)`` per member; tasks get URLs and options,
    never data.  Returns the tasks' results in member order.
    """
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    gpu = any(w.get("resources", {}).get("GPU", 0) >= 1 for w in workers)
    futures = []
    for k, (*urls, kw) in enumerate(jobs):
        if gpu:
            kw = {**kw, "device": "cuda"}
        futures.append(client.submit(task, *urls, kw, key=f"{name}-{k}-{token}",
                                     resources={"GPU": 1} if gpu else None, pure=False))
    return client.gather(futures)


def train_ensemble(pairs_url: str, out_root: str, *, n_members: int = 7, seed: int = 0,
                   client=None, **train_kwargs) -> list[str]:
    """Train a deep ensemble: ``n_members`` dense networks with seeds ``seed + k``.

    With a dask ``client`` every member is one task, so members train in
    parallel on the workers; where the cluster has workers with a ``GPU``
    resource, each task asks for ``{"GPU": 1}`` and trains on CUDA.  Tasks get
    URLs only, never data.  Without a client, members train here one by one.

    Parameters
    ----------
    pairs_url : str
        Sample table.
    out_root : str
        Members go to ``out_root/member_00``, ``member_01``, ...
    n_members : int
    seed : int
        Seed of member 0.
    client : distributed.Client, optional
    **train_kwargs
        Passed to :func:`train_dense` (``hidden``, ``epochs``, ``batch_size``, ...).

    Returns
    -------
    list of str
        Checkpoint paths, in member order.
    """
    paths = [join(out_root, f"member_{k:02d}") for k in range(n_members)]
    jobs = [(p, {**train_kwargs, "seed": seed + k}) for k, p in enumerate(paths)]
    if client is None:
        return [train_dense(pairs_url, p, **kw) for p, kw in jobs]
    from dask.base import tokenize

    token = tokenize(pairs_url, out_root, train_kwargs, seed)
    return _submit_members(client, _member_task, [(pairs_url, p, kw) for p, kw in jobs],
                           "train-member", token)


# fine_tune's options (its keyword arguments but the paths and storage options)
_FINE_TUNE_KEYS = frozenset(inspect.signature(fine_tune).parameters) - {
    "checkpoint", "data", "out_path", "storage_options"}


def fine_tune_ensemble(members: Sequence[str], data: str, out_root: str, *, client=None,
                       storage_options: Mapping | None = None, **fine_tune_kwargs) -> list[str]:
    """Fine-tune every member of an ensemble on one sample table (CASM: NN_AMSR2 → NN_AMSR-E).

    Member ``k`` is :func:`fine_tune` of ``members[k]`` on ``data`` with the
    same ``fine_tune_kwargs`` for all, written to ``out_root/member_kk``.
    With a dask ``client`` every member is one task on the workers, exactly
    as in :func:`train_ensemble` (``{"GPU": 1}`` and CUDA where the cluster
    has GPU workers); tasks get URLs only, every worker reads the checkpoint
    and the table itself.  Without a client, members are fine-tuned here one
    by one.  On CPU the weights equal those of the one-by-one loop at the
    same torch thread count (a worker uses its own thread count).

    Parameters
    ----------
    members : sequence of str
        Checkpoint URLs of the base networks, in member order.
    data : str
        Sample table of the new period (:func:`casm_cloud.pairs.write_pairs`).
    out_root : str
        Fine-tuned members go to ``out_root/member_00``, ``member_01``, ...
    client : distributed.Client, optional
    storage_options : mapping, optional
        fsspec options for the checkpoints, the table and ``out_root``.
    **fine_tune_kwargs
        Passed to :func:`fine_tune` (``freeze_first``, ``epochs``, ``lr``,
        ``batch_size``, ``patience``, ``seed``, ``device``).

    Returns
    -------
    list of str
        The new checkpoint URLs, in member order.

    Raises
    ------
    TrainingError
        If ``members`` is empty or a keyword is not one of :func:`fine_tune`'s.
    """
    members = [str(m) for m in members]
    if not members:
        raise TrainingError(f"fine_tune_ensemble: no members to fine-tune on {data}")
    unknown = sorted(set(fine_tune_kwargs) - _FINE_TUNE_KEYS)
    if unknown:
        raise TrainingError(f"fine_tune_ensemble: unknown option(s) {unknown}; expected some of "
                            f"{sorted(_FINE_TUNE_KEYS)}")
    kw = {**fine_tune_kwargs, "storage_options": dict(storage_options or {}) or None}
    jobs = [(m, data, join(out_root, f"member_{k:02d}"), kw) for k, m in enumerate(members)]
    if client is None:
        return [fine_tune(m, d, out_path=p, **k) for m, d, p, k in jobs]
    from dask.base import tokenize

    token = tokenize(members, data, out_root, fine_tune_kwargs)
    return _submit_members(client, _fine_tune_task, jobs, "fine-tune-member", token)
