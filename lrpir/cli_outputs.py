"""What ``lrpir explain`` writes besides R.npz: the heatmap PNG and the token HTML."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import numpy as np

from lrpir.cli_inputs import Inputs
from lrpir.errors import InputError

# integer inputs whose values are not token ids but one per token (segment, position): shown on
# the tokens of their token-id input, never decoded themselves
_NOT_TOKEN_IDS = re.compile(r"(.*?)(token_type_ids|type_ids|position_ids|positions)")
_MASK = re.compile(r".*mask")


def _companion(k: int, specs: list, arrays: list[np.ndarray]) -> int | None:
    """For a per-token input such as token_type_ids, the token-id input of the same shape
    (input_ids; decoder_input_ids for decoder_position_ids) whose tokens label it."""
    m = _NOT_TOKEN_IDS.fullmatch(specs[k].name)
    if m is None:
        return None
    ids = [j for j, s in enumerate(specs) if np.dtype(s.dtype).kind in "iu"
           and not _MASK.fullmatch(s.name) and not _NOT_TOKEN_IDS.fullmatch(s.name)
           and np.shape(arrays[j]) == np.shape(arrays[k])]
    same = [j for j in ids if specs[j].name == m.group(1) + "input_ids"]
    return same[0] if same else (ids[0] if len(ids) == 1 else None)


def _display_mask(name: str, specs: list, arrays: list[np.ndarray]) -> np.ndarray | None:
    """The attention mask that goes with token input ``name`` (decoder_input_ids ↔
    decoder_attention_mask), or the model's only mask of the same shape."""
    shape = np.shape(arrays[[s.name for s in specs].index(name)])
    found = {s.name: a for s, a in zip(specs, arrays) if _MASK.fullmatch(s.name)
             and np.shape(a) == shape}
    if name.endswith("input_ids") and name[:-len("input_ids")] + "attention_mask" in found:
        return found[name[:-len("input_ids")] + "attention_mask"]
    return next(iter(found.values())) if len(found) == 1 else None


def write_tokens(args: argparse.Namespace, exp: Any, specs: list, arrays: list[np.ndarray],
                  tokenizer: Any, targets: list[int]) -> None:
    """--tokens: one HTML section and one printed ranking per integer input with relevance."""
    from lrpir.text import html_page, token_ranking, token_strings, tokens_html

    ints = [k for k, s in enumerate(specs) if np.dtype(s.dtype).kind in "iu"
            and not _MASK.fullmatch(s.name)]
    shown = [k for k in ints if np.any(exp.relevance[k] != 0)]
    if not shown:
        print("note: no integer input received relevance; --tokens shows them all at zero")
        shown = ints
    percentile = None if args.percentile >= 100 else args.percentile
    sections = []
    for k in shown:
        name, ids, rel = specs[k].name, np.asarray(arrays[k]), np.asarray(exp.relevance[k])
        if ids.ndim == 1:
            ids, rel = ids[None], rel.reshape(1, -1)
        if ids.ndim != 2:
            print(f"note: --tokens skips input '{name}' of shape {ids.shape} (not [batch, tokens])")
            continue
        title, decode, shown_ids = f"input '{name}'", tokenizer, ids
        if _NOT_TOKEN_IDS.fullmatch(name):
            j = _companion(k, specs, arrays)
            if j is None:  # no token input to label it: show its own values
                decode = None
            else:
                shown_ids = np.asarray(arrays[j]).reshape(ids.shape)
                title += f" (on the tokens of '{specs[j].name}')"
        try:
            tokens = [token_strings(row, decode) for row in shown_ids]
        except (TypeError, ValueError) as exc:
            raise InputError(f"--tokens: input '{name}': {exc}") from exc
        mask = _display_mask(name, specs, arrays)
        mask = None if mask is None else np.asarray(mask).reshape(ids.shape)
        labels = ([f"#{j}: target {t}" for j, t in enumerate(targets)]
                  if len(targets) == len(tokens) else None)
        sections.append(tokens_html(tokens, rel, mask=mask, labels=labels, percentile=percentile,
                                    title=title))
        print(f"most relevant tokens of {title}:")
        print(token_ranking(tokens, rel, mask=mask, labels=labels))
    out = Path(args.tokens)
    out.parent.mkdir(parents=True, exist_ok=True)
    title = f"{Path(args.model).name}, {args.rules}: token relevance"
    out.write_text(html_page(*sections, title=title), encoding="utf-8")
    print(f"token relevance written to {out}")


def write_heatmap(args: argparse.Namespace, exp: Any, inputs: Inputs, k: int,
                   targets: list[int]) -> None:
    from lrpir.heatmap import save_heatmap

    relevance, shown = exp.relevance[k], inputs.display[k]
    image = shown if shown.ndim == 4 and relevance.ndim == 4 else None
    titles = None
    if relevance.ndim == 4 and len(targets) == relevance.shape[0]:
        titles = [f"#{j}: target {t}" for j, t in enumerate(targets)]
    try:
        save_heatmap(args.heatmap, relevance, image=image,
                     percentile=None if args.percentile >= 100 else args.percentile,
                     title=f"{Path(args.model).name}, {args.rules}", titles=titles)
    except ImportError as exc:  # pillow is optional
        raise InputError(str(exc)) from None
    print(f"heatmap written to {args.heatmap}")
    if args.rules in ("epsilon", "gradient-x-input") and inputs.images[k]:
        # plain ε and the gradient are noisy on deep image models; say what usually works better
        print("tip: on deep image models '--rules epsilon-gamma-box' usually gives a clearer map "
              "(its z-box bounds come from the pixel range of image inputs)")
