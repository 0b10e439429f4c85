"""Hand-written NumPy train steps: the baseline a careful NumPy programmer would write.

Time-major (T, B, ...) layout throughout. The speed rules followed:
  * the input projections of all time steps are ONE product, before the time loop;
  * the gates of a cell are ONE fused product per step (W_hh of shape (G*H, H));
  * every weight gradient is ONE product over all time steps ((T*B, G*H).T @ (T*B, n));
  * activation derivatives are computed for the whole sequence at once, outside the loop;
  * all buffers are allocated once in __init__ and written with out=; no per-element Python.
Weights use PyTorch layouts and gate orders (LSTM i,f,g,o; GRU r,z,n) so the
gradients can be checked against PyTorch one to one (test_numpy_impl.py).
"""
from __future__ import annotations

import numpy as np

from bench.configs import init_params, make_batch


def sigmoid_(a):
    """In-place logistic function (works on strided views)."""
    np.negative(a, out=a)
    np.exp(a, out=a)
    a += 1.0
    np.reciprocal(a, out=a)


def softmax_xent_(z, y):
    """Mean cross-entropy of softmax(z) against integer targets y.

    z (N, C) is overwritten with d loss / d z, i.e. (softmax(z) - onehot(y)) / N."""
    n = z.shape[0]
    rows = np.arange(n)
    z -= z.max(axis=1, keepdims=True)
    picked = z[rows, y].sum(dtype=np.float64)  # z_y - max
    np.exp(z, out=z)
    s = z.sum(axis=1, keepdims=True)
    loss = (np.log(s).sum(dtype=np.float64) - picked) / n
    s *= n
    np.reciprocal(s, out=s)
    z *= s
    z[rows, y] -= 1.0 / n
    return float(loss)


class Model:
    """Owns parameters, gradient buffers and the batch; subclasses fill `grads`."""

    def __init__(self, cfg, params, batch):
        self.cfg, self.params, (self.x, self.y) = cfg, params, batch
        self.grads = {k: np.zeros_like(v) for k, v in params.items()}

    def loss_and_grads(self) -> float:
        raise NotImplementedError

    def sgd_(self):
        lr = self.cfg.lr
        for k, p in self.params.items():
            g = self.grads[k]
            g *= lr  # the gradient buffer is rewritten next step anyway
            p -= g

    def step(self) -> float:
        loss = self.loss_and_grads()
        self.sgd_()
        return loss


# ---------------------------------------------------------------- MLP

class MLP(Model):
    def __init__(self, cfg, params, batch):
        super().__init__(cfg, params, batch)
        dt, B = params["W0"].dtype, cfg.batch
        self.n_layers = len(cfg.sizes) - 1
        self.h = [np.empty((B, n), dt) for n in cfg.sizes[1:]]  # layer outputs (last = logits)
        self.dh = [np.empty((B, n), dt) for n in cfg.sizes[1:-1]]

    def loss_and_grads(self):
        p, g, h = self.params, self.grads, self.h
        a = self.x
        for i in range(self.n_layers):
            np.matmul(a, p[f"W{i}"].T, out=h[i])
            h[i] += p[f"b{i}"]
            if i < self.n_layers - 1:
                np.maximum(h[i], 0, out=h[i])
            a = h[i]
        loss = softmax_xent_(h[-1], self.y)
        d = h[-1]  # now d loss / d logits
        for i in reversed(range(self.n_layers)):
            inp = h[i - 1] if i else self.x
            np.matmul(d.T, inp, out=g[f"W{i}"])
            np.sum(d, axis=0, out=g[f"b{i}"])
            if i:  # no gradient w.r.t. the data
                np.matmul(d, p[f"W{i}"], out=self.dh[i - 1])
                d = self.dh[i - 1]
                d *= inp > 0  # ReLU: pass where the output was positive
        return loss


# ---------------------------------------------------------------- recurrent layers

