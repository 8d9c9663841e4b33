"""The CASM network: a dense feed-forward net from TB residuals to the SM residual."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["DenseNet", "ACTIVATIONS"]

#: Hidden-layer activations by name (a registry, not an if/elif chain).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


class DenseNet(nn.Module):
    """Fully connected network with one linear output (CASM, Scientific Data 2023).

    Parameters
    ----------
    n_inputs : int
        Number of input features (e.g. TB residuals plus lat and lon).
    hidden : sequence of int
        Units of each hidden layer; the paper uses seven layers of 1050.
    activation : {"relu", "tanh", "gelu", "silu"}
        Activation after every hidden layer.

    Raises
    ------
    ValueError
        If ``n_inputs`` or a layer size is not positive, or the activation is unknown.
    """

    def __init__(self, n_inputs: int, hidden: Sequence[int] = (1050,) * 7,
                 activation: str = "relu"):
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        if int(n_inputs) < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"DenseNet needs n_inputs >= 1 and positive layer sizes, "
                             f"got n_inputs={n_inputs}, hidden={hidden}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"DenseNet activation {activation!r} is unknown; "
                             f"expected one of {sorted(ACTIVATIONS)}")
        self.architecture = {"name": "dense", "n_inputs": int(n_inputs), "hidden": list(hidden),
                             "activation": activation}
        widths = (int(n_inputs), *hidden)
        self.hidden_layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.act = ACTIVATIONS[activation]()
        self.head = nn.Linear(widths[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Prediction of shape (batch, 1) for inputs of shape (batch, n_inputs)."""
        for layer in self.hidden_layers:
            x = self.act(layer(x))
        return self.head(x)
