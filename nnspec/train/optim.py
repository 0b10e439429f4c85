"""Optimisers over ``dict[str, ndarray]`` parameters.

``step(params, grads)`` updates ``params`` in place. A parameter missing from
``grads`` is frozen: neither it nor its state moves. State (moment buffers,
per-parameter step counts) is created lazily on a parameter's first update.

``lr`` is a plain attribute: the training loop sets it from a schedule before
each step.

``step(params, grads, scale=s)`` updates with ``s * g`` (gradient clipping folded into the
update: ``clip.clip_scale``); ``consume=True`` says the gradients are the caller's to give
away (the executor's own arrays, dropped after the step), so the update may overwrite them
instead of making a scaled copy: SGD then does ``g *= -lr * s; p += g``, two passes like a
hand-written step. Gradients sharing memory with another one are never overwritten.

Parameters stored as views of one flat array with their gradients views of one flat array laid
out alike (``runtime/paramblocks.py``: a Model's dense parameters, the executor's gradients) are
updated in one call over the flat arrays, with their state buffers views of flat arrays too: the
arithmetic is elementwise and the same, so the numbers are those of the update one parameter at a
time, bit for bit. ``flat = False`` (an attribute) updates them one at a time.

``state_dict()`` holds hyperparameters and counters as Python scalars and
buffers as arrays under ``"<buffer>/<param name>"`` keys (e.g. ``"m/h1.Wf"``);
loading it into a fresh optimiser of the same kind continues bit-identically.
"""
from __future__ import annotations

import inspect
import math
import weakref

import numpy as np

from ..runtime.paramblocks import FlatArrays, known
from . import adamkernel, sgdkernel

StateDict = dict[str, "np.ndarray | float | int | str"]


_FLAT = "<flat>"   # the name the update of the flat arrays goes by (``_buffer``)


def _dead():
    return None


