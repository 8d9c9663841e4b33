"""The published SoMo.ml model: its PyTorch state dict and scaler CSVs → a casm_cloud checkpoint.

The published layout (the original ``ealstm`` code base of O & Orth 2021) is
a state dict with ``lstm.weight_ih`` (n_dynamic × 3H), ``lstm.weight_hh``
(H × 3H), ``lstm.weight_sh`` (n_static × H), ``lstm.bias`` (3H),
``lstm.bias_s`` (H), ``fc.weight`` (1 × H), ``fc.bias`` (1); gates f, o, g
within the 3H, the input gate ``sigmoid(x_s @ weight_sh + bias_s)``.  Two
CSV files hold the scalers: rows ``aveK`` (mean) and ``stdK`` (std); the
forcing file has columns ``t2m, log_tp, snr, ssrd, skt, q, sm`` (``sm`` is
the target's), the static file ``ETOPOavg, ETOPOsd, tp, arid, clay, sand,
silt, poro_top, poro_mid, domveg`` (in that order the published static
features of :data:`casm_cloud.somo.features.PUBLISHED_STATIC`).

The state dict is read with ``torch.load(weights_only=True)``: nothing is
unpickled.  The result is a safetensors + JSON checkpoint
(:mod:`casm_cloud.models.checkpoint`).
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Mapping, Sequence

from casm_cloud.somo.features import PUBLISHED_DYNAMIC, PUBLISHED_STATIC, feature_units
from casm_cloud.somo.windowed import WINDOW

__all__ = ["STATIC_COLUMNS", "import_published", "read_scaler"]

def _checkpoint_error(message: str) -> Exception:
    """A :class:`casm_cloud.models.checkpoint.CheckpointError` (imported late: it needs torch)."""
    from casm_cloud.models.checkpoint import CheckpointError

    return CheckpointError(message)


#: Static scaler CSV column -> static feature name (published order).
STATIC_COLUMNS: dict[str, str] = dict(zip(
    ("ETOPOavg", "ETOPOsd", "tp", "arid", "clay", "sand", "silt", "poro_top", "poro_mid",
     "domveg"), PUBLISHED_STATIC, strict=True))


def _read_bytes(url: str, storage_options: Mapping | None) -> bytes:
    import fsspec

    try:
        with fsspec.open(str(url), "rb", **dict(storage_options or {})) as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"no file at {url}") from None


def read_scaler(url: str, names: Mapping[str, str] | None = None, *,
                storage_options: Mapping | None = None) -> dict[str, tuple[float, float]]:
    """``{name: (mean, std)}`` from a published scaler CSV (rows ``aveK``, ``stdK``).

    Parameters
    ----------
    url : str
        The CSV (local path or fsspec URL); its first column holds the row
        labels.  A transposed file (variables as rows) is accepted too.
    names : mapping, optional
        CSV column -> feature name (columns not in it keep their name).

    Raises
    ------
    CheckpointError
        If the rows are missing or a std is not a positive number.
    """
    import pandas as pd

    df = pd.read_csv(io.BytesIO(_read_bytes(url, storage_options)), index_col=0)
    df.index = df.index.astype(str).str.strip()
    df.columns = df.columns.astype(str).str.strip()
    if "aveK" not in df.index and "aveK" in df.columns:
        df = df.T
    if not {"aveK", "stdK"} <= set(df.index):
        raise _checkpoint_error(f"scaler {url}: expected rows 'aveK' and 'stdK', found "
                              f"{list(df.index)}")
    out = {}
    for col in df.columns:
        mean, std = float(df.at["aveK", col]), float(df.at["stdK", col])
        if not std > 0:
            raise _checkpoint_error(f"scaler {url}: std of {col!r} is {std}; expected > 0")
        out[(names or {}).get(col, col)] = (mean, std)
    return out


def _torch_reason(err: Exception) -> str:
    """The part of a ``torch.load`` refusal that says what is in the file."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    if "WeightsUnpickler error:" in text:  # after two paragraphs on how to unpickle anyway
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
        return re.split(r"(?<=\.) |\n", text, maxsplit=1)[0].strip() or "unknown content"
    if "central directory" in text:
        return "the file is cut short or damaged (no zip central directory)"
    return text.splitlines()[0]


