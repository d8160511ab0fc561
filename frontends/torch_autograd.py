"""The autograd route: a torch module explained through the graph its eager forward pass runs.

Every call runs the module once, eagerly, on that call's inputs and records it
(``torch_record.py``), so Python control flow takes the branch these inputs take and the
explanation covers exactly that path. The recording is lowered with the same ATen tables as the
``torch.export`` route. A recording with a key seen before (the same ops, arguments, shapes and
dtypes) reuses the graph and plan built for it; only the values the relevance pass reads are taken
from the new recording, by name.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from lrpir.frontends.torch_lower import Lowering, module_path
from lrpir.frontends.torch_record import Recording, record

from lrpir.errors import InputError, UnsupportedOpError
from lrpir.ir import Graph, Value


class RecordedLowering(Lowering):
    """:class:`Lowering` over a recording: concrete shapes, statics taken from the eager pass."""

    def __init__(self, rec: Recording, names: list[str], where: str) -> None:
        self.rec = rec
        self.ep = None  # concrete shapes: no symbols to bind
        self._start(rec.graph, names, where)

    def _placeholder(self, node: torch.fx.Node) -> Value:
        if node.name in self.rec.statics:
            value, target, parameter = self.rec.statics[node.name]
            return self._static(target, value, parameter)
        return self.user_input(node, self.names[self.rec.inputs.index(node.name)])

    def _outputs(self, node: torch.fx.Node) -> None:
        # an output that depends on no input, or was overwritten later, is not in the graph
        pairs = [(arg, name) for arg, name in zip(node.args[0], self.rec.output_names)
                 if arg is not None]
        if not pairs:
            raise InputError(f"{self.where}: no output of the model depends on its inputs, so "
                             "there is nothing to explain")
        self.set_outputs([a for a, _ in pairs], [n for _, n in pairs])


class Recorded:
    """One call's recording, as the API sees it: a key, a graph, and the values it can supply."""

    def __init__(self, rec: Recording, names: list[str], where: str) -> None:
        self.rec, self.names, self.where = rec, names, where
        lost = ",".join(sorted(rec.lost))
        self.key = f"{rec.key}:{lost}"
        self.lost: dict[str, str] = {}  # IR value name → why the eager value is gone

    def lower(self) -> tuple[Graph, dict[str, str]]:
        """The IR, and which IR values the recording holds (IR name → FX node name)."""
        lowering = RecordedLowering(self.rec, self.names, self.where)
        graph = lowering.run()
        handles: dict[str, str] = {}
        for fx_node, v in lowering.env.items():
            if not isinstance(v, Value) or v.is_static or v.name not in graph.values:
                continue
            if fx_node.name in self.rec.kept:
                t = self.rec.kept[fx_node.name]
                if tuple(t.shape) == tuple(v.shape or ()) and _same_dtype(t, v):
                    handles.setdefault(v.name, fx_node.name)
            elif fx_node.name in self.rec.lost:
                self.lost.setdefault(v.name, self.rec.lost[fx_node.name])
        self._check_reach(graph)
        return graph, handles

    def values(self, handles: dict[str, str]) -> dict[str, torch.Tensor]:
        """This call's eager values for the IR names a plan reads."""
        return {name: self.rec.kept[h] for name, h in handles.items()}

    def _check_reach(self, graph: Graph) -> None:
        """The grad_fn graph knows what really depends on the inputs. Every float input it
        reaches from the outputs must be an input of the recorded graph's outputs, and no value
        the recording read as a constant may have an input in its history. Either would mean
        part of the forward pass ran outside the ATen dispatcher (numpy inside a custom
        autograd.Function), and relevance would silently miss it."""
        used = {v.name for n in graph.ancestors(graph.outputs) for v in n.inputs
                if v is not None and v in graph.inputs}
        missing = [f"input {self.names[k]!r}" for k in sorted(self.rec.autograd_inputs)
                   if self.names[k] not in used]
        users = {u.name: n for n in self.rec.graph.nodes for u in n.all_input_nodes}
        missing += [f"a value read as a constant by {users[k].target} (node '{users[k].name}'"
                    + (f", module '{module_path(users[k])}')" if module_path(users[k]) else ")")
                    for k in self.rec.hidden if k in users]
        if missing:
            raise UnsupportedOpError(
                f"{self.where}: autograd connects the outputs to the inputs through "
                f"{'; '.join(missing[:3])}, which the recorded graph does not: part of the "
                "forward pass ran outside the ATen dispatcher (numpy, or a C++ extension). Use "
                "capture='export' or explain an ONNX export of the model.")


def _same_dtype(t: torch.Tensor, v: Value) -> bool:
    name = str(t.dtype).removeprefix("torch.")
    return v.dtype is not None and (np.dtype(v.dtype).name == name
                                    or (name == "bfloat16" and v.dtype == np.float32))


class AutogradCapture:
    """The payload of a torch source on the autograd route."""

    route = "autograd"

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.recordings = 0

    def describe(self) -> str:
        return type(self.module).__name__

    def state(self) -> tuple:
        """Each recording reads the weights afresh; plans built from older weights are stale."""
        from lrpir.frontends.torch import weights_state

        return weights_state(self.module)

    def record(self, values: list[Any], names: list[str]) -> Recorded:
        from lrpir.frontends.torch_export import module_device

        device = module_device(self.module)
        inputs = [torch.as_tensor(x).to(device) if not isinstance(x, torch.Tensor) else x
                  for x in values]
        self.recordings += 1
        where = self.describe()
        try:
            rec = record(self.module, inputs, names, where)
        except (UnsupportedOpError, InputError):
            raise
        except Exception as exc:
            from lrpir.frontends.torch import dtype_advice

            advice = dtype_advice(self.module, [str(t.dtype).removeprefix("torch.") for t in inputs])
            raise InputError(f"{where} failed when run eagerly on these inputs: "
                             f"{type(exc).__name__}: {exc}" + (f". {advice}" if advice else "")) \
                from exc
        return Recorded(rec, names, where)