class Optimizer:
    kind = "base"
    buffers: tuple[str, ...] = ()  # names of per-parameter state arrays
    hyper: tuple[str, ...] = ("lr",)  # scalar hyperparameters saved in the state
    flat = True   # flat parameters with flat gradients updated in one call (the module's docstring)

    def __init__(self, lr: float):
        self.lr = float(lr)
        self.state: dict[str, dict[str, np.ndarray]] = {b: {} for b in self.buffers}
        self.steps: dict[str, int] = {}  # per-parameter update counts (Adam's bias correction)
        self._flat_state: dict[str, FlatArrays] = {}   # buffer kind -> its flat arrays, if any
        self._flat_last = _dead    # the flat gradients of the last step, weakly

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], *,
             scale: float = 1.0, consume: bool = False) -> None:
        if self.flat:
            grads = self._step_flat(params, grads, float(scale), consume)
        mine = _sole_owners(grads) if consume else ()
        steps, scale, update = self.steps, float(scale), self._update_scaled
        for name, g in grads.items():
            p = params.get(name)
            if p is None or g.shape != p.shape:
                _refuse(name, p, g)
            t = steps.get(name, 0) + 1
            steps[name] = t
            update(name, p, g, t, scale, name in mine)

    def _step_flat(self, params: dict, grads: dict, scale: float, consume: bool) -> dict:
        """Update in one call the parameters that are views of one flat array, when their gradients
        are views of one flat array laid out alike, every one of them has one, and they have been
        updated equally often; the gradients left for the update one at a time."""
        fg = self._flat_last()     # (the last step's: a weak reference, not to hold its arrays)
        if fg is None or grads.get(fg.names[0]) is not fg.views[0]:
            for g in grads.values():
                fg = known(g)
                if fg is not None:
                    self._flat_last = weakref.ref(fg)
                    break
        fp = fg.params if fg is not None else None
        if fp is None or not fg.held_in(grads) or not fp.held_in(params):
            return grads
        names, steps = fp.names, self.steps
        counts = set(map(steps.get, names))     # (None: not updated yet)
        if len(counts) != 1 or not self._flat_buffers(fp):
            return grads
        t = (counts.pop() or 0) + 1
        steps.update(dict.fromkeys(names, t))
        # (the flat gradient array holds no other gradient: consume lets it be overwritten)
        self._update_scaled(_FLAT, fp.flat, fg.flat, t, scale, consume)
        if len(grads) == len(names):
            return {}
        return {k: g for k, g in grads.items() if k not in fp.slot}

    def _flat_buffers(self, fp: FlatArrays) -> bool:
        """Make each state buffer of the flat parameters a view of one flat array laid out alike
        (moving the values of those that exist, zeros for those that do not yet); False when a
        buffer is not of its parameter's shape and dtype (it stays as it is)."""
        for kind in self.buffers:
            bufs, fb = self.state[kind], self._flat_state.get(kind)
            if fb is not None and fb.params is fp and fb.held_in(bufs):
                continue
            have = [bufs.get(n) for n in fp.names]
            if not all(b is None or (isinstance(b, np.ndarray) and b.shape == v.shape and b.dtype == v.dtype)
                       for b, v in zip(have, fp.views)):
                return False
            fb = self._flat_state[kind] = fp.like()
            for n, b, v in zip(fp.names, have, fb.views):
                if b is None:
                    v.fill(0)
                else:
                    np.copyto(v, b)
                bufs[n] = v
        return True

    def _update_scaled(self, name: str, p: np.ndarray, g: np.ndarray, t: int, scale: float,
                       writable: bool) -> None:
        """The update from ``scale * g``; ``writable``: g may be overwritten."""
        if scale != 1.0:
            if writable and g.dtype == p.dtype and getattr(g, "rows", None) is None:
                g *= scale
            else:
                g = g * scale
        self._update(name, p, g, t)

    def _update(self, name: str, p: np.ndarray, g: np.ndarray, t: int) -> None:
        raise NotImplementedError

    def _buffer(self, kind: str, name: str, p: np.ndarray) -> np.ndarray:
        if name is _FLAT:
            return self._flat_state[kind].flat
        buf = self.state[kind].get(name)
        if buf is None:
            buf = self.state[kind][name] = np.zeros_like(p)
        return buf

    def state_dict(self) -> StateDict:
        sd: StateDict = {"kind": self.kind}
        for h in self.hyper:
            sd[h] = getattr(self, h)
        for name, t in self.steps.items():
            sd[f"t/{name}"] = int(t)
        for kind, bufs in self.state.items():
            for name, buf in bufs.items():
                sd[f"{kind}/{name}"] = buf.copy()
        return sd

    def load_state_dict(self, sd: StateDict) -> None:
        if sd.get("kind") != self.kind:
            raise ValueError(f"optimiser state is for {sd.get('kind')!r}, not {self.kind!r}")
        for h in self.hyper:
            if h in sd:
                setattr(self, h, type(getattr(self, h))(sd[h]))
        self.steps = {}
        self.state = {b: {} for b in self.buffers}
        for key, value in sd.items():
            prefix, sep, name = key.partition("/")
            if not sep:
                continue
            if prefix == "t":
                self.steps[name] = int(value)
            elif prefix in self.state:
                self.state[prefix][name] = np.array(value, copy=True)
            else:
                raise ValueError(f"unexpected entry {key!r} in {self.kind} optimiser state")

    def __repr__(self) -> str:
        args = ", ".join(f"{h}={getattr(self, h)!r}" for h in self.hyper)
        return f"{type(self).__name__}({args})"


def _refuse(name: str, p, g) -> None:
    if p is None:
        raise KeyError(f"gradient for unknown parameter {name!r}")
    raise ValueError(f"gradient for {name!r} has shape {g.shape}, parameter has {p.shape}")


