"""The fit loop every network of the package trains with.

* :func:`fit` — Adam, a loss from :data:`LOSSES`, early stopping on the
  validation loss, the best state kept.  Same seed and data on CPU give
  identical weights (deterministic algorithms on, seeded initialisation,
  seeded batch order; the torch thread count is left as the caller set it).
* :func:`evaluate` — R, RMSE and count of a network on a loader.
* :func:`freeze_layers` — transfer learning's frozen hidden layers.
"""

from __future__ import annotations

import contextlib
import math
import time as _time
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from casm_cloud.errors import UserError
from casm_cloud.pairs import PairsError

NSE_EPS = 0.1  # neuralhydrology's NSE loss epsilon (Kratzert et al. 2019)


@contextlib.contextmanager
def worker_threads():
    """Run the block as one worker task: torch on the worker's thread count, and the dask
    arrays the block loads computed in this thread (outside a worker: as set).

    A worker process runs one task per thread; torch's own default (every core) would
    oversubscribe it.  A ``.load()`` inside a task would otherwise go through the
    worker's client and send every small read to the scheduler as tasks of their own
    (the tiny SoMo.ml run: training 22.8 s that way, 6.4 s in-thread; its importance
    stage 41.7 s and 7.9 s).  The previous settings are restored after the block."""
    import dask

    threads = torch.get_num_threads()
    in_worker = False
    try:
        from distributed import get_worker

        torch.set_num_threads(max(1, get_worker().state.nthreads))
        in_worker = True
    except (ImportError, ValueError):
        pass
    try:
        with dask.config.set(scheduler="synchronous") if in_worker else contextlib.nullcontext():
            yield
    finally:
        torch.set_num_threads(threads)


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
