"""Benchmark configurations, their shared weights and data, and their analytic costs.

Everything an implementation needs to reproduce *the same* train step lives here:
sizes, the initial parameters (PyTorch layouts and names), and the batch. All
implementations start from identical values, so their first-step losses must agree.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GATES = {"rnn": 1, "lstm": 4, "gru": 3}  # gate blocks per hidden unit (PyTorch order)


@dataclass(frozen=True)
class MLPConfig:
    name: str
    sizes: tuple[int, ...] = (784, 256, 256, 10)  # input, hidden..., classes
    batch: int = 64
    lr: float = 0.1
    kind: str = "mlp"


@dataclass(frozen=True)
class SeqConfig:
    """embedding -> recurrent layer (one or two directions) -> linear -> softmax CE at every step."""

    name: str
    cell: str  # "rnn" (tanh) | "lstm" | "gru"
    vocab: int
    embed: int
    hidden: int  # per direction
    seq_len: int
    batch: int
    classes: int  # output size: = vocab for a language model, #tags for a tagger
    bidirectional: bool = False
    task: str = "lm"  # "lm": targets are the next tokens; "tag": random tags
    lr: float = 0.1
    kind: str = "seq"

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1


def _lm(name, cell, hidden, seq_len=35, batch=32, vocab=1000, embed=64):
    return SeqConfig(name, cell, vocab, embed, hidden, seq_len, batch, classes=vocab)


CONFIGS: dict[str, MLPConfig | SeqConfig] = {
    c.name: c
    for c in [
        MLPConfig("mlp"),
        _lm("rnn", "rnn", 128),
        _lm("lstm", "lstm", 128),
        # The same LSTM; nnspec runs it from a spec written gate by gate (bench/specs/lstm_gates.nn).
        _lm("lstm_gates", "lstm", 128),
        _lm("lstm512", "lstm", 512),
        _lm("gru", "gru", 128),
        # Latency-bound case: one sequence, tiny state. V and E kept as in the other LMs.
        _lm("lstm_tiny", "lstm", 16, seq_len=20, batch=1),
        SeqConfig("bilstm_tagger", "lstm", vocab=20000, embed=100, hidden=128, seq_len=25,
                  batch=32, classes=17, bidirectional=True, task="tag"),
    ]
}


# ---------------------------------------------------------------- parameters and data

def param_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes, in PyTorch layouts (Linear weight = (out, in))."""
    if cfg.kind == "mlp":
        shapes = {}
        for i, (n_in, n_out) in enumerate(zip(cfg.sizes[:-1], cfg.sizes[1:])):
            shapes[f"W{i}"], shapes[f"b{i}"] = (n_out, n_in), (n_out,)
        return shapes
    gh = GATES[cfg.cell] * cfg.hidden
    shapes = {"emb": (cfg.vocab, cfg.embed)}
    for sfx in ["", "_rev"][: cfg.directions]:
        shapes |= {f"W_ih{sfx}": (gh, cfg.embed), f"W_hh{sfx}": (gh, cfg.hidden),
                   f"b_ih{sfx}": (gh,), f"b_hh{sfx}": (gh,)}
    shapes |= {"W_out": (cfg.classes, cfg.directions * cfg.hidden), "b_out": (cfg.classes,)}
    return shapes


def init_params(cfg, dtype=np.float32, seed=0) -> dict[str, np.ndarray]:
    """PyTorch-style uniform(+-1/sqrt(fan_in)) init; embeddings N(0, 0.1^2).

    Drawn in float64 and then cast, so float32 and float64 runs share values."""
    rng = np.random.default_rng(seed)
    shapes = param_shapes(cfg)
    out = {}
    for name, shape in shapes.items():
        if name == "emb":
            a = rng.normal(0.0, 0.1, shape)
        else:
            if name[:4] in ("W_ih", "W_hh", "b_ih", "b_hh"):  # recurrent cell: 1/sqrt(hidden)
                fan_in = cfg.hidden
            else:  # linear layer: 1/sqrt(input width), bias included
                fan_in = shapes["W" + name[1:]][1]
            a = rng.uniform(-1.0, 1.0, shape) / np.sqrt(fan_in)
        out[name] = a.astype(dtype)
    return out


def make_batch(cfg, dtype=np.float32, seed=1):
    """(inputs, targets). MLP: x (B, n_in) floats, y (B,). Seq: x, y (T, B) int64, time-major."""
    rng = np.random.default_rng(seed)
    if cfg.kind == "mlp":
        x = rng.standard_normal((cfg.batch, cfg.sizes[0])).astype(dtype)
        return x, rng.integers(0, cfg.sizes[-1], cfg.batch)
    T, B = cfg.seq_len, cfg.batch
    if cfg.task == "lm":  # predict token t+1 from tokens <= t
        tokens = rng.integers(0, cfg.vocab, (T + 1, B))
        return tokens[:-1].copy(), tokens[1:].copy()
    return rng.integers(0, cfg.vocab, (T, B)), rng.integers(0, cfg.classes, (T, B))


# ---------------------------------------------------------------- analytic costs

def flops(cfg) -> int:
    """Matrix-product FLOPs of one train step: 2*m*n*k per product, and the backward
    pass counted as 2x the forward (one product for the input gradient, one for the
    weight gradient), so a step = 3x the forward products. Elementwise work (gates,
    softmax, SGD update) and the embedding gather/scatter are not counted. The MLP's
    first-layer input gradient is counted although no implementation needs it."""
    if cfg.kind == "mlp":
        fwd = sum(2 * cfg.batch * a * b for a, b in zip(cfg.sizes[:-1], cfg.sizes[1:]))
    else:
        n = cfg.seq_len * cfg.batch  # rows: every (t, b) position
        gh = GATES[cfg.cell] * cfg.hidden
        per_dir = 2 * n * gh * (cfg.embed + cfg.hidden)  # input and recurrent products
        fwd = cfg.directions * per_dir + 2 * n * cfg.directions * cfg.hidden * cfg.classes
    return 3 * fwd


def activation_elements(cfg) -> dict[str, int]:
    """Elements the backward pass needs kept from the forward pass (the minimum set:
    anything cheaply recomputable, like tanh(c) or ReLU masks, is not counted)."""
    if cfg.kind == "mlp":
        B = cfg.batch
        return {"input": B * cfg.sizes[0],
                "hidden": B * sum(cfg.sizes[1:-1]),
                "probs": B * cfg.sizes[-1]}
    n, H, D = cfg.seq_len * cfg.batch, cfg.hidden, cfg.directions
    per_dir = {"rnn": n * H,                      # h
               "lstm": n * (H + H + 4 * H),       # h, c, gate activations
               "gru": n * (H + 3 * H + H)}[cfg.cell]  # h, gate activations, U_n h + b_hn
    return {"embedded": n * cfg.embed, "recurrent": D * per_dir, "probs": n * cfg.classes}


def activation_bytes(cfg, dtype=np.float32) -> int:
    return sum(activation_elements(cfg).values()) * np.dtype(dtype).itemsize
