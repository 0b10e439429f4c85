"""A model's dense parameters as views of one flat array, their gradients as views of one flat
gradient array laid out alike, and the optimisers' update of all of them in one call
(``runtime/paramblocks.py``, ``train/optim.py``): the same numbers, bit for bit, as the
parameters kept apart and updated one at a time."""
import numpy as np
import pytest

from nnspec import compile_text
from nnspec.model import Model
from nnspec.runtime.executor import Executor
from nnspec.runtime.kernelcache import numba_available
from nnspec.runtime.paramblocks import known, stacked_view
from nnspec.runtime.tape import ExecOptions
from nnspec.train.optim import make_optimizer

LM = ("input w : seq of token\ntarget y : seq of class\ne = embed(w, 8)\nh = lstm(e, H = 4)\n"
      "p = softmax(W_out @ h + b_out)\nloss cross_entropy(p, y)\n")
MLP = ("input x[5]\ntarget y : class[3]\nh1[6] = relu(W0 @ x + b0)\nh2[4] = tanh(W1 @ h1 + b1)\n"
       "loss cross_entropy(softmax(W2 @ h2 + b2), y)\n")
FROZEN = ("input x[5]\ntarget y : class[3]\nparam A[6, 5] frozen\nh1[6] = relu(A @ x + b0)\n"
          "loss cross_entropy(softmax(W2 @ h1 + b2), y)\n")


def _lm(dtype=np.float32, seed=0):
    return Model(compile_text(LM, bindings={"vocab(w)": 11, "classes(y)": 9}), dtype=dtype, seed=seed)


def _lm_feeds(seed=0):
    rng = np.random.default_rng(seed)
    return {"w": rng.integers(0, 11, size=(6, 3)), "y": rng.integers(0, 9, size=(6, 3))}


def _mlp(dtype=np.float32, seed=0):
    return Model(compile_text(MLP), dtype=dtype, seed=seed)


def _mlp_feeds(seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(7, 5)), "y": rng.integers(0, 3, size=7)}


def _apart(model):
    """The model's parameters as arrays of their own: the flat paths no longer apply."""
    model.params = {k: v.copy() for k, v in model.params.items()}
    return model


def test_dense_parameters_are_views_of_one_flat_array_with_the_stacked_groups_in_order():
    model = _lm()
    flat = model.executor.flat
    assert set(flat.names) == set(model.params) - {"e.table"}     # the table's gradient is rows: apart
    for n in flat.names:
        assert model.params[n].base is flat.flat
    stacks = [s for s in model.plan.steps if getattr(s, "op", "") == "concat_rows"]
    assert stacks
    for s in stacks:
        xs = [model.params[src] for src, _ in s.inputs]
        view = stacked_view(xs)
        assert view is not None and np.shares_memory(view, flat.flat)
        np.testing.assert_array_equal(view, np.concatenate(xs))
        assert stacked_view(xs[::-1]) is None


def test_frozen_parameters_stay_apart_and_off_the_switch_nothing_is_flat():
    model = Model(compile_text(FROZEN), seed=1)
    assert "A" not in model.executor.flat.names and model.params["A"].base is None
    loss, grads, _ = model.loss_and_grads(_mlp_feeds())
    assert "A" not in grads and all(known(g) is not None for g in grads.values())
    off = Model(compile_text(MLP), seed=0)
    off.executor = Executor(off.plan, off.dtype, options=ExecOptions(flat_params=False))
    _, grads, _ = off.loss_and_grads(_mlp_feeds())
    assert all(known(g) is None for g in grads.values())


def test_a_model_made_with_options_lays_out_its_parameters_for_them():
    # (an A/B of one fast path keeps the others: the bench's variants are made so)
    model = Model(compile_text(MLP), seed=0, options=ExecOptions(plain_kernels=False, fast_loss=False))
    assert model.executor.options.plain_kernels is False and model.executor.plain_kernels_after is None
    assert model.executor.flat is not None and all(known(g) is not None
                                                   for g in model.loss_and_grads(_mlp_feeds())[1].values())
    apart = Model(compile_text(MLP), seed=0, options=ExecOptions(flat_params=False))
    assert apart.executor.flat is None and all(v.base is None for v in apart.params.values())
    np.testing.assert_array_equal(apart.loss_and_grads(_mlp_feeds())[0], model.loss_and_grads(_mlp_feeds())[0])


@pytest.mark.parametrize("make, feeds", [(_lm, _lm_feeds), (_mlp, _mlp_feeds)])
def test_gradients_are_views_of_one_flat_array_with_the_numbers_of_the_parameters_apart(make, feeds):
    flat, apart = make(np.float64), _apart(make(np.float64))
    for seed in range(3):                                     # general pass, then prepared ones
        _, got, _ = flat.loss_and_grads(feeds(seed), single_use=True)
        _, want, _ = apart.loss_and_grads(feeds(seed), single_use=True)
        fg = known(got["W_out" if "W_out" in got else "W0"])
        assert fg is not None and fg.params is flat.executor.flat
        for k in want:
            assert (known(got[k]) is fg) == (k in fg.slot)
            np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)
        del got, want


