"""Relevance heatmaps: a diverging colour map in numpy, and PNG grids written with pillow.

The colour map is computed in numpy so that a heatmap needs no plotting library; pillow is only
needed to write files, and is imported where it is used so that ``import lrpir`` never needs it.
Red is positive relevance, blue negative, white zero, with symmetric limits so that equal colours
mean equal amounts of either sign.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from lrpir.errors import InputError

_PAD = 4           # pixels between and around panels
_GROUP_GAP = 12    # extra pixels between the columns of a wrapped grid
_MIN_SIDE = 128    # small maps (8×8 digits) are enlarged by an integer factor up to this size
_TITLE_H = 18      # height of a title strip (the whole picture's, or one item's)
MAX_ROWS = 8       # a longer batch wraps into several columns of (image, relevance) pairs


def _check_percentile(percentile: float | None) -> None:
    if percentile is not None and not 0 < percentile <= 100:
        raise InputError(f"percentile must be in (0, 100] or None, got {percentile}")


def _item_map(r: Any, channels_last: bool = False) -> np.ndarray:
    """One item's relevance as a 2-D map: channels summed, a leading batch of one dropped.

    3-D items are C×H×W unless ``channels_last`` says H×W×C: guessing the layout from the sizes
    goes wrong on small maps, so the caller states it.
    """
    r = np.asarray(r, dtype=np.float64)
    if r.ndim == 4 and r.shape[0] == 1:
        r = r[0]
    if r.ndim == 2:
        return r
    if r.ndim == 3:
        return r.sum(axis=-1 if channels_last else 0)
    layout = "(H, W, C)" if channels_last else "(C, H, W)"
    raise InputError(f"a relevance map needs a 2-D (H, W) or 3-D {layout} array per item, "
                     f"got shape {r.shape}")


def colour_limit(m: np.ndarray, percentile: float | None) -> float:
    """The colour limit: the ``percentile`` of |m| (None: the maximum), never zero."""
    finite = np.abs(m[np.isfinite(m)])
    if not finite.size:
        return 1.0
    limit = float(finite.max()) if percentile is None else float(np.percentile(finite, percentile))
    if limit <= 0:  # mostly zeros: fall back to the largest value so the rest still shows
        limit = float(finite.max())
    return limit if limit > 0 else 1.0


def relevance_to_rgb(r: Any, percentile: float | None = 99.5, channels_last: bool = False) -> np.ndarray:
    """Colour one item's relevance (H×W, C×H×W or 1×C×H×W) as an H×W×3 uint8 image.

    Limits are ±(the ``percentile`` of |r|) so a few extreme pixels do not wash out the rest;
    values beyond them saturate. ``percentile=None`` or 100 uses the largest |r| (no clipping).
    ``channels_last=True`` reads 3-D items as H×W×C.
    """
    _check_percentile(percentile)
    m = _item_map(r, channels_last)
    x = np.clip(np.nan_to_num(m / colour_limit(m, percentile)), -1.0, 1.0)
    pos, neg = np.clip(x, 0, 1), np.clip(-x, 0, 1)
    # bwr: white at zero, fading to pure red (+1) or pure blue (−1).
    rgb = np.stack([1.0 - neg, 1.0 - pos - neg, 1.0 - pos], axis=-1)
    return np.round(rgb * 255).astype(np.uint8)


def _image_rgb(img: np.ndarray) -> np.ndarray:
    """One display image as H×W×3 uint8 from HWC/CHW/HW, uint8 or float (min-max scaled)."""
    a = np.asarray(img)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # CHW → HWC
    if a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise InputError(f"cannot show an image of shape {np.shape(img)}; give HWC, CHW or HW")
    if a.dtype == np.uint8:
        return a
    a = np.nan_to_num(a.astype(np.float64))
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return np.round(a * 255).astype(np.uint8)


def _relevance_items(relevance: Any) -> list[np.ndarray]:
    """Per-item relevance arrays from an Explanation, a batch (4-D) or one item (2-D/3-D)."""
    if hasattr(relevance, "relevance") and isinstance(relevance.relevance, tuple):
        relevance = relevance.relevance[0]  # an Explanation: its first input
    rel = np.asarray(relevance)
    if rel.ndim == 4:
        return list(rel)
    if rel.ndim in (2, 3):
        return [rel]
    raise InputError(f"relevance must be one item (H×W, C×H×W) or a batch (N×C×H×W), got shape "
                     f"{rel.shape}")


def _font() -> Any:
    """Pillow's scalable default font at a readable size; its small bitmap font before 10.1."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=13)
    except (TypeError, OSError, ImportError):  # older pillow, or pillow built without FreeType
        return ImageFont.load_default()


