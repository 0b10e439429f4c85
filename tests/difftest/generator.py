"""A seeded generator of random valid specs, built from a small typed model.

Every value the generator makes is a :class:`Val` (its name, its vector size — 0 for a
scalar — and whether it is a sequence); every expression is an :class:`Expr` tree whose
nodes know the same. Expressions are only combined where their types fit (``+`` of equal
sizes or a scalar, ``W @ x`` into a declared size, a reduction over time of a sequence),
so what is emitted compiles: the tests check that at least 99% of specs do.

A spec is a list of :class:`Stmt`. Statements know the names they define and read, which
is what the shrinker (``shrink.py``) needs to delete statements and keep the rest valid.

Coverage (the issue's list): ``@ + - * /``, every activation, ``concat``, constants and
literals; recurrence at ``t-1``, ``t-2``, ``t+1``, two states in one loop, hand-written
gates, delayed reads of inputs and computed sequences inside and outside loops; learned,
constant and computed initial states; a user cell instantiated twice; every stdlib cell
plain, ``reverse``, ``bidirectional`` and ``stacked``; every reduction over time; every
loss, per step and per example, weighted and several at once; padded batches of mixed
lengths (the runner picks the lengths); a second sequence input on an axis of its own (``seq(k)``,
its own lengths), raw or through an encoder looping over it, read through attention (dot and
additive, after a loop and inside one, or written out with along, dot, sum_features and
softmax_steps), reductions and initial states; nested sequences (the characters of every word, ``chars(w)``)
read by a cell over each word's characters and a reduction (words of different lengths, padding
words); and, for some seeds, a small encoder-decoder with a
``decode`` declaration (:class:`DecoderGenerator`).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from nnspec.ops import REGISTRY

ACTIVATIONS = ["tanh", "sigmoid", "relu", "leaky_relu", "elu", "gelu", "softplus", "hard_tanh",
               "identity", "abs", "square", "exp_small", "log_pos", "sqrt_pos", "pow", "step_plus",
               "softmax", "log_softmax"]
REDUCTIONS = ["last", "first", "mean", "max", "sum"]
STDLIB = ["rnn", "lstm", "gru", "gru_reset_before", "gru_reset_after"]
WRAPPERS = ["", "reverse", "bidirectional", "stacked"]
LOSSES = [name for name, op in REGISTRY.items() if op.prediction is not None]   # every loss of the registry
# names that are not values: functions, cells, keywords
NOT_VALUES = set(ACTIVATIONS + REDUCTIONS + STDLIB + WRAPPERS + LOSSES) | {
    "t", "concat", "shift", "embed", "dense", "exp", "log", "sqrt", "step", "seq", "of", "token", "class",
    "input", "output", "target", "param", "initial", "loss", "cell", "network", "H", "N", "p", "alpha",
    "attention", "additive_attention", "along", "A"}
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


@dataclass
class Val:
    name: str
    size: int          # 0: a scalar
    seq: bool


@dataclass
class Expr:
    """``fmt`` is Python format text over the rendered children: ``"tanh({0})"``, ``"W3 @ {0}"``."""
    fmt: str
    args: list["Expr"]
    size: int
    seq: bool

    def render(self) -> str:
        return self.fmt.format(*[a.render() for a in self.args])

    def nodes(self):
        yield self
        for a in self.args:
            yield from a.nodes()


@dataclass
class Stmt:
    """One statement. ``text`` may hold ``{e}`` where ``expr`` goes; ``defines``: the name it makes,
    ``about``: the name a param/initial/output statement is about (dropped with it)."""
    kind: str            # input target output eq param initial loss cell
    text: str
    expr: Expr | None = None
    defines: str | None = None
    about: str | None = None

    def render(self) -> str:
        return self.text.replace("{e}", self.expr.render()) if self.expr is not None else self.text

    def reads(self) -> set[str]:
        body = self.render()
        if self.kind in ("eq", "initial", "param") and "=" in body:
            body = body.split("=", 1)[1]
        elif self.kind in ("input", "target", "param", "cell"):
            return set()
        names = set()
        for m in NAME.finditer(body):
            n = m.group(0)
            if n in NOT_VALUES or body[m.end():m.end() + 1] == "(" and "." not in n:
                continue
            names.add(n)
            if "." in n:
                names.add(n.split(".")[0])
        return names


@dataclass
class Spec:
    stmts: list[Stmt]
    seed: int = -1
    tags: set[str] = field(default_factory=set)

    def text(self) -> str:
        return "\n".join(s.render() for s in self.stmts) + "\n"

    @property
    def has_seq(self) -> bool:
        return any(s.kind == "input" and ": seq" in s.text for s in self.stmts)


def leaf(v: Val, delay: str = "") -> Expr:
    return Expr(v.name + delay, [], v.size, v.seq)


class Generator:
    """One spec per seed: ``Generator(seed).spec()``."""

    def __init__(self, seed: int):
        self.seed = seed
        self.r = random.Random(seed)
        self.stmts: list[Stmt] = []
        self.pool: list[Val] = []       # values an expression may read
        self.used: set[str] = set()
        self.counter = 0
        self.tags: set[str] = set()
        self.must_declare = 0   # > 0: where nothing fixes a product's rows (concat, cell arguments)

    # ---- names ------------------------------------------------------------------
    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def size(self) -> int:
        return self.r.randint(1, 4)

    # ---- expressions ------------------------------------------------------------
    def pick(self, seq: bool | None = None, size: int | None = None, nonscalar=True) -> Val | None:
        cands = [v for v in self.pool if (seq is None or v.seq == seq) and (size is None or v.size == size)
                 and (not nonscalar or v.size > 0)]
        if not cands:
            return None
        # prefer values no one reads yet, so that everything gets used
        fresh = [v for v in cands if v.name not in self.used]
        v = self.r.choice(fresh if fresh and self.r.random() < 0.7 else cands)
        self.used.add(v.name)
        return v

    def param_matmul(self, inner: Expr, rows: int, declare: bool = False) -> Expr:
        w = self.fresh("W")
        if declare or self.must_declare or self.r.random() < 0.3:
            self.stmts.append(Stmt("param", f"param {w}[{rows}, {max(inner.size, 1)}]", about=w))
        return Expr(w + " @ {0}", [inner], rows, inner.seq)

    def literal_matmul(self, inner: Expr, rows: int) -> Expr:
        m = [[round(self.r.uniform(-1, 1), 2) for _ in range(inner.size)] for _ in range(rows)]
        return Expr(str(m).replace("'", "") + " @ {0}", [inner], rows, inner.seq)

    def project(self, v: Expr, size: int, declare=False) -> Expr:
        """An expression of ``size`` made from ``v``: itself, or its product with a learned or literal matrix."""
        if v.size == size and self.r.random() < 0.4:
            return v
        if self.r.random() < 0.08:
            return self.literal_matmul(v, size)
        return self.param_matmul(v, size, declare)

    def activation(self, e: Expr) -> Expr:
        a = self.r.choice(ACTIVATIONS)
        self.tags.add("act:" + a)
        if a == "exp_small":
            return Expr("exp(0.5 * {0})", [e], e.size, e.seq)
        if a == "log_pos":
            return Expr("log(sigmoid({0}))", [e], e.size, e.seq)
        if a == "sqrt_pos":
            return Expr("sqrt(square({0}) + 0.5)", [e], e.size, e.seq)
        if a == "pow":
            return Expr(f"pow({{0}}, p = {self.r.choice([2, 3])})", [e], e.size, e.seq)
        if a == "step_plus":   # step has no gradient: keep a path that has one
            return Expr("(step({0}) + {0})", [e], e.size, e.seq)
        if a == "leaky_relu":
            return Expr("leaky_relu({0}, alpha = 0.2)", [e], e.size, e.seq)
        if a == "elu":
            return Expr(f"elu({{0}}{', alpha = 0.5' if self.r.random() < 0.5 else ''})", [e], e.size, e.seq)
        return Expr(a + "({0})", [e], e.size, e.seq)

    def arith(self, a: Expr, b: Expr) -> Expr:
        """a (+ - * /) b of equal sizes; the quotient divides by something positive."""
        op = self.r.choice(["+", "-", "*", "/", "+"])
        self.tags.add("op" + op)
        if op == "/":
            return Expr("({0} / (square({1}) + 1))", [a, b], a.size, a.seq or b.seq)
        return Expr(f"({{0}} {op} {{1}})", [a, b], a.size, a.seq or b.seq)

    def constant(self, e: Expr) -> Expr:
        """e combined with a number or a literal vector."""
        c = self.r.random()
        if c < 0.5:
            n = self.r.choice(["2", "0.5", "1.5", "3"])
            op = self.r.choice(["*", "+", "-", "/"])
            self.tags.add("const")
            if op == "/" and self.r.random() < 0.5:   # a number over something positive
                return Expr(f"({n} / (square({{0}}) + 1))", [e], e.size, e.seq)
            return Expr(f"({n} {op} {{0}})" if op != "/" and self.r.random() < 0.5 else f"({{0}} {op} {n})", [e],
                        e.size, e.seq)
        vec = [round(self.r.uniform(-1, 1), 2) for _ in range(e.size)]
        self.tags.add("literal")
        return Expr(f"({{0}} + {vec})", [e], e.size, e.seq)

    def expr(self, size: int, seq: bool | None, depth: int = 2) -> Expr:
        """A random expression of vector ``size``; a sequence when ``seq`` (None: either)."""
        if depth <= 0:
            v = self.pick(seq=seq) or self.pick(seq=None)
            e = leaf(v)
            if v.seq and self.r.random() < 0.15:  # a delayed read of a sequence outside a loop
                d = self.r.choice(["[t-1]", "[t-2]", "[t+1]"])
                self.tags.add("delayed_outer")
                e = leaf(v, d)
            return self.project(e, size)
        c = self.r.random()
        if c < 0.3:
            return self.activation(self.expr(size, seq, depth - 1))
        if c < 0.55:
            a = self.expr(size, seq, depth - 1)
            b = self.expr(size, None if seq is None else False if self.r.random() < 0.3 else seq, depth - 1)
            return self.arith(a, b)
        if c < 0.65:
            return self.constant(self.expr(size, seq, depth - 1))
        if c < 0.75 and size >= 2:
            k = self.r.randint(1, size - 1)
            self.tags.add("concat")
            self.must_declare += 1
            a, b = self.expr(k, seq, depth - 1), self.expr(size - k, seq, depth - 1)
            self.must_declare -= 1
            return Expr("concat({0}, {1})", [a, b], size, a.seq or b.seq)
        if c < 0.82 and seq is not True:
            src = self.pick(seq=True)
            if src is not None:
                red = self.r.choice(REDUCTIONS)
                self.tags.add("reduce:" + red)
                return self.project(Expr(red + "({0})", [leaf(src)], src.size, False), size)
        if c < 0.86 and seq is not False:
            src = self.pick(seq=True)
            if src is not None:
                self.tags.add("shift")
                return self.project(Expr(f"shift({{0}}, {self.r.choice([1, -1, 2])})", [leaf(src)], src.size, True),
                                    size)
        if c < 0.9:
            v = self.pick(seq=False, nonscalar=False, size=0)
            if v is not None:
                self.tags.add("scalar")
                e = self.expr(size, seq, depth - 1)
                return Expr("({0} * {1})", [leaf(v), e], size, e.seq)
        return self.expr(size, seq, 0)

    # ---- statements -------------------------------------------------------------
    def add_value(self, name: str, size: int, seq: bool, e: Expr | None, text: str | None = None):
        self.stmts.append(Stmt("eq", text or f"{name}[{size}] = {{e}}", e, defines=name))
        self.pool.append(Val(name, size, seq))

    def inputs(self):
        seq = self.r.random() < 0.85
        for i in range(self.r.randint(1, 2)):
            n, s = self.fresh("x"), self.size()
            is_seq = seq if i == 0 else self.r.random() < 0.5
            self.stmts.append(Stmt("input", f"input {n}[{s}]" + (" : seq" if is_seq else ""), defines=n))
            self.pool.append(Val(n, s, is_seq))
        if seq and self.r.random() < 0.2:
            w, e = self.fresh("w"), self.fresh("e")
            self.stmts.append(Stmt("input", f"input {w} : seq of token", defines=w))
            s = self.size()
            self.add_value(e, s, True, Expr(f"embed({w}, {s})", [], s, True))
            self.tags.add("embed")
        if self.r.random() < 0.15:
            a = self.fresh("a")
            self.stmts.append(Stmt("input", f"input {a}", defines=a))
            self.pool.append(Val(a, 0, False))

    def block(self):
        seqs = any(v.seq for v in self.pool)
        kinds = ["ff", "ff"] + (["rnn", "rnn", "gated", "two_states", "stdlib", "stdlib", "cell_twice",
                                 "delay_in_loop", "two_inputs", "other_axis"] if seqs else [])
        if any(v.seq for v in self.pool) and self.r.random() < 0.1:
            kinds = ["nested"]
        getattr(self, "block_" + self.r.choice(kinds))()

    def block_ff(self):
        n, s = self.fresh("v"), self.size()
        e = self.expr(s, None, depth=self.r.randint(1, 3))
        self.add_value(n, s, e.seq, e)

    def state_input(self, s: int) -> Expr:
        return self.expr(s, True, depth=self.r.randint(0, 2))

    def initial(self, h: str, s: int):
        c = self.r.random()
        if c < 0.25:
            self.tags.add("init:learned")
            self.stmts.append(Stmt("initial", f"initial {h} = {self.fresh('h0_')}", about=h))
        elif c < 0.4:
            self.tags.add("init:const")
            val = self.r.choice(["0.5", str([round(self.r.uniform(-1, 1), 2) for _ in range(s)])])
            self.stmts.append(Stmt("initial", f"initial {h} = {val}", about=h))
        elif c < 0.55:
            z = self.pick(seq=False)
            if z is not None:
                self.tags.add("init:computed")
                e = self.param_matmul(leaf(z), s, declare=True)
                self.stmts.append(Stmt("initial", f"initial {h} = tanh({{e}})", e, about=h))

    def recurrent_term(self, h: str, s: int, delay: str) -> Expr:
        """A read of state h at a delay, projected or gated: U @ h[t-1], g * h[t-1], ..."""
        e = Expr(h + delay, [], s, True)
        c = self.r.random()
        if c < 0.65:
            return self.param_matmul(e, s)
        if c < 0.75:
            self.tags.add("state_act")
            return self.param_matmul(Expr(self.r.choice(["relu", "tanh", "sigmoid"]) + "({0})", [e], s, True), s)
        if c < 0.8:
            self.tags.add("state_act_plain")
            return Expr(self.r.choice(["relu", "tanh", "sigmoid", "abs"]) + "({0})", [e], s, True)
        if self.r.random() < 0.6:
            return self.param_matmul(e, s)
        self.tags.add("state_scalar")
        return Expr(self.r.choice(["(2 * {0})", "({0} / 2)", "({0} - 3)"]), [e], s, True)

    def block_rnn(self):
        h, s = self.fresh("h"), self.size()
        direction = self.r.choice(["[t-1]", "[t-1]", "[t+1]"])
        delays = [direction] + (["[t-2]"] if direction == "[t-1]" and self.r.random() < 0.3 else [])
        self.tags.update("delay" + d for d in delays)
        x = self.state_input(s)
        terms = [x] + [self.recurrent_term(h, s, d) for d in delays]
        e = terms[0]
        for t in terms[1:]:
            e = Expr("({0} + {1})", [e, t], s, True)
        if self.r.random() < 0.5:
            e = Expr("({0} + " + self.fresh("b") + ")", [e], s, True)
        e = Expr(self.r.choice(["tanh", "tanh", "sigmoid", "relu"]) + "({0})", [e], s, True)
        self.add_value(h, s, True, e)
        self.initial(h, s)

    def block_gated(self):
        """Hand-written gates: g = sigmoid(...), h = g * h[t-1] + (1 - g) * tanh(...)."""
        g, h, s = self.fresh("g"), self.fresh("h"), self.size()
        self.tags.add("gated")
        x = leaf(self.pick(seq=True))
        gx = self.project(x, s, declare=True)
        ge = Expr("sigmoid({0} + {1} @ {2})", [gx, Expr(self.fresh("U"), [], s, True), Expr(h + "[t-1]", [], s, True)],
                  s, True)
        self.stmts.append(Stmt("eq", f"{g}[{s}] = {{e}}", ge, defines=g))
        cand = self.param_matmul(x, s, declare=True)
        he = Expr("({0} * {1}[t-1] + (1 - {0}) * tanh({2}))", [Expr(g, [], s, True), Expr(h, [], s, True), cand], s,
                  True)
        self.add_value(h, s, True, he)
        self.pool.append(Val(g, s, True))
        self.initial(h, s)

    def block_two_states(self):
        """Two values of one loop that read each other: a = f(x, b[t-1]); b = g(a, b[t-1])."""
        a, b, s = self.fresh("h"), self.fresh("h"), self.size()
        self.tags.add("two_states")
        d = self.r.choice(["[t-1]", "[t+1]"])
        x = self.state_input(s)
        ae = Expr("tanh({0} + {1})", [x, self.param_matmul(Expr(b + d, [], s, True), s)], s, True)
        be = Expr("sigmoid({0} + {1})", [self.param_matmul(Expr(a, [], s, True), s),
                                         self.param_matmul(Expr(b + d, [], s, True), s)], s, True)
        self.stmts.append(Stmt("eq", f"{a}[{s}] = {{e}}", ae, defines=a))
        self.add_value(b, s, True, be)
        self.pool.append(Val(a, s, True))
        self.initial(b, s)

    def block_delay_in_loop(self):
        """A loop that reads an input or a computed sequence at another step."""
        h, s = self.fresh("h"), self.size()
        src = self.pick(seq=True)
        d = self.r.choice(["[t-1]", "[t-2]"])
        self.tags.add("delayed_inner")
        e = Expr("tanh({0} + {1} + {2})", [self.project(leaf(src, d), s, declare=True),
                                           self.project(leaf(src), s, declare=True),
                                           self.recurrent_term(h, s, "[t-1]")], s, True)
        self.add_value(h, s, True, e)
        self.initial(h, s)

    def block_stdlib(self):
        cell, wrap = self.r.choice(STDLIB), self.r.choice(WRAPPERS)
        self.tags.add(f"cell:{wrap}({cell})" if wrap else f"cell:{cell}")
        h, s = self.fresh("h"), self.size()
        self.must_declare += 1
        x = self.state_input(self.size())
        self.must_declare -= 1
        if wrap == "":
            call, out = f"{cell}({{e}}, H = {s})", s
        elif wrap == "bidirectional":
            call, out = f"bidirectional({cell})({{e}}, H = {s})", 2 * s
        elif wrap == "stacked":
            call, out = f"stacked({cell}, {self.r.choice([2, 3])})({{e}}, H = {s})", s
        else:
            call, out = f"reverse({cell})({{e}}, H = {s})", s
        self.add_value(h, out, True, x, text=f"{h} = {call}")
        if cell == "lstm" and wrap in ("", "reverse") and self.r.random() < 0.3:
            self.pool.append(Val(h + ".c", s, True))
            if self.r.random() < 0.5:
                self.tags.add("init:lstm_context")
                self.stmts.append(Stmt("initial", f"initial {h}.c = {self.fresh('c0_')}", about=h))
        if wrap in ("", "reverse") and self.r.random() < 0.3:
            self.initial(h, s)
        if self.r.random() < 0.15:
            n = self.fresh("v")
            self.tags.add("cell:dense")
            self.add_value(n, s, True, leaf(Val(h, out, True)), text=f"{n} = dense({{e}}, N = {s})")

    def block_cell_twice(self):
        """A user cell, recurrent or not, instantiated twice."""
        name = self.fresh("cell")
        self.tags.add("user_cell")
        recurrent = self.r.random() < 0.6
        body = "y = tanh(W @ x + U @ y[t-1] + b)" if recurrent else "y = relu(W @ x + b) * g + 0.5"
        if recurrent and self.r.random() < 0.4:
            body = "z = sigmoid(Wz @ x + Uz @ y[t-1])\n  y = z * y[t-1] + (1 - z) * tanh(W @ x)"
        self.stmts.append(Stmt("cell", f"cell {name}(x) -> y[N] {{\n  {body}\n}}", defines=name))
        s1, s2 = self.size(), self.size()
        a, b = self.fresh("v"), self.fresh("v")
        x = leaf(self.pick(seq=True))
        self.stmts.append(Stmt("eq", f"{a} = {name}({{e}}, N = {s1})", x, defines=a))
        wrap = self.r.choice(["", "", "reverse", "bidirectional", "stacked"])   # a wrapped user cell
        if wrap:
            self.tags.add(f"user_cell:{wrap}")
        call = {"": name, "reverse": f"reverse({name})", "bidirectional": f"bidirectional({name})",
                "stacked": f"stacked({name}, 2)"}[wrap]
        out = 2 * s2 if wrap == "bidirectional" else s2
        self.add_value(b, out, True, Expr(a, [], s1, True), text=f"{b} = {call}({{e}}, N = {s2})")
        self.pool.append(Val(a, s1, True))

    def block_other_axis(self):
        """A sequence input on an axis of its own (its own lengths), read as it is or through an encoder
        looping over that axis, from the main axis through attention (dot product or additive; after a
        loop, or inside one with the state as query; or written out with along, dot, sum_features and
        softmax_steps), a reduction, or a main-axis loop's initial state. Values on that axis stay out
        of the pool: combined with the main axis unrelated, they would not compile."""
        k, sk = self.fresh("x"), self.size()
        self.stmts.append(Stmt("input", f"input {k}[{sk}] : seq(k{self.counter})", defines=k))
        if self.r.random() < 0.4:
            k, sk = self.other_axis_encoder(k, sk)
        n, s = self.fresh("v"), self.size()
        c = self.r.random()
        if c < 0.15:   # a reduction: one value per example, usable on any axis
            red = self.r.choice(REDUCTIONS)
            self.tags.add("other_axis:reduce")
            self.add_value(n, s, False, self.project(Expr(red + "({0})", [Expr(k, [], sk, True)], sk, False), s,
                                                     declare=True))
            return
        q = self.pick(seq=True)
        if c < 0.25:   # a main-axis loop starting from a summary of the other axis
            self.tags.add("other_axis:initial")
            red, w = self.r.choice(REDUCTIONS), self.fresh("W")
            self.add_value(n, s, True, self.project(leaf(q), s, declare=True),
                           text=f"{n}[{s}] = tanh({{e}} + {self.fresh('U')} @ {n}[t-1])")
            self.stmts.append(Stmt("initial", f"initial {n} = tanh({w} @ {red}({k}))", about=n))
            self.stmts.append(Stmt("param", f"param {w}[{s}, {sk}]", about=w))
            return
        if c < 0.45:
            self.attention_by_hand(n, q, k, sk)
            return
        additive = self.r.random() < 0.4
        if c < 0.7:   # attention after the loop that made the query
            self.tags.add("other_axis:attention" + (":additive" if additive else ""))
            query = self.param_matmul(leaf(q), q.size if additive else sk, declare=True)
            call = f"additive_attention({{e}}, {k}, A = 2)" if additive else f"attention({{e}}, {k})"
            self.stmts.append(Stmt("eq", f"{n} = {call}", query, defines=n))
            self.pool.append(Val(n, sk, True))
            return
        # inside a loop: the previous state attends over every step of k
        self.tags.add("other_axis:attention_in_loop" + (":additive" if additive else ""))
        wq, wc, u = self.fresh("W"), self.fresh("W"), self.fresh("W")
        for w, shape in ((wq, (sk if not additive else s, s)), (wc, (s, sk)), (u, (s, s))):
            self.stmts.append(Stmt("param", f"param {w}[{shape[0]}, {shape[1]}]", about=w))
        attend = (f"additive_attention({wq} @ {n}[t-1], {k}, A = 2)" if additive
                  else f"attention({wq} @ {n}[t-1], {k})")
        x = self.project(leaf(q), s, declare=True)
        self.add_value(n, s, True, x, text=f"{n}[{s}] = tanh({{e}} + {u} @ {n}[t-1] + {wc} @ {attend})")

    def block_nested(self):
        """The characters of every word of a token input (``seq of seq(k) of char = chars(w)``): a cell
        over each word's characters (a stdlib cell, wrapped or not, or a hand-written recurrence), then a
        reduction: one vector per word, on the main axis. Values on the characters' axes stay out of the
        pool: combined with the words' values unreduced, they would not compile."""
        w, c, e = self.fresh("w"), self.fresh("w"), self.fresh("e")
        inner = f"k{self.counter}"
        self.stmts.append(Stmt("input", f"input {w} : seq of token", defines=w))
        self.stmts.append(Stmt("input", f"input {c} : seq of seq({inner}) of char = chars({w})", defines=c))
        s = self.size()
        self.add_value(self.fresh("e"), s, True, Expr(f"embed({w}, {s})", [], s, True))   # the words themselves
        se = self.size()
        self.stmts.append(Stmt("eq", f"{e} = embed({c}, {se})", defines=e))
        h, sh = self.fresh("h"), self.size()
        if self.r.random() < 0.25:
            self.tags.add("nested:recurrence")
            u = self.fresh("U")
            self.stmts.append(Stmt("eq", f"{h}[{sh}] = tanh({self.fresh('W')} @ {e} + {u} @ {h}[t-1])", defines=h))
            out = sh
        else:
            cell, wrap = self.r.choice(STDLIB), self.r.choice(["", "reverse", "bidirectional", "stacked"])
            self.tags.add(f"nested:{wrap}({cell})" if wrap else f"nested:{cell}")
            call = {"": cell, "reverse": f"reverse({cell})", "bidirectional": f"bidirectional({cell})",
                    "stacked": f"stacked({cell}, 2)"}[wrap]
            self.stmts.append(Stmt("eq", f"{h} = {call}({e}, H = {sh})", defines=h))
            out = 2 * sh if wrap == "bidirectional" else sh
        red, n = self.r.choice(REDUCTIONS), self.fresh("v")
        self.tags.add("nested:reduce:" + red)
        self.add_value(n, out, True, Expr(f"{red}({h})", [], out, True), text=f"{n} = {{e}}")

    def other_axis_encoder(self, k: str, sk: int) -> tuple[str, int]:
        """A loop over the other axis reading its input: a library cell (plain, reversed or both ways)
        or a hand-written one with a delayed read of the input. Returns its name and size."""
        e, s = self.fresh("enc"), self.size()
        c = self.r.random()
        if c < 0.5:
            cell, wrap = self.r.choice(STDLIB), self.r.choice(["", "", "reverse", "bidirectional"])
            self.tags.add(f"other_axis:encoder:{wrap or 'plain'}")
            call = {"": cell, "reverse": f"reverse({cell})", "bidirectional": f"bidirectional({cell})"}[wrap]
            self.stmts.append(Stmt("eq", f"{e} = {call}({k}, H = {s})", defines=e))
            return e, 2 * s if wrap == "bidirectional" else s
        d, read = self.r.choice(["[t-1]", "[t+1]", "[t-2]"]), self.r.choice(["[t-1]", "[t+1]"])
        self.tags.add("other_axis:encoder:hand")
        w, v, u = self.fresh("W"), self.fresh("W"), self.fresh("U")
        for name, shape in ((w, (s, sk)), (v, (s, sk)), (u, (s, s))):
            self.stmts.append(Stmt("param", f"param {name}[{shape[0]}, {shape[1]}]", about=name))
        self.stmts.append(Stmt("eq", f"{e}[{s}] = tanh({w} @ {k} + {v} @ {k}{read} + {u} @ {e}{d})", defines=e))
        if self.r.random() < 0.3:
            self.tags.add("other_axis:encoder:initial")
            self.stmts.append(Stmt("initial", f"initial {e} = {self.fresh('h0_')}", about=e))
        return e, s

    def attention_by_hand(self, n: str, q: Val, k: str, sk: int):
        """Scores of each main-axis step against every step of k, written out: along, dot or
        sum_features, softmax_steps, and a reduction of the weighted keys; the scores or the weights
        (values on two axes) sometimes an output."""
        sc, a = self.fresh("sc"), self.fresh("a")
        self.tags.add("other_axis:by_hand")
        query = self.param_matmul(leaf(q), sk, declare=True)
        if self.r.random() < 0.5:
            self.tags.add("other_axis:dot")
            self.stmts.append(Stmt("eq", f"{sc} = dot(along({{e}}, {k}), {k})", query, defines=sc))
        else:
            self.tags.add("other_axis:sum_features")
            wk = self.fresh("W")
            self.stmts.append(Stmt("param", f"param {wk}[{sk}, {sk}]", about=wk))
            self.stmts.append(Stmt("eq", f"{sc} = sum_features(tanh(along({{e}}, {k}) + {wk} @ {k}))", query,
                                   defines=sc))
        self.stmts.append(Stmt("eq", f"{a} = softmax_steps({sc})", defines=a))
        red = self.r.choice(["sum", "sum", "max", "mean"])
        self.add_value(n, sk, True, Expr(f"{red}({a} * {k})", [], sk, True), text=f"{n}[{sk}] = {{e}}")
        if self.r.random() < 0.3:
            self.tags.add("other_axis:two_axes_output")
            shown = self.r.choice([sc, a])
            self.stmts.append(Stmt("output", f"output {shown}", about=shown))

    def block_two_inputs(self):
        """A cell of two inputs, and a loop reading a concatenation with its own state."""
        name, h, s = self.fresh("cell"), self.fresh("h"), self.size()
        self.tags.add("user_cell:two_inputs")
        self.stmts.append(Stmt("cell", f"cell {name}(x, g) -> y[N] {{\n  y = tanh(W @ concat(x, y[t-1]) + b) * "
                                       f"sigmoid(V @ g)\n}}", defines=name))
        x, g = leaf(self.pick(seq=True)), leaf(self.pick(seq=None))
        self.add_value(h, s, True, Expr(f"{{0}}, {g.fmt}", [x], x.size, True), text=f"{h} = {name}({{e}}, N = {s})")

    # ---- ends: outputs and losses -----------------------------------------------
    def loss(self, v: Val) -> Expr | None:
        kind = self.r.choice(LOSSES)
        self.tags.add(f"loss:{kind}:{'step' if v.seq else 'example'}")
        y = self.fresh("y")
        seq = " : seq" if v.seq else ""
        k = self.r.randint(2, 4)
        if REGISTRY[kind].target == "class":
            self.stmts.append(Stmt("target", f"target {y} : {'seq of ' if v.seq else ''}class[{k}]", defines=y))
            z = self.param_matmul(leaf(v), k)
            pred = {"cross_entropy": Expr("softmax({0})", [z], k, v.seq),
                    "nll": Expr("log_softmax({0})", [z], k, v.seq)}.get(kind, z)
        else:
            self.stmts.append(Stmt("target", f"target {y}[{k}]{seq}", defines=y))
            z = self.param_matmul(leaf(v), k)
            pred = Expr("sigmoid({0})", [z], k, v.seq) if kind == "bce" else z
        return Expr(f"{kind}({{0}}, {y})", [pred], 0, False)

    def ends(self):
        unused = [v for v in self.pool if v.name not in self.used and "." not in v.name]
        n_losses = self.r.choice([0, 1, 1, 1, 2]) if self.r.random() < 0.85 else 0
        for i in range(n_losses):
            v = self.r.choice(unused) if unused and self.r.random() < 0.7 else self.r.choice(
                [v for v in self.pool if v.size > 0])
            self.used.add(v.name)
            e = self.loss(v)
            if self.r.random() < 0.15:
                self.tags.add("loss:weighted")
                e = Expr(f"{self.r.choice(['0.5', '2'])} * {{0}}", [e], 0, False)
            self.stmts.append(Stmt("loss", "loss {e}", e))
        if n_losses > 1:
            self.tags.add("loss:several")
        for v in self.pool:
            if v.name not in self.used and v.size > 0:
                self.stmts.append(Stmt("output", f"output {v.name}", about=v.name))
                self.used.add(v.name)
        if not any(s.kind in ("output", "loss") for s in self.stmts):
            v = self.pool[-1]
            self.stmts.append(Stmt("output", f"output {v.name}", about=v.name))

    def spec(self) -> Spec:
        self.inputs()
        for _ in range(self.r.randint(1, 4)):
            self.block()
        # every input must be read
        for v in list(self.pool):
            if v.name not in self.used and v.size == 0:
                e = self.expr(2, None, 1)
                n = self.fresh("v")
                self.add_value(n, 2, e.seq, Expr("({0} * {1})", [leaf(v), e], 2, e.seq))
                self.used.add(v.name)
        self.ends()
        stmts = sorted(self.stmts, key=lambda s: ["cell", "input", "target", "output", "eq", "initial", "param",
                                                  "loss"].index(s.kind))
        return Spec(stmts, self.seed, self.tags)


