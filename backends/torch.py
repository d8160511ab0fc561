"""Torch backend: forward of every IR op (``torch_ops``), VJPs through torch's autodiff, plan execution.

Float32 and float64, CPU and CUDA: static values are moved once to the compute dtype and device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from lrpir.backends.onnx_attrs import CONTROL_INPUTS
from lrpir.backends.torch_ops import TORCH_OPS, max_pool_values, run_op

from lrpir.errors import InputError
from lrpir.execute import RawResult, run_plan
from lrpir.ir import Node
from lrpir.schedule import Plan

_FLOAT_CASTS = {1, 10, 11, 16}  # onnx FLOAT, FLOAT16, DOUBLE, BFLOAT16



class TorchArrayOps:
    """The array functions rules use, on torch tensors (python scalars take the compute dtype)."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype

    def where(self, cond, a, b):
        if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
            a = torch.tensor(a, dtype=self.dtype, device=cond.device)
        return torch.where(cond, a, b)

    def zeros_like(self, x):
        return torch.zeros_like(x)

    def sum(self, x, axes, keepdims=False):
        return torch.sum(x, dim=tuple(axes), keepdim=keepdims)

    def reshape(self, x, shape):
        return torch.reshape(x, tuple(shape))

    def shape(self, x):
        return tuple(x.shape)

    def clamp(self, x, low=None, high=None):
        return torch.clamp(x, min=low, max=high)

    def ones(self, shape, like):
        return torch.ones(tuple(shape), dtype=like.dtype, device=like.device)

    def asarray(self, value, like):
        return torch.as_tensor(np.asarray(value), dtype=like.dtype, device=like.device)


class TorchContext:
    """The RuleContext of the torch backend."""

    def __init__(self, dtype: torch.dtype, device: torch.device,
                 host: dict[str, torch.Tensor] | None = None) -> None:
        self.dtype, self.device = dtype, device
        self.xp = TorchArrayOps(dtype)
        self.host = host or {}

    def forward(self, node: Node, inputs: list) -> list:
        attrs = node.attrs
        control = CONTROL_INPUTS.get(node.op_type) if not node.domain else None
        if control and self.host:
            inputs = [self.host.get(v.name, x) if i in control and v is not None and v.is_static
                      else x for i, (v, x) in enumerate(zip(node.inputs, inputs))]
        if node.op_type == "Cast" and not node.domain and attrs.get("to") in _FLOAT_CASTS \
                and inputs[0] is not None and inputs[0].is_floating_point():
            return [inputs[0].to(self.dtype)]  # float-to-float casts follow the compute dtype
        if node.op_type == "MaxPool" and not node.domain and len(node.outputs) == 1:
            return list(max_pool_values(inputs[0], attrs))  # skip the Indices bookkeeping
        outs = run_op(node.domain, node.op_type, inputs, attrs)
        return list(outs[: len(node.outputs)])

    def vjp(self, node: Node, inputs: list, wrt: list[int], cotangents: list) -> list:
        if len(cotangents) == 1 and cotangents[0] is not None:
            direct = _direct_vjp(node, inputs, wrt, cotangents[0])
            if direct is not None:
                return direct
        return self.autograd_vjp(node, inputs, wrt, cotangents)

    def autograd_vjp(self, node: Node, inputs: list, wrt: list[int], cotangents: list) -> list:
        """The VJP by re-running the op under autograd: right for every op, slower."""
        with torch.enable_grad():
            xs = list(inputs)
            for i in wrt:
                xs[i] = inputs[i].detach().requires_grad_(True)
            outs = self.forward(node, xs)
            pairs = [(o, c) for o, c in zip(outs, cotangents)
                     if c is not None and o.requires_grad]
            if not pairs:
                return [torch.zeros_like(inputs[i]) for i in wrt]
            grads = torch.autograd.grad([o for o, _ in pairs], [xs[i] for i in wrt],
                                        [c.to(o.dtype) for o, c in pairs], allow_unused=True)
        return [g if g is not None else torch.zeros_like(inputs[i]) for g, i in zip(grads, wrt)]

    def item_sums(self, x, batch: int):
        return x.reshape(batch, -1).sum(dim=1)

    def stack(self, arrays: list):
        return torch.stack(arrays)

    def item_zeros(self, batch: int):
        return torch.zeros(batch, dtype=self.dtype, device=self.device)


def _unbroadcast(g: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    lead = g.dim() - len(shape)
    dims = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape)
                                      if d == 1 and g.shape[lead + i] != 1)
    return (g.sum(dim=dims, keepdim=True) if dims else g).reshape(shape)


_RESHAPES = {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}


