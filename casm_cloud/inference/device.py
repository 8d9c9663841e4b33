"""Where inference runs: the device a process will use, and the error of options it cannot.

Its own module so that the kernel and the precision chooser both read it without
importing each other.
"""

from __future__ import annotations

import os
from typing import Literal

from casm_cloud.errors import UserError

__all__ = ["Device", "PredictError", "resolve_device"]

Device = Literal["auto", "cpu", "cuda"]


class PredictError(UserError, ValueError):
    """Options, inputs, parameters or members that inference cannot use."""


def resolve_device(device: Device) -> str:
    """The torch device a process will use: ``"auto"`` → CUDA where available.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda"}

    Returns
    -------
    str
        ``"cuda"`` or ``"cpu"``.

    Raises
    ------
    PredictError
        For an unknown device, or ``"cuda"`` where torch sees no CUDA device.
    """
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise PredictError(f"device={device!r}: expected 'auto', 'cpu' or 'cuda'")
    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise PredictError("device='cuda' but torch sees no CUDA device in this process "
                           f"(torch {torch.__version__}, pid {os.getpid()})")
    return "cuda" if device == "cuda" or (device == "auto" and has_cuda) else "cpu"