class Recurrent:
    """One direction of one recurrent layer over a whole (T, B) batch.

    Subclasses implement the time loops `_forward` and `_backward`; this class does
    the whole-sequence products (input projection, weight gradients)."""

    G = 1  # gate blocks

    def __init__(self, T, B, H, dtype, reverse=False):
        self.T, self.B, self.H, self.reverse = T, B, H, reverse
        GH = self.G * H
        self.order = range(T - 1, -1, -1) if reverse else range(T)
        self.zeros = np.zeros((B, H), dtype)  # the initial state
        self.acts = np.empty((T, B, GH), dtype)  # gate pre-activations, then activations
        self.deriv = np.empty((T, B, GH), dtype)  # activation derivatives
        self.dgates = np.empty((T, B, GH), dtype)  # d loss / d gate pre-activations
        self.dgates_h = self.dgates  # the hidden-side ones (differ for the GRU)
        self.tmp_g = np.empty((B, GH), dtype)
        self.dh = np.empty((B, H), dtype)
        self.dh_rec = np.empty((B, H), dtype)  # gradient flowing to the previous step

    def prev(self, seq, t):
        """The state that fed step t: the neighbour in the direction of travel, or zeros."""
        p = t + 1 if self.reverse else t - 1
        return seq[p] if 0 <= p < self.T else self.zeros

    def forward(self, x2, W_ih, W_hh, b_ih, b_hh, hs):
        """x2 (T*B, E) inputs; writes the hidden states into hs (T, B, H), maybe a strided view."""
        np.matmul(x2, W_ih.T, out=self.acts.reshape(-1, self.G * self.H))
        self._forward(W_hh, b_ih, b_hh, hs)

    def backward(self, x2, hs, dhs, W_hh, gW_ih, gW_hh, gb_ih, gb_hh):
        """dhs (T, B, H): d loss / d hs from above. Fills the weight gradients and returns
        the input-side gate gradients (T*B, G*H); the caller turns them into d x2."""
        self._backward(hs, dhs, W_hh)
        GH, H = self.G * self.H, self.H
        dgi = self.dgates.reshape(-1, GH)
        np.matmul(dgi.T, x2, out=gW_ih)
        np.sum(dgi, axis=0, out=gb_ih)
        # d W_hh = sum_t dgates_h[t].T @ h_prev[t]; the first step's h_prev is zero.
        dgh, hp = (self.dgates_h[:-1], hs[1:]) if self.reverse else (self.dgates_h[1:], hs[:-1])
        np.matmul(dgh.reshape(-1, GH).T, hp.reshape(-1, H), out=gW_hh)
        if self.dgates_h is self.dgates:
            gb_hh[...] = gb_ih
        else:
            np.sum(self.dgates_h.reshape(-1, GH), axis=0, out=gb_hh)
        return dgi


class RNNLayer(Recurrent):
    """Elman: h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)."""

    G = 1

    def _forward(self, W_hh, b_ih, b_hh, hs):
        a, tmp = self.acts, self.tmp_g
        a += b_ih + b_hh
        for t in self.order:
            np.matmul(self.prev(hs, t), W_hh.T, out=tmp)
            tmp += a[t]
            np.tanh(tmp, out=hs[t])

    def _backward(self, hs, dhs, W_hh):
        d, dg, dh_rec = self.deriv, self.dgates, self.dh_rec
        np.square(hs, out=d)
        np.subtract(1.0, d, out=d)
        dh_rec.fill(0.0)
        for t in reversed(self.order):
            np.add(dhs[t], dh_rec, out=dg[t])
            dg[t] *= d[t]
            np.matmul(dg[t], W_hh, out=dh_rec)