class SGD(Optimizer):
    """p -= lr * (g + weight_decay * p)."""

    kind = "sgd"
    hyper = ("lr", "weight_decay")

    def __init__(self, lr: float = 0.1, weight_decay: float = 0.0):
        super().__init__(lr)
        self.weight_decay = float(weight_decay)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "_update" in vars(cls) and "_update_scaled" not in vars(cls):   # its own update (Momentum):
            cls._update_scaled = Optimizer._update_scaled                     # not SGD's in-place one

    def step(self, params, grads, *, scale=1.0, consume=False):
        if self.weight_decay or type(self)._update_scaled is not SGD._update_scaled:
            return super().step(params, grads, scale=scale, consume=consume)
        # plain SGD, the update of ``_update_scaled`` written out in one loop: a small network's
        # step updates many small arrays (15 for a one-layer LSTM), where the calls are the cost
        if self.flat:
            grads = self._step_flat(params, grads, float(scale), consume)
        a = -self.lr * float(scale)
        mine = _sole_owners(grads) if consume else ()
        steps, scratch = self.steps, getattr(self, "_scratch", None)
        for name, g in grads.items():
            p = params.get(name)
            if p is None or g.shape != p.shape:
                _refuse(name, p, g)
            steps[name] = steps.get(name, 0) + 1
            scratch = _sgd_add(p, g, a, name in mine, scratch)
        self._scratch = scratch

    def _update(self, name, p, g, t):
        self._update_scaled(name, p, g, t, 1.0, False)

    def _update_scaled(self, name, p, g, t, scale, writable):
        a = -self.lr * scale
        if self.weight_decay:
            g = g + (self.weight_decay / scale) * p   # (scale g + wd p) = scale (g + wd/scale p)
            writable = True
        self._scratch = _sgd_add(p, g, a, writable, getattr(self, "_scratch", None))


def _sgd_add(p: np.ndarray, g: np.ndarray, a: float, writable: bool, scratch: np.ndarray | None):
    """SGD's ``p += a * g`` (``writable``: g may be overwritten); returns the scratch array for the
    next call (``_add_scaled``)."""
    if sgdkernel.applies(p, g):      # a large array (the flat parameters): one compiled pass, the same numbers
        sgdkernel.sgd_step(p, g, a)
        return scratch
    if type(g) is np.ndarray and g.size <= _SMALL:   # a small plain gradient (most of a small network's)
        if writable and g.dtype == p.dtype and g.flags.c_contiguous:
            g *= a
            p += g
        else:
            p += a * g
        return scratch
    rows = getattr(g, "rows", None)   # an embedding table's gradient: only these rows are non-zero
    if rows is not None and rows.size < p.shape[0]:
        _add_scaled_rows(p, g, rows, a)
        return scratch
    if writable and g.dtype == p.dtype and g.shape == p.shape and g.flags.c_contiguous:
        g *= a               # the gradient is ours to overwrite: no scaled copy
        p += g
        return scratch
    return _add_scaled(p, g, a, scratch)


def _sole_owners(grads: dict[str, np.ndarray]) -> set[str]:
    """Names whose gradient shares its memory with no other gradient (one may overwrite it)."""
    roots: dict[int, list] = {}
    for name, g in grads.items():
        f = known(g)
        if f is not None and f.slot.get(name) is g:   # (its own slot of a flat gradient array)
            roots[id(g)] = [name]
            continue
        r = g
        while r.base is not None:
            r = r.base
        roots.setdefault(id(r), []).append(name)
    return {names[0] for names in roots.values() if len(names) == 1}