def _state_dict(model_pt: str, storage_options: Mapping | None) -> dict:
    import torch

    try:
        data = _read_bytes(model_pt, storage_options)
    except FileNotFoundError:
        raise _checkpoint_error(f"{model_pt}: no such model file") from None
    if not data.startswith((b"PK\x03\x04", b"\x80")):  # torch's zip, or its legacy pickle
        raise _checkpoint_error(f"{model_pt}: no PyTorch file at all (it begins "
                                f"{data[:24]!r})")
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of a file it is about to refuse;
            # the refusal below is the one line the user needs.
            warnings.simplefilter("ignore")
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError and friends: refuse, never unpickle
        raise _checkpoint_error(f"{model_pt}: not a plain PyTorch state dict (read with "
                                f"weights_only=True, never unpickled): {_torch_reason(err)}"
                                ) from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or "lstm.weight_sh" not in obj:
        keys = sorted(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
        raise _checkpoint_error(f"{model_pt}: not the published SoMo.ml layout (no "
                              f"'lstm.weight_sh'; found {keys})")
    return {str(k): v for k, v in obj.items()}


def import_published(model_pt: str, *, forcing_scaler: str, static_scaler: str, out: str,
                     dynamic: Sequence[str] | None = None, target: str = "sm",
                     units: Mapping[str, str] | None = None,
                     storage_options: Mapping | None = None) -> str:
    """Convert the published SoMo.ml checkpoint into a casm_cloud checkpoint.

    Parameters
    ----------
    model_pt : str
        The published ``.pt`` state dict.
    forcing_scaler, static_scaler : str
        The published scaler CSVs (see the module docstring).
    out : str
        Checkpoint directory to write.
    dynamic : sequence of str, optional
        Dynamic input names in the weights' row order (default
        :data:`~casm_cloud.somo.features.PUBLISHED_DYNAMIC`; deeper layers add
        the upper layers' SM, e.g. ``[*PUBLISHED_DYNAMIC, "sm_l1"]``, with the
        same names as columns of the forcing scaler).
    target : str
        Name of the output (the forcing scaler's ``sm`` column is its scaler).
    units : mapping, optional
        Units of inputs not in the feature tables.
    storage_options : mapping, optional
        fsspec options of every path.

    Returns
    -------
    str
        ``out``.

    Raises
    ------
    CheckpointError
        Not a state dict of the published layout, names that do not match
        the weights' shapes, or a scaler without a needed column.
    """
    from casm_cloud.models.checkpoint import save_checkpoint
    from casm_cloud.models.ealstm import EALSTM

    sd = _state_dict(model_pt, storage_options)
    n_dyn, hidden3 = tuple(sd["lstm.weight_ih"].shape)
    n_sta, hidden = tuple(sd["lstm.weight_sh"].shape)
    names = list(dynamic) if dynamic is not None else list(PUBLISHED_DYNAMIC)
    if len(names) != n_dyn:
        raise _checkpoint_error(f"{model_pt}: lstm.weight_ih has {n_dyn} dynamic inputs, the "
                              f"names are {names}; pass dynamic= with {n_dyn} names")
    if n_sta != len(PUBLISHED_STATIC) or hidden3 != 3 * hidden:
        raise _checkpoint_error(f"{model_pt}: lstm.weight_sh {(n_sta, hidden)} / weight_ih "
                              f"{(n_dyn, hidden3)}: expected {len(PUBLISHED_STATIC)} statics and "
                              "3 gates of the hidden size")
    model = EALSTM(n_dyn, n_sta, hidden=hidden)
    try:
        model.load_reference_state_dict(sd)
    except (KeyError, ValueError) as err:
        raise _checkpoint_error(f"{model_pt}: {err}") from None
    scale = read_scaler(forcing_scaler, {"sm": target}, storage_options=storage_options)
    scale.update(read_scaler(static_scaler, STATIC_COLUMNS, storage_options=storage_options))
    lack = [n for n in (*names, *PUBLISHED_STATIC, target) if n not in scale]
    if lack:
        raise _checkpoint_error(f"scalers {forcing_scaler}, {static_scaler} lack {lack}")
    inputs = [*names, *PUBLISHED_STATIC]
    meta = {
        "inputs": inputs, "dynamic_inputs": names, "static_inputs": list(PUBLISHED_STATIC),
        "target": target, "window": WINDOW, "clip_min": 0.0,
        "scaler": {"mean": {n: scale[n][0] for n in (*inputs, target)},
                   "std": {n: scale[n][1] for n in (*inputs, target)}},
        "units": {**feature_units(inputs, units), target: "m3 m-3"},
        "source": {"published": str(model_pt), "forcing_scaler": str(forcing_scaler),
                   "static_scaler": str(static_scaler)},
        "method": "SoMo.ml EA-LSTM (O & Orth 2021), windowed inference",
    }
    return save_checkpoint(model, out, meta, storage_options)