def test_gradients_someone_still_holds_are_never_written():
    model = _mlp()
    _, first, _ = model.loss_and_grads(_mlp_feeds(0), single_use=True)
    _, first_again, _ = model.loss_and_grads(_mlp_feeds(0), single_use=True)
    kept = {k: v.copy() for k, v in first.items()}
    _, second, _ = model.loss_and_grads(_mlp_feeds(1), single_use=True)
    for k in first:
        np.testing.assert_array_equal(first[k], kept[k])
        assert not np.shares_memory(first[k], second[k])
        assert not np.shares_memory(first_again[k], second[k])
    view_only = first["W0"].T            # a view of the flat array made by the user: held as well
    del first, first_again
    _, third, _ = model.loss_and_grads(_mlp_feeds(2), single_use=True)
    assert not np.shares_memory(view_only, third["W0"])
    np.testing.assert_array_equal(view_only, kept["W0"].T)


def test_a_replaced_parameter_turns_the_flat_paths_off_with_the_right_numbers():
    model, apart = _lm(np.float64), _apart(_lm(np.float64))
    new = model.get("h.Wf") * 0.5
    model.set("h.Wf", new)
    apart.set("h.Wf", new)
    model.params["W_out"] = model.params["W_out"] * 1.0       # the user's own assignment
    for opt_seed in range(2):
        opts = [make_optimizer("adam", lr=0.01) for _ in range(2)]
        for seed in range(3):
            for m, opt in zip((model, apart), opts):
                _, grads, _ = m.loss_and_grads(_lm_feeds(seed), single_use=True)
                assert known(grads["W_out"]) is None
                opt.step(m.params, grads, consume=True)
        for k in apart.params:
            np.testing.assert_array_equal(model.params[k], apart.params[k], err_msg=k)


CASES = [
    ("sgd", {"lr": 0.1}, 1.0, np.float32),
    ("sgd", {"lr": 0.1}, 0.37, np.float32),
    ("sgd", {"lr": 0.1, "weight_decay": 0.01}, 0.5, np.float32),
    ("sgd", {"lr": 0.05}, 1.0, np.float64),
    ("momentum", {"lr": 0.05, "momentum": 0.9}, 0.7, np.float32),
    ("momentum", {"lr": 0.05, "nesterov": True, "weight_decay": 0.001}, 1.0, np.float64),
    ("adam", {"lr": 0.01}, 1.0, np.float32),
    ("adam", {"lr": 0.01, "weight_decay": 0.01}, 0.6, np.float64),
    ("adamw", {"lr": 0.01, "weight_decay": 0.1}, 0.8, np.float32),
]


def _train(model, feeds, opt, scale, steps, consume=True, start=0):
    for i in range(start, start + steps):
        _, grads, _ = model.loss_and_grads(feeds(i), single_use=True)
        opt.step(model.params, grads, scale=scale, consume=consume)
        del grads


@pytest.mark.parametrize("name, kw, scale, dtype", CASES)
@pytest.mark.parametrize("make, feeds", [(_lm, _lm_feeds), (_mlp, _mlp_feeds)])
def test_the_update_in_one_call_gives_the_numbers_of_the_update_one_at_a_time(make, feeds, name, kw, scale, dtype):
    flat = make(dtype)
    runs = [(flat, make_optimizer(name, **kw))]                     # flat arrays, one call
    one_at_a_time = make_optimizer(name, **kw)
    one_at_a_time.flat = False
    runs.append((make(dtype), one_at_a_time))                       # flat arrays, one by one
    off = make(dtype)
    off.executor = Executor(off.plan, off.dtype, options=ExecOptions(flat_params=False))
    runs.append((off, make_optimizer(name, **kw)))                  # the runtime's switch off
    runs.append((_apart(make(dtype)), make_optimizer(name, **kw)))  # arrays apart
    for consume in (True, False):
        for model, opt in runs:
            _train(model, feeds, opt, scale, 4, consume)
    assert flat.params["h.Wf" if "h.Wf" in flat.params else "W0"].base is flat.executor.flat.flat
    want_params, want_state = runs[-1][0].params, runs[-1][1].state_dict()
    for model, opt in runs[:-1]:
        for k in want_params:
            np.testing.assert_array_equal(model.params[k], want_params[k], err_msg=k)
        state = opt.state_dict()
        assert state.keys() == want_state.keys()
        for k, v in want_state.items():
            np.testing.assert_array_equal(state[k], v, err_msg=k)
    if runs[0][1].buffers:          # the state buffers are views of flat arrays too
        buf = runs[0][1].state[runs[0][1].buffers[0]]["W_out" if "W_out" in flat.params else "W0"]
        assert buf.base is not None and known(buf) is not None


