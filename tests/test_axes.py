"""Sequence axes in the type system (nnspec/axes.py) and encoder-decoders with attention.

Each sequence input brings its own named axis (``seq(src)``); values carry their axes,
combining values on different axes is a located error, and a plan on several axes runs
each loop over its own axis with its own lengths (nnspec/runtime/axes.py). The
encoder-decoder with attention is checked against finite differences and against PyTorch
(same weights, float64, loss and every gradient to 1e-9) on padded batches with different
source and target lengths; padding on either axis changes no example's result.
"""
from __future__ import annotations

import numpy as np
import pytest

from nnspec import compile_text
from nnspec.errors import SpecError
from nnspec.model import FeedError, Model
from conftest import assert_model_gradients_match_finite_differences

V_SRC, V_TGT, E, H, A = 7, 6, 5, 4, 3

ENC_DEC = """
network enc_dec
input  src : seq(src) of token
input  tgt : seq(out) of token
output p

enc = lstm(embed(src, {E}), H = {H})
ye = embed(tgt, {E})
dec = lstm(ye[t-1], H = {H})        # teacher forcing: the previous gold token (zeros at the first step)
initial dec = last(enc)
c = {attention}
o[{H}] = tanh(Wc @ concat(dec, c))
p = softmax(V @ o + b)
loss cross_entropy(p, tgt)
"""
# attention inside the decoder's loop (Bahdanau et al. 2015): the previous decoder state attends over
# the encoder's states, read whole at every step of the output axis, and the context feeds the decoder
IN_LOOP = """
network enc_dec_in_loop
input  src : seq(src) of token
input  tgt : seq(out) of token
output p

enc = lstm(embed(src, {E}), H = {H})
ye = embed(tgt, {E})
c = additive_attention(dec[t-1], enc, A = {A})
dec = lstm(concat(ye[t-1], c), H = {H})
initial dec = last(enc)
p = softmax(V @ concat(dec, c) + b)
loss cross_entropy(p, tgt)
"""
ATTENTIONS = {"dot": "attention(dec, enc)", "additive": f"additive_attention(dec, enc, A = {A})",
              "in_loop": None}


def spec(kind: str) -> str:
    if kind == "in_loop":
        return IN_LOOP.format(E=E, H=H, A=A)
    return ENC_DEC.format(E=E, H=H, attention=ATTENTIONS[kind])


def model(kind: str, seed: int = 3) -> Model:
    m = Model.from_text(spec(kind), bindings={"vocab(src)": V_SRC, "vocab(tgt)": V_TGT}, dtype=np.float64,
                        seed=seed)
    rng = np.random.default_rng(seed)
    for k, v in m.params.items():      # away from the zero initial values of biases and v
        m.params[k] = rng.normal(scale=0.5, size=v.shape)
    return m


SRC_LENGTHS, TGT_LENGTHS = [3, 5, 1, 4], [4, 2, 6, 1]


def batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    return ({"src": [rng.integers(1, V_SRC, n) for n in SRC_LENGTHS],
             "tgt": [rng.integers(1, V_TGT, n) for n in TGT_LENGTHS]})


# ---- the types -----------------------------------------------------------------------------
def test_each_value_carries_its_axes():
    g = compile_text(spec("dot"), bindings={"vocab(src)": V_SRC, "vocab(tgt)": V_TGT}).graph
    axes = {n: g.info(n).axes for n in ("src", "tgt", "enc", "dec", "c.s", "c.a", "c", "p")}
    assert axes == {"src": ("src",), "tgt": ("out",), "enc": ("src",), "dec": ("out",),
                    "c.s": ("out", "src"), "c.a": ("out", "src"), "c": ("out",), "p": ("out",)}
    assert g.info("loss").axes == ()


def test_attention_inside_a_loop_reads_the_encoder_whole():
    g = compile_text(spec("in_loop"), bindings={"vocab(src)": V_SRC, "vocab(tgt)": V_TGT}).graph
    assert g.info("c.s").axes == ("out", "src") and g.info("c.s").component is not None
    assert g.info("c").axes == ("out",) and g.info("dec").axes == ("out",)


