"""Normalising where a node came from into one dotted module path (``layer1.0.conv1``)."""

from __future__ import annotations

import ast
import re

_PARAM_SUFFIX = re.compile(r"\.(weight|bias|running_mean|running_var|num_batches_tracked|scale)$")


def join_scopes(scopes: list[str]) -> str:
    """Join scope segments that are either full dotted paths or names relative to the previous one."""
    path = ""
    for seg in scopes:
        seg = seg.strip()
        if not seg:
            continue
        if not path or seg == path or seg.startswith(path + "."):
            path = seg
        else:
            path = f"{path}.{seg}"
    return path


def from_torch_onnx_name(name: str) -> str:
    """``/layer1/layer1.0/conv1/Conv`` (torch's legacy exporter) → ``layer1.0.conv1``."""
    if not name.startswith("/"):
        return ""
    parts = name.strip("/").split("/")[:-1]
    return join_scopes(parts)


def from_torch_namespace(namespace: str) -> str:
    """The dynamo exporter's ``namespace`` metadata: ``: M/layer1: Seq/layer1.0: Blk/relu: aten.relu``.

    Entries are ``name: class``; the last one is the ATen op, the one before it the module.
    """
    entries = [e.split(":")[0].strip() for e in namespace.split("/")]
    modules = [e for e in entries[:-1] if e]
    return modules[-1] if modules else ""


def from_name_scopes(text: str) -> str:
    """The dynamo exporter's ``pkg.torch.onnx.name_scopes``: ``['', 'layer1', 'layer1.0', 'relu']``."""
    try:
        scopes = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return ""
    return join_scopes([s for s in scopes[:-1] if isinstance(s, str)])


def from_parameter_name(name: str) -> str:
    """``features.0.weight`` → ``features.0``; names that are not module paths give ``''``."""
    if "::" in name or name.startswith(("/", "onnx", "val_")) or " " in name:
        return ""
    stripped = _PARAM_SUFFIX.sub("", name)
    return stripped if stripped != name else ""
