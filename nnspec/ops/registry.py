"""The one registry of operations.

Every op is a small class holding, side by side, its shape rule, its forward
computation and its vector-Jacobian product (micrograd style): reading one op
tells you everything about it.

Array conventions (see docs/internals.md):
  * A value's *per-example shape* is a tuple of dims, e.g. ``(128,)`` or ``()``.
  * At run time a value's array carries leading axes in front of that shape:
    ``(B, *shape)`` for a feed-forward value, ``(T, B, *shape)`` for a
    sequence (time-major), or nothing at all for a parameter or constant.
    Elementwise ops therefore rely on NumPy broadcasting, and their VJPs sum
    gradients back to each input's own shape with :func:`unbroadcast`.
  * Integer inputs (token ids, class labels) are not differentiated: the VJP
    returns ``None`` for them. Padding positions of integer targets hold -1.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Protocol

import numpy as np

Dim = Any  # an int, or a symbolic size variable owned by the shape solver
Shape = tuple


class ShapeError(Exception):
    """A shape rule rejected its inputs; the message is shown to the user."""


class DimSolver(Protocol):
    """What a shape rule may ask of the shape solver."""

    def unify(self, a: Dim, b: Dim, why: str = "") -> Dim:
        """Declare two dims equal (raises ShapeError when they cannot be)."""

    def fresh(self, hint: str = "") -> Dim:
        """A new unknown dim, to be fixed by later constraints."""

    def value(self, d: Dim) -> int | None:
        """The dim's size if known yet."""


@dataclass(slots=True)   # (made for every step that needs one, every pass: no instance dict)
class Ctx:
    """Run-time context handed to forward and vjp.

    ``mask`` is the (T, B) float mask of real (1) versus padding (0) steps, and
    ``lengths`` the (B,) true lengths, when the op's first input is a
    sequence; both are None for feed-forward values and inside a time step.
    ``saved`` is the op's private stash from forward to vjp (e.g. a dropout mask).
    ``empty(shape, dtype)`` gives an uninitialised array for a big result or
    temporary: the runtime hands out its buffer pool's arrays, which spares
    the page faults of a fresh allocation every pass.
    ``spend``: the op may overwrite its first input (an op with ``spends_input``; the runtime
    says so only in a single-use training pass, for an array of its own that nothing else
    reads, not even a VJP).
    """

    train: bool = False
    rng: np.random.Generator | None = None
    mask: np.ndarray | None = None
    lengths: np.ndarray | None = None
    saved: dict = field(default_factory=dict)
    empty: Callable = np.empty
    spend: bool = False
    rows: tuple | None = None   # a nested inner axis: its batch's rows are (T_outer, B), outer step-major
    gather: np.ndarray | None = None   # ... or, words deduplicated, each of those rows' distinct word


@dataclass(frozen=True)
class ScalarForm:
    """An elementwise op's maths on single numbers, for the fused loop kernels that are generated
    from a loop body (``runtime/fused.py``): ``value`` in terms of the inputs ``{x0}``, ``{x1}`` ...
    and the op's attributes (``{p}``), and ``partials[i]``, d out / d input i, in terms of the same and
    ``{out}``. Python expressions over ``exp log tanh sqrt expm1 log1p abs`` and conditionals."""
    value: str
    partials: tuple[str, ...]


@dataclass(frozen=True)
class ProductForm:
    """``W x`` (with ``bias``: ``W x + b``) for one weight W (m, n) shared by the batch: a fused
    kernel computes it as a small loop of products (it pays only at small sizes)."""
    bias: bool = False


@dataclass(frozen=True)
class JoinForm:
    """The inputs side by side along the last axis."""


@dataclass(frozen=True)
class PartForm:
    """``x[..., start:stop]`` (attrs ``start``, ``stop``)."""


FusedForm = ScalarForm | ProductForm | JoinForm | PartForm