def test_loops_run_over_their_own_axis():
    plan = compile_text(spec("dot"), bindings={"vocab(src)": V_SRC, "vocab(tgt)": V_TGT}).plan
    assert [s.axis for s in plan.steps if s.kind == "loop"] == ["src", "out"]


def test_a_spec_without_axis_names_has_one_axis_time():
    g = compile_text("input w : seq of token\ninput x[3] : seq\noutput h\n"
                     "h = tanh(W @ embed(w, 3) + x + U @ h[t-1])", bindings={"vocab(w)": 5}).graph
    assert g.info("h").axes == ("time",) and g.info("x").axes == ("time",)


def test_a_view_is_on_the_axis_of_its_input():
    g = compile_text("input w : seq(words) of token\ninput s : seq of token = suffix(w, 2)\noutput y\n"
                     "y = embed(w, 3) + embed(s, 3)", bindings={"vocab(w)": 5, "vocab(s)": 5}).graph
    assert g.info("s").axes == ("words",)


def located(text: str) -> str:
    with pytest.raises(SpecError) as e:
        compile_text(text, bindings={"vocab(a)": 5, "vocab(b)": 5})
    return e.value.render() if hasattr(e.value, "render") else str(e.value)


TWO = "input a : seq(i) of token\ninput b : seq(j) of token\noutput y\n"


@pytest.mark.parametrize("body, words", [
    ("y = embed(a, 3) + embed(b, 3)", ["'embed(a, 3)' is on the axes (i)", "'embed(b, 3)' on (j)", "along(x, s)"]),
    ("y = tanh(embed(a, 3) + U @ y[t-1] + embed(b, 3))", ["(i)", "(j)"]),
    ("h = tanh(W @ embed(a, 3) + U @ h[t-1] + last(embed(b, 3)))\ny = along(h, embed(b, 3)) + embed(b, 3)",
     []),  # fine: a per-example value on any axis, and along relates i and j
])
def test_combining_values_on_different_axes_is_a_located_error_naming_both(body, words):
    text = TWO + body + "\nparam U[3, 3]\nparam W[3, 3]"
    if not words:
        compile_text(text, bindings={"vocab(a)": 5, "vocab(b)": 5})
        return
    message = located(text)
    assert "<string>:4:" in message or ":4:" in message
    for w in words:
        assert w in message


def test_along_needs_a_sequence():
    assert "is not a sequence" in located("input a : seq(i) of token\ninput z[3]\noutput y\ny = along(z, z)")


@pytest.mark.parametrize("text, message", [
    ("input x[3] : seq\noutput h\nh[3] = tanh(W @ x + U @ h[t-1])\ninitial h = x",
     "<string>:4:1: error: the initial state of 'h' is 'x', which is a sequence: an initial state is one value "
     "per example; reduce it first, e.g. last(...)"),
    ("input a : seq(i) of token\ninput b : seq(j) of token\noutput h\n"
     "h[3] = tanh(W @ embed(b, 3) + U @ h[t-1])\ninitial h = tanh(embed(a, 3))",
     "the initial state of 'h' is 'tanh(embed(a, 3))', which is on the axes (i)"),
    ("input x[3]\noutput y\ny = softmax_steps(dot(x, x))",
     "<string>:3:1: error: softmax_steps(...) works along a sequence's steps, but its argument is not a sequence"),
    ("input x[3]\noutput y\ny = shift(x)", "shift(...) works along a sequence's steps, but its argument is not"),
    ("input a[3] : seq(i)\noutput y\ny = along(a, a)", "along(x, s): 'a' is already on the axis i of s"),
    ("input a[3] : seq(i)\ninput b[3] : seq(j)\noutput y\ns = dot(along(b, a), a)\ny = sum(s[t-1] * a)",
     "'s' is read at [t-1], but it is on the axes (j, i): a read at another step takes a value on one "
     "sequence axis"),
])
def test_axis_mistakes_are_located_errors(text, message):
    assert message in located(text)


