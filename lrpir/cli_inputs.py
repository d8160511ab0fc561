"""Reading the command line's inputs: arrays from .npy/.npz, images with optional normalisation,
and token ids from --text with a Hugging Face tokenizer.

A NAME given several times stacks its files into one batch.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lrpir.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def parse_floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",")]
    except ValueError:
        raise InputError(f"{flag} takes a number or comma-separated numbers, got {text!r}") from None
    if not all(np.isfinite(values)):
        raise InputError(f"{flag} must be finite, got {text!r}")
    return values


def read_array(path: Path, name: str) -> np.ndarray:
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


def read_image(path: Path, shape: tuple | None) -> np.ndarray:
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


@dataclass
class Normalise:
    """--mean/--std: per-channel statistics applied to image inputs after scaling to [0, 1]."""

    mean: list[float]
    std: list[float]

    @staticmethod
    def parse(mean: str | None, std: str | None) -> Normalise:
        m = parse_floats(mean, "--mean") if mean is not None else [0.0]
        s = parse_floats(std, "--std") if std is not None else [1.0]
        if any(v <= 0 for v in s):
            raise InputError(f"--std must be positive, got {std!r}")
        return Normalise(m, s)

    def per_channel(self, channels: int, what: str) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std as (1, C, 1, 1) arrays; a single value serves every channel."""
        out = []
        for flag, values in (("--mean", self.mean), ("--std", self.std)):
            if len(values) not in (1, channels):
                raise InputError(f"{flag} has {len(values)} values but {what} has {channels} "
                                 f"channel(s): give one number or {channels}")
            a = np.asarray(values * channels if len(values) == 1 else values, dtype=np.float32)
            out.append(a.reshape(1, channels, 1, 1))
        return out[0], out[1]


@dataclass
class Inputs:
    """The arrays fed to the model, what to show of each in a heatmap, and which are images."""

    arrays: list[np.ndarray]
    display: list[np.ndarray]   # images before --mean/--std (pixels in [0, 1]); arrays as given
    images: list[bool]          # True where every file of the input is an image


def read_inputs(specs: list, given: list[str], norm: Normalise | None = None,
                filled: dict[str, np.ndarray] | None = None) -> Inputs:
    """Match ``[NAME=]FILE`` arguments to the model's inputs and read them.

    A NAME given several times stacks its files along the batch axis; so do several unnamed files
    for a model with one input. ``filled`` holds inputs already made (by --text): no file goes to
    them.
    """
    norm = norm or Normalise([0.0], [1.0])
    filled = filled or {}
    names = [s.name for s in specs]
    named: dict[str, list[Path]] = {}
    positional: list[Path] = []
    for arg in given:
        key, sep, rest = arg.partition("=")
        if sep and key in filled:
            raise InputError(f"input '{key}' is given twice: by --text (through the tokenizer) "
                             f"and by --input {arg}")
        if sep and key in names:
            named.setdefault(key, []).append(Path(rest))
        elif sep and not Path(arg).exists() and key and "/" not in key and "\\" not in key:
            raise InputError(f"the model has no input named {key!r}; "
                             f"its inputs: {', '.join(names)}")
        else:
            positional.append(Path(arg))
    free = [s for s in specs if s.name not in named and s.name not in filled]
    if len(specs) == 1 and free and len(positional) > 1:
        named[specs[0].name], positional, free = positional, [], []  # one input: files are a batch
    if len(positional) > len(free):
        by_text = f"; --text fills {', '.join(filled)}" if filled else ""
        raise InputError(f"{len(given)} input file(s) given but the model takes {len(specs)} "
                         f"input(s): {', '.join(names)}{by_text} (to batch several files for one "
                         f"input, repeat --input NAME=FILE with the same NAME)")
    for spec, path in zip(free, positional):
        named[spec.name] = [path]
    missing = [n for n in names if n not in named and n not in filled]
    if missing:
        raise InputError(f"no file given for input(s) {', '.join(missing)}; the model takes "
                         f"{', '.join(names)} (use --input NAME=FILE)")
    out = Inputs([], [], [])
    for spec in specs:
        if spec.name in filled:
            out.arrays.append(filled[spec.name])
            out.display.append(filled[spec.name])
            out.images.append(False)
            continue
        parts, shown = [], []
        for path in named[spec.name]:
            if path.suffix.lower() in IMAGE_SUFFIXES:
                raw = read_image(path, spec.shape)
                mean, std = norm.per_channel(raw.shape[1], f"image '{path}'")
                parts.append(((raw - mean) / std).astype(np.float32))
                shown.append(raw)
            else:
                a = read_array(path, spec.name)
                parts.append(a)
                shown.append(a)
        out.arrays.append(_stack(spec.name, named[spec.name], parts))
        out.display.append(_stack(spec.name, named[spec.name], shown))
        out.images.append(all(p.suffix.lower() in IMAGE_SUFFIXES for p in named[spec.name]))
    for k, spec in enumerate(specs):
        want, a = np.dtype(spec.dtype), out.arrays[k]
        if want.kind == "f" and a.dtype.kind == "f" and a.dtype != want:
            out.arrays[k] = a.astype(want)  # float64 .npy for a float32 model: follow the model
    return out


