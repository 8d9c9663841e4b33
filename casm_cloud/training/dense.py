"""CASM dense networks: one from a sample table, and one fine-tuned from another."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch

from casm_cloud.models import build_model
from casm_cloud.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from casm_cloud.pairs import SampleLoader
from casm_cloud.training.loop import evaluate, fit, freeze_layers


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