def grid_layout(n: int, max_rows: int = MAX_ROWS) -> tuple[int, int]:
    """(rows, columns of pairs) for ``n`` items: one row each, wrapped when ``n > max_rows``.

    The columns are filled top to bottom and balanced, so 10 items give 5 rows in 2 columns.
    """
    if n < 1 or max_rows < 1:
        raise InputError(f"a heatmap grid needs at least one item and one row, got {n} and {max_rows}")
    groups = math.ceil(n / max_rows)
    return math.ceil(n / groups), groups


def save_heatmap(path: str | os.PathLike, relevance: Any, image: Any = None,
                 percentile: float | None = 99.5, title: str | None = None,
                 titles: list[str] | None = None, channels_last: bool = False,
                 max_rows: int = MAX_ROWS) -> str:
    """Write a PNG: per item the input image (if given) beside its relevance map.

    ``relevance`` is one item (H×W or C×H×W), a batch (N×C×H×W), or an :class:`Explanation` (its
    first input's relevance); ``channels_last=True`` reads items as H×W×C (batches N×H×W×C).
    ``image`` matches it item for item: HWC uint8/float, CHW float, or a batch of those (float
    images are min-max scaled for display). A batch is a grid with one row per item, wrapped into
    several columns of pairs beyond ``max_rows`` items. Each map has its own colour limit (see
    :func:`relevance_to_rgb`). ``title`` heads the picture, ``titles`` (one per item, e.g. the
    explained class) head the items. Returns the path written.
    """
    try:
        from PIL import Image, ImageDraw
    except ImportError as exc:  # pillow is an optional dependency
        raise ImportError("writing heatmaps needs pillow: pip install pillow") from exc

    _check_percentile(percentile)
    maps = [relevance_to_rgb(r, percentile, channels_last) for r in _relevance_items(relevance)]
    n = len(maps)
    images: list[np.ndarray | None] = [None] * n
    if image is not None:
        img = np.asarray(image)
        batch = list(img) if img.ndim == 4 else [img]
        if len(batch) != n:
            raise InputError(f"{len(batch)} image(s) given for {n} relevance map(s)")
        images = [_image_rgb(b) for b in batch]
    if titles is not None and len(titles) != n:
        raise InputError(f"{len(titles)} title(s) given for {n} relevance map(s)")

    h, w = maps[0].shape[:2]
    scale = max(1, math.ceil(_MIN_SIDE / max(1, min(h, w))))
    ph, pw = h * scale, w * scale
    cols = 2 if image is not None else 1
    rows, groups = grid_layout(n, max_rows)
    item_top = _TITLE_H if titles is not None else 0
    cell_w, cell_h = cols * (pw + _PAD) - _PAD, item_top + ph
    top = _TITLE_H if title else 0
    width = 2 * _PAD + groups * cell_w + (groups - 1) * _GROUP_GAP
    canvas = Image.new("RGB", (width, top + _PAD + rows * (cell_h + _PAD)), (255, 255, 255))
    draw, font = ImageDraw.Draw(canvas), _font()
    for k, (m, im) in enumerate(zip(maps, images)):
        x0 = _PAD + (k // rows) * (cell_w + _GROUP_GAP)
        y0 = top + _PAD + (k % rows) * (cell_h + _PAD)
        if titles is not None:
            draw.text((x0, y0 + 1), str(titles[k]), fill=(0, 0, 0), font=font)
        panels = ([im] if im is not None else []) + [m]
        for col, p in enumerate(panels):
            tile = Image.fromarray(p)
            if tile.size != (pw, ph):
                nearest = p is m  # keep relevance pixels crisp; smooth photos
                tile = tile.resize((pw, ph), Image.NEAREST if nearest else Image.BILINEAR)
            canvas.paste(tile, (x0 + col * (pw + _PAD), y0 + item_top))
    if title:
        draw.text((_PAD, 1), title, fill=(0, 0, 0), font=font)
    out = os.fspath(path)
    folder = os.path.dirname(out)
    if folder:
        os.makedirs(folder, exist_ok=True)
    canvas.save(out, format="PNG")
    return out