class LSTMLayer(Recurrent):
    """PyTorch LSTM: gates i, f, g, o; c_t = f c_{t-1} + i g; h_t = o tanh(c_t)."""

    G = 4

    def __init__(self, T, B, H, dtype, reverse=False):
        super().__init__(T, B, H, dtype, reverse)
        self.c = np.empty((T, B, H), dtype)
        self.tc = np.empty((T, B, H), dtype)  # tanh(c)
        self.dtc = np.empty((T, B, H), dtype)  # 1 - tanh(c)^2
        self.tmp = np.empty((B, H), dtype)
        self.dc = np.empty((B, H), dtype)
        self.dact = np.empty((B, 4 * H), dtype)  # d loss / d gate activations at one step

    def _forward(self, W_hh, b_ih, b_hh, hs):
        H, a, tmp = self.H, self.acts, self.tmp
        a += b_ih + b_hh
        for t in self.order:
            at = a[t]
            np.matmul(self.prev(hs, t), W_hh.T, out=self.tmp_g)
            at += self.tmp_g
            sigmoid_(at[:, : 2 * H])
            np.tanh(at[:, 2 * H : 3 * H], out=at[:, 2 * H : 3 * H])
            sigmoid_(at[:, 3 * H :])
            i, f, g, o = at[:, :H], at[:, H : 2 * H], at[:, 2 * H : 3 * H], at[:, 3 * H :]
            c = self.c[t]
            np.multiply(f, self.prev(self.c, t), out=c)
            np.multiply(i, g, out=tmp)
            c += tmp
            np.tanh(c, out=self.tc[t])
            np.multiply(o, self.tc[t], out=hs[t])

    def _backward(self, hs, dhs, W_hh):
        H, a, d, tmp, dtc = self.H, self.acts, self.deriv, self.tmp, self.dtc
        # sigma' = s (1 - s) everywhere, then tanh' = 1 - g^2 for the g block; tanh'(c)
        np.subtract(1.0, a, out=d)
        d *= a
        np.square(a[..., 2 * H : 3 * H], out=d[..., 2 * H : 3 * H])
        np.subtract(1.0, d[..., 2 * H : 3 * H], out=d[..., 2 * H : 3 * H])
        np.square(self.tc, out=dtc)
        np.subtract(1.0, dtc, out=dtc)
        dh, dh_rec, dc, dact = self.dh, self.dh_rec, self.dc, self.dact
        di, df, dg, do = dact[:, :H], dact[:, H : 2 * H], dact[:, 2 * H : 3 * H], dact[:, 3 * H :]
        dh_rec.fill(0.0)
        dc.fill(0.0)
        for t in reversed(self.order):
            at = a[t]
            i, f, g, o = at[:, :H], at[:, H : 2 * H], at[:, 2 * H : 3 * H], at[:, 3 * H :]
            np.add(dhs[t], dh_rec, out=dh)
            np.multiply(dh, self.tc[t], out=do)
            np.multiply(dh, o, out=tmp)
            tmp *= dtc[t]
            dc += tmp
            np.multiply(dc, g, out=di)
            np.multiply(dc, i, out=dg)
            np.multiply(dc, self.prev(self.c, t), out=df)
            dc *= f  # carried to the previous step
            np.multiply(dact, d[t], out=self.dgates[t])
            np.matmul(self.dgates[t], W_hh, out=dh_rec)


class GRULayer(Recurrent):
    """PyTorch GRU: r, z = sigma(...); n = tanh(W_in x + b_in + r * (W_hn h + b_hn));
    h_t = (1 - z) n + z h_{t-1}."""

    G = 3

    def __init__(self, T, B, H, dtype, reverse=False):
        super().__init__(T, B, H, dtype, reverse)
        self.hn = np.empty((T, B, H), dtype)  # W_hn h_{t-1} + b_hn, needed for d r
        self.dgates_h = np.empty_like(self.dgates)  # n block differs: d n_pre * r
        self.tmp = np.empty((B, H), dtype)
        self.dhz = np.empty((B, H), dtype)

    def _forward(self, W_hh, b_ih, b_hh, hs):
        H, a, tmp, hh = self.H, self.acts, self.tmp, self.tmp_g
        a += b_ih
        a[..., : 2 * H] += b_hh[: 2 * H]  # b_hn stays inside the reset product
        for t in self.order:
            at, hp = a[t], self.prev(hs, t)
            np.matmul(hp, W_hh.T, out=hh)
            rz = at[:, : 2 * H]
            rz += hh[:, : 2 * H]
            sigmoid_(rz)
            r, z, n = at[:, :H], at[:, H : 2 * H], at[:, 2 * H :]
            np.add(hh[:, 2 * H :], b_hh[2 * H :], out=self.hn[t])
            np.multiply(r, self.hn[t], out=tmp)
            n += tmp
            np.tanh(n, out=n)
            h = hs[t]  # n + z (h_prev - n)
            np.subtract(hp, n, out=h)
            h *= z
            h += n

    def _backward(self, hs, dhs, W_hh):
        H, a, d = self.H, self.acts, self.deriv
        np.subtract(1.0, a, out=d)  # sigma' for r, z; then tanh' for n
        d *= a
        np.square(a[..., 2 * H :], out=d[..., 2 * H :])
        np.subtract(1.0, d[..., 2 * H :], out=d[..., 2 * H :])
        dh, dh_rec, dhz = self.dh, self.dh_rec, self.dhz
        dh_rec.fill(0.0)
        for t in reversed(self.order):
            at, hp, gi, gh = a[t], self.prev(hs, t), self.dgates[t], self.dgates_h[t]
            r, z, n = at[:, :H], at[:, H : 2 * H], at[:, 2 * H :]
            dr, dz, dn = gi[:, :H], gi[:, H : 2 * H], gi[:, 2 * H :]
            np.add(dhs[t], dh_rec, out=dh)
            np.multiply(dh, z, out=dhz)
            np.subtract(dh, dhz, out=dn)  # d n = dh (1 - z) ...
            dn *= d[t, :, 2 * H :]  # ... through tanh
            np.multiply(dn, self.hn[t], out=dr)
            np.subtract(hp, n, out=dz)
            dz *= dh
            gi[:, : 2 * H] *= d[t, :, : 2 * H]
            gh[:, : 2 * H] = gi[:, : 2 * H]
            np.multiply(dn, r, out=gh[:, 2 * H :])
            np.matmul(gh, W_hh, out=dh_rec)
            dh_rec += dhz  # the direct path z * h_prev


