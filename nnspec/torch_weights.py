"""Moving weights between PyTorch's nn.RNN / nn.LSTM / nn.GRU and nnspec's standard cells.

Works on plain arrays (``{k: v.detach().numpy() for k, v in module.state_dict().items()}``),
so nnspec itself never imports torch.

PyTorch stacks the gates of a layer into one matrix and keeps two biases:
  * nn.RNN:  weight_ih (H, in), weight_hh (H, H), bias_ih + bias_hh
  * nn.LSTM: rows in gate order i, f, g, o  (input/add, forget, candidate, output)
  * nn.GRU:  rows in gate order r, z, n     (reset, update, candidate)
nnspec's cells keep one matrix per gate (``W*`` for the input, ``U*`` for the
previous state) and one bias per gate, except the GRU candidate, whose
recurrent bias ``bhn`` sits inside the reset product (``r * (Un h + bhn)``) and so
cannot be merged with ``bn``. Where PyTorch has two biases that only ever add,
nnspec's bias is their sum, and the gradient of each PyTorch bias equals the
gradient of that sum.

Layer/direction suffixes: ``_l{k}`` for layer k, ``_reverse`` for the backward
direction. ``instances[k][d]`` names the nnspec instance of layer k, direction d
(``h.layer1``/``h`` for ``h = stacked(lstm, 2)(...)``; ``h.fwd``/``h.bwd`` for
``h = bidirectional(lstm)(...)``).
"""
from __future__ import annotations

import numpy as np

GATES = {"rnn": [""], "lstm": ["i", "f", "g", "o"], "gru": ["r", "z", "n"]}


def _suffix(layer: int, direction: int) -> str:
    return f"_l{layer}" + ("_reverse" if direction else "")


def from_torch(state: dict[str, np.ndarray], kind: str, instances: list[list[str]]) -> dict[str, np.ndarray]:
    """nnspec parameters from a PyTorch recurrent module's state dict."""
    gates = GATES[kind]
    params: dict[str, np.ndarray] = {}
    for layer, names in enumerate(instances):
        for direction, inst in enumerate(names):
            sfx = _suffix(layer, direction)
            w_ih = np.split(np.asarray(state[f"weight_ih{sfx}"]), len(gates))
            w_hh = np.split(np.asarray(state[f"weight_hh{sfx}"]), len(gates))
            b_ih = np.split(np.asarray(state[f"bias_ih{sfx}"]), len(gates))
            b_hh = np.split(np.asarray(state[f"bias_hh{sfx}"]), len(gates))
            for g, wi, wh, bi, bh in zip(gates, w_ih, w_hh, b_ih, b_hh):
                params[f"{inst}.W{g}"] = wi.copy()
                params[f"{inst}.U{g}"] = wh.copy()
                if kind == "gru" and g == "n":
                    params[f"{inst}.bn"], params[f"{inst}.bhn"] = bi.copy(), bh.copy()
                else:
                    params[f"{inst}.b{g}"] = bi + bh
    return params


def to_torch(params: dict[str, np.ndarray], kind: str, instances: list[list[str]]) -> dict[str, np.ndarray]:
    """A PyTorch state dict from nnspec parameters (a merged bias goes to bias_ih; bias_hh is zero).

    Applied to gradients instead of parameters, it gives the gradient of every
    PyTorch weight, except that each PyTorch bias's gradient is the merged one.
    """
    gates = GATES[kind]
    state: dict[str, np.ndarray] = {}
    for layer, names in enumerate(instances):
        for direction, inst in enumerate(names):
            sfx = _suffix(layer, direction)
            state[f"weight_ih{sfx}"] = np.concatenate([params[f"{inst}.W{g}"] for g in gates])
            state[f"weight_hh{sfx}"] = np.concatenate([params[f"{inst}.U{g}"] for g in gates])
            b_ih, b_hh = [], []
            for g in gates:
                if kind == "gru" and g == "n":
                    b_ih.append(params[f"{inst}.bn"])
                    b_hh.append(params[f"{inst}.bhn"])
                else:
                    b_ih.append(params[f"{inst}.b{g}"])
                    b_hh.append(np.zeros_like(params[f"{inst}.b{g}"]))
            state[f"bias_ih{sfx}"] = np.concatenate(b_ih)
            state[f"bias_hh{sfx}"] = np.concatenate(b_hh)
    return state


def bias_gradients(grads: dict[str, np.ndarray], kind: str, instances: list[list[str]]) -> dict[str, np.ndarray]:
    """The gradients PyTorch reports for its bias_ih and bias_hh, from nnspec's gradients."""
    gates = GATES[kind]
    out = {}
    for layer, names in enumerate(instances):
        for direction, inst in enumerate(names):
            sfx = _suffix(layer, direction)
            ih, hh = [], []
            for g in gates:
                if kind == "gru" and g == "n":
                    ih.append(grads[f"{inst}.bn"])
                    hh.append(grads[f"{inst}.bhn"])
                else:
                    ih.append(grads[f"{inst}.b{g}"])
                    hh.append(grads[f"{inst}.b{g}"])
            out[f"bias_ih{sfx}"] = np.concatenate(ih)
            out[f"bias_hh{sfx}"] = np.concatenate(hh)
    return out
