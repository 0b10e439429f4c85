"""A compiled network with its parameters: the object programs embed.

    >>> from nnspec import Model
    >>> m = Model.from_file("specs/xor_goodfellow.nn")
    >>> m.forward({"x": [[0, 0], [0, 1], [1, 0], [1, 1]]})["y"].ravel()
    array([0., 1., 1., 0.], dtype=float32)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .compiler import Compiled, compile_file, compile_text
from .plan import Plan
from .runtime import ExecOptions, Executor, Tape
from .train.init import default_initializer, initialize


def init_params(plan: Plan, seed: int = 0, dtype=np.float32, default_init: str | None = None) -> dict[str, np.ndarray]:
    """Parameters from the plan: literal values as given, the rest drawn from their initialisers.

    Each parameter draws from its own generator seeded by (seed, its name), so
    adding a parameter to a spec does not change the initial values of the others.
    """
    params = {}
    for p in plan.params:
        if p.value is not None:
            params[p.name] = np.asarray(p.value, dtype=dtype).reshape(p.shape)
            continue
        rng = np.random.default_rng([seed, *p.name.encode()])
        if p.init != "default":
            name, args = p.init, p.init_args
        elif default_init is not None and p.role in ("weight", "recurrent"):
            name, args = default_init, {}
        else:
            name, args = default_initializer(tuple(p.shape), _init_role(p.role, p.shape))
        params[p.name] = initialize(name, tuple(p.shape), rng, dtype=dtype, **args)
    return params


def _init_role(role: str, shape) -> str | None:
    """The initialiser policy's role names (nnspec.train.init.default_initializer)."""
    return {"table": "embedding", "initial": "bias", "recurrent": "recurrent"}.get(role)


