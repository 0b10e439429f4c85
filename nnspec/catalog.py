"""What a spec may name whose code lives elsewhere: initialisers, optimisers, schedules, weight
averaging and views, each with its settings and their defaults. Names and numbers only, no code: the
compiler checks a spec against this leaf without loading training (nnspec.train) or data reading
(nnspec.data).

tests/test_layers.py checks that every entry matches its implementation's signature
(nnspec.initializers, nnspec.train.optim, nnspec.train.schedule, nnspec.train.average,
nnspec.data.views).
"""
from __future__ import annotations

import math

REQUIRED = "required"  # a setting with no default

_GAIN_1 = {"gain": 1.0}
_GAIN_RELU = {"gain": math.sqrt(2.0)}

INITIALIZERS: dict[str, dict] = {
    "zeros": {},
    "ones": {},
    "uniform": {"scale": 0.1},
    "normal": {"std": 0.01, "mean": 0.0},
    "xavier": _GAIN_1,
    "glorot": _GAIN_1,
    "xavier_uniform": _GAIN_1,
    "xavier_normal": _GAIN_1,
    "glorot_normal": _GAIN_1,
    "he": _GAIN_RELU,
    "kaiming": _GAIN_RELU,
    "he_normal": _GAIN_RELU,
    "he_uniform": _GAIN_RELU,
    "kaiming_uniform": _GAIN_RELU,
    "orthogonal": _GAIN_1,
}

OPTIMIZERS: dict[str, dict] = {
    "sgd": {"lr": 0.1, "weight_decay": 0.0},
    "momentum": {"lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0},
    "adam": {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-08, "weight_decay": 0.0},
    "adamw": {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-08, "weight_decay": 0.01},
}

# a schedule scales the optimizer's lr, which the trainer passes it: a spec never gives it one
SCHEDULES: dict[str, dict] = {
    "constant": {},
    "step": {"every": REQUIRED, "gamma": 0.1},
    "exponential": {"gamma": REQUIRED, "per": "epoch"},
    "cosine": {"total_steps": REQUIRED, "min_lr": 0.0},
    "linear_warmup": {"warmup_steps": REQUIRED, "then": "constant", "total_steps": None,
                      "min_lr": 0.0},
}

# weight averaging: the weights evaluated and kept are an average of those training visited
AVERAGES: dict[str, dict] = {
    "ema": {"decay": 0.999},
}

VIEWS: tuple[str, ...] = ("lower", "prefix", "suffix", "shape", "chars")  # views of an input's words
NESTED_VIEWS: tuple[str, ...] = ("chars",)   # views that give each word a sequence (its characters)