def _add_scaled_rows(p: np.ndarray, g: np.ndarray, rows: np.ndarray, a: float) -> None:
    """p[rows] += a * g[rows], a chunk of rows at a time: ``p[rows] += a * g[rows]`` made four
    temporaries the size of all the rows (1.3 MB, the peak of the benchmark tagger's step)."""
    width = max(1, math.prod(p.shape[1:]))
    chunk = max(1, _SMALL // width)
    if len(rows) <= chunk and g.dtype == p.dtype:    # (a few rows, a small net's: the same steps, no scratch's set-up)
        t = np.asarray(g).take(rows, axis=0)
        t *= a
        p[rows] += t
        return
    dtype = np.result_type(p, g)
    scratch = np.empty((min(chunk, len(rows)),) + p.shape[1:], dtype)
    for lo in range(0, len(rows), chunk):
        r = rows[lo:lo + chunk]
        t = scratch[:len(r)]
        np.take(g, r, axis=0, out=t)
        t *= a
        p[r] += t


_BLOCK = 1 << 14  # elements per block of _add_scaled (64 KiB of float32): a scratch that stays in the
# cache and costs no memory to speak of (1 MiB blocks held 1 MiB and were no faster)
_SMALL = 1 << 14  # up to this size a temporary is cheaper than the blocks (malloc reuses it, no page faults)


def _add_scaled(p: np.ndarray, g: np.ndarray, a: float, scratch: np.ndarray | None = None) -> np.ndarray | None:
    """p += a * g, in place and without a temporary the size of p (``p -= lr * g`` made one:
    8 MB and its page faults for a 20000 x 100 embedding table, every step): block by block
    through a small scratch array, which is returned for the next call."""
    if p.size <= _SMALL or not (p.flags.c_contiguous and g.flags.c_contiguous and p.shape == g.shape):
        p += a * g
        return scratch
    pf, gf = p.reshape(-1), g.reshape(-1)
    dtype = np.result_type(p, g)
    if scratch is None or scratch.dtype != dtype or scratch.size < min(_BLOCK, pf.size):
        scratch = np.empty(min(_BLOCK, pf.size) if scratch is None else _BLOCK, dtype=dtype)
    multiply, add = np.multiply, np.add
    for lo in range(0, pf.size, _BLOCK):
        hi = min(lo + _BLOCK, pf.size)
        t = scratch[: hi - lo]
        multiply(gf[lo:hi], a, out=t)
        add(pf[lo:hi], t, out=pf[lo:hi], casting="same_kind")
    return scratch


class Momentum(SGD):
    """Heavy-ball momentum, in the lr-free buffer form (as in PyTorch):

        v = momentum * v + g;  p -= lr * v                (classic)
        v = momentum * v + g;  p -= lr * (g + momentum * v)   (nesterov)

    Keeping lr out of the buffer means a schedule changing lr takes effect at
    once instead of being smeared over the momentum's memory.
    """

    kind = "momentum"
    buffers = ("v",)
    hyper = ("lr", "momentum", "nesterov", "weight_decay")

    def __init__(self, lr: float = 0.1, momentum: float = 0.9, nesterov: bool = False,
                 weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def _update(self, name, p, g, t):
        if self.weight_decay:
            g = g + self.weight_decay * p
        v = self._buffer("v", name, p)
        v *= self.momentum
        v += g
        if self.nesterov:
            p -= self.lr * (g + self.momentum * v)
        else:
            p -= self.lr * v


class Adam(Optimizer):
    """Adam (Kingma & Ba), with optional L2 weight decay added to the gradient:

        m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
        p -= lr * m_hat / (sqrt(v_hat) + eps),  m_hat = m/(1-b1^t), v_hat = v/(1-b2^t)

    t counts each parameter's own updates, so a parameter unfrozen late gets a
    proper bias correction.
    """

    kind = "adam"
    buffers = ("m", "v")
    hyper = ("lr", "beta1", "beta2", "eps", "weight_decay")

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(lr)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.weight_decay = float(weight_decay)

    def _decay(self, p, g):
        return g + self.weight_decay * p if self.weight_decay else g

    def _update(self, name, p, g, t):
        g = self._decay(p, g)
        m = self._buffer("m", name, p)
        v = self._buffer("v", name, p)
        if adamkernel.applies(p, g, m, v):    # one compiled pass (a large parameter, or any once loaded): the same numbers
            adamkernel.adam_step(p, g, m, v, self.beta1, self.beta2, math.sqrt(1.0 - self.beta2 ** t),
                                 self.eps, self.lr / (1.0 - self.beta1 ** t))
            return
        m *= self.beta1
        m += (1.0 - self.beta1) * g
        v *= self.beta2
        v += (1.0 - self.beta2) * np.square(g)
        # sqrt(v_hat) + eps, built in one scratch array
        denom = np.sqrt(v)
        denom /= math.sqrt(1.0 - self.beta2 ** t)
        denom += self.eps
        step = m / denom
        step *= self.lr / (1.0 - self.beta1 ** t)
        p -= step


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter):
    p -= lr * weight_decay * p, applied apart from the adaptive step."""

    kind = "adamw"

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(lr, beta1, beta2, eps, weight_decay)

    def _decay(self, p, g):
        if self.weight_decay:
            p *= 1.0 - self.lr * self.weight_decay
        return g


OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "momentum": Momentum,
    "adam": Adam,
    "adamw": AdamW,
}


def make_optimizer(name: str, **kwargs) -> Optimizer:
    """Build an optimiser by registry name; bad names or keywords raise ValueError."""
    cls = OPTIMIZERS.get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown optimiser {name!r}; valid names: {', '.join(OPTIMIZERS)}")
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"optimiser {name!r} does not take {', '.join(unknown)}; accepted: {', '.join(accepted)}"
        )
    return cls(**kwargs)
