"""Small JAX models for the JAX frontend tests: flax.nnx, flax.linen and equinox, plus torch twins
with the same weights (for the cross-frontend oracle)."""

from __future__ import annotations

import functools
import math

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


# -- weights without compiling random initialisers ------------------------------------------------
def fill(abstract, seed: int = 0, out_axis: int = -1):
    """Concrete numpy weights for a pytree of ``jax.ShapeDtypeStruct`` leaves (models are built
    with ``eval_shape`` so that no random initialiser is compiled: the tests stay fast).

    Kernels get N(0, 1/fan_in) (``out_axis`` is the output-feature axis: -1 for flax, 0 for
    equinox), scales 1 ± 0.1, biases and running means N(0, 0.1²), running variances U(0.5, 2).
    """
    rng = np.random.default_rng(seed)

    def leaf(path, x):
        if not isinstance(x, jax.ShapeDtypeStruct):
            return x
        name = jax.tree_util.keystr(path).lower()
        shape, size = x.shape, int(np.prod(x.shape))
        if "var" in name:
            data = rng.uniform(0.5, 2.0, shape)
        elif len(shape) >= 2:
            fan_in = size // shape[out_axis] if "embed" not in name else 1
            data = rng.normal(0, 1 / math.sqrt(fan_in), shape)
        elif "scale" in name or "weight" in name:
            data = 1 + rng.normal(0, 0.1, shape)
        else:
            data = rng.normal(0, 0.1, shape)
        return jnp.asarray(data, x.dtype)

    return jax.tree_util.tree_map_with_path(leaf, abstract,
                                            is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))


def nnx_build(cls, *args, seed: int = 0, **kwargs):
    abstract = nnx.eval_shape(lambda: cls(nnx.Rngs(0), *args, **kwargs))
    graphdef, state = nnx.split(abstract)
    return nnx.merge(graphdef, fill(state, seed))


def eqx_build(cls, *args, seed: int = 0, **kwargs):
    return fill(eqx.filter_eval_shape(cls, jax.random.key(0), *args, **kwargs), seed, out_axis=0)


# -- flax.nnx -------------------------------------------------------------------------------------
class NnxCNN(nnx.Module):
    """Conv → BatchNorm (eval) → ReLU → max_pool → Conv → ReLU → avg_pool → Linear, NHWC."""

    def __init__(self, rngs: nnx.Rngs, bias: bool = True, batch_norm: bool = True, classes: int = 5):
        self.conv1 = nnx.Conv(3, 6, (3, 3), padding="SAME", use_bias=bias, rngs=rngs)
        self.bn = nnx.BatchNorm(6, use_running_average=True, rngs=rngs) if batch_norm else None
        self.conv2 = nnx.Conv(6, 8, (3, 3), padding="SAME", use_bias=bias, rngs=rngs)
        self.fc = nnx.Linear(8 * 3 * 3, classes, use_bias=bias, rngs=rngs)

    def __call__(self, x):
        h = self.conv1(x)
        if self.bn is not None:
            h = self.bn(h)
        h = nnx.max_pool(jax.nn.relu(h), (2, 2), (2, 2))
        h = nnx.avg_pool(jax.nn.relu(self.conv2(h)), (2, 2), (2, 2))
        return self.fc(h.reshape(h.shape[0], -1))


def nnx_cnn(seed: int = 0, bias: bool = True, batch_norm: bool = True) -> NnxCNN:
    return nnx_build(NnxCNN, bias, batch_norm, seed=seed)


class NnxEmbedClassifier(nnx.Module):
    """Token ids → nnx.Embed → mean over tokens → Linear."""

    def __init__(self, rngs: nnx.Rngs, vocab: int = 20, dim: int = 8, classes: int = 3):
        self.embed = nnx.Embed(vocab, dim, rngs=rngs)
        self.fc = nnx.Linear(dim, classes, rngs=rngs)

    def __call__(self, ids):
        return self.fc(self.embed(ids).mean(axis=1))

    def from_embeddings(self, e):
        return self.fc(e.mean(axis=1))


class NnxNormGelu(nnx.Module):
    """LayerNorm and exact GELU as flax writes them (for the raising checks)."""

    def __init__(self, rngs: nnx.Rngs, dim: int = 8):
        self.ln = nnx.LayerNorm(dim, rngs=rngs)
        self.fc = nnx.Linear(dim, dim, rngs=rngs)

    def __call__(self, x):
        return self.fc(jax.nn.gelu(self.ln(x), approximate=False))


class NnxAttention(nnx.Module):
    """flax's own multi-head attention in a pre-norm residual block."""

    def __init__(self, rngs: nnx.Rngs, dim: int = 8, heads: int = 2):
        self.ln = nnx.LayerNorm(dim, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=heads, in_features=dim, decode=False, rngs=rngs)

    def __call__(self, x):
        return x + self.attn(self.ln(x))


# -- flax.linen -----------------------------------------------------------------------------------
class LinenMLP(nn.Module):
    sizes: tuple = (16, 16, 4)

    @nn.compact
    def __call__(self, x):
        for width in self.sizes[:-1]:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.sizes[-1])(x)


class LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), padding="SAME")(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


def linen(module: nn.Module, example: np.ndarray, seed: int = 0):
    """``(partial(module.apply, variables), variables)``."""
    variables = fill(jax.eval_shape(module.init, jax.random.key(0), jnp.asarray(example)), seed)
    return functools.partial(module.apply, variables), variables


# -- equinox --------------------------------------------------------------------------------------
class EqxMLP(eqx.Module):
    layers: list

    def __init__(self, key, sizes=(6, 16, 16, 4), bias: bool = True):
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = [eqx.nn.Linear(a, b, use_bias=bias, key=k)
                       for a, b, k in zip(sizes[:-1], sizes[1:], keys)]

    def __call__(self, x):
        def one(h):
            for layer in self.layers[:-1]:
                h = jax.nn.relu(layer(h))
            return self.layers[-1](h)
        return jax.vmap(one)(x)


class EqxCNN(eqx.Module):
    """NCHW, as equinox's layers are: Conv2d → ReLU → MaxPool2d → Linear."""

    conv: eqx.nn.Conv2d
    fc: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.conv = eqx.nn.Conv2d(3, 4, 3, padding=1, key=k1)
        self.fc = eqx.nn.Linear(4 * 4 * 4, 3, key=k2)

    def __call__(self, x):
        def one(h):
            h = eqx.nn.MaxPool2d(2, 2)(jax.nn.relu(self.conv(h)))
            return self.fc(h.reshape(-1))
        return jax.vmap(one)(x)


class EqxBlock(eqx.Module):
    """An input projection, a pre-norm transformer block and a mean-pooled classifier head:
    multi-head self-attention with softmax, LayerNorm, GELU and residuals."""

    embed: eqx.nn.Linear
    ln1: eqx.nn.LayerNorm
    q: eqx.nn.Linear
    k: eqx.nn.Linear
    v: eqx.nn.Linear
    proj: eqx.nn.Linear
    ln2: eqx.nn.LayerNorm
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear
    head: eqx.nn.Linear
    heads: int = eqx.field(static=True)

    def __init__(self, key, features: int = 8, dim: int = 16, heads: int = 2, hidden: int = 32,
                 classes: int = 4):
        keys = jax.random.split(key, 8)
        self.heads = heads
        self.embed = eqx.nn.Linear(features, dim, key=keys[7])
        self.ln1 = eqx.nn.LayerNorm(dim)
        self.q, self.k, self.v, self.proj = (eqx.nn.Linear(dim, dim, key=k) for k in keys[:4])
        self.ln2 = eqx.nn.LayerNorm(dim)
        self.fc1 = eqx.nn.Linear(dim, hidden, key=keys[4])
        self.fc2 = eqx.nn.Linear(hidden, dim, key=keys[5])
        self.head = eqx.nn.Linear(dim, classes, key=keys[6])

    def __call__(self, x):  # (batch, tokens, features)
        tokens = jax.vmap(jax.vmap(lambda layer, h: layer(h), in_axes=(None, 0)), in_axes=(None, 0))
        x = tokens(self.embed, x)
        b, t, d = x.shape
        split = (b, t, self.heads, d // self.heads)
        h = tokens(self.ln1, x)
        q, k, v = (tokens(layer, h).reshape(split) for layer in (self.q, self.k, self.v))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // self.heads)
        attn = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v).reshape(b, t, d)
        x = x + tokens(self.proj, attn)
        x = x + tokens(self.fc2, jax.nn.gelu(tokens(self.fc1, tokens(self.ln2, x))))
        return jax.vmap(self.head)(x.mean(axis=1))


# -- torch twins ----------------------------------------------------------------------------------
def torch_cnn(seed: int = 0):
    import torch
    from torch import nn as tnn

    torch.manual_seed(seed)
    return tnn.Sequential(
        tnn.Conv2d(3, 6, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(6, 8, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Flatten(), tnn.Linear(8 * 3 * 3, 5)).eval()


class NnxTwinCNN(nnx.Module):
    """The flax twin of :func:`torch_cnn` (NHWC)."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(3, 6, (3, 3), padding=1, rngs=rngs)
        self.conv2 = nnx.Conv(6, 8, (3, 3), padding=1, rngs=rngs)
        self.fc = nnx.Linear(8 * 3 * 3, 5, rngs=rngs)

    def __call__(self, x):
        h = nnx.max_pool(jax.nn.relu(self.conv1(x)), (2, 2), (2, 2))
        h = nnx.max_pool(jax.nn.relu(self.conv2(h)), (2, 2), (2, 2))
        return self.fc(h.reshape(h.shape[0], -1))


def nnx_twin_cnn(torch_model) -> NnxTwinCNN:
    """Copy the torch CNN's weights: OIHW → HWIO, and the classifier's rows from NCHW to NHWC
    flattening order."""
    sd = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    w = sd["7.weight"].reshape(5, 8, 3, 3).transpose(2, 3, 1, 0).reshape(-1, 5)
    weights = {"conv1": {"kernel": sd["0.weight"].transpose(2, 3, 1, 0), "bias": sd["0.bias"]},
               "conv2": {"kernel": sd["3.weight"].transpose(2, 3, 1, 0), "bias": sd["3.bias"]},
               "fc": {"kernel": w, "bias": sd["7.bias"]}}
    graphdef, state = nnx.split(nnx.eval_shape(lambda: NnxTwinCNN(nnx.Rngs(0))))
    state = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.asarray(weights[path[0].key][path[1].key]), state,
        is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
    return nnx.merge(graphdef, state)


def torch_mlp(seed: int = 0):
    import torch
    from torch import nn as tnn

    torch.manual_seed(seed)
    return tnn.Sequential(tnn.Linear(6, 16), tnn.ReLU(), tnn.Linear(16, 16), tnn.ReLU(),
                          tnn.Linear(16, 4)).eval()


def linen_twin_mlp(torch_model):
    """``partial(LinenMLP().apply, variables)`` holding the torch MLP's weights."""
    sd = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    params = {f"Dense_{i}": {"kernel": jnp.asarray(sd[f"{k}.weight"].T), "bias": jnp.asarray(sd[f"{k}.bias"])}
              for i, k in enumerate(("0", "2", "4"))}
    return functools.partial(LinenMLP().apply, {"params": params})