class Model:
    """Compiled plan + parameters + an executor."""

    def __init__(self, compiled: Compiled, params: dict[str, np.ndarray] | None = None, *,
                 dtype=np.float32, seed: int = 0, default_init: str | None = None):
        self.compiled = compiled
        self.plan = compiled.plan
        self.dtype = np.dtype(dtype)
        self.params = params if params is not None else init_params(self.plan, seed, self.dtype, default_init)
        self.frozen = {p.name for p in self.plan.params if p.frozen}
        self.executor = Executor(self.plan, self.dtype)
        self._unoptimized: Executor | None = None   # see ``values``

    @classmethod
    def from_text(cls, text: str, bindings: dict[str, int] | None = None, **kw) -> "Model":
        compiled = compile_text(text, bindings=bindings)
        return cls(compiled, **_spec_defaults(compiled, kw))

    @classmethod
    def from_file(cls, path: str | Path, bindings: dict[str, int] | None = None, **kw) -> "Model":
        compiled = compile_file(path, bindings=bindings)
        return cls(compiled, **_spec_defaults(compiled, kw))

    # ---- running -------------------------------------------------------------
    def run(self, feeds: dict, lengths=None, train: bool = False, rng=None, carry=None,
            need_loss: bool = True, single_use: bool = False) -> Tape:
        feeds = {k: np.asarray(v) for k, v in feeds.items()}
        return self.executor.forward(self.params, feeds, lengths=lengths, train=train, rng=rng, carry=carry,
                                     need_loss=need_loss, single_use=single_use)

    def forward(self, feeds: dict, lengths=None) -> dict[str, np.ndarray]:
        """The declared outputs for a batch of inputs (evaluation mode: no dropout)."""
        have_targets = all(t.name in feeds for t in self.plan.targets)
        tape = self.run(feeds, lengths, need_loss=have_targets and self.plan.loss is not None)
        return {o: tape.values[o] for o in self.plan.outputs}

    def loss_and_grads(self, feeds: dict, lengths=None, rng=None, carry=None, train: bool = True,
                       single_use: bool = False):
        """(loss, gradients of the parameters, tape). ``single_use=True`` (the training loop):
        the tape is spent by this backward pass (see ``Executor.forward``), which saves memory."""
        tape = self.run(feeds, lengths, train=train, rng=rng, carry=carry, single_use=single_use)
        grads = self.executor.backward(tape, wrt=[k for k in self.params if k not in self.frozen])
        loss = float(tape.values[self.plan.loss])
        return loss, {k: grads[k] for k in self.params if k in grads and k not in self.frozen}, tape

    def gradients(self, feeds: dict, of: str | None = None, lengths=None) -> tuple[np.ndarray, dict]:
        """Value of ``of`` (the loss, else the single output) and its gradient w.r.t. every input and parameter."""
        target = of or self.plan.loss or (self.plan.outputs[0] if len(self.plan.outputs) == 1 else None)
        if target is None:
            raise ValueError("say which value to differentiate: the network has several outputs and no loss")
        tape = self.run(feeds, lengths)
        value = tape.values[target]
        grads = self.executor.backward(tape, seeds={target: np.ones_like(value)})
        names = [v.name for v in self.plan.inputs + self.plan.targets if not v.integer] + list(self.params)
        return value, {n: grads[n] for n in names if n in grads}

    def parameter_count(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    def values(self, feeds: dict, lengths=None) -> dict[str, np.ndarray]:
        """Every value the network computes for ``feeds``, by its name in the graph (``h``, a cell's
        gate ``h.f``), in evaluation mode. Computed by the plan before optimisation, where no value
        is fused into another, so the gates of a library ``lstm`` are there too."""
        have_targets = all(t.name in feeds for t in self.plan.targets)
        return dict(self.trace(feeds, lengths, need_loss=have_targets and self.plan.loss is not None).values)

    def trace(self, feeds: dict, lengths=None, need_loss: bool = True) -> Tape:
        """A forward pass by the unoptimised plan (see ``values``); its tape takes ``backward``
        through ``self.unoptimized``."""
        feeds = {k: np.asarray(v) for k, v in feeds.items()}
        return self.unoptimized.forward(self.params, feeds, lengths=lengths, need_loss=need_loss)

    @property
    def unoptimized(self) -> Executor:
        """An executor of this network's plan as compiled without optimisation passes, by the
        reference interpreter (made once): slower than ``executor``, and it hides no value."""
        if self._unoptimized is None:
            from .compiler import compile_program
            from .errors import Diagnostics
            plain = compile_program(self.compiled.program, Diagnostics(self.compiled.diags.sources),
                                    bindings=self.compiled.bindings, optimize=False)
            # the reference interpreter keeps every value inside a loop too, one per step
            self._unoptimized = Executor(plain.plan, self.dtype, options=ExecOptions(fast_loops=False))
        return self._unoptimized

    # ---- parameters by their spec names ----------------------------------------
    def get(self, name: str) -> np.ndarray:
        """A copy of parameter ``name`` (changing it does not change the model; use ``set``)."""
        return self.params[self._param_name(name)].copy()

    def set(self, name: str, value) -> None:
        """Give parameter ``name`` new values, of exactly its shape, stored in the model's dtype."""
        name = self._param_name(name)
        array = np.asarray(value, dtype=self.dtype)
        shape = self.params[name].shape
        if array.shape != shape:
            raise ValueError(f"parameter '{name}' has shape {list(shape)}, the new value {list(array.shape)}")
        self.params[name] = array.copy()

    # ---- pictures: a notebook shows a model, and draws its graph with values and gradients ----
    def draw(self, at: dict | None = None, of: str | None = None, unroll: int | None = None):
        """The computation graph as a picture. ``at`` (one example's inputs, e.g. ``{"a": 3}``, or a
        sequence ``{"w": [4, 7, 2]}``): each node shows its value and the gradient of ``of`` (the loss,
        else the single output); a sequence is drawn unrolled over its steps (or ``unroll`` of them)."""
        from .display import draw, graph_at
        return draw(self.compiled, unroll=unroll or 0) if at is None else graph_at(self, at, of, unroll)

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.compiled.name}: {self.compiled.kind}, "
                f"{self.parameter_count():,} parameters, {self.dtype}>")

    def _repr_html_(self) -> str:
        from .display import model_html
        return model_html(self)

    def _param_name(self, name: str) -> str:
        if name not in self.params:
            from .errors import did_you_mean
            raise KeyError(f"no parameter '{name}'{did_you_mean(name, self.params)}; "
                           f"the parameters are {', '.join(self.params)}")
        return name


def _spec_defaults(compiled: Compiled, kw: dict) -> dict:
    """The spec's ``train`` block decides dtype, seed and initialiser unless the caller does:
    ``Model.from_file`` then builds the same model ``open_session`` does."""
    from .settings import settings_from_block
    settings = settings_from_block(compiled.flat.train, compiled.diags)
    compiled.diags.raise_if_errors()
    return {"dtype": np.dtype(settings.dtype), "seed": settings.seed, "default_init": settings.init, **kw}
