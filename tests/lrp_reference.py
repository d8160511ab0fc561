"""Float64 matrix-form LRP, written independently of lrpir: the oracle for every rule and preset.

Every linear layer is a dense matrix ``M`` (a convolution becomes one by applying it to the unit
basis), every rule is the textbook formula on ``M``, ``x``, ``b`` and ``R`` (the conventions of
``../shared/rules-reference.md``), and a network is a tape of such layers run item by item.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def stab(z: np.ndarray, eps: float) -> np.ndarray:
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def ratio(r: np.ndarray, z: np.ndarray, eps: float) -> np.ndarray:
    d = stab(z, eps)
    return np.where(d == 0, 0.0, r / np.where(d == 0, 1.0, d))


def pos(a):
    return np.clip(a, 0, None)


def neg(a):
    return np.clip(a, None, 0)


# -- rules on one linear layer z = M x + b ----------------------------------------------------
def epsilon(M, b, x, R, eps=1e-6, **_):
    return x * (M.T @ ratio(R, M @ x + b, eps))


def z_plus(M, b, x, R, eps=1e-6, **_):
    s = ratio(R, pos(M) @ pos(x) + neg(M) @ neg(x) + pos(b), eps)
    return pos(x) * (pos(M).T @ s) + neg(x) * (neg(M).T @ s)


def alpha_beta(M, b, x, R, eps=1e-6, alpha=2.0, beta=1.0, **_):
    sa = ratio(R, pos(M) @ pos(x) + neg(M) @ neg(x) + pos(b), eps)
    sb = ratio(R, neg(M) @ pos(x) + pos(M) @ neg(x) + neg(b), eps)
    ra = pos(x) * (pos(M).T @ sa) + neg(x) * (neg(M).T @ sa)
    rb = pos(x) * (neg(M).T @ sb) + neg(x) * (pos(M).T @ sb)
    return alpha * ra - beta * rb


def gamma(M, b, x, R, eps=1e-6, gamma=0.25, **_):
    up, dn = M + gamma * pos(M), M + gamma * neg(M)
    bup, bdn = b + gamma * pos(b), b + gamma * neg(b)
    z = M @ x + b
    sp = ratio(np.where(z > 0, R, 0.0), up @ pos(x) + dn @ neg(x) + bup, eps)
    sn = ratio(np.where(z < 0, R, 0.0), dn @ pos(x) + up @ neg(x) + bdn, eps)
    return pos(x) * (up.T @ sp + dn.T @ sn) + neg(x) * (dn.T @ sp + up.T @ sn)


def z_box(M, b, x, R, eps=1e-6, low=None, high=None, **_):
    s = ratio(R, M @ x - pos(M) @ low - neg(M) @ high, eps)
    return x * (M.T @ s) - low * (pos(M).T @ s) - high * (neg(M).T @ s)


def w_square(M, b, x, R, eps=1e-6, **_):
    W2 = M * M
    return W2.T @ ratio(R, W2 @ np.ones_like(x) + b * b, eps)


def flat(M, b, x, R, eps=1e-6, ones=None, **_):
    """``ones`` is the layer with every weight set to 1 (its connectivity), as a matrix."""
    return ones.T @ ratio(R, ones @ np.ones_like(x), eps)


RULES = {"epsilon": epsilon, "z-plus": z_plus, "alpha-beta": alpha_beta, "gamma": gamma,
         "z-box": z_box, "w-square": w_square, "flat": flat}


# -- layers as matrices -----------------------------------------------------------------------
def conv_matrix(weight: np.ndarray, in_shape: tuple, stride=1, padding=0, groups=1) -> np.ndarray:
    """A 2-D convolution (no bias) as the dense matrix acting on the flattened C×H×W input."""
    import torch

    n = int(np.prod(in_shape))
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
    with torch.no_grad():
        cols = torch.nn.functional.conv2d(basis, torch.as_tensor(weight, dtype=torch.float64),
                                          None, stride, padding, 1, groups)
    return cols.reshape(n, -1).T.numpy()


def avgpool_matrix(in_shape: tuple, kernel: int, stride: int | None = None) -> np.ndarray:
    import torch

    n = int(np.prod(in_shape))
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
    cols = torch.nn.functional.avg_pool2d(basis, kernel, stride or kernel)
    return cols.reshape(n, -1).T.numpy()


def fold_bn(weight, bias, bn) -> tuple[np.ndarray, np.ndarray]:
    """Conv weight and bias with an eval-mode BatchNorm folded in exactly (float64, ε kept)."""
    g = bn.weight.detach().double().numpy()
    beta = bn.bias.detach().double().numpy()
    mu = bn.running_mean.detach().double().numpy()
    var = bn.running_var.detach().double().numpy()
    scale = g / np.sqrt(var + bn.eps)
    b = np.zeros(weight.shape[0]) if bias is None else bias
    return weight * scale.reshape(-1, *([1] * (weight.ndim - 1))), (b - mu) * scale + beta


# -- a network as a tape, run one item at a time ----------------------------------------------
@dataclass
class Tape:
    """Forward values by id and the ops between them; ``backward`` applies one rule per op."""

    values: list[np.ndarray] = field(default_factory=list)
    ops: list[tuple] = field(default_factory=list)

    def input(self, x: np.ndarray) -> int:
        self.values.append(np.asarray(x, dtype=np.float64).reshape(-1))
        return len(self.values) - 1

    def _out(self, y: np.ndarray, op: tuple) -> int:
        self.values.append(y)
        self.ops.append(op + (len(self.values) - 1,))
        return len(self.values) - 1

    def linear(self, i: int, M, b, kind: str, ones=None) -> int:
        """``kind``: 'conv' or 'dense' (which preset rule applies), 'avg' for average pooling."""
        b = np.zeros(M.shape[0]) if b is None else b
        return self._out(M @ self.values[i] + b, ("linear", i, M, b, kind, ones))

    def relu(self, i: int) -> int:
        return self._out(np.maximum(self.values[i], 0), ("pass", i))

    def maxpool(self, i: int, shape: tuple, k: int) -> int:
        """k×k max pooling with stride k on a flattened C×H×W value: winner takes all."""
        c, h, w = shape
        x = self.values[i].reshape(c, h, w)
        idx = np.arange(c * h * w).reshape(c, h, w)
        win = idx.reshape(c, h // k, k, w // k, k).transpose(0, 1, 3, 2, 4).reshape(c, h // k, w // k, -1)
        vals = x.reshape(-1)[win]
        chosen = np.take_along_axis(win, vals.argmax(-1)[..., None], -1)[..., 0].reshape(-1)
        return self._out(self.values[i][chosen], ("gather", i, chosen))

    def add(self, i: int, j: int) -> int:
        return self._out(self.values[i] + self.values[j], ("add", i, j))

    def backward(self, out: int, R: np.ndarray, conv: str, dense: str = "epsilon",
                 first: str | None = None, eps: float = 1e-6, stabilizer: float = 1e-6,
                 **params) -> np.ndarray:
        """Relevance at value 0 for start relevance ``R`` at ``out``.

        ``first`` is the rule of the first linear op on the tape (the one reading value 0).
        """
        rel: dict[int, np.ndarray] = {out: np.asarray(R, dtype=np.float64)}
        for op in reversed(self.ops):
            y = op[-1]
            if y not in rel:
                continue
            r = rel.pop(y)
            if op[0] == "linear":
                _, i, M, b, kind, ones, _ = op
                if kind == "avg":
                    given = {i: epsilon(M, b, self.values[i], r, stabilizer)}
                else:
                    name = first if first is not None and i == 0 else (conv if kind == "conv" else dense)
                    e = eps if name == "epsilon" else stabilizer
                    given = {i: RULES[name](M, b, self.values[i], r, e, ones=ones, **params)}
            elif op[0] == "pass":
                given = {op[1]: r}
            elif op[0] == "gather":
                g = np.zeros_like(self.values[op[1]])  # winner takes all
                np.add.at(g, op[2], r)
                given = {op[1]: g}
            else:  # add: the z-rule (Zennit's Norm on its Sum layer)
                _, i, j, _ = op
                s = ratio(r, self.values[i] + self.values[j], stabilizer)
                given = {i: self.values[i] * s, j: self.values[j] * s}
                if i == j:
                    given = {i: 2 * self.values[i] * s}
            for k, v in given.items():
                rel[k] = rel[k] + v if k in rel else v
        return rel[0]