def test_a_view_on_another_axis_is_an_error():
    message = located("input a : seq(i) of token\ninput s : seq(k) of token = suffix(a, 2)\noutput y\n"
                      "y = embed(s, 3)")
    assert "on the axis of 'a' (i), not 'k'" in message


def test_lengths_per_axis_are_a_dict():
    m = model("dot")
    src = np.ones((3, 2), dtype=np.int64)
    tgt = np.ones((4, 2), dtype=np.int64)
    with pytest.raises(FeedError, match="several axes"):
        m.forward({"src": src, "tgt": tgt}, lengths=np.array([1, 2]))
    with pytest.raises(FeedError, match="no axis of this network"):
        m.forward({"src": src, "tgt": tgt}, lengths={"time": [1, 2]})
    with pytest.raises(FeedError, match="between 1 and the 3 steps"):
        m.forward({"src": src, "tgt": tgt}, lengths={"src": [4, 2]})
    m.forward({"src": src, "tgt": tgt}, lengths={"src": [3, 1], "out": [2, 4]})


@pytest.mark.parametrize("red", ["sum", "mean", "max", "last", "first", "softmax_steps"])
def test_reductions_over_the_inner_axis_of_a_value_on_two_axes(red):
    """``red`` of a value on (out, src) works over src, with src's padding, for every out step."""
    text = (f"input q[2] : seq(out)\ninput k[2] : seq(src)\noutput y\n"
            f"y = {red}({'dot' if red == 'softmax_steps' else 'mul'}(along(q, k), k))")
    if red != "softmax_steps":
        text = text.replace("mul(along(q, k), k)", "along(q, k) * k")
    m = Model.from_text(text, dtype=np.float64)
    rng = np.random.default_rng(5)
    ls = np.array([3, 1, 2])
    q, k = rng.normal(size=(2, 3, 2)), rng.normal(size=(3, 3, 2))
    y = m.forward({"q": q, "k": k}, lengths={"src": ls})["y"]
    for o in range(2):
        for b in range(3):
            if red == "softmax_steps":
                s = k[:ls[b], b] @ q[o, b]
                np.testing.assert_allclose(y[o, :ls[b], b, 0], np.exp(s) / np.exp(s).sum(), rtol=1e-12)
                assert (y[o, ls[b]:, b] == 0).all()
                continue
            prod = q[o, b] * k[:ls[b], b]
            want = {"sum": prod.sum(0), "mean": prod.mean(0), "max": prod.max(0), "last": prod[-1],
                    "first": prod[0]}[red]
            np.testing.assert_allclose(y[o, b], want, rtol=1e-12)
    # and its gradient, against central differences
    g = rng.normal(size=y.shape)
    grads = m.executor.backward(m.run({"q": q, "k": k}, {"src": ls}), seeds={"y": g})
    eps = 1e-6
    for name, x in (("q", q), ("k", k)):
        for i in [(0, 0, 0), (1, 2, 1), (2, 0, 1)]:
            if i[0] >= x.shape[0]:
                continue
            old = x[i]
            x[i] = old + eps
            up = float((m.forward({"q": q, "k": k}, lengths={"src": ls})["y"] * g).sum())
            x[i] = old - eps
            down = float((m.forward({"q": q, "k": k}, lengths={"src": ls})["y"] * g).sum())
            x[i] = old
            assert grads[name][i] == pytest.approx((up - down) / (2 * eps), rel=1e-6, abs=1e-9), (name, i)


