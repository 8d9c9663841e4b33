"""Models built from a configuration dict through the registry ``MODELS``.

Every model carries ``model.architecture``, the dict that rebuilds it
(``build_model(model.architecture)``); checkpoints store it as JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import nn

from casm_cloud.models.dense import DenseNet
from casm_cloud.models.ealstm import EALSTM

__all__ = ["MODELS", "build_model", "DenseNet", "EALSTM"]

#: Model classes by architecture name.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "dense": DenseNet,
    "ealstm": EALSTM,
}


def build_model(config: Mapping) -> nn.Module:
    """Build a model from ``{"name": <registry key>, **constructor kwargs}``.

    Parameters
    ----------
    config : mapping
        The architecture, e.g. ``{"name": "dense", "n_inputs": 4, "hidden": [64, 64]}``.

    Returns
    -------
    torch.nn.Module
        A freshly initialised model (seed torch first for reproducible weights).

    Raises
    ------
    KeyError
        If ``name`` is missing or not in :data:`MODELS`.
    ValueError
        If the keyword arguments do not fit the model's constructor.
    """
    cfg = dict(config)
    name = cfg.pop("name", None)
    if name not in MODELS:
        raise KeyError(f"model architecture name {name!r} is unknown; expected one of "
                       f"{sorted(MODELS)}")
    try:
        return MODELS[name](**cfg)
    except TypeError as err:
        raise ValueError(f"architecture {name!r}: bad arguments {sorted(cfg)}: {err}") from None