def _direct_vjp(node: Node, inputs: list, wrt: list[int], cot: torch.Tensor) -> list | None:
    """VJPs of the commonest ops written out, so the relevance pass needn't re-run their forward.

    ``None`` means "not covered": the caller falls back to autograd.
    """
    op = "" if node.domain not in ("", "lrpir") else node.op_type
    if wrt == [0] and op in ("Conv", "Gemm", "MatMul", "MatMulAdd"):
        g = _linear_input_vjp(node, inputs, cot)
        return None if g is None else [g]
    if op in ("Add", "Sum") or (op == "Sub" and len(inputs) == 2):
        return [_unbroadcast(-cot if op == "Sub" and i == 1 else cot, inputs[i].shape)
                for i in wrt]
    if op == "MatMul" and inputs[0].dim() >= 2 and inputs[1].dim() >= 2:  # two activations
        a, b = inputs
        return [_unbroadcast(cot @ b.transpose(-1, -2) if i == 0 else a.transpose(-1, -2) @ cot,
                             inputs[i].shape) for i in wrt]
    if op == "Mul" and len(inputs) == 2:
        return [_unbroadcast(cot * inputs[1 - i], inputs[i].shape) for i in wrt]
    if op == "Div" and wrt == [0]:
        return [_unbroadcast(cot / inputs[1], inputs[0].shape)]
    if wrt == [0] and op in _RESHAPES:
        return [cot.reshape(inputs[0].shape)]
    if wrt == [0] and op == "Pad" and node.attrs.get("mode", "constant") == "constant":
        pads, axes = node.inputs[1], node.inputs[3] if len(node.inputs) > 3 else None
        if pads is not None and pads.is_static and axes is None and (pads.data >= 0).all():
            n = len(pads.data) // 2
            return [cot[tuple(slice(int(b), cot.shape[d] - int(e)) for d, (b, e)
                              in enumerate(zip(pads.data[:n], pads.data[n:])))]]
        return None
    if wrt == [0] and op == "Transpose":
        perm = node.attrs.get("perm", list(reversed(range(cot.dim()))))
        return [cot.permute(*sorted(range(len(perm)), key=perm.__getitem__))]
    return None


def _linear_input_vjp(node: Node, inputs: list, cot: torch.Tensor) -> torch.Tensor | None:
    """The input VJP of Conv / Gemm / MatMul with a static weight, without re-running the forward."""
    if node.inputs[1] is None or not node.inputs[1].is_static:
        return None
    x, w = inputs[0], inputs[1]
    if node.op_type == "Conv":
        a = node.attrs
        nd = x.dim() - 2
        pads = a.get("pads", [0] * 2 * nd)
        if a.get("auto_pad", "NOTSET") != "NOTSET" or pads[:nd] != pads[nd:] or nd not in (1, 2, 3):
            return None
        grad = {1: torch.nn.grad.conv1d_input, 2: torch.nn.grad.conv2d_input,
                3: torch.nn.grad.conv3d_input}[nd]
        return grad(x.shape, w, cot, a.get("strides", [1] * nd), pads[:nd],
                    a.get("dilations", [1] * nd), a.get("group", 1))
    if node.op_type == "Gemm" and not node.attrs.get("transA", 0):
        wt = w if node.attrs.get("transB", 0) else w.t()
        return node.attrs.get("alpha", 1.0) * (cot @ wt)
    if node.op_type in ("MatMul", "MatMulAdd") and w.dim() == 2 and x.dim() >= 2:
        return cot @ w.t()
    return None


def _tensor(x: Any, dtype: torch.dtype | None, device: torch.device) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.tensor(np.asarray(x))
    if dtype is not None and t.is_floating_point():
        t = t.to(dtype)
    return t.to(device)


def _ordinary(t: torch.Tensor) -> torch.Tensor:
    """An inference-mode tensor cannot take part in a VJP: use an ordinary copy of it."""
    return t.clone() if t.is_inference() else t


class TorchExecutable:
    """A plan bound to a dtype and device, with its static values already on the device."""

    def __init__(self, plan: Plan, dtype: torch.dtype, device: torch.device) -> None:
        self.plan, self.dtype, self.device = plan, dtype, device
        with torch.inference_mode(False):  # VJPs need ordinary tensors, even if the caller is
            self._load_statics(plan, dtype, device)  # inside torch.inference_mode()

    def _load_statics(self, plan: Plan, dtype: torch.dtype, device: torch.device) -> None:
        statics, host = {}, {}
        for node in plan.graph.nodes:
            for v in node.inputs:
                if v is not None and v.is_static and v.name not in statics:
                    statics[v.name] = _tensor(v.data, dtype, device)
                    if v.data.size <= 4096:
                        host[v.name] = _tensor(v.data, dtype, torch.device("cpu"))
        self.statics = statics
        self.ctx = TorchContext(dtype, device, host if device.type != "cpu" else None)

    def run(self, inputs: dict[str, Any], seed) -> RawResult:
        with torch.inference_mode(False), torch.no_grad():
            feeds = {k: _ordinary(_tensor(v, self.dtype, self.device)) for k, v in inputs.items()}
            return run_plan(self.plan, self.ctx, self.statics, feeds, seed)


class TorchBackend:
    name = "torch"
    float64 = True
    takes_recorded_values = True  # a plan may be fed eager values from a recorded forward pass

    def supports(self, node: Node) -> bool:
        return (node.domain, node.op_type) in TORCH_OPS

    def default_device(self, inputs: list[Any]) -> torch.device:
        for x in inputs:
            if isinstance(x, torch.Tensor):
                return x.device
        return torch.device("cpu")

    def compile(self, plan: Plan, dtype: np.dtype, device: Any = None, jit: bool = False) -> TorchExecutable:
        if jit:
            raise InputError("jit=True: the torch backend runs plans eagerly and has no compiled "
                             "mode yet; pass jit=False")
        tdtype = {np.dtype("float64"): torch.float64, np.dtype("float32"): torch.float32,
                  np.dtype("float16"): torch.float16}.get(np.dtype(dtype), torch.float32)
        return TorchExecutable(plan, tdtype, torch.device(device or "cpu"))

    def to_numpy(self, x: Any) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            return x.detach().cpu().numpy()
        return np.asarray(x)

    def from_numpy(self, x: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(x, dtype=like.dtype, device=like.device)


BACKEND = TorchBackend()