# ---- encoder-decoders with a decode declaration -------------------------------------------------

DECODER_SHARE = 0.06          # of the seeds: an encoder-decoder (drawn apart, so other seeds keep their spec)
DECODER_CELLS = ["rnn", "lstm", "gru", "hand"]
ATTENTION = ["none", "dot", "additive", "in_loop", "in_loop_additive"]
PREDICTIONS = {"cross_entropy": "softmax", "nll": "log_softmax", "cross_entropy_logits": ""}   # loss: activation
START, END = 2, 3             # the symbols' ids in a decoded vocabulary (0 <pad>, 1 <unk>), for the oracle


def makes_decoder(seed: int) -> bool:
    return random.Random(f"decoder {seed}").random() < DECODER_SHARE


class DecoderGenerator:
    """A small encoder-decoder: an encoder over a source on an axis of its own, a decoder over the
    target's axis reading the gold token of the step before (teacher forcing), an initial state from
    the encoder or none, attention (dot or additive, after the decoder's loop or inside it) or none,
    a prediction compared with the target by a class loss, and ``decode tgt from p``. The target is
    on the default axis (``time``), so the runner's batches pad it as any sequence; the oracles check
    the teacher-forced loss as usual, and ``decode`` checks greedy decoding and beam 1."""

    def __init__(self, seed: int):
        self.seed = seed
        self.r = random.Random(f"decoder spec {seed}")
        self.stmts: list[Stmt] = []
        self.tags: set[str] = {"decode"}
        self.counter = 0

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def add(self, kind: str, text: str, defines: str | None = None, about: str | None = None):
        self.stmts.append(Stmt(kind, text, defines=defines, about=about))

    def cell(self, name: str, x: str, h: int):
        """``name`` = a recurrent layer over ``x`` (an expression on the loop's axis) of size ``h``."""
        kind = self.r.choice(DECODER_CELLS)
        self.tags.add("decode:cell:" + kind)
        if kind == "hand":
            self.add("eq", f"{name}[{h}] = tanh({self.fresh('W')} @ {x} + {self.fresh('U')} @ {name}[t-1] + "
                           f"{self.fresh('b')})", defines=name)
        else:
            self.add("eq", f"{name} = {kind}({x}, H = {h})", defines=name)

    def spec(self) -> Spec:
        r = self.r
        if r.random() < 0.2:
            return self.conditioned()
        src, tgt = self.fresh("w"), self.fresh("d")
        axis = f"s{self.counter}"
        if r.random() < 0.8:
            self.add("input", f"input {src} : seq({axis}) of token", defines=src)
            source = f"embed({src}, {r.randint(1, 3)})"
        else:
            self.tags.add("decode:real_source")
            self.add("input", f"input {src}[{r.randint(1, 3)}] : seq({axis})", defines=src)
            source = src
        self.add("input", f"input {tgt} : seq of token", defines=tgt)
        h = r.randint(1, 3)
        enc, ye, dec, c = self.fresh("enc"), self.fresh("ye"), self.fresh("dec"), self.fresh("c")
        self.cell(enc, source, h)
        self.add("eq", f"{ye} = embed({tgt}, {r.randint(1, 3)})", defines=ye)
        attention = r.choice(ATTENTION)
        self.tags.add("decode:attention:" + attention)
        if attention.startswith("in_loop"):      # the previous state attends; the context feeds the step
            call = f"additive_attention({dec}[t-1], {enc}, A = 2)" if attention.endswith("additive") else \
                f"attention({self.fresh('W')} @ {dec}[t-1], {enc})"
            if attention == "in_loop":
                self.add("param", f"param W{self.counter}[{h}, {h}]", about=f"W{self.counter}")
            self.add("eq", f"{c} = {call}", defines=c)
            self.cell(dec, f"concat({ye}[t-1], {c})", h)
        else:
            self.cell(dec, f"{ye}[t-1]", h)
            if attention != "none":
                call = f"additive_attention({dec}, {enc}, A = 2)" if attention == "additive" else \
                    f"attention({dec}, {enc})"
                self.add("eq", f"{c} = {call}", defines=c)
        init = r.choice(["none", "last", "mean", "projected"] if attention != "none" else ["last", "mean", "projected"])
        self.tags.add("decode:initial:" + init)
        if init in ("last", "mean"):
            self.add("initial", f"initial {dec} = {init}({enc})", about=dec)
        elif init == "projected":
            self.add("initial", f"initial {dec} = tanh({self.fresh('W')} @ first({enc}))", about=dec)
            self.add("param", f"param W{self.counter}[{h}, {h}]", about=f"W{self.counter}")
        return self.ends(tgt, dec if attention == "none" else f"concat({dec}, {c})")

    def conditioned(self) -> Spec:
        """A decoder conditioned on one vector per example (no source sequence: its axis is the only
        one): the vector fed at every step, or as the initial state, or both."""
        r = self.r
        z, tgt = self.fresh("z"), self.fresh("d")
        self.tags.add("decode:vector_source")
        self.add("input", f"input {z}[{r.randint(1, 3)}]", defines=z)
        self.add("input", f"input {tgt} : seq of token", defines=tgt)
        h, ye, dec = r.randint(1, 3), self.fresh("ye"), self.fresh("dec")
        self.add("eq", f"{ye} = embed({tgt}, {r.randint(1, 3)})", defines=ye)
        fed = r.random() < 0.5
        self.cell(dec, f"concat({ye}[t-1], {z})" if fed else f"{ye}[t-1]", h)
        if not fed or r.random() < 0.5:
            self.add("initial", f"initial {dec} = tanh({self.fresh('W')} @ {z})", about=dec)
        return self.ends(tgt, dec)

    def ends(self, tgt: str, features: str) -> Spec:
        """The prediction from ``features``, its loss against the target, and the declaration."""
        r = self.r
        loss = r.choice(sorted(PREDICTIONS))
        self.tags.add("decode:loss:" + loss)
        p = self.fresh("p")
        self.add("output", f"output {p}", about=p)
        scores = f"{self.fresh('V')} @ {features} + {self.fresh('b')}"
        self.add("eq", f"{p} = {PREDICTIONS[loss]}({scores})" if PREDICTIONS[loss] else f"{p} = {scores}", defines=p)
        self.add("loss", f"loss {loss}({p}, {tgt})")
        start = ', start "<s>"' if r.random() < 0.7 else ""
        self.tags.add("decode:start" if start else "decode:no_start")
        self.add("decode", f'decode {tgt} from {p}{start}, end "</s>", max {r.randint(1, 4)}')
        order = ["input", "output", "eq", "initial", "param", "loss", "decode"]
        return Spec(sorted(self.stmts, key=lambda st: order.index(st.kind)), self.seed, self.tags)


def generate(seed: int) -> Spec:
    if makes_decoder(seed):
        return DecoderGenerator(seed).spec()
    return Generator(seed).spec()