class Op:
    """Base class: subclasses set ``name`` and implement the three methods."""

    name: ClassVar[str]
    arity: ClassVar[int | None] = 1            # None: any number of inputs
    integer_inputs: ClassVar[tuple[int, ...]] = ()  # positions that take int arrays
    integer_output: ClassVar[bool] = False      # output holds ids / classes
    attrs: ClassVar[dict[str, Any]] = {}       # attribute names -> defaults
    over_time: ClassVar[bool] = False           # consumes or produces the time axis
    reduces_time: ClassVar[bool] = False        # a sequence in, one value per sequence out
    adds_axis: ClassVar[bool] = False           # along(x, s): x repeated along the innermost axis of s (axes.py)
    scalar_output: ClassVar[bool] = False       # losses: one number for the batch
    # positions ("all": every one) that take one value for the whole batch, with no leading axes: a
    # weight, a table (a parameter, a constant, or computed from them alone), never a per-example value
    shared_inputs: ClassVar[tuple[int, ...] | str] = ()
    doc: ClassVar[str] = ""

    # ---- facts: what the passes ask of an op (declared by every op or its family, never defaulted:
    # ``register`` refuses an op that leaves one out, so a new op cannot be silently misread) -----------
    elementwise: ClassVar[bool]        # output at each position reads only the inputs there: commutes with slicing
    operator: ClassVar[str | None]     # the infix (prefix for one input) symbol users may write instead
    args: ClassVar[tuple[str, ...]]    # the arguments' names as the docs show them ("..." for any number)
    saves_state: ClassVar[bool]        # forward stashes something in ctx.saved for the vjp (implies needs_ctx)
    last_axis_view: ClassVar[bool]     # output is x[..., start:stop] of its first input (attrs start, stop)
    row_gradient_input: ClassVar[int | None]  # an input (a table) whose gradient is a few rows: kept sparse
    reads_across_chunks: ClassVar[bool]  # reads later steps (attr k) of a sequence cut into chunks
    passes_gradient: ClassVar[tuple[int, ...]]  # inputs whose gradient is the output's gradient, unchanged
    # what the output is when the input is a prediction's scores (logits): "probabilities" (a
    # distribution over the last axis), "log_probabilities", "binary_probabilities" (each unit's own),
    # "scores" (the scores themselves); None: anything else. Readers of an exported model's outputs and
    # the greedy decoder turn such an output back into scores (``scores_from``)
    scores_as: ClassVar[str | None]
    # losses (None elsewhere): what the prediction is ("probabilities", "log_probabilities", "logits",
    # "scores": a step unit's input, no probability, or "reals"), the target ("class": int classes, "binary": 0/1, "real"), the threshold of a binary
    # decision on the prediction, and (activation, loss): loss(activation(z), y) is that loss of z
    prediction: ClassVar[str | None]
    target: ClassVar[str | None]
    threshold: ClassVar[float | None]
    logits_form: ClassVar[tuple[str, str] | None]

    def shape(self, shapes: list[Shape], attrs: dict, dims: DimSolver) -> Shape:
        raise NotImplementedError

    def forward(self, xs: list[np.ndarray], attrs: dict, ctx: Ctx) -> np.ndarray:
        """By default ``forward_into`` a new array of the inputs' broadcast shape: an elementwise op
        writes its maths once, there."""
        if type(self).forward_into is Op.forward_into:
            raise NotImplementedError(f"{self.name}: neither forward nor forward_into")
        out = np.empty(np.broadcast_shapes(*(np.shape(x) for x in xs)), np.result_type(*xs))
        self.forward_into(xs, out, attrs)
        return out

    def vjp(self, g: np.ndarray, xs: list[np.ndarray], out: np.ndarray,
            attrs: dict, ctx: Ctx) -> list[np.ndarray | None]:
        raise NotImplementedError

    # ---- fast paths (optional) -------------------------------------------------
    # The runtime's loop fast path calls these; the defaults fall back on
    # forward/vjp, so an op only overrides them to save allocations and work.
    # what a generated loop kernel computes for this op (``runtime/fused.py``); None: a loop holding
    # the op runs on the NumPy path
    fused: ClassVar[FusedForm | None] = None
    # the name of a kernel of ``runtime/fastact.py`` that computes this unary op's loop step on float32
    # rows, vectorised (``ExecOptions.fast_sigmoid``); None: NumPy's step
    vectorised_step: ClassVar[str | None] = None
    needs_ctx: ClassVar[bool] = True   # forward/vjp read ctx (train, rng, mask, saved)
    # forward can work in its first input's array (Ctx.spend; an op without a context: forward_into
    # given that array as ``out``, and vjp_into given g's array as ``dest``), in a single-use pass
    # where nothing else reads that input (or that gradient)
    spends_input: ClassVar[bool] = False
    # its step kernel may overflow harmlessly (sigmoid's e^-x -> inf gives exactly 0) and does not
    # silence the warning itself (np.errstate costs more than the kernel at small sizes): the
    # runtime silences overflow warnings around the steps of a loop that holds such an op
    quiet_overflow: ClassVar[bool] = False
    # its output is its inputs stacked along their first axis (concat_rows): parameters joined so
    # may be stored as consecutive blocks of one array, and the output is then a view of it
    stacks_rows: ClassVar[bool] = False
    vjp_reads: ClassVar[tuple] = ("inputs", "out")  # what vjp reads: input positions / "out"

    def forward_into(self, xs: list[np.ndarray], out: np.ndarray, attrs: dict) -> None:
        """Write ``forward(xs)`` into the preallocated ``out`` (only for ops with ``needs_ctx`` False)."""
        np.copyto(out, self.forward(xs, attrs, NO_CTX))

    def vjp_one(self, i: int, g: np.ndarray, xs: list[np.ndarray], out: np.ndarray,
                attrs: dict, ctx: "Ctx") -> np.ndarray | None:
        """The gradient of input ``i`` alone (ops override it when the others cost work)."""
        return self.vjp(g, xs, out, attrs, ctx)[i]

    def vjp_view(self, i: int, g: np.ndarray, xs: list[np.ndarray], attrs: dict) -> np.ndarray | None:
        """The gradient of input ``i`` when it is a view of ``g`` with no arithmetic (a part of a
        concatenation's), else None: the runtime then hands on the view instead of a copy."""
        return None

    def vjp_into(self, i: int, g: np.ndarray, xs: list[np.ndarray], out: np.ndarray, attrs: dict,
                 dest: np.ndarray, accumulate: bool) -> None:
        """Add (``accumulate``) or write the gradient of input ``i`` into ``dest``, of input i's shape."""
        gi = self.vjp_one(i, g, xs, out, attrs, NO_CTX)
        if accumulate:
            dest += gi
        else:
            np.copyto(dest, gi)

    # Step kernels, for loop bodies: built once per loop run from per-step lists
    # (``xs[j][t]`` is input j at step t, ``out[t]`` the output's array at step t),
    # they return ``f(t)`` doing the work of step t with no further dispatch. A kernel
    # must read the lists at every call, not copy them: the runtime keeps a run for the
    # next batch of the same shape and refills the lists of inputs from outside the loop.
    # A kernel that prepares something once a pass (a copy of a weight) has ``before_pass()``
    # and ``after_pass()``, which the loop calls around the pass's steps.
    def step_forward(self, xs: list[list], out: list, attrs: dict) -> Callable[[int], None]:
        """``f(t)``: ``forward`` of step t into ``out[t]`` (default: through ``forward_into``)."""
        forward_into = self.forward_into

        def f(t):
            forward_into([x[t] for x in xs], out[t], attrs)
        return f

    def step_vjp(self, i: int, g: list, xs: list[list], out: list, attrs: dict, dest: list,
                 accumulate: bool) -> Callable[[int], None]:
        """``f(t)``: add (or write) the gradient of input i at step t into ``dest[t]``."""
        vjp_into = self.vjp_into

        def f(t):
            vjp_into(i, g[t], [x[t] for x in xs], out[t], attrs, dest[t], accumulate)
        return f

    # An elementwise op of one input may define ``local_grad(xs, out, attrs, into=None) -> D``
    # with ``vjp(g) == [g * D]`` (D written into ``into`` when given): the runtime then
    # computes D for a whole sequence at once and multiplies by it at each step of a
    # loop's backward pass.
    local_grad: ClassVar[Callable | None] = None

    def attr(self, attrs: dict, key: str) -> Any:
        """An attribute's value, falling back to the op's declared default."""
        return attrs.get(key, type(self).attrs[key])

    def output_integer(self, inputs_integer: list[bool]) -> bool:
        """Whether the output holds ints, given which inputs do.

        Fixed by ``integer_output`` for most ops; ops that pass ints or floats
        through unchanged (``shift``) override it.
        """
        return self.integer_output