@pytest.mark.parametrize("name, kw", [("adam", {"lr": 0.01}), ("momentum", {"lr": 0.05}),
                                      ("sgd", {"lr": 0.1, "weight_decay": 0.01})])
def test_a_run_resumed_from_its_state_continues_bit_for_bit(name, kw):
    whole, opt = _lm(), make_optimizer(name, **kw)
    _train(whole, _lm_feeds, opt, 0.9, 5)
    first, opt1 = _lm(), make_optimizer(name, **kw)
    _train(first, _lm_feeds, opt1, 0.9, 3)
    saved_params = {k: v.copy() for k, v in first.params.items()}
    saved_state = opt1.state_dict()
    for replace in (False, True):        # weights written into the model's arrays, or given as new ones
        resumed, opt2 = _lm(), make_optimizer(name, **kw)
        for k, v in saved_params.items():
            if replace:
                resumed.params[k] = v.copy()
            else:
                np.copyto(resumed.params[k], v)
        opt2.load_state_dict(saved_state)
        _train(resumed, _lm_feeds, opt2, 0.9, 2, start=3)
        for k in whole.params:
            np.testing.assert_array_equal(resumed.params[k], whole.params[k], err_msg=k)
        for k, v in opt.state_dict().items():
            np.testing.assert_array_equal(opt2.state_dict()[k], v, err_msg=k)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_one_call_updates_the_flat_parameters_and_the_table_goes_on_its_own(name):
    model, opt = _lm(), make_optimizer(name, lr=0.01)
    calls = []
    inner = opt._update_scaled
    opt._update_scaled = lambda n, p, *rest: (calls.append((n, p.size)), inner(n, p, *rest))
    _, grads, _ = model.loss_and_grads(_lm_feeds(), single_use=True)
    assert getattr(grads["e.table"], "rows", None) is not None     # a row gradient: not in the flat array
    opt.step(model.params, grads, consume=True)
    flat = [size for n, size in calls if n not in model.params]
    assert flat == [model.executor.flat.flat.size]
    assert [n for n, _ in calls if n in model.params] == ([] if name == "sgd" else ["e.table"])
    opt.flat = False
    calls.clear()
    _, grads, _ = model.loss_and_grads(_lm_feeds(), single_use=True)
    opt.step(model.params, grads, consume=True)
    assert all(n in model.params for n, _ in calls)


@pytest.mark.parametrize("make, feeds", [(_lm, _lm_feeds), (_mlp, _mlp_feeds)])
def test_the_flat_gradient_array_is_used_again_once_nobody_holds_it(make, feeds):
    import weakref
    model, opt = make(), make_optimizer("sgd", lr=0.1)
    kept = []
    for seed in range(4):
        _, grads, _ = model.loss_and_grads(feeds(seed), single_use=True)
        kept.append(weakref.ref(known(grads["W_out" if "W_out" in grads else "W0"])))
        opt.step(model.params, grads, consume=True)
        del grads
    assert all(ref() is kept[0]() is not None for ref in kept[1:])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgds_compiled_pass_over_a_large_array_gives_numpys_numbers(dtype, monkeypatch):
    from nnspec.train import optim, sgdkernel
    if not numba_available():
        pytest.skip("numba (the fast extra) is not installed")
    rng = np.random.default_rng(5)
    n = sgdkernel.MIN_SIZE + 13
    p = (rng.normal(size=n) * np.exp(rng.uniform(-20, 20, size=n))).astype(dtype)
    g = (rng.normal(size=n) * np.exp(rng.uniform(-20, 20, size=n))).astype(dtype)
    a = -0.0123456789
    assert sgdkernel.applies(p, g)
    got, want, g_numpy = p.copy(), p.copy(), g.copy()
    assert optim._sgd_add(got, g.copy(), a, True, None) is None
    g_numpy *= a
    want += g_numpy
    np.testing.assert_array_equal(got, want)
    monkeypatch.setattr(sgdkernel.KERNEL, "fn", False)            # (as where numba is missing)
    assert not sgdkernel.applies(p, g)
    again = p.copy()
    optim._sgd_add(again, g.copy(), a, True, None)
    np.testing.assert_array_equal(again, want)


def test_a_trainer_resumed_from_its_checkpoint_keeps_the_flat_arrays_and_ends_as_an_uninterrupted_run(tmp_path):
    from test_average import TAGGER, resumed_halfway, write

    path = write(tmp_path, TAGGER.replace("average ema(decay = 0.9) ", "").replace("adam(lr = 0.05)",
                                                                                     "momentum(lr = 0.1)"))
    full, resumed, second = resumed_halfway(path, tmp_path)
    flat = resumed.model.executor.flat
    assert flat is not None and flat.held_in(resumed.model.params)     # the weights went into its arrays
    second.fit()
    assert known(second.optimizer.state["v"]["V"]) is not None         # updated in one call
    for name in full.model.params:
        assert np.array_equal(full.model.params[name], resumed.model.params[name]), name
