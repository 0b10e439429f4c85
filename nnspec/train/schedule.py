"""Learning-rate schedules.

A schedule is stateless: ``lr_at(step, epoch)`` is a pure function of the
0-based global optimiser step and the 0-based epoch, so a resumed run gets the
same rates without saving any schedule state. ``lr_at(0, 0)`` is the base rate
except during warmup.
"""
from __future__ import annotations

import inspect
import math


class Schedule:
    def lr_at(self, step: int, epoch: int) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class Constant(Schedule):
    def __init__(self, lr: float):
        self.lr = float(lr)

    def lr_at(self, step, epoch):
        return self.lr


class StepDecay(Schedule):
    """lr * gamma ** (epoch // every): multiply by gamma every ``every`` epochs."""

    def __init__(self, lr: float, every: int, gamma: float = 0.1):
        if every < 1:
            raise ValueError(f"step schedule: every must be >= 1, got {every}")
        self.lr, self.every, self.gamma = float(lr), int(every), float(gamma)

    def lr_at(self, step, epoch):
        return self.lr * self.gamma ** (epoch // self.every)


class Exponential(Schedule):
    """lr * gamma ** epoch (or ** step with per="step")."""

    def __init__(self, lr: float, gamma: float, per: str = "epoch"):
        if per not in ("epoch", "step"):
            raise ValueError(f"exponential schedule: per must be 'epoch' or 'step', got {per!r}")
        self.lr, self.gamma, self.per = float(lr), float(gamma), per

    def lr_at(self, step, epoch):
        return self.lr * self.gamma ** (epoch if self.per == "epoch" else step)


class Cosine(Schedule):
    """Half-cosine from lr at step 0 to min_lr at total_steps, then flat at min_lr."""

    def __init__(self, lr: float, total_steps: int, min_lr: float = 0.0):
        if total_steps < 1:
            raise ValueError(f"cosine schedule: total_steps must be >= 1, got {total_steps}")
        self.lr, self.total_steps, self.min_lr = float(lr), int(total_steps), float(min_lr)

    def lr_at(self, step, epoch):
        frac = min(step, self.total_steps) / self.total_steps
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * frac))


class LinearWarmup(Schedule):
    """Ramp linearly up to lr over warmup_steps, then constant or cosine.

    Step s < warmup_steps gets lr * (s + 1) / warmup_steps, so the very first
    update is small but not zero. With then="cosine" the decay to min_lr runs
    over the remaining total_steps - warmup_steps steps.
    """

    def __init__(self, lr: float, warmup_steps: int, then: str = "constant",
                 total_steps: int | None = None, min_lr: float = 0.0):
        if warmup_steps < 0:
            raise ValueError(f"linear_warmup: warmup_steps must be >= 0, got {warmup_steps}")
        if then == "cosine":
            if total_steps is None or total_steps <= warmup_steps:
                raise ValueError("linear_warmup then cosine needs total_steps > warmup_steps")
            self.after: Schedule = Cosine(lr, total_steps - warmup_steps, min_lr)
        elif then == "constant":
            self.after = Constant(lr)
        else:
            raise ValueError(f"linear_warmup: then must be 'constant' or 'cosine', got {then!r}")
        self.lr, self.warmup_steps, self.then = float(lr), int(warmup_steps), then

    def lr_at(self, step, epoch):
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        return self.after.lr_at(step - self.warmup_steps, epoch)


SCHEDULES: dict[str, type[Schedule]] = {
    "constant": Constant,
    "step": StepDecay,
    "exponential": Exponential,
    "cosine": Cosine,
    "linear_warmup": LinearWarmup,
}


def make_schedule(name: str, **kwargs) -> Schedule:
    """Build a schedule by registry name; bad names or keywords raise ValueError."""
    cls = SCHEDULES.get(name)
    if cls is None:
        raise ValueError(f"unknown schedule {name!r}; valid names: {', '.join(SCHEDULES)}")
    params = inspect.signature(cls.__init__).parameters
    accepted = [p for p in params if p != "self"]
    unknown = sorted(set(kwargs) - set(accepted))
    missing = [p for p, v in params.items()
               if p != "self" and v.default is inspect.Parameter.empty and p not in kwargs]
    if unknown or missing:
        problem = (f"does not take {', '.join(unknown)}" if unknown
                   else f"needs {', '.join(missing)}")
        raise ValueError(f"schedule {name!r} {problem}; accepted: {', '.join(accepted)}")
    return cls(**kwargs)
