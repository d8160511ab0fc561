"""Token relevance as text: display strings for token ids, coloured HTML, and a plain-text ranking.

Relevance of a token-id input is one number per token ([B, T], see ``Explanation.relevance``). Such
numbers only mean something next to the tokens they belong to, so this module turns ids back into
readable pieces and colours them with the same diverging map as the image heatmaps (red for,
blue against the explained output, white zero). It needs numpy only; a tokenizer is optional.

Value errors are :class:`lrpir.InputError` (a ``ValueError``) so that the command line reports
them like every other bad input.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lrpir.errors import InputError
from lrpir.heatmap import colour_limit, relevance_to_rgb

# Sub-word markers: WordPiece marks a continuation ("##ing"); SentencePiece ("▁") and byte-level
# BPE ("Ġ" = space, "Ċ" = newline, "ĉ" = tab) mark the start of a word instead.
_WORD_START = ("▁", "Ġ")
_BYTE_LEVEL = str.maketrans({"▁": " ", "Ġ": " ", "Ċ": "\n", "ĉ": "\t"})
_SPECIAL = re.compile(r"\[[A-Za-z_]+\]|<\|?[^<>\s]+\|?>")   # [CLS], <s>, <|endoftext|>
_VISIBLE = str.maketrans({"\n": "↵", "\t": "⇥", "\r": "␍"})
_MAX_SHOWN = 24  # longest token shown in a ranking


# -- ids → display strings ----------------------------------------------------------------
def token_strings(ids: Any, tokenizer: Any = None) -> list[str]:
    """Display strings for a 1-D sequence of token ids, one per id.

    ``tokenizer`` is ``None`` (each id shown as its number), a Hugging Face tokenizer (anything
    with ``convert_ids_to_tokens``), a vocabulary list indexed by id, a dict id → piece, or a
    callable id → piece. Sub-word markers are turned into spacing so that the strings,
    concatenated, read like the text: a piece that starts a word begins with a space (the first
    token aside), a continuation piece (WordPiece ``##ing``, or a SentencePiece/BPE piece without
    ``▁``/``Ġ``) does not, and ``Ċ`` becomes a newline. The pieces are kept one per id so that each
    stays aligned with its relevance.
    """
    a = _ids_array(ids)
    values = [int(i) for i in a]
    if tokenizer is None:
        return [str(v) if k == 0 else f" {v}" for k, v in enumerate(values)]
    pieces, vocab, special = _pieces(values, tokenizer)
    return _clean(pieces, _marks_word_starts(vocab if vocab is not None else pieces), special)


def _ids_array(ids: Any, name: str = "ids") -> np.ndarray:
    a = _numpy(ids)
    if a.size == 0:
        return a.reshape(-1).astype(np.int64)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integer token ids, got dtype {a.dtype}")
    if a.ndim != 1:
        raise InputError(f"{name} must be a 1-D sequence of token ids, got shape {a.shape} "
                         f"(call token_strings once per batch item)")
    return a


def _pieces(ids: list[int], tokenizer: Any) -> tuple[list[str], Any, set[str]]:
    """The raw pieces, the whole vocabulary when known (to tell the marker scheme), special tokens."""
    if isinstance(tokenizer, (str, bytes, os.PathLike)):
        raise TypeError("tokenizer must be a tokenizer object, a vocabulary list, a dict or a "
                        f"callable, got the {type(tokenizer).__name__} {tokenizer!r}; load a "
                        "tokenizer folder with transformers.AutoTokenizer.from_pretrained(path)")
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        raw = list(tokenizer.convert_ids_to_tokens(ids))
        bad = [i for i, p in zip(ids, raw) if not isinstance(p, str)]
        if bad:
            raise InputError(f"ids {bad[:5]} are not in the tokenizer's vocabulary "
                             f"({_size(tokenizer)} tokens)")
        vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else None
        return raw, vocab, set(getattr(tokenizer, "all_special_tokens", ()) or ())
    if isinstance(tokenizer, Mapping):
        missing = [i for i in ids if i not in tokenizer]
        if missing:
            raise InputError(f"ids {missing[:5]} are not keys of the tokenizer dict "
                             f"({len(tokenizer)} entries)")
        return [_piece(tokenizer[i], i) for i in ids], list(tokenizer.values()), set()
    if isinstance(tokenizer, Sequence):
        bad = [i for i in ids if not 0 <= i < len(tokenizer)]
        if bad:
            raise InputError(f"ids {bad[:5]} are out of range for the tokenizer vocabulary of "
                             f"{len(tokenizer)} tokens (valid: 0..{len(tokenizer) - 1})")
        return [_piece(tokenizer[i], i) for i in ids], tokenizer, set()
    if callable(tokenizer):
        return [_piece(tokenizer(i), i) for i in ids], None, set()
    raise TypeError("tokenizer must be None, a tokenizer with convert_ids_to_tokens, a vocabulary "
                    f"list, a dict id → str or a callable id → str; got {type(tokenizer).__name__}")


def _piece(p: Any, i: int) -> str:
    if not isinstance(p, str):
        raise TypeError(f"tokenizer gave {type(p).__name__} {p!r} for id {i}; it must give str")
    return p


def _size(tokenizer: Any) -> str:
    try:
        return str(len(tokenizer))
    except TypeError:
        return "?"


def _marks_word_starts(vocab: Any) -> bool:
    """True for SentencePiece/byte-level BPE vocabularies (word starts marked), False for WordPiece."""
    keys = vocab
    if isinstance(vocab, Mapping):  # piece → id (Hugging Face) or id → piece
        keys = vocab.keys() if isinstance(next(iter(vocab), None), str) else vocab.values()
    continued = started = 0
    for k in keys:
        if isinstance(k, str):
            continued += k.startswith("##") and len(k) > 2
            started += k.startswith(_WORD_START)
    return started > continued


def _clean(pieces: list[str], marks_starts: bool, special: set[str]) -> list[str]:
    out = []
    for k, p in enumerate(pieces):
        if p in special or _SPECIAL.fullmatch(p):
            s = " " + p                            # [CLS], <s>: always a word of their own
        elif marks_starts:
            s = p.translate(_BYTE_LEVEL)           # "▁the"/"Ġthe" → " the", bare pieces continue
        elif p.startswith("##") and len(p) > 2:
            s = p[2:]                              # WordPiece continuation
        else:
            s = " " + p                            # WordPiece word start
        out.append(s[1:] if k == 0 and s.startswith(" ") and s.strip(" ") else s)
    return out


# -- checking tokens, relevance and mask -------------------------------------------------------
def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, possibly on a GPU
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _is_flat(tokens: Sequence) -> bool:
    return len(tokens) == 0 or isinstance(tokens[0], (str, int, np.integer))


def _row(row: Any, j: int | None) -> list[str]:
    where = "tokens" if j is None else f"tokens[{j}]"
    if isinstance(row, str):
        raise TypeError(f"{where} must be a sequence of token strings, not one str "
                        "(use token_strings to turn ids into strings)")
    if not isinstance(row, Sequence) and not isinstance(row, np.ndarray):
        raise TypeError(f"{where} must be a sequence of token strings, got {type(row).__name__}")
    if len(row) and all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in row):
        return token_strings(list(row))  # ids without a tokenizer: shown as numbers
    bad = [t for t in row if not isinstance(t, str)]
    if bad:
        raise TypeError(f"{where} must hold str (or only int ids), got {type(bad[0]).__name__} "
                        f"{bad[0]!r}")
    return list(row)


def _batch(tokens: Any, relevance: Any, mask: Any) -> tuple[list[list[str]], np.ndarray, np.ndarray]:
    """Tokens as B rows of T strings, relevance as [B, T] float64, mask as [B, T] bool."""
    rel = _numpy(relevance).astype(np.float64)
    if rel.ndim not in (1, 2):
        raise InputError(f"relevance must be 1-D [T] (one sequence) or 2-D [B, T] (a batch), got "
                         f"shape {rel.shape}")
    if isinstance(tokens, np.ndarray):
        tokens = tokens.tolist()
    if isinstance(tokens, str):
        _row(tokens, None)  # raises: one str is not a token list
    if not isinstance(tokens, Sequence):
        raise TypeError(f"tokens must be a sequence of token strings (or a list of them for a "
                        f"batch), got {type(tokens).__name__}")
    if rel.ndim == 1:
        rows = [_row(tokens, None)]
        rel = rel[None]
    elif _is_flat(tokens) and rel.shape[0] == 1:
        rows = [_row(tokens, None)]
    else:
        if _is_flat(tokens):
            raise InputError(f"tokens is one sequence but relevance is a batch of shape "
                             f"{rel.shape}; give one token list per item")
        if len(tokens) != rel.shape[0]:
            raise InputError(f"tokens has {len(tokens)} rows but relevance has {rel.shape[0]} "
                             f"items (shape {rel.shape})")
        rows = [_row(t, j) for j, t in enumerate(tokens)]
    for j, row in enumerate(rows):
        if len(row) != rel.shape[1]:
            where = "tokens" if len(rows) == 1 else f"tokens[{j}]"
            raise InputError(f"{where} has {len(row)} tokens but relevance has {rel.shape[1]} per "
                             f"item (shape {tuple(_numpy(relevance).shape)})")
    if mask is None:
        keep = np.ones(rel.shape, dtype=bool)
    else:
        m = _numpy(mask)
        if m.ndim == 1 and rel.shape == (1,) + m.shape:
            m = m[None]  # one sequence
        if m.shape != rel.shape:
            raise InputError(f"mask has shape {tuple(_numpy(mask).shape)} but relevance has shape "
                             f"{tuple(_numpy(relevance).shape)}; they must match")
        keep = m != 0
    return rows, rel, keep


# -- HTML -------------------------------------------------------------------------------------
def _shown(s: str) -> tuple[str, str]:
    """(space before the span, text inside it): word-start spaces go between spans, not in them."""
    if not s:
        return "", "∅"
    if not s.strip(" "):
        return "", "␣" * len(s)
    body = s.lstrip(" ")
    return (" " if body != s else ""), body.translate(_VISIBLE)


def _hex(rgb: np.ndarray) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb))


def _text_colour(rgb: np.ndarray) -> str:
    r, g, b = (float(c) / 255 for c in rgb)
    return "#fff" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "#000"


def _colours(rel: np.ndarray, keep: np.ndarray, percentile: float | None) -> tuple[np.ndarray, float]:
    """RGB per token (padding left white) and the colour limit, from the unmasked tokens only."""
    rgb = np.full(rel.shape + (3,), 255, dtype=np.uint8)
    shown = rel[keep]
    if not shown.size:
        return rgb, 1.0
    rgb[keep] = relevance_to_rgb(shown[None], percentile)[0]
    return rgb, colour_limit(shown, percentile)


_SPAN = "padding:1px 2px;border-radius:3px;white-space:pre;"
_PAD_STYLE = _SPAN + "color:#a0a0a0;background:transparent;border:1px dashed #d0d0d0;"


def tokens_html(tokens: Any, relevance: Any, *, mask: Any = None, title: str | None = None,
                percentile: float | None = None, labels: Sequence[str] | None = None) -> str:
    """An HTML ``<section>`` with each token as a ``<span>`` coloured by its relevance.

    ``tokens`` is one sequence (``relevance`` 1-D [T]) or one per item (``relevance`` [B, T]),
    e.g. from :func:`token_strings`; int ids are shown as numbers. Colours are those of
    :func:`lrpir.relevance_to_rgb`: red positive, blue negative, white zero, symmetric limits per
    item at the ``percentile`` of |relevance| (``None``: the largest). Tokens where ``mask`` is 0
    (padding) are greyed and left out of the colour limits. Each span's tooltip has the exact
    value. Styles are inline, so the snippet shows the same anywhere; :func:`html_page` makes it a
    page. ``labels`` (one per item) head the rows.
    """
    rows, rel, keep = _batch(tokens, relevance, mask)
    if labels is not None and len(labels) != len(rows):
        raise InputError(f"labels has {len(labels)} entries but there are {len(rows)} items")
    parts = ['<section class="lrpir-tokens" style="margin:0 0 1.2em 0;">']
    if title:
        parts.append(f'<h3 style="margin:0.2em 0;font-size:1.05em;">{html.escape(title)}</h3>')
    for j, row in enumerate(rows):
        rgb, limit = _colours(rel[j], keep[j], percentile)
        label = labels[j] if labels is not None else (f"#{j}" if len(rows) > 1 else "")
        # one line per row, nothing between the spans but the word-start spaces: any other
        # whitespace would split a word's pieces
        line = ['<div class="lrpir-row" style="line-height:2.0;margin:0.3em 0;">']
        if label:
            line.append(f'<span class="lrpir-label" style="color:#555;margin-right:0.6em;">'
                        f"{html.escape(label)}</span>")
        for t, s in enumerate(row):
            space, text = _shown(s)
            value = float(rel[j, t])
            if keep[j, t]:
                tip = f"{s.strip() or text} · position {t} · R = {value!r}"
                style = f"{_SPAN}background:{_hex(rgb[t])};color:{_text_colour(rgb[t])};"
                cls = "lrpir-tok"
            else:
                tip = f"{s.strip() or text} · position {t} · padding (mask 0) · R = {value!r}"
                style, cls = _PAD_STYLE, "lrpir-tok lrpir-pad"
            line.append(f'{space}<span class="{cls}" title="{html.escape(tip)}" '
                        f'style="{style}">{html.escape(text)}</span>')
        line.append(f' <span class="lrpir-limit" style="color:#888;font-size:0.8em;'
                    f'margin-left:0.8em;">colours saturate at ±{limit:.4g}</span></div>')
        parts.append("".join(line))
    parts.append("</section>")
    return "\n".join(parts)


def html_page(*sections: str, title: str | None = None) -> str:
    """A whole UTF-8 HTML page around snippets from :func:`tokens_html`, with a colour key."""
    head = html.escape(title or "lrpir token relevance")
    key = ('<p style="color:#555;font-size:0.9em;">'
           '<span style="background:#ff0000;color:#fff;padding:1px 4px;">red</span> relevance '
           'for the explained output, <span style="background:#0000ff;color:#fff;'
           'padding:1px 4px;">blue</span> against it, white none; dashed grey: padding. '
           "Hover a token for its exact value.</p>")
    return ("<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{head}</title>\n</head>\n"
            '<body style="font-family:sans-serif;max-width:60em;margin:1em auto;">\n'
            f"<h2>{head}</h2>\n{key}\n" + "\n".join(sections) + "\n</body>\n</html>\n")


def save_tokens_html(path: str | os.PathLike, tokens: Any, relevance: Any, **kw: Any) -> Path:
    """Write :func:`tokens_html` (same keywords) as a UTF-8 page; returns the path written."""
    out = Path(path)
    page = html_page(tokens_html(tokens, relevance, **kw), title=kw.get("title"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


# -- plain-text ranking -----------------------------------------------------------------------
def _short(s: str) -> str:
    text = _shown(s)[1]
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN - 1] + "…"


def _words(row: list[str]) -> list[str]:
    """Per token, the whole word when it is one of several pieces ("" otherwise), for context."""
    groups: list[list[int]] = []
    for t, s in enumerate(row):
        if groups and s and not s[0].isspace():
            groups[-1].append(t)
        else:
            groups.append([t])
    out = [""] * len(row)
    for g in groups:
        if len(g) > 1:
            word = _short("".join(row[t] for t in g).strip())
            for t in g:
                out[t] = word
    return out


def token_ranking(tokens: Any, relevance: Any, *, top: int = 10, mask: Any = None,
                  labels: Sequence[str] | None = None) -> str:
    """The ``top`` most positive and most negative tokens of each item, as plain text.

    Each line: rank, token (with its whole word in brackets when it is a sub-word piece),
    position, relevance and its share of the item's total |relevance| (padding, where ``mask`` is
    0, left out). Positive tokens come largest first, negative ones
    most negative first; tokens with exactly zero relevance are in neither list.
    """
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise InputError(f"top must be a positive int, got {top!r}")
    rows, rel, keep = _batch(tokens, relevance, mask)
    if labels is not None and len(labels) != len(rows):
        raise InputError(f"labels has {len(labels)} entries but there are {len(rows)} items")
    lines: list[str] = []
    for j, row in enumerate(rows):
        r = np.where(keep[j], rel[j], 0.0)
        total = float(np.abs(r).sum())
        head = labels[j] if labels is not None else (f"item #{j}" if len(rows) > 1 else "")
        lines.append(f"{head + ', ' if head else ''}{int(keep[j].sum())} tokens, "
                     f"sum R = {r.sum():+.4g}, sum |R| = {total:.4g}")
        words = _words(row)
        shown = [_short(s) + (f" ({w})" if w else "") for s, w in zip(row, words)]
        order = np.argsort(-r, kind="stable")
        for sign, picked in (("positive", [t for t in order if r[t] > 0][:top]),
                             ("negative", [t for t in order[::-1] if r[t] < 0][:top])):
            if not picked:
                lines.append(f"  most {sign}: none")
                continue
            width = max(5, *(len(shown[t]) for t in picked))
            lines.append(f"  most {sign}:")
            lines.append(f"    {'rank':>4}  {'token':<{width}}  {'pos':>4}  {'relevance':>11}  "
                         f"{'share':>6}")
            for rank, t in enumerate(picked, 1):
                share = abs(r[t]) / total if total > 0 else 0.0
                lines.append(f"    {rank:>4}  {shown[t]:<{width}}  {t:>4}  {r[t]:>+11.4g}  "
                             f"{share:>6.1%}")
    return "\n".join(lines)


# -- from an Explanation ----------------------------------------------------------------------
@dataclass
class TokenRelevance:
    """Tokens with their relevance, ready to show: ``.html()``, ``.save_html(path)``, ``.ranking()``.

    ``tokens`` holds one list of display strings per item, ``relevance`` is [B, T], ``mask`` is
    [B, T] (True: a real token, False: padding) or None, ``labels`` head the items.
    """

    tokens: list[list[str]]
    relevance: np.ndarray
    mask: np.ndarray | None = None
    labels: list[str] | None = None

    def html(self, *, title: str | None = None, percentile: float | None = None) -> str:
        """The coloured tokens as an HTML snippet (see :func:`tokens_html`)."""
        return tokens_html(self.tokens, self.relevance, mask=self.mask, title=title,
                           percentile=percentile, labels=self.labels)

    def save_html(self, path: str | os.PathLike, *, title: str | None = None,
                  percentile: float | None = None) -> Path:
        """Write the coloured tokens as a UTF-8 HTML page; returns the path."""
        return save_tokens_html(path, self.tokens, self.relevance, mask=self.mask, title=title,
                                percentile=percentile, labels=self.labels)

    def ranking(self, top: int = 10) -> str:
        """The most positive and most negative tokens per item (see :func:`token_ranking`)."""
        return token_ranking(self.tokens, self.relevance, top=top, mask=self.mask,
                             labels=self.labels)

    def __str__(self) -> str:
        return self.ranking()

    def _repr_html_(self) -> str:  # shown inline by Jupyter
        return self.html()


def token_relevance(explanation: Any, input_ids: Any, *, input: int | str = 0, tokenizer: Any = None,
                    mask: Any = None) -> TokenRelevance:
    """The relevance of a token-id input of ``explanation``, paired with its tokens.

    ``input_ids`` are the ids given to the model ([B, T] or one sequence [T]); ``input`` is the
    name of that input (``"input_ids"``) or its position among the model's inputs. ``tokenizer``
    turns ids into text as in :func:`token_strings` (None: the ids are shown). ``mask`` is the
    attention mask: 0 marks padding, which is greyed and left out of the ranking. Items are
    labelled with their target.
    """
    relevances = getattr(explanation, "relevance", None)
    if not isinstance(relevances, (tuple, list)):
        raise TypeError(f"explanation must be an lrpir.Explanation, got {type(explanation).__name__}")
    if isinstance(input, str):
        names = list(getattr(explanation, "input_names", ()))
        if input not in names:
            raise InputError(f"input {input!r} is not an input of the explained model; inputs: {names}")
        input = names.index(input)
    if isinstance(input, bool) or not isinstance(input, (int, np.integer)):
        raise TypeError(f"input must be the name or int position of the token-id input, got {input!r}")
    if not -len(relevances) <= input < len(relevances):
        raise InputError(f"input {input} is out of range: the explanation has relevance for "
                         f"{len(relevances)} input(s)")
    ids = _numpy(input_ids)
    rel = np.asarray(relevances[input], dtype=np.float64)
    if ids.ndim == 1 and rel.shape == (1,) + ids.shape:
        ids = ids[None]
    if ids.shape != rel.shape:
        raise InputError(f"input_ids has shape {ids.shape} but the relevance of input #{input} has "
                         f"shape {rel.shape}; pass input=K, the position of the ids among the "
                         f"model's inputs")
    ids2 = ids.reshape(1, -1) if ids.ndim == 1 else ids
    if ids2.ndim != 2:
        raise InputError(f"input_ids must be [T] or [B, T], got shape {ids.shape}")
    tokens = [token_strings(row, tokenizer) for row in ids2]
    rel2 = rel.reshape(ids2.shape)
    keep = None
    if mask is not None:
        m = _numpy(mask)
        if m.size != rel2.size or (m.shape != ids.shape and m.shape != ids2.shape):
            raise InputError(f"mask has shape {m.shape} but input_ids has shape {ids.shape}")
        keep = m.reshape(ids2.shape) != 0
    target = getattr(explanation, "target", None)
    labels = None
    if target is not None and np.ndim(target) == 1 and len(target) == len(tokens):
        labels = [f"#{j}: target {int(t)}" for j, t in enumerate(target)]
    return TokenRelevance(tokens, rel2, keep, labels)