class NotALoss:
    """The loss facts of every op that is not a loss (mixed into a family or op before Op)."""
    prediction = target = threshold = logits_form = None


NO_CTX = Ctx()  # handed to ops that do not read their context (``needs_ctx`` False)

REGISTRY: dict[str, Op] = {}


FACTS = ("elementwise", "operator", "args", "saves_state", "last_axis_view", "row_gradient_input",
         "reads_across_chunks", "passes_gradient", "scores_as", "prediction", "target", "threshold",
         "logits_form")
LOSS_FACTS = ("prediction", "target", "threshold", "logits_form")  # None unless scalar_output
PREDICTIONS = ("probabilities", "log_probabilities", "logits", "scores", "reals")
TARGETS = ("class", "binary", "real")
SCORES_AS = ("probabilities", "log_probabilities", "binary_probabilities", "scores")


def scores_from(kind: str, v: np.ndarray) -> np.ndarray:
    """The scores (logits, up to a constant along the last axis) of an output that is ``kind``
    (an op's ``scores_as``) of them."""
    if kind == "probabilities":
        return np.log(np.maximum(v, 1e-300))
    if kind == "binary_probabilities":
        return np.log(v) - np.log1p(-v)
    if kind in ("log_probabilities", "scores"):
        return v
    raise ValueError(f"no scores from {kind!r}")


