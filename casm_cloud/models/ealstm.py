"""The Entity-Aware LSTM of SoMo.ml (Kratzert et al. 2019, HESS 23, 5089-5110).

The input gate is computed once per sample from the static features only; the
forget, output and cell-update gates come from the dynamic input and the
previous hidden state:

    i   = sigmoid(W_s x_s + b_s)
    f, o, g = split(x_t W_ih + h_{t-1} W_hh + b)          (gate order f, o, g)
    c_t = sigmoid(f) * c_{t-1} + i * tanh(g)
    h_t = sigmoid(o) * tanh(c_t)
    y   = fc(dropout(h_T))

``load_reference_state_dict`` takes the weights of the published SoMo.ml
checkpoints (the original ``ealstm`` code base) and of neuralhydrology's
``modelzoo/ealstm.py``; both use the gate order f, o, g above.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["EALSTM"]


class EALSTM(nn.Module):
    """Entity-Aware LSTM with one linear head on the last hidden state.

    Parameters
    ----------
    n_dynamic : int
        Number of dynamic (time-varying) inputs.
    n_static : int
        Number of static inputs (they drive the input gate only).
    hidden : int
        Hidden and cell state size (SoMo.ml: 128).
    dropout : float
        Dropout rate on the last hidden state before the head (SoMo.ml: 0.5).
    initial_forget_bias : float
        Initial value of the forget-gate bias (SoMo.ml: 5).

    Raises
    ------
    ValueError
        If a size is not positive or the dropout rate is outside [0, 1).
    """

    def __init__(self, n_dynamic: int, n_static: int, hidden: int = 128, dropout: float = 0.5,
                 initial_forget_bias: float = 5.0):
        super().__init__()
        if min(int(n_dynamic), int(n_static), int(hidden)) < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"EALSTM needs positive sizes and 0 <= dropout < 1, got "
                             f"n_dynamic={n_dynamic}, n_static={n_static}, hidden={hidden}, "
                             f"dropout={dropout}")
        self.architecture = {"name": "ealstm", "n_dynamic": int(n_dynamic),
                             "n_static": int(n_static), "hidden": int(hidden),
                             "dropout": float(dropout),
                             "initial_forget_bias": float(initial_forget_bias)}
        self.hidden = int(hidden)
        self.input_gate = nn.Linear(n_static, hidden)
        self.weight_ih = nn.Parameter(torch.empty(n_dynamic, 3 * hidden))
        self.weight_hh = nn.Parameter(torch.empty(hidden, 3 * hidden))
        self.bias = nn.Parameter(torch.empty(3 * hidden))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, 1)
        self.reset_parameters(initial_forget_bias)

    def reset_parameters(self, initial_forget_bias: float = 5.0) -> None:
        """The published initialisation: orthogonal W_ih, identity blocks W_hh, forget bias."""
        nn.init.orthogonal_(self.weight_ih)
        with torch.no_grad():
            self.weight_hh.copy_(torch.eye(self.hidden).repeat(1, 3))
            self.bias.zero_()
            self.bias[: self.hidden] = initial_forget_bias

    def forward(self, x_dynamic: torch.Tensor, x_static: torch.Tensor) -> torch.Tensor:
        """Prediction for the last time step.

        Parameters
        ----------
        x_dynamic : Tensor (batch, time, n_dynamic)
        x_static : Tensor (batch, n_static)

        Returns
        -------
        Tensor (batch, 1)
        """
        batch, steps, _ = x_dynamic.shape
        i = torch.sigmoid(self.input_gate(x_static))
        # The input projection of every step is one matmul; only h @ W_hh is sequential.
        xw = torch.matmul(x_dynamic, self.weight_ih) + self.bias
        h = x_dynamic.new_zeros(batch, self.hidden)
        c = x_dynamic.new_zeros(batch, self.hidden)
        for t in range(steps):
            f, o, g = (xw[:, t] + h @ self.weight_hh).chunk(3, dim=1)
            c = torch.sigmoid(f) * c + i * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        return self.head(self.dropout(h))

    def as_lstm(self) -> tuple[nn.LSTM, nn.Linear]:
        """The same network as a standard LSTM over ``[x_t, x_s]``, plus a copy of the head.

        An EA-LSTM is a standard LSTM whose input gate sees only inputs that are
        constant in time: append the statics to every step's input, give the
        input gate the static weights and bias only (no dynamic, no recurrent
        weights), and give the forget, cell and output gates zero weights from
        the statics.  Then torch's fused ``nn.LSTM`` (oneDNN on CPU, cuDNN on
        CUDA; gate order i, f, g, o) computes exactly this model.

        Returns
        -------
        lstm : torch.nn.LSTM
            ``input_size = n_dynamic + n_static``, ``batch_first=True``, eval mode.
        head : torch.nn.Linear
            The output layer (dropout is the identity at inference).
        """
        nd, ns, hid = (self.architecture["n_dynamic"], self.architecture["n_static"],
                       self.hidden)
        lstm = nn.LSTM(nd + ns, hid, batch_first=True).to(self.weight_ih.device)
        with torch.no_grad():
            w_ih = torch.zeros_like(lstm.weight_ih_l0)          # (4H, nd + ns)
            w_hh = torch.zeros_like(lstm.weight_hh_l0)          # (4H, H)
            b_ih = torch.zeros_like(lstm.bias_ih_l0)
            w_ih[:hid, nd:] = self.input_gate.weight
            b_ih[:hid] = self.input_gate.bias
            # ours: columns f | o | g of (n, 3H); torch: rows i | f | g | o of (4H, n)
            for ours, theirs in ((0, 1), (2, 2), (1, 3)):
                cols = slice(ours * hid, (ours + 1) * hid)
                rows = slice(theirs * hid, (theirs + 1) * hid)
                w_ih[rows, :nd] = self.weight_ih[:, cols].T
                w_hh[rows] = self.weight_hh[:, cols].T
                b_ih[rows] = self.bias[cols]
            lstm.weight_ih_l0.copy_(w_ih)
            lstm.weight_hh_l0.copy_(w_hh)
            lstm.bias_ih_l0.copy_(b_ih)
            lstm.bias_hh_l0.zero_()
        head = nn.Linear(hid, 1).to(self.head.weight.device)
        head.load_state_dict(self.head.state_dict())
        return lstm.eval(), head.eval()

    def load_reference_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load weights saved by SoMo.ml or by neuralhydrology.

        Parameters
        ----------
        state_dict : mapping of str to Tensor
            SoMo.ml layout: ``lstm.weight_ih`` (n_dynamic, 3H), ``lstm.weight_hh`` (H, 3H),
            ``lstm.weight_sh`` (n_static, H), ``lstm.bias`` (3H), ``lstm.bias_s`` (H),
            ``fc.weight`` (1, H), ``fc.bias`` (1).  neuralhydrology layout: ``weight_ih``,
            ``weight_hh``, ``bias`` as above, ``input_net.weight`` (H, n_static),
            ``input_net.bias`` (H), ``head.net.0.weight``, ``head.net.0.bias``.

        Raises
        ------
        KeyError
            If the keys match neither layout (the message lists what is missing).
        ValueError
            If a tensor has the wrong shape for this model.
        """
        sd = dict(state_dict)
        if "lstm.weight_sh" in sd:  # SoMo.ml / original ealstm code
            layout = "SoMo.ml"
            need = ["lstm.weight_ih", "lstm.weight_hh", "lstm.bias", "lstm.weight_sh",
                    "lstm.bias_s", "fc.weight", "fc.bias"]
            get = {"weight_ih": "lstm.weight_ih", "weight_hh": "lstm.weight_hh",
                   "bias": "lstm.bias", "input_gate.bias": "lstm.bias_s",
                   "head.weight": "fc.weight", "head.bias": "fc.bias"}
            static_w = lambda: sd["lstm.weight_sh"].T  # noqa: E731  (stored as (n_static, H))
        else:  # neuralhydrology modelzoo/ealstm.py with a single linear input_net
            layout = "neuralhydrology"
            need = ["weight_ih", "weight_hh", "bias", "input_net.weight", "input_net.bias",
                    "head.net.0.weight", "head.net.0.bias"]
            get = {"weight_ih": "weight_ih", "weight_hh": "weight_hh", "bias": "bias",
                   "input_gate.bias": "input_net.bias", "head.weight": "head.net.0.weight",
                   "head.bias": "head.net.0.bias"}
            static_w = lambda: sd["input_net.weight"]  # noqa: E731
        missing = [k for k in need if k not in sd]
        if missing:
            raise KeyError(f"EA-LSTM state dict matches neither the SoMo.ml nor the "
                           f"neuralhydrology layout: missing {missing} for the {layout} layout "
                           f"(an embedding network as input_net is not supported)")
        new = {ours: sd[theirs] for ours, theirs in get.items()}
        new["input_gate.weight"] = static_w()
        own = self.state_dict()
        for k, v in new.items():
            if tuple(v.shape) != tuple(own[k].shape):
                raise ValueError(f"EA-LSTM weight {k!r} from the {layout} layout has shape "
                                 f"{tuple(v.shape)}, expected {tuple(own[k].shape)}")
        self.load_state_dict({k: v.detach().to(own[k].dtype).contiguous() for k, v in new.items()})
