"""The torch backend's hand-written VJPs equal autograd's, op by op."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lrpir.backends.torch import TorchContext, _direct_vjp  # noqa: E402

from lrpir.ir import LRPIR_DOMAIN, Node, Role, Value  # noqa: E402

rng = np.random.default_rng(0)


def case(op, shapes, attrs=None, static=(), domain="", ints=None):
    """A node with float inputs of ``shapes``; positions in ``static`` are parameters."""
    ins, arrays = [], []
    for i, shape in enumerate(shapes):
        data = np.asarray(ints[i]) if ints and i in ints else rng.normal(size=shape)
        v = Value(f"in{i}", data.shape, data.dtype,
                  Role.PARAMETER if i in static or (ints and i in ints) else Role.ACTIVATION,
                  data if i in static or (ints and i in ints) else None)
        ins.append(v)
        arrays.append(torch.tensor(data))
    return Node(op, ins, [Value("out")], attrs or {}, op, domain), arrays


CASES = [
    ("Add", [(2, 3, 4), (3, 1)], {}, (), "", None),
    ("Sub", [(2, 3), (2, 3)], {}, (), "", None),
    ("Sum", [(2, 3), (3,), (1, 3)], {}, (), "", None),
    ("Reshape", [(2, 3, 4), None], {}, (), "", {1: np.array([2, 12])}),
    ("Flatten", [(2, 3, 4)], {"axis": 1}, (), "", None),
    ("Squeeze", [(2, 1, 4), None], {}, (), "", {1: np.array([1])}),
    ("Unsqueeze", [(2, 4), None], {}, (), "", {1: np.array([0, 2])}),
    ("Transpose", [(2, 3, 4)], {"perm": [2, 0, 1]}, (), "", None),
    ("Pad", [(2, 3, 4, 5), None], {}, (), "", {1: np.array([0, 0, 1, 0, 0, 0, 2, 3])}),
    ("Transpose", [(2, 3, 4)], {}, (), "", None),
    ("Conv", [(2, 4, 7, 7), (6, 2, 3, 3)], {"pads": [1, 1, 1, 1], "group": 2, "strides": [2, 2]},
     (1,), "", None),
    ("Conv", [(1, 3, 9), (4, 3, 3)], {"dilations": [2]}, (1,), "", None),
    ("Gemm", [(3, 5), (4, 5), (4,)], {"transB": 1, "alpha": 0.5}, (1, 2), "", None),
    ("MatMul", [(2, 3, 5), (5, 4)], {}, (1,), "", None),
    ("MatMulAdd", [(2, 3, 5), (5, 4), (4,)], {}, (1, 2), LRPIR_DOMAIN, None),
    ("MatMul", [(2, 4, 3, 5), (4, 5, 6)], {}, (), "", None),      # two activations, broadcast
    ("MatMul", [(2, 1, 3, 5), (2, 4, 5, 6)], {}, (), "", None),
    ("Mul", [(2, 3, 4), (3, 1)], {}, (), "", None),
    ("Mul", [(2, 3, 4), (4,)], {}, (1,), "", None),
    ("Div", [(2, 3, 4), ()], {}, (1,), "", None),
    ("Div", [(2, 3, 4), (3, 1)], {}, (1,), "", None),
]


@pytest.mark.parametrize("op,shapes,attrs,static,domain,ints", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_direct_vjp_equals_autograd(op, shapes, attrs, static, domain, ints):
    node, xs = case(op, shapes, attrs, static, domain, ints)
    ctx = TorchContext(torch.float64, torch.device("cpu"))
    out = ctx.forward(node, xs)[0]
    cot = torch.tensor(rng.normal(size=tuple(out.shape)))
    wrt = [i for i, v in enumerate(node.inputs) if v.role is Role.ACTIVATION]
    assert _direct_vjp(node, xs, wrt, cot) is not None  # the hand-written path is the one tested
    fast = ctx.vjp(node, xs, wrt, [cot])
    slow = ctx.autograd_vjp(node, xs, wrt, [cot])
    assert len(fast) == len(slow) == len(wrt)
    for f, s in zip(fast, slow):
        assert f.shape == s.shape
        np.testing.assert_allclose(f.numpy(), s.numpy(), rtol=1e-12, atol=1e-12)
