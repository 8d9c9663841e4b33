"""Training: the fit loop, CASM dense networks, transfer learning and deep ensembles.

* :func:`fit` — Adam, a loss from :data:`LOSSES`, early stopping on the
  validation loss, the best state kept.  Same seed and data on CPU give
  identical weights (deterministic algorithms on, seeded initialisation,
  seeded batch order; the torch thread count is left as the caller set it).
* :func:`train_dense` — a CASM network from a Zarr sample table
  (:mod:`casm_cloud.pairs`) to a checkpoint (:mod:`casm_cloud.models.checkpoint`).
* :func:`fine_tune` — transfer learning: copy a network, freeze its first
  hidden layers (their weights stay bit-identical) and train the rest.
* :func:`train_ensemble` — members with different seeds as separate dask
  tasks on the cluster's workers (on GPU workers where the cluster has them).
  Tasks receive URLs only; every worker reads the sample table itself.
* :func:`fine_tune_ensemble` — :func:`fine_tune` of every member of an
  ensemble, as parallel tasks on the workers the same way (the recipe's
  transfer stage).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import time as _time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from casm_cloud.errors import UserError
from casm_cloud.models import build_model
from casm_cloud.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from casm_cloud.pairs import PairsError, SampleLoader
from casm_cloud.storage import join

__all__ = ["LOSSES", "NonFiniteError", "ArrayLoader", "fit", "evaluate", "freeze_layers",
           "train_dense", "fine_tune", "train_ensemble", "fine_tune_ensemble", "TrainingError"]

NSE_EPS = 0.1  # neuralhydrology's NSE loss epsilon (Kratzert et al. 2019)


class TrainingError(UserError, ValueError):
    """A training option that cannot work (a loss, layers to freeze, members)."""


class NonFiniteError(UserError, ValueError):
    """NaN or infinite values in training data or in the loss."""


def _mse(pred: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor | None) -> torch.Tensor:
    return torch.mean((pred - y) ** 2)


def _nse_cell(pred: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor | None) -> torch.Tensor:
    """Per-cell normalised MSE, mean((y_hat - y)^2 / (sigma_cell + eps)^2), eps = 0.1.

    sigma_cell is the standard deviation of the target at the sample's grid
    cell (Kratzert et al. 2019, HESS 23, 5089, eq. 2; SoMo.ml).
    """
    if sigma is None:
        raise TrainingError("loss 'nse_cell' needs batches (inputs, target, sigma_cell)")
    return torch.mean((pred - y) ** 2 / (sigma.reshape(pred.shape) + NSE_EPS) ** 2)


#: Training losses by name: ``loss(prediction, target, sigma_cell or None)``.
LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]] = {
    "mse": _mse,
    "nse_cell": _nse_cell,
}


class ArrayLoader:
    """Batches of in-memory tensors (the in-memory twin of :class:`~casm_cloud.pairs.SampleLoader`).

    Parameters
    ----------
    inputs : Tensor or tuple of Tensor
        Model inputs, first dimension the sample (a tuple for models with
        several inputs, e.g. ``(x_dynamic, x_static)``).
    target : Tensor (n, 1)
    sigma : Tensor (n, 1), optional
        Per-sample cell standard deviation for the ``nse_cell`` loss.
    batch_size : int
    shuffle_seed : int, optional
        Seeded new order every epoch; ``None`` keeps the order.
    features : sequence of str, optional
        Names of the columns of a 2-D input (used in error messages).
    """

    def __init__(self, inputs, target: torch.Tensor, sigma: torch.Tensor | None = None, *,
                 batch_size: int = 1024, shuffle_seed: int | None = None,
                 features: Sequence[str] | None = None):
        self.inputs = tuple(inputs) if isinstance(inputs, tuple | list) else (inputs,)
        self.target, self.sigma = target, sigma
        self.batch_size, self.shuffle_seed = int(batch_size), shuffle_seed
        self.features = list(features) if features is not None else None
        self.epoch = 0

    @property
    def n_samples(self) -> int:
        return int(self.target.shape[0])

    def __len__(self) -> int:
        return math.ceil(self.n_samples / self.batch_size)

    def __iter__(self):
        n = self.n_samples
        if self.shuffle_seed is None:
            order = None
        else:
            gen = torch.Generator().manual_seed(self.shuffle_seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=gen)
        self.epoch += 1
        for i in range(0, n, self.batch_size):
            idx = slice(i, i + self.batch_size) if order is None else order[i:i + self.batch_size]
            xs = tuple(t[idx] for t in self.inputs)
            batch = (xs if len(xs) > 1 else xs[0], self.target[idx])
            yield batch if self.sigma is None else (*batch, self.sigma[idx])


def _split(batch) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor | None]:
    xs, y, *rest = batch
    xs = tuple(xs) if isinstance(xs, tuple | list) else (xs,)
    return xs, y, (rest[0] if rest else None)


def _to(t: torch.Tensor | None, device) -> torch.Tensor | None:
    # Asynchronous host-to-device copies (from pinned memory where the loader pins it).
    return None if t is None else t.to(device, non_blocking=True)


def _unpack(batch, device) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor | None]:
    xs, y, sigma = _split(batch)
    return tuple(_to(x, device) for x in xs), _to(y, device), _to(sigma, device)


def _check_finite(xs: tuple[torch.Tensor, ...], y: torch.Tensor, loader, where: str) -> None:
    for k, x in enumerate(xs):
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            cols = bad.reshape(-1, x.shape[-1]).any(0).nonzero().flatten().tolist()
            names = getattr(loader, "features", None)
            label = [names[c] for c in cols] if names and len(xs) == 1 else cols
            raise NonFiniteError(f"NaN or infinite values in {where} input {k}, feature(s) "
                                 f"{label}; drop or fill them before training")
    if not bool(torch.isfinite(y).all()):
        raise NonFiniteError(f"NaN or infinite values in the {where} target")


@contextlib.contextmanager
def _deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _epoch_loss(model, loader, loss_fn, device, optimizer=None) -> float:
    """Mean loss of one pass over ``loader`` (a training step per batch with ``optimizer``).

    Inputs are checked on the host before they are copied.  On a GPU the loss
    is summed on the device and read once per epoch, so the GPU never waits
    for the host inside the loop (a diverged loss is then reported at the end
    of the epoch); on the CPU it is checked at every batch.
    """
    total, count = None, 0
    where = "training" if optimizer is not None else "validation"
    per_batch = torch.device(device).type == "cpu"
    for batch in loader:
        xs, y, sigma = _split(batch)
        _check_finite(xs, y, loader, where)
        xs, y, sigma = tuple(_to(x, device) for x in xs), _to(y, device), _to(sigma, device)
        with torch.set_grad_enabled(optimizer is not None):
            loss = loss_fn(model(*xs), y, sigma)
        if per_batch and not bool(torch.isfinite(loss)):
            _diverged(where, loss.item())
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        part = loss.detach().double() * y.shape[0]
        total = part if total is None else total + part
        count += y.shape[0]
    if count == 0:
        raise PairsError(f"the {where} data are empty")
    value = float(total) / count
    if not math.isfinite(value):
        _diverged(where, value)
    return value


def _diverged(where: str, value: float):
    raise NonFiniteError(f"the {where} loss became {value} (diverged); lower the learning rate")


def fit(model: nn.Module, train_loader: Iterable, val_loader: Iterable, *, epochs: int,
        lr: float = 2e-4, loss: Literal["mse", "nse_cell"] = "mse", patience: int = 10,
        seed: int = 0, device: str | torch.device = "cpu") -> tuple[dict, list[dict]]:
    """Train with Adam and early stopping on the validation loss.

    Only parameters with ``requires_grad`` are optimised (frozen layers stay
    bit-identical).  On return the model holds the best state.

    Parameters
    ----------
    model : torch.nn.Module
    train_loader, val_loader : iterable
        Yield ``(inputs, target)`` or ``(inputs, target, sigma_cell)``;
        ``inputs`` is a tensor or a tuple of tensors passed as ``model(*inputs)``.
    epochs : int
        Maximum number of epochs.
    lr : float
        Adam learning rate.
    loss : {"mse", "nse_cell"}
        Key of :data:`LOSSES`.
    patience : int
        Stop after this many epochs without a better validation loss.
    seed : int
        Seeds torch (dropout and anything else drawn during training).
    device : str or torch.device

    Returns
    -------
    best_state : dict
        State dict (CPU tensors) of the epoch with the lowest validation loss.
    history : list of dict
        Per epoch: ``epoch``, ``train_loss``, ``val_loss``, ``seconds``.

    Raises
    ------
    NonFiniteError
        If a batch holds NaN or infinite values, or the loss stops being finite.
    TrainingError
        If ``loss`` is unknown, or nothing is trainable.
    """
    if loss not in LOSSES:
        raise TrainingError(f"loss {loss!r} is unknown; expected one of {sorted(LOSSES)}")
    loss_fn = LOSSES[loss]
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("the model has no trainable parameters (everything is frozen)")
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(params, lr=lr)
    best_state, best_loss, waited, history = None, math.inf, 0, []
    with _deterministic():
        for epoch in range(int(epochs)):
            t0 = _time.perf_counter()
            model.train()
            train_loss = _epoch_loss(model, train_loader, loss_fn, device, optimizer)
            model.eval()
            val_loss = _epoch_loss(model, val_loader, loss_fn, device)
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                            "seconds": _time.perf_counter() - t0})
            if val_loss < best_loss:
                best_loss, waited = val_loss, 0
                best_state = {k: v.detach().to("cpu", copy=True)
                              for k, v in model.state_dict().items()}
            else:
                waited += 1
                if waited >= patience:
                    break
    model.load_state_dict(best_state)
    model.eval()
    return best_state, history


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: str | torch.device = "cpu") -> dict:
    """Pearson R, RMSE (in the loader's units) and sample count of a model on a loader.

    Returns
    -------
    dict
        ``{"r": float, "rmse": float, "n": int}`` (``r`` is NaN for fewer than 2 samples).
    """
    model.eval()
    preds, ys = [], []
    for batch in loader:
        xs, y, _ = _unpack(batch, device)
        preds.append(model(*xs).float().cpu().numpy().ravel())
        ys.append(y.float().cpu().numpy().ravel())
    p, y = np.concatenate(preds), np.concatenate(ys)
    r = float(np.corrcoef(p, y)[0, 1]) if p.size > 1 else math.nan
    return {"r": r, "rmse": float(np.sqrt(np.mean((p - y) ** 2))), "n": int(p.size)}


def freeze_layers(model: nn.Module, n: int) -> list[str]:
    """Freeze the first ``n`` hidden layers (``model.hidden_layers``); return their names.

    Raises
    ------
    TrainingError
        If the model has no ``hidden_layers`` or fewer than ``n``.
    """
    layers = getattr(model, "hidden_layers", None)
    if layers is None or n > len(layers):
        have = 0 if layers is None else len(layers)
        raise TrainingError(f"cannot freeze {n} hidden layers of {type(model).__name__}: it has "
                         f"{have}")
    frozen = []
    for i, layer in enumerate(list(layers)[:n]):
        for name, p in layer.named_parameters():
            p.requires_grad_(False)
            frozen.append(f"hidden_layers.{i}.{name}")
    return frozen


def _loaders(pairs_url, features, scaler, batch_size, seed, storage_options, target=None):
    train = SampleLoader(pairs_url, "train", batch_size, features, target, scaler, seed,
                         storage_options=storage_options)
    val = SampleLoader(pairs_url, "val", batch_size, train.features, target, train.scaler, None,
                       storage_options=storage_options)
    return train, val


def _metrics(model, history, pairs_url, features, scaler, batch_size, storage_options, device):
    best = min(history, key=lambda h: h["val_loss"])
    out = {"train_loss": best["train_loss"], "val_loss": best["val_loss"],
           "best_epoch": best["epoch"], "epochs_run": len(history),
           "history": [{k: round(v, 6) if isinstance(v, float) else v for k, v in h.items()}
                       for h in history]}
    for split in ("val", "test"):
        loader = SampleLoader(pairs_url, split, max(batch_size, 8192), features, None, scaler,
                              None, storage_options=storage_options)
        if loader.n_samples > 1:
            ev = evaluate(model, loader, device)
            out[f"{split}_r"], out[f"{split}_n"] = ev["r"], ev["n"]
            # RMSE in target units (the loader works in scaled units).
            out[f"{split}_rmse"] = ev["rmse"] * float(scaler["std"][loader.target])
    return out


def train_dense(pairs_url: str, out_path: str, *, hidden: Sequence[int] = (1050,) * 7,
                activation: str = "relu", epochs: int = 100, batch_size: int = 1024,
                lr: float = 2e-4, patience: int = 10, seed: int = 0,
                features: Sequence[str] | None = None, device: str = "cpu",
                storage_options: Mapping | None = None) -> str:
    """Train a CASM dense network on a sample table and write its checkpoint.

    Parameters
    ----------
    pairs_url : str
        Sample table from :func:`casm_cloud.pairs.write_pairs`.
    out_path : str
        Checkpoint directory.
    hidden, activation
        Architecture (see :class:`~casm_cloud.models.DenseNet`).
    epochs, batch_size, lr, patience, seed, device
        See :func:`fit`; ``seed`` also seeds the initial weights and the batch order.
    features : sequence of str, optional
        Input columns (default: all of the table's).
    storage_options : mapping, optional
        fsspec options for the table and the checkpoint.

    Returns
    -------
    str
        The checkpoint path.

    Raises
    ------
    PairsError
        If the table is unfinished or lacks a feature.
    NonFiniteError
        If the data hold NaN or infinite values.
    """
    train, val = _loaders(pairs_url, features, None, batch_size, seed, storage_options)
    torch.manual_seed(seed)
    model = build_model({"name": "dense", "n_inputs": len(train.features),
                         "hidden": list(hidden), "activation": activation})
    _, history = fit(model, train, val, epochs=epochs, lr=lr, patience=patience, seed=seed,
                     device=device)
    scaler = {s: {k: train.scaler[s][k] for k in [*train.features, train.target]}
              for s in ("mean", "std")}
    meta = {"inputs": train.features, "target": train.target, "scaler": scaler, "seed": seed,
            "metrics": _metrics(model, history, pairs_url, train.features, scaler, batch_size,
                                storage_options, device),
            "training": {"pairs": str(pairs_url), "epochs": epochs, "batch_size": batch_size,
                         "lr": lr, "patience": patience, "loss": "mse"}}
    return save_checkpoint(model.to("cpu"), out_path, meta, storage_options)


def fine_tune(checkpoint: str | Checkpoint, data: str, *, out_path: str, freeze_first: int = 3,
              epochs: int = 20, lr: float = 2e-4, batch_size: int = 1024, patience: int = 5,
              seed: int = 0, device: str = "cpu",
              storage_options: Mapping | None = None) -> str:
    """Transfer learning: freeze the first hidden layers of a network and train the rest.

    The new network keeps the base network's inputs and scaler (its frozen
    layers learned features in those units), so the data must offer the same
    inputs and target.

    Parameters
    ----------
    checkpoint : str or Checkpoint
        The base network (CASM: NN_AMSR2->SMAP).
    data : str
        Sample table of the new period (CASM: AMSR-E TB -> outputs of NN_SMOS).
    out_path : str
        Checkpoint directory of the fine-tuned network.
    freeze_first : int
        Hidden layers kept bit-identical.
    epochs, lr, batch_size, patience, seed, device
        See :func:`fit`.
    storage_options : mapping, optional

    Returns
    -------
    str
        The new checkpoint path.

    Raises
    ------
    PairsError
        If the data lack an input of the network or have another target.
    """
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(
        checkpoint, storage_options=storage_options)
    model = copy.deepcopy(ck.model).to("cpu")
    frozen = freeze_layers(model, freeze_first)
    train, val = _loaders(data, ck.meta["inputs"], ck.meta["scaler"], batch_size, seed,
                          storage_options, target=ck.meta["target"])
    _, history = fit(model, train, val, epochs=epochs, lr=lr, patience=patience, seed=seed,
                     device=device)
    meta = {k: v for k, v in ck.meta.items() if k not in ("metrics", "created", "weights_sha256")}
    meta.update({"seed": seed,
                 "metrics": _metrics(model, history, data, train.features, ck.meta["scaler"],
                                     batch_size, storage_options, device),
                 "fine_tuned_from": {"path": ck.path, "content_hash": ck.content_hash},
                 "frozen": frozen,
                 "training": {"pairs": str(data), "epochs": epochs, "batch_size": batch_size,
                              "lr": lr, "patience": patience, "loss": "mse",
                              "freeze_first": freeze_first}})
    return save_checkpoint(model.to("cpu"), out_path, meta, storage_options)


def _with_worker_threads(fn: Callable[..., str], *args, **kwargs) -> str:
    """Run ``fn`` with torch on the dask worker's thread count (outside a worker: as set)."""
    threads = torch.get_num_threads()
    try:
        from distributed import get_worker

        torch.set_num_threads(max(1, get_worker().state.nthreads))
    except (ImportError, ValueError):
        pass
    try:
        return fn(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


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