def test_a_loop_reduces_a_value_on_two_other_axes_over_the_innermost():
    """Inside a loop over t1, a value on (t1, i, j): sum over j, then over i, each with its padding."""
    m = Model.from_text("input x[2] : seq(t1)\ninput a[2] : seq(i)\ninput b[2] : seq(j)\noutput h\n"
                        "h[2] = tanh(W @ x + U @ h[t-1] + sum(sum(along(along(h[t-1], a), b) * along(a, b) * b)))",
                        dtype=np.float64, seed=2)
    rng = np.random.default_rng(0)
    x, a, b = rng.normal(size=(3, 2, 2)), rng.normal(size=(4, 2, 2)), rng.normal(size=(2, 2, 2))
    lengths = {"t1": [3, 2], "i": [4, 2], "j": [1, 2]}
    h = m.forward({"x": x, "a": a, "b": b}, lengths=lengths)["h"]
    W, U = m.params["W"], m.params["U"]
    for e in range(2):
        state = np.zeros(2)
        for t in range(lengths["t1"][e]):
            A, Bv = a[:lengths["i"][e], e], b[:lengths["j"][e], e]
            pair = sum(state * A[i] * Bv[j] for i in range(len(A)) for j in range(len(Bv)))
            state = np.tanh(W @ x[t, e] + U @ state + pair)
            np.testing.assert_allclose(h[t, e], state, rtol=1e-12)
    g = rng.normal(size=h.shape)
    grads = m.executor.backward(m.run({"x": x, "a": a, "b": b}, lengths), seeds={"h": g})
    eps = 1e-6
    for name, v, i in [("a", a, (0, 0, 1)), ("a", a, (1, 1, 0)), ("a", a, (3, 0, 0)), ("b", b, (0, 1, 1)),
                       ("b", b, (1, 0, 0)), ("x", x, (2, 0, 1))]:
        old = v[i]
        v[i] = old + eps
        up = float((m.forward({"x": x, "a": a, "b": b}, lengths=lengths)["h"] * g).sum())
        v[i] = old - eps
        down = float((m.forward({"x": x, "a": a, "b": b}, lengths=lengths)["h"] * g).sum())
        v[i] = old
        assert grads[name][i] == pytest.approx((up - down) / (2 * eps), rel=1e-6, abs=1e-9), (name, i)