def register(cls: type[Op]) -> type[Op]:
    """Class decorator: add one instance of the op to the registry, once it states every fact."""
    if cls.name in REGISTRY:
        raise ValueError(f"op {cls.name!r} registered twice")
    missing = [f for f in FACTS if not hasattr(cls, f)]
    if missing:
        raise TypeError(f"op {cls.name!r} does not declare {', '.join(missing)} (see Op's facts)")
    REGISTRY[cls.name] = cls()
    return cls


def get(name: str) -> Op:
    return REGISTRY[name]


def product_into(G, D, dest, accumulate: bool):
    """A per-step kernel ``dest[t] (+)= G[t] * D[t]``: the VJP of an elementwise product, or of any
    elementwise op whose derivative D was computed beforehand."""
    multiply, add = np.multiply, np.add
    if accumulate and G and dest and G[0].shape == dest[0].shape:
        tmp = np.empty(dest[0].shape, np.result_type(G[0], dest[0]))  # no temporary at every step

        def step(t):
            d = dest[t]
            add(d, multiply(G[t], D[t], out=tmp), out=d)
    elif accumulate:
        def step(t):
            d = dest[t]
            d += G[t] * D[t]
    else:
        def step(t):
            multiply(G[t], D[t], out=dest[t])
    return step


def unbroadcast(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``g`` over the axes that broadcasting added or stretched to reach ``shape``."""
    if g.shape == tuple(shape):
        return g
    extra = g.ndim - len(shape)
    if extra > 0:
        g = g.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if stretched:
        g = g.sum(axis=stretched, keepdims=True)
    return g


def show_shape(shape: Shape) -> str:
    """A shape as users write it: ``(128, n)``, ``(5,)`` or ``()``."""
    if len(shape) == 1:
        return f"({shape[0]},)"
    return "(" + ", ".join(str(d) for d in shape) + ")"


def unify_dims(a: Shape, b: Shape, dims: DimSolver, who: str) -> tuple:
    """Unify two equal-rank shapes dim by dim; errors show both shapes."""
    what = f"{who}: shapes {show_shape(a)} and {show_shape(b)}"
    if len(a) != len(b):
        raise ShapeError(f"{what} have different ranks")
    try:
        return tuple(dims.unify(x, y, what) for x, y in zip(a, b))
    except ShapeError as e:
        raise ShapeError(f"{what} do not match ({e})") from None


def broadcast_shape(shapes: list[Shape], dims: DimSolver, who: str) -> Shape:
    """Shape rule of elementwise ops: ``()`` broadcasts against anything,
    other shapes must have equal rank and unify dim by dim."""
    out: Shape = ()
    for s in shapes:
        s = tuple(s)
        if len(s) == 0:
            continue
        out = s if len(out) == 0 else unify_dims(out, s, dims, who)
    return out


Attrs = dict[str, Any]
ShapeRule = Callable[[list[Shape], Attrs, DimSolver], Shape]
