"""Weight averaging: the model evaluated and kept is an average of the weights training visited.

``average ema(decay = 0.999)`` keeps an exponential moving average of every parameter,
updated after each optimiser step (Polyak and Juditsky 1992's averaging, with the
exponential forgetting of TensorFlow's ``ExponentialMovingAverage``)::

    a_t = decay * a_{t-1} + (1 - decay) * p_t,    a_0 = 0
    average_t = a_t / (1 - decay^t)

The division corrects the start at zero as Adam does its moments, so the average is a
weighted mean of the weights visited from the first step on (weights decay^(t-s) for step
s), whatever t is. The trainer evaluates dev and test with the averages, keeps the best
epoch's averages, and checkpoints ``a`` and ``t`` beside the optimiser's state, so that a
resumed run continues the same average.
"""
from __future__ import annotations

import numpy as np

StateDict = dict[str, "np.ndarray | float | int | str"]


class ExponentialAverage:
    kind = "ema"

    def __init__(self, decay: float = 0.999):
        decay = float(decay)
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be between 0 and 1 (exclusive), got {decay:g}")
        self.decay = decay
        self.t = 0                               # updates averaged so far
        self.sums: dict[str, np.ndarray] = {}    # a, before the bias correction
        self._scratch: dict[str, np.ndarray] = {}

    def update(self, params: dict[str, np.ndarray]) -> None:
        """Fold the parameters after an optimiser step into the average: a += (1 - decay)(p - a)."""
        self.t += 1
        w = 1.0 - self.decay
        for name, p in params.items():
            a = self.sums.get(name)
            if a is None:
                a = self.sums[name] = np.zeros(p.shape, p.dtype)
            s = self._scratch.get(name)
            if s is None:
                s = self._scratch[name] = np.empty(p.shape, p.dtype)
            np.subtract(p, a, out=s)
            s *= w
            a += s

    def averages(self) -> dict[str, np.ndarray]:
        """The bias-corrected averages, as new arrays (empty before the first update)."""
        if self.t == 0:
            return {}
        correction = 1.0 / (1.0 - self.decay ** self.t)
        return {name: (a * correction).astype(a.dtype, copy=False) for name, a in self.sums.items()}

    def state_dict(self) -> StateDict:
        sd: StateDict = {"kind": self.kind, "decay": self.decay, "t": self.t}
        for name, a in self.sums.items():
            sd[f"a/{name}"] = a.copy()
        return sd

    def load_state_dict(self, sd: StateDict) -> None:
        if sd.get("kind") != self.kind:
            raise ValueError(f"weight averaging state is for {sd.get('kind')!r}, not {self.kind!r}")
        if float(sd.get("decay", -1)) != self.decay:
            raise ValueError(f"the checkpoint averaged with decay {sd.get('decay')}, this run with {self.decay:g}")
        self.t = int(sd.get("t", 0))
        self.sums, self._scratch = {}, {}
        for key, value in sd.items():
            prefix, sep, name = key.partition("/")
            if not sep:
                continue
            if prefix != "a":
                raise ValueError(f"unexpected entry {key!r} in weight averaging state")
            self.sums[name] = np.array(value, copy=True)

    def __repr__(self) -> str:
        return f"ExponentialAverage(decay={self.decay!r})"


AVERAGES = {"ema": ExponentialAverage}


def make_average(name: str, **kwargs) -> ExponentialAverage:
    try:
        cls = AVERAGES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown weight averaging {name!r} (known: {', '.join(AVERAGES)})") from None
    return cls(**kwargs)