LAYERS = {"rnn": RNNLayer, "lstm": LSTMLayer, "gru": GRULayer}


# ---------------------------------------------------------------- sequence models

class SeqModel(Model):
    """embedding -> recurrent (1 or 2 directions) -> linear -> softmax CE at every step."""

    def __init__(self, cfg, params, batch):
        super().__init__(cfg, params, batch)
        dt = params["emb"].dtype
        T, B, E, H, D = cfg.seq_len, cfg.batch, cfg.embed, cfg.hidden, cfg.directions
        self.x_flat, self.y_flat = self.x.ravel(), self.y.ravel()
        self.layers = [(sfx, LAYERS[cfg.cell](T, B, H, dt, reverse=sfx == "_rev"))
                       for sfx in ["", "_rev"][:D]]
        self.xe = np.empty((T, B, E), dt)
        self.hcat = np.empty((T, B, D * H), dt)  # directions write straight into their half
        self.dhcat = np.empty((T * B, D * H), dt)
        self.logits = np.empty((T * B, cfg.classes), dt)
        self.dxe = np.empty((T * B, E), dt)

    def loss_and_grads(self):
        p, g, cfg = self.params, self.grads, self.cfg
        H, D = cfg.hidden, cfg.directions
        np.take(p["emb"], self.x, axis=0, out=self.xe, mode="clip")  # "raise" would buffer
        x2 = self.xe.reshape(-1, cfg.embed)
        for k, (s, layer) in enumerate(self.layers):
            layer.forward(x2, p["W_ih" + s], p["W_hh" + s], p["b_ih" + s], p["b_hh" + s],
                          self.hcat[..., k * H : (k + 1) * H])
        h2 = self.hcat.reshape(-1, D * H)
        np.matmul(h2, p["W_out"].T, out=self.logits)
        self.logits += p["b_out"]
        loss = softmax_xent_(self.logits, self.y_flat)
        dl = self.logits  # now d loss / d logits
        np.matmul(dl.T, h2, out=g["W_out"])
        np.sum(dl, axis=0, out=g["b_out"])
        np.matmul(dl, p["W_out"], out=self.dhcat)
        dh3 = self.dhcat.reshape(self.hcat.shape)
        for k, (s, layer) in enumerate(self.layers):
            sl = slice(k * H, (k + 1) * H)
            dgi = layer.backward(x2, self.hcat[..., sl], dh3[..., sl], p["W_hh" + s],
                                 g["W_ih" + s], g["W_hh" + s], g["b_ih" + s], g["b_hh" + s])
            if k == 0:
                np.matmul(dgi, p["W_ih" + s], out=self.dxe)
            else:
                self.dxe += dgi @ p["W_ih" + s]
        ge = g["emb"]  # dense, like nn.Embedding's default gradient
        ge.fill(0.0)
        np.add.at(ge, self.x_flat, self.dxe)
        return loss


def build(cfg, dtype=np.float32, params=None, batch=None) -> Model:
    params = init_params(cfg, dtype) if params is None else params
    batch = make_batch(cfg, dtype) if batch is None else batch
    return (MLP if cfg.kind == "mlp" else SeqModel)(cfg, params, batch)


class NumpyImpl:
    """harness.Implementation for the hand-written NumPy baseline."""

    name = "numpy"
    traces_memory = True  # NumPy reports its buffers to tracemalloc

    def setup(self, config, dtype):
        return build(config, dtype).step