def _stack(name: str, paths: list[Path], parts: list[np.ndarray]) -> np.ndarray:
    """One input's files as one batch: concatenated along axis 0."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    for path, a in zip(paths, parts):
        if a.ndim == 0 or a.shape[1:] != first.shape[1:] or a.dtype.kind != first.dtype.kind:
            raise InputError(f"the files for input '{name}' cannot form one batch: '{paths[0]}' "
                             f"gives {first.shape} {first.dtype}, '{path}' gives {a.shape} {a.dtype}")
    return np.concatenate(parts, axis=0)


# -- --text and --tokenizer -------------------------------------------------------------------
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def load_tokenizer(name: str) -> Any:
    """A Hugging Face tokenizer from a local folder (or the local cache), never the network."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise InputError(f"--tokenizer {name}: loading a tokenizer needs transformers: "
                         f"pip install transformers") from None
    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"--tokenizer {name}: no Hugging Face tokenizer could be loaded from it "
                         f"(give a folder holding tokenizer.json or vocab files, or the name of a "
                         f"tokenizer in the local cache): {first}") from None


def tokenize_texts(tokenizer: Any, texts: list[str], specs: list) -> tuple[dict[str, np.ndarray],
                                                                             list[str]]:
    """The model inputs --text fills (input_ids, and attention_mask, token_type_ids where the
    model takes them), one batch item per text, plus notes for the user (truncated texts)."""
    by_name = {s.name: s for s in specs}
    if "input_ids" not in by_name:
        raise InputError(f"--text: the model has no input named 'input_ids' for the token ids; "
                         f"its inputs: {', '.join(by_name)} (give ids with --input NAME=ids.npy)")
    shape = by_name["input_ids"].shape
    if shape is not None and len(shape) != 2:
        raise InputError(f"--text makes a [batch, tokens] array, but input 'input_ids' has shape "
                         f"{tuple(shape)}")
    length = shape[1] if shape is not None and isinstance(shape[1], int) and shape[1] > 0 else None
    kw: dict[str, Any] = ({"padding": "max_length", "max_length": length, "truncation": True}
                          if length else {"padding": True})
    try:
        enc = tokenizer(list(texts), return_tensors="np", return_attention_mask=True,
                        return_token_type_ids="token_type_ids" in by_name, **kw)
        notes = []
        if length:
            for j, text in enumerate(texts):
                n = len(tokenizer(text)["input_ids"])
                if n > length:
                    notes.append(f"note: --text #{j} has {n} tokens; cut to the model's {length}")
    except Exception as exc:  # a tokenizer's own errors have no common base class
        raise InputError(f"--tokenizer could not tokenize --text: {exc}") from exc
    out = {}
    for name in TEXT_INPUTS:
        if name in by_name and name in enc:
            out[name] = np.ascontiguousarray(np.asarray(enc[name]).astype(by_name[name].dtype))
    return out, notes


def load_python_model(text: str) -> Any:
    """``path/to/file.py:NAME`` or ``package.module:NAME``: the object NAME, called first if it is
    a function or a class (a factory that builds the model). ``None`` if ``text`` names a file."""
    import importlib
    import importlib.util
    import inspect
    import sys

    where, sep, name = text.rpartition(":")
    if not sep or not where or not name.isidentifier() or Path(text).exists():
        return None
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise InputError(f"model '{text}': the file '{where}' does not exist")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.resolve().parent))  # the file may import its neighbours
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.pop(0)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise InputError(f"model '{text}': cannot import '{where}': {exc}") from None
    if not hasattr(module, name):
        raise InputError(f"model '{text}': '{where}' has no attribute {name!r}")
    obj = getattr(module, name)
    if inspect.isclass(obj) or inspect.isfunction(obj):
        obj = obj()
    return obj


def traced_arrays(shapes: dict[str, tuple[int, ...]], dtypes: dict[str, str],
                  names: list[str], seed: int = 0) -> list[np.ndarray]:
    """Inputs for a traced model (a torch module, a JAX callable): standard-normal floats (drawn
    from ``seed``), ones for integers, True for booleans, in ``names`` order."""
    rng = np.random.default_rng(seed)
    unknown = sorted(set(dtypes) - set(names))
    if unknown:
        raise InputError(f"--input-dtype names {unknown}, which are not inputs of the model; "
                         f"its inputs: {', '.join(names)}")
    arrays = []
    for name in names:
        try:
            dtype = np.dtype(dtypes.get(name, "float32"))
        except TypeError:
            raise InputError(f"--input-dtype {name}={dtypes[name]}: not a dtype (float32, "
                             "int64, bool, ...)") from None
        shape = shapes[name]
        if dtype.kind == "f":
            arrays.append(rng.standard_normal(shape).astype(dtype))
        elif dtype.kind == "b":
            arrays.append(np.ones(shape, dtype=bool))
        else:
            arrays.append(np.ones(shape, dtype=dtype))
    return arrays
