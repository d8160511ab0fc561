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
_MIN_SIDE = 128    # small maps (8×8 digits) are enlarged by an integer factor up to this size
_TITLE_H = 18


def _item_map(r: np.ndarray) -> np.ndarray:
    """One item's relevance as a 2-D map: channels summed, a leading batch of one dropped."""
    r = np.asarray(r, dtype=np.float64)
    if r.ndim == 4 and r.shape[0] == 1:
        r = r[0]
    if r.ndim == 2:
        return r
    if r.ndim == 3:
        # Channels first (the usual NCHW layout) unless the layout is clearly channels last.
        channels_last = r.shape[0] > 4 and r.shape[-1] <= 4
        return r.sum(axis=-1 if channels_last else 0)
    raise InputError(f"a relevance map needs a 2-D (H, W) or 3-D (C, H, W) array per item, "
                     f"got shape {r.shape}")


def relevance_to_rgb(r: Any, percentile: float = 99.5) -> np.ndarray:
    """Colour one item's relevance (H×W, C×H×W or 1×C×H×W) as an H×W×3 uint8 image.

    Limits are ±(the ``percentile`` of |r|) so a few extreme pixels do not wash out the rest;
    values beyond the limits saturate.
    """
    m = _item_map(r)
    if not 0 < percentile <= 100:
        raise InputError(f"percentile must be in (0, 100], got {percentile}")
    finite = np.abs(m[np.isfinite(m)])
    limit = float(np.percentile(finite, percentile)) if finite.size else 0.0
    if limit <= 0:
        limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    x = np.clip(np.nan_to_num(m / limit), -1.0, 1.0)
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


def _split_batch(x: np.ndarray, per_item_ndim: int) -> list[np.ndarray]:
    return list(x) if x.ndim > per_item_ndim else [x]


def save_heatmap(path: str | os.PathLike, relevance: Any, image: Any = None,
                 percentile: float = 99.5, title: str | None = None) -> str:
    """Write a PNG: per item one row with the input image (if given) beside its relevance map.

    ``relevance`` is one item (H×W or C×H×W), a batch (N×C×H×W), or an :class:`Explanation`
    (its first input's relevance). ``image`` matches it: HWC uint8/float, CHW float, or a batch of
    those. Returns the path written.
    """
    try:
        from PIL import Image, ImageDraw
    except ImportError as exc:  # pillow is an optional dependency
        raise ImportError("writing heatmaps needs pillow: pip install pillow") from exc

    if hasattr(relevance, "relevance") and isinstance(relevance.relevance, tuple):
        relevance = relevance.relevance[0]
    rel = np.asarray(relevance)
    items = _split_batch(rel, 3)
    maps = [relevance_to_rgb(r, percentile) for r in items]
    images: list[np.ndarray | None] = [None] * len(maps)
    if image is not None:
        img = np.asarray(image)
        batch = [img[k] for k in range(img.shape[0])] if img.ndim == 4 else [img]
        if len(batch) != len(maps):
            raise InputError(f"{len(batch)} image(s) given for {len(maps)} relevance map(s)")
        images = [_image_rgb(b) for b in batch]

    h, w = maps[0].shape[:2]
    scale = max(1, math.ceil(_MIN_SIDE / max(1, min(h, w))))
    ph, pw = h * scale, w * scale
    cols = 2 if image is not None else 1
    top = _TITLE_H if title else 0
    canvas = Image.new("RGB", (_PAD + cols * (pw + _PAD), top + _PAD + len(maps) * (ph + _PAD)),
                       (255, 255, 255))
    for row, (m, im) in enumerate(zip(maps, images)):
        y = top + _PAD + row * (ph + _PAD)
        panels = ([im] if im is not None else []) + [m]
        for col, p in enumerate(panels):
            tile = Image.fromarray(p)
            if tile.size != (pw, ph):
                nearest = p is m  # keep relevance pixels crisp; smooth photos
                tile = tile.resize((pw, ph), Image.NEAREST if nearest else Image.BILINEAR)
            canvas.paste(tile, (_PAD + col * (pw + _PAD), y))
    if title:
        ImageDraw.Draw(canvas).text((_PAD, 3), title, fill=(0, 0, 0))
    out = os.fspath(path)
    folder = os.path.dirname(out)
    if folder:
        os.makedirs(folder, exist_ok=True)
    canvas.save(out, format="PNG")
    return out
