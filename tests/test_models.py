"""Models: the dense network, the EA-LSTM against an explicit reference, checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from casm_cloud.models import EALSTM, MODELS, DenseNet, build_model
from casm_cloud.models.checkpoint import (
    CheckpointError,
    check_inputs,
    load_checkpoint,
    save_checkpoint,
)

N_DYN, N_STAT, H = 3, 2, 5


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def reference_ealstm(xd, xs, w_ih, w_hh, b, w_sh, b_s, fc_w, fc_b):
    """The published EA-LSTM, one sample and one step at a time, in float64 NumPy.

    i = sigma(x_s W_sh + b_s); per step [f, o, g] = x_t W_ih + h W_hh + b;
    c = sigma(f) c + i tanh(g); h = sigma(o) tanh(c); y = fc(h_T).
    """
    out = np.empty((xd.shape[0], 1))
    for n in range(xd.shape[0]):
        i = _sigmoid(xs[n] @ w_sh + b_s)
        h = np.zeros(H)
        c = np.zeros(H)
        for t in range(xd.shape[1]):
            gates = xd[n, t] @ w_ih + h @ w_hh + b
            f, o, g = gates[:H], gates[H:2 * H], gates[2 * H:]
            c = _sigmoid(f) * c + i * np.tanh(g)
            h = _sigmoid(o) * np.tanh(c)
        out[n] = h @ fc_w.T + fc_b
    return out


@pytest.fixture
def reference_weights():
    rng = np.random.default_rng(42)
    return {
        "w_ih": rng.normal(0, 0.5, (N_DYN, 3 * H)), "w_hh": rng.normal(0, 0.5, (H, 3 * H)),
        "b": rng.normal(0, 0.5, 3 * H), "w_sh": rng.normal(0, 0.5, (N_STAT, H)),
        "b_s": rng.normal(0, 0.5, H), "fc_w": rng.normal(0, 0.5, (1, H)),
        "fc_b": rng.normal(0, 0.5, 1),
    }


@pytest.fixture
def sequences():
    rng = np.random.default_rng(7)
    return rng.normal(size=(4, 9, N_DYN)), rng.normal(size=(4, N_STAT))


def _t(a):
    return torch.tensor(a, dtype=torch.float64)


def _run(model, xd, xs):
    model.double().eval()
    with torch.no_grad():
        return model(_t(xd), _t(xs)).numpy()


def test_ealstm_matches_reference_with_somoml_weights(reference_weights, sequences):
    w = reference_weights
    sd = {"lstm.weight_ih": _t(w["w_ih"]), "lstm.weight_hh": _t(w["w_hh"]),
          "lstm.bias": _t(w["b"]), "lstm.weight_sh": _t(w["w_sh"]),
          "lstm.bias_s": _t(w["b_s"]), "fc.weight": _t(w["fc_w"]), "fc.bias": _t(w["fc_b"])}
    model = EALSTM(N_DYN, N_STAT, hidden=H, dropout=0.5).double()
    model.load_reference_state_dict(sd)
    np.testing.assert_allclose(_run(model, *sequences), reference_ealstm(*sequences, **w),
                               rtol=1e-10, atol=1e-12)


def test_ealstm_matches_reference_with_neuralhydrology_weights(reference_weights, sequences):
    w = reference_weights
    # neuralhydrology: input_net is nn.Linear(n_static, H) (weight (H, n_static)),
    # head is Regression with net = Sequential(Linear(H, 1)).
    sd = {"weight_ih": _t(w["w_ih"]), "weight_hh": _t(w["w_hh"]), "bias": _t(w["b"]),
          "input_net.weight": _t(w["w_sh"].T), "input_net.bias": _t(w["b_s"]),
          "head.net.0.weight": _t(w["fc_w"]), "head.net.0.bias": _t(w["fc_b"])}
    model = EALSTM(N_DYN, N_STAT, hidden=H).double()
    model.load_reference_state_dict(sd)
    np.testing.assert_allclose(_run(model, *sequences), reference_ealstm(*sequences, **w),
                               rtol=1e-10, atol=1e-12)


def test_ealstm_reference_layout_errors(reference_weights):
    model = EALSTM(N_DYN, N_STAT, hidden=H)
    with pytest.raises(KeyError, match="input_net.weight"):
        model.load_reference_state_dict({"weight_ih": torch.zeros(N_DYN, 3 * H)})
    w = reference_weights
    bad = {"lstm.weight_ih": _t(w["w_ih"]), "lstm.weight_hh": _t(w["w_hh"]),
           "lstm.bias": _t(w["b"]), "lstm.weight_sh": torch.zeros(N_STAT + 1, H),
           "lstm.bias_s": _t(w["b_s"]), "fc.weight": _t(w["fc_w"]), "fc.bias": _t(w["fc_b"])}
    with pytest.raises(ValueError, match="input_gate.weight"):
        model.load_reference_state_dict(bad)


def test_ealstm_initialisation_and_dropout():
    torch.manual_seed(0)
    model = EALSTM(N_DYN, N_STAT, hidden=H, dropout=0.5, initial_forget_bias=5.0)
    assert torch.all(model.bias[:H] == 5.0) and torch.all(model.bias[H:] == 0.0)
    assert torch.equal(model.weight_hh, torch.eye(H).repeat(1, 3))
    xd, xs = torch.randn(64, 6, N_DYN), torch.randn(64, N_STAT)
    model.eval()
    assert torch.equal(model(xd, xs), model(xd, xs))  # no dropout in eval
    model.train()
    assert not torch.equal(model(xd, xs), model(xd, xs))  # dropout on h_T in training


def test_densenet_layout_and_registry():
    model = build_model({"name": "dense", "n_inputs": 4, "hidden": [16, 8, 8]})
    assert isinstance(model, DenseNet) and set(MODELS) >= {"dense", "ealstm"}
    assert [layer.out_features for layer in model.hidden_layers] == [16, 8, 8]
    assert model(torch.zeros(5, 4)).shape == (5, 1)
    default = DenseNet(6)
    assert [layer.out_features for layer in default.hidden_layers] == [1050] * 7
    assert isinstance(build_model(model.architecture), DenseNet)
    with pytest.raises(KeyError, match="'transformer' is unknown"):
        build_model({"name": "transformer"})
    with pytest.raises(ValueError, match="bad arguments"):
        build_model({"name": "dense", "n_inputs": 4, "layers": 3})
    with pytest.raises(ValueError, match="activation 'swishy'"):
        DenseNet(4, activation="swishy")


def _meta(inputs=("tb_h", "tb_v", "lat", "lon"), target="sm"):
    names = [*inputs, target]
    return {"inputs": list(inputs), "target": target,
            "scaler": {"mean": {n: float(i) for i, n in enumerate(names)},
                       "std": {n: 1.0 + i for i, n in enumerate(names)}},
            "seed": 3, "metrics": {"val_loss": 0.5}}


@pytest.mark.parametrize("arch", [{"name": "dense", "n_inputs": 4, "hidden": [8, 8]},
                                  {"name": "ealstm", "n_dynamic": 4, "n_static": 2, "hidden": 6}])
def test_checkpoint_round_trip(tmp_path, arch):
    torch.manual_seed(1)
    model = build_model(arch)
    path = save_checkpoint(model, str(tmp_path / "ck"), _meta())
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["model.json", "model.safetensors"]
    ck = load_checkpoint(path)
    assert not ck.model.training
    assert ck.meta["architecture"] == json.loads(json.dumps(model.architecture))
    assert build_model(ck.meta["architecture"]).architecture == model.architecture
    assert ck.meta["inputs"] == ["tb_h", "tb_v", "lat", "lon"] and ck.meta["seed"] == 3
    assert ck.meta["package_version"] and ck.meta["created"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, ck.model.state_dict()[k])
    assert len(ck.content_hash) == 64 and ck.content_hash == load_checkpoint(path).content_hash
    with pytest.raises(AttributeError):
        ck.meta = {}  # frozen


def test_checkpoint_rejects_mixed_or_incomplete_files(tmp_path):
    torch.manual_seed(1)
    a = save_checkpoint(build_model({"name": "dense", "n_inputs": 4, "hidden": [8]}),
                        str(tmp_path / "a"), _meta())
    b = save_checkpoint(build_model({"name": "dense", "n_inputs": 4, "hidden": [8]}),
                        str(tmp_path / "b"), _meta())
    (tmp_path / "a" / "model.safetensors").write_bytes((tmp_path / "b" / "model.safetensors")
                                                       .read_bytes())
    with pytest.raises(CheckpointError, match="does not match the hash"):
        load_checkpoint(a)
    (tmp_path / "b" / "model.json").unlink()
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_checkpoint(b)
    with pytest.raises(CheckpointError, match="scaler 'mean' lacks"):
        meta = _meta()
        del meta["scaler"]["mean"]["sm"]
        save_checkpoint(build_model({"name": "dense", "n_inputs": 4, "hidden": [8]}),
                        str(tmp_path / "c"), meta)


def test_check_inputs_names_the_problem():
    meta = _meta()
    check_inputs(meta, ["tb_h", "tb_v", "lat", "lon"])
    with pytest.raises(CheckpointError, match=r"missing \['tb_v'\]"):
        check_inputs(meta, ["tb_h", "lat", "lon"])
    with pytest.raises(CheckpointError, match=r"unexpected \['tb_10v'\]"):
        check_inputs(meta, ["tb_h", "tb_v", "lat", "lon", "tb_10v"])
    with pytest.raises(CheckpointError, match="misordered"):
        check_inputs(meta, ["tb_v", "tb_h", "lat", "lon"])