# ---- padding on either axis --------------------------------------------------------------------
@pytest.mark.parametrize("kind", ATTENTIONS)
def test_padding_on_either_axis_changes_no_example(kind):
    m = model(kind)
    feeds = batch()
    loss, grads, _ = m.loss_and_grads(feeds, train=False)
    p = m.forward(feeds)["p"]
    total_loss, total_grads, tokens = 0.0, {}, sum(TGT_LENGTHS)
    for b, n in enumerate(TGT_LENGTHS):
        one = {k: [v[b]] for k, v in feeds.items()}
        np.testing.assert_allclose(m.forward(one)["p"][:, 0], p[:n, b], rtol=1e-12, atol=1e-14)
        lb, gb, _ = m.loss_and_grads(one, train=False)
        total_loss += float(lb) * n / tokens
        for k, g in gb.items():
            total_grads[k] = total_grads.get(k, 0) + np.asarray(g) * n / tokens
    assert float(loss) == pytest.approx(total_loss, rel=1e-12)
    for k in grads:
        np.testing.assert_allclose(grads[k], total_grads[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_batching_by_length_on_both_axes_changes_no_example():
    """Batches grouped by source and target length (nnspec.data.iterate_batches, by_length) give each
    example the predictions and loss it gets in batches taken in order, with less padding."""
    from nnspec.data import FieldSpec, build_vocabs, encode_split, iterate_batches
    rng = np.random.default_rng(5)
    src_n, tgt_n = rng.integers(1, 9, size=96), rng.integers(1, 9, size=96)
    fields = [FieldSpec(name="src", kind="tokens", axis="src"), FieldSpec(name="tgt", kind="tokens", axis="out")]
    split = {"src": [[f"s{k}" for k in rng.integers(0, V_SRC - 2, n)] for n in src_n],
             "tgt": [[f"t{k}" for k in rng.integers(0, V_TGT - 2, n)] for n in tgt_n]}
    enc = encode_split(split, fields, build_vocabs(split, fields))
    m = model("in_loop")

    def per_example(by_length):
        p, padding = {}, 0
        for b in iterate_batches(enc, 8, shuffle=True, rng=np.random.default_rng(0), by_length=by_length,
                                 dtype=np.float64):
            out = m.forward(b.arrays, lengths=b.lengths)["p"]
            for col, i in enumerate(b.index):
                p[int(i)] = out[:tgt_n[i], col]
            padding += sum(len(b.index) * int(ls.max()) - int(ls.sum()) for ls in b.lengths.values())
        return p, padding
    (grouped, less), (in_order, more) = per_example(True), per_example(False)
    assert less < more / 2
    assert sorted(grouped) == list(range(96))
    for i in grouped:
        np.testing.assert_allclose(grouped[i], in_order[i], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", ["dot", "additive"])
def test_fast_loops_agree_with_the_reference_interpreter(kind):
    from nnspec.runtime import ExecOptions, Executor
    m = model(kind)
    feeds = batch(3)
    from nnspec.model import prepare_feeds
    arrays, lengths = prepare_feeds(m.plan, feeds, need_targets=True, dtype=np.float64)
    runs = []
    for fast in (True, False):
        ex = Executor(m.plan, dtype=np.float64, options=ExecOptions(fast_loops=fast))
        tape = ex.forward(m.params, arrays, lengths=lengths)
        runs.append((tape.values["p"].copy(), ex.backward(tape)))
    (p1, g1), (p2, g2) = runs
    np.testing.assert_allclose(p1, p2, rtol=1e-12, atol=1e-14)
    for k in m.params:
        np.testing.assert_allclose(np.asarray(g1[k]), np.asarray(g2[k]), rtol=1e-10, atol=1e-13, err_msg=k)


# ---- finite differences --------------------------------------------------------------------
@pytest.mark.parametrize("kind", ATTENTIONS)
def test_gradients_match_finite_differences(kind):
    m = model(kind)
    feeds = batch(1)
    assert_model_gradients_match_finite_differences(m, feeds)


# ---- PyTorch, same weights -----------------------------------------------------------------
def torch_loss(P: dict, feeds: dict, kind: str):
    """The same encoder-decoder written in PyTorch: the loss, and the parameters as leaves."""
    import torch
    T = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in P.items()}
    ls, lt = np.array(SRC_LENGTHS), np.array(TGT_LENGTHS)
    Ts, Tt, B = ls.max(), lt.max(), len(ls)
    src = np.zeros((Ts, B), dtype=np.int64)
    tgt = np.zeros((Tt, B), dtype=np.int64)
    for b in range(B):
        src[:ls[b], b] = feeds["src"][b]
        tgt[:lt[b], b] = feeds["tgt"][b]

    def lstm(x, name, h):   # nnspec's lstm cell (stdlib/lstm.nn), step by step
        c = torch.zeros_like(h)
        out = []
        for t in range(x.shape[0]):
            gate = {k: T[f"{name}.W{k}"] @ x[t].T + T[f"{name}.U{k}"] @ h.T + T[f"{name}.b{k}"][:, None]
                    for k in "fiog"}
            f, i, o = (torch.sigmoid(gate[k]).T for k in "fio")
            c = f * c + i * torch.tanh(gate["g"]).T
            h = o * torch.tanh(c)
            out.append(h)
        return torch.stack(out)

    enc = lstm(T["enc.x.table"][torch.tensor(src)], "enc", torch.zeros(B, H, dtype=torch.float64))
    last = enc[torch.tensor(ls - 1), torch.arange(B)]
    ye = T["ye.table"][torch.tensor(tgt)]
    ye_prev = torch.cat([torch.zeros_like(ye[:1]), ye[:-1]])
    real_src = torch.tensor(np.arange(Ts)[:, None] < ls[None, :])

    def attend(q):   # q (..., B, H) against every encoder step: (..., B, H) context vectors
        if kind == "dot":
            scores = torch.einsum("...bh,sbh->...sb", q, enc)
        else:
            e = torch.tanh((q @ T["c.Wq"].T).unsqueeze(-3) + enc @ T["c.Wk"].T)
            scores = (e * T["c.v"]).sum(-1)
        a = torch.softmax(scores.masked_fill(~real_src, -np.inf), dim=-2)
        return torch.einsum("...sb,sbh->...bh", a, enc)

    if kind == "in_loop":
        h, c, states, contexts = last, torch.zeros_like(last), [], []
        for t in range(Tt):
            ctx_t = attend(h)
            x = torch.cat([ye_prev[t], ctx_t], -1)
            gate = {k: x @ T[f"dec.W{k}"].T + h @ T[f"dec.U{k}"].T + T[f"dec.b{k}"] for k in "fiog"}
            c = torch.sigmoid(gate["f"]) * c + torch.sigmoid(gate["i"]) * torch.tanh(gate["g"])
            h = torch.sigmoid(gate["o"]) * torch.tanh(c)
            states.append(h)
            contexts.append(ctx_t)
        logits = torch.cat([torch.stack(states), torch.stack(contexts)], -1) @ T["V"].T + T["b"]
    else:
        dec = lstm(ye_prev, "dec", last)
        o = torch.tanh(torch.cat([dec, attend(dec)], -1) @ T["Wc"].T)
        logits = o @ T["V"].T + T["b"]
    logp = torch.log_softmax(logits, -1)
    real_tgt = torch.tensor(np.arange(Tt)[:, None] < lt[None, :])
    nll = -logp.gather(-1, torch.tensor(tgt)[..., None])[..., 0]
    loss = (nll * real_tgt).sum() / real_tgt.sum()
    return loss, T


@pytest.mark.torch
@pytest.mark.parametrize("kind", ATTENTIONS)
def test_encoder_decoder_with_attention_matches_pytorch(kind):
    pytest.importorskip("torch")
    m = model(kind)
    feeds = batch(2)
    loss, grads, _ = m.loss_and_grads(feeds, train=False)
    tl, leaves = torch_loss(m.params, feeds, kind)
    tl.backward()
    assert float(loss) == pytest.approx(tl.item(), abs=1e-9)
    assert set(grads) == set(leaves)
    for k, t in leaves.items():
        np.testing.assert_allclose(np.asarray(grads[k]), t.grad.numpy(), atol=1e-9, rtol=0, err_msg=k)


# ---- the first task: specs/reverse_copy.nn ---------------------------------------------------
@pytest.mark.parametrize("decoder, found", [
    ("dec = lstm(ye[t-1], H = 4)", True),                    # teacher forcing: the previous gold token
    ("dec = lstm(ye, H = 4)", False),                        # reads the token it is to predict
    ("dec = lstm(concat(ye[t-1], ye[t+1]), H = 4)", False),  # reads a later token
    ("dec = reverse(lstm)(ye[t-1], H = 4)", False),          # runs backwards over the output
])
def test_a_teacher_forced_decoder_is_found_in_the_plan(decoder, found):
    from nnspec.decode import autoregressive
    text = spec("dot").replace("dec = lstm(ye[t-1], H = 4)        # teacher forcing: the previous gold token "
                               "(zeros at the first step)", decoder)
    assert decoder in text
    plan = compile_text(text, bindings={"vocab(src)": V_SRC, "vocab(tgt)": V_TGT}).plan
    assert bool(autoregressive(plan)) is found
    if found:
        assert autoregressive(plan)[0][0] == "tgt"


# specs/reverse_copy.nn, trained and decoded: tests/test_decode.py


# ---- bad data: clear errors at the file and line -----------------------------------------------
def _run_on(tmp_path, rows: list[str], *settings) -> str:
    from nnspec.cli import main
    (tmp_path / "d.tsv").write_text("src\ttgt\n" + "\n".join(rows) + "\n")
    path = tmp_path / "ed.nn"
    path.write_text(spec("dot") + '\ndata tsv("d.tsv")\ntrain { epochs 1; batch 2 }\n')
    import contextlib
    import io
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["run", str(path), "--no-save", "--quiet", *sum((["--set", s] for s in settings), [])])
    assert code != 0
    assert "Traceback" not in err.getvalue()
    return err.getvalue()


def test_an_empty_target_is_an_error_at_its_line(tmp_path):
    message = _run_on(tmp_path, ["a b\tb a", "a b c\t", "c\tc"])
    assert "d.tsv:3" in message and "'tgt'" in message and "empty" in message


def test_a_source_longer_than_max_length_is_an_error_at_its_line(tmp_path):
    message = _run_on(tmp_path, ["a b\tb a", "c\tc", "a b c d e\te d c b a"], "max_length=4")
    assert "d.tsv:4" in message and "'src': a sequence of 5 steps, longer than max_length 4" in message


def test_tsv_columns_of_characters_are_batched_with_their_own_lengths(tmp_path):
    from nnspec import open_session
    (tmp_path / "d.tsv").write_text("word\tlemma\nrunning\trun\ncats\tcat\nwent\tgo\n")
    (tmp_path / "l.nn").write_text(
        "input word : seq(form) of char\ninput lemma : seq(out) of char\noutput p\n"
        "enc = lstm(embed(word, 4), H = 4)\nye = embed(lemma, 4)\ndec = lstm(ye[t-1], H = 4)\n"
        "initial dec = last(enc)\np = softmax(V @ concat(dec, attention(dec, enc)) + b)\n"
        "loss cross_entropy(p, lemma)\ndata tsv(\"d.tsv\")\n")
    s = open_session(tmp_path / "l.nn")
    b = next(s.data.batches("train", 3))
    assert {k: v.tolist() for k, v in b.lengths.items()} == {"form": [7, 4, 4], "out": [3, 3, 2]}
    assert b.arrays["word"].shape == (7, 3) and b.arrays["lemma"].shape == (3, 3)
    assert np.isfinite(float(s.model.loss_and_grads(b.arrays, b.lengths)[0]))


def test_grad_at_takes_sequences_of_different_lengths_on_different_axes(tmp_path, capsys):
    from nnspec.cli import main
    path = tmp_path / "g.nn"
    path.write_text("input x[2] : seq(a)\ninput z[2] : seq(b)\noutput y\nh[2] = tanh(W @ x + U @ h[t-1])\n"
                    "y = sum_features(last(h) * last(z))\nparam W = [[1, 0], [0, 1]]\nparam U = [[0, 0], [0, 0]]\n")
    assert main(["grad", str(path), "--at", "x=[[1,0],[0,1],[1,1]]", "z=[[1,2]]"]) == 0
    assert "∂y/∂z = [[0.7616, 0.7616]]" in capsys.readouterr().out
    path.write_text(path.read_text().replace("seq(b)", "seq(a)"))
    assert main(["grad", str(path), "--at", "x=[[1,0],[0,1],[1,1]]", "z=[[1,2]]"]) == 1
    assert "the sequences of one example on one axis (a) have the same number of steps" in capsys.readouterr().err


def test_the_graph_shows_axes():
    from nnspec.render import to_dot
    dot = to_dot(compile_text(spec("dot"), bindings={"vocab(src)": V_SRC, "vocab(tgt)": V_TGT}).graph)
    assert 'label="c.s\\ndot\\non out × src"' in dot and "on src" in dot
    assert "\\non " not in to_dot(compile_text("input x[2] : seq\noutput y\ny = tanh(x)").graph)


def test_the_json_export_carries_axes():
    import json
    j = json.loads(compile_text(spec("dot"), bindings={"vocab(src)": V_SRC, "vocab(tgt)": V_TGT}).to_json())
    assert next(n for n in j["nodes"] if n["id"] == "c.s")["axes"] == ["out", "src"]
    assert [s["axis"] for s in j["plan"]["steps"] if s["kind"] == "loop"] == ["src", "out"]


def test_sequences_on_different_axes_may_differ_in_length_but_not_on_one(tmp_path):
    from nnspec.data.encode import Encoded
    from nnspec.data.errors import DataError
    from nnspec.data.fields import FieldKind, FieldSpec
    fields = [FieldSpec(name="a", kind=FieldKind.tokens, axis="i"), FieldSpec(name="b", kind=FieldKind.tokens, axis="j"),
              FieldSpec(name="c", kind=FieldKind.classes, axis="j")]
    ids = [np.array([2, 3]), np.array([2])]
    ok = Encoded(fields[:2], {"a": ids, "b": ids[::-1]}, [("f", 2), ("f", 3)])
    assert ok.axis_lengths["i"].tolist() == [2, 1] and ok.axis_lengths["j"].tolist() == [1, 2]
    with pytest.raises(DataError, match="'b' has 1 steps, 'c' has 2 \\(both on the axis j\\)"):
        Encoded(fields, {"a": ids, "b": ids[::-1], "c": ids}, [("f", 2), ("f", 3)])


# ---- how the runtime holds several axes (nnspec/runtime/axes.py, PlanFacts) -----------------------
def test_each_loop_runs_on_its_own_axis_and_a_loop_reading_another_axis_whole_on_the_reference_engine():
    from nnspec.model import prepare_feeds
    m = model("in_loop")
    facts = m.executor.facts
    enc_loop, dec_loop = [s.index for s in m.plan.steps if s.kind == "loop"]
    assert facts.multi_axis and set(facts.across_axes) == {dec_loop}
    assert "enc" in facts.across_axes[dec_loop][0]          # the encoder's states, read whole at every step
    arrays, lengths = prepare_feeds(m.plan, batch(2), need_targets=True, dtype=np.float64)
    tape = m.executor.forward(m.params, arrays, lengths=lengths)
    assert {a: ax.lengths.tolist() for a, ax in tape.axes.items()} == {"src": SRC_LENGTHS, "out": TGT_LENGTHS}
    assert enc_loop in tape.loops and dec_loop not in tape.loops   # fast path for the encoder only
    assert tape.lengths.tolist() == TGT_LENGTHS and tape.mask.shape == (max(TGT_LENGTHS), 4)  # p's axis


@pytest.mark.parametrize("kind", ["dot", "in_loop"])
def test_prepared_passes_and_the_buffer_pool_hold_values_on_several_axes(kind):
    """Arrays from the pool have every axis of their value ((T_out, T_src, B, ...) for scores), and a
    prepared pass, kept per geometry of every axis, gives the reference engine's numbers pass after pass."""
    from nnspec.model import prepare_feeds
    from nnspec.runtime import ExecOptions, Executor
    m = model(kind)
    arrays, lengths = prepare_feeds(m.plan, batch(4), need_targets=True, dtype=np.float64)
    ref = Executor(m.plan, dtype=np.float64, options=ExecOptions.reference())
    want_tape = ref.forward(m.params, arrays, lengths=lengths)
    want = ref.backward(want_tape)
    ex = Executor(m.plan, dtype=np.float64)
    assert ex.options.prepared and ex.options.reuse_buffers
    for i in range(3):
        tape = ex.forward(m.params, arrays, lengths=lengths)
        assert (tape.prepared is not None) == (i > 0)     # made on the second pass of a geometry
        assert float(tape.values[m.plan.loss]) == pytest.approx(float(want_tape.values[m.plan.loss]), rel=1e-12)
        got = ex.backward(tape)
        for k in m.params:
            np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=1e-10, atol=1e-13, err_msg=k)
        del tape, got


def test_one_named_axis_takes_lengths_as_an_array_as_the_default_axis_does():
    from nnspec.runtime import Executor
    text = "input x[2] : {}\ntarget y[3] : {}\nh = lstm(x, H = 3)\nloss mse(W @ h, y)\n"
    rng = np.random.default_rng(5)
    feeds = {"x": rng.normal(size=(4, 3, 2)), "y": rng.normal(size=(4, 3, 3))}
    runs = []
    for typ in ("seq", "seq(words)"):
        plan = compile_text(text.format(typ, typ)).plan
        params = {p.name: np.random.default_rng(1).normal(size=p.shape) for p in plan.params}
        ex = Executor(plan, dtype=np.float64)
        tape = ex.forward(params, feeds, lengths=np.array([4, 2, 3]))
        runs.append((float(tape.values[plan.loss]), ex.backward(tape)["W"], set(tape.axes)))
    (l1, g1, a1), (l2, g2, a2) = runs
    assert a1 == {"time"} and a2 == {"words"}
    assert l1 == pytest.approx(l2, rel=1e-12)
    np.testing.assert_allclose(g1, g2, atol=1e-12)
