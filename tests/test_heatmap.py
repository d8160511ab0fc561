"""The heatmap colour map and PNG grids: colours, symmetric limits, clipping, layout, errors."""

from __future__ import annotations

import numpy as np
import pytest

import lrpir
from lrpir import heatmap
from lrpir.api import Explanation
from lrpir.errors import InputError
from lrpir.heatmap import relevance_to_rgb, save_heatmap

WHITE, RED, BLUE = [255, 255, 255], [255, 0, 0], [0, 0, 255]


def _png_size(path) -> tuple[int, int]:
    pil = pytest.importorskip("PIL.Image")
    with pil.open(path) as im:
        return im.size


def _pixels(path) -> np.ndarray:
    pil = pytest.importorskip("PIL.Image")
    with pil.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _size(n_rows: int, groups: int = 1, side: int = 128, pairs: bool = True, title: bool = False,
          titles: bool = False) -> tuple[int, int]:
    """The expected PNG size, written out from the layout's constants."""
    pad, gap, strip = heatmap._PAD, heatmap._GROUP_GAP, heatmap._TITLE_H
    cell_w = (2 * (side + pad) - pad) if pairs else side
    cell_h = side + (strip if titles else 0)
    width = 2 * pad + groups * cell_w + (groups - 1) * gap
    height = (strip if title else 0) + pad + n_rows * (cell_h + pad)
    return width, height


# -- colours ----------------------------------------------------------------------------------
def test_zero_is_white_positive_red_negative_blue():
    r = np.zeros((4, 4))
    r[0, 0], r[0, 1] = 1.0, -1.0
    rgb = relevance_to_rgb(r, percentile=None)
    assert rgb.shape == (4, 4, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == RED
    assert rgb[0, 1].tolist() == BLUE
    assert rgb[2, 2].tolist() == WHITE


def test_limits_are_symmetric():
    # +1 sets the limit for both signs: -0.5 is half-strength blue, not full blue.
    r = np.array([[1.0, -0.5, 0.0, 0.25]])
    rgb = relevance_to_rgb(r, percentile=None)
    assert rgb[0, 0].tolist() == RED
    assert rgb[0, 1].tolist() == [128, 128, 255]
    assert rgb[0, 3].tolist() == [255, 191, 191]  # a quarter of the way to red
    # and the other way round: -1 makes +0.5 half-strength red
    assert relevance_to_rgb(-r, percentile=None)[0, 1].tolist() == [255, 128, 128]


def test_channels_are_summed_and_channels_last_is_explicit():
    rng = np.random.default_rng(0)
    chw = rng.standard_normal((3, 5, 6))
    hwc = np.moveaxis(chw, 0, -1)
    want = relevance_to_rgb(chw.sum(0), percentile=None)
    np.testing.assert_array_equal(relevance_to_rgb(chw, percentile=None), want)
    np.testing.assert_array_equal(relevance_to_rgb(chw[None], percentile=None), want)
    np.testing.assert_array_equal(relevance_to_rgb(hwc, percentile=None, channels_last=True), want)
    # Without the flag an H×W×C array is read as C×H×W: a 5×6 map of 3 channels is not what
    # comes out (the shape shows it).
    assert relevance_to_rgb(hwc, percentile=None).shape == (6, 3, 3)


def test_percentile_clipping_saturates_outliers():
    r = np.linspace(0.0, 1.0, 1000).reshape(10, 100)
    r[0, 0] = 100.0  # one outlier
    clipped = relevance_to_rgb(r, percentile=50)
    full = relevance_to_rgb(r, percentile=None)
    assert clipped[0, 0].tolist() == RED            # the outlier saturates
    assert clipped[9, 99].tolist() == RED           # 1.0 is above the 50th percentile: saturated
    assert clipped[2, 0].tolist() != RED            # 0.2 is still below it
    assert full[0, 0].tolist() == RED               # without clipping only the outlier is red,
    assert full[9, 99, 1] > 240                     # the rest is nearly white
    np.testing.assert_array_equal(relevance_to_rgb(r, percentile=100), full)


def test_degenerate_maps_and_bad_percentile():
    assert (relevance_to_rgb(np.zeros((3, 3))) == 255).all()         # all zero: white, no NaN
    nan = np.full((2, 2), np.nan)
    assert (relevance_to_rgb(nan) == 255).all()
    with pytest.raises(InputError, match="percentile"):
        relevance_to_rgb(np.ones((2, 2)), percentile=0)
    with pytest.raises(InputError, match="percentile"):
        relevance_to_rgb(np.ones((2, 2)), percentile=101)
    with pytest.raises(InputError, match="2-D"):
        relevance_to_rgb(np.ones(5))


def test_exported_from_the_package():
    assert lrpir.save_heatmap is save_heatmap and lrpir.relevance_to_rgb is relevance_to_rgb
    assert {"save_heatmap", "relevance_to_rgb"} <= set(lrpir.__all__)


# -- PNG layout -------------------------------------------------------------------------------
def test_single_item_with_image(tmp_path):
    r = np.zeros((3, 16, 16))
    r[:, 0, 0] = 1.0
    image = np.random.default_rng(0).random((16, 16, 3))
    out = save_heatmap(tmp_path / "one.png", r, image=image)
    assert out == str(tmp_path / "one.png")
    assert _png_size(out) == _size(1)  # 16×16 enlarged ×8 to 128
    px = _pixels(out)
    pad = heatmap._PAD
    x0 = pad + 128 + pad  # the relevance panel is the second one
    assert px[pad + 2, x0 + 2].tolist() == RED           # the positive pixel, enlarged to 8×8
    assert px[pad + 60, x0 + 60].tolist() == WHITE


def test_batch_is_a_grid_one_row_per_item(tmp_path):
    r = np.random.default_rng(0).standard_normal((3, 3, 16, 16))
    out = save_heatmap(tmp_path / "b.png", r, image=r, title="three", titles=["a", "b", "c"])
    assert _png_size(out) == _size(3, title=True, titles=True)
    out = save_heatmap(tmp_path / "b2.png", r)  # no images: one column of maps
    assert _png_size(out) == _size(3, pairs=False)


def test_long_batch_wraps_into_columns(tmp_path):
    assert heatmap.grid_layout(8) == (8, 1)
    assert heatmap.grid_layout(9) == (5, 2)
    assert heatmap.grid_layout(10) == (5, 2)
    assert heatmap.grid_layout(17) == (6, 3)
    r = np.zeros((10, 1, 16, 16))
    r[9, 0, :, :] = -1.0  # the last item is all blue: it lands at row 4 of the second column
    out = save_heatmap(tmp_path / "w.png", r, image=np.zeros((10, 16, 16, 3), np.uint8))
    assert _png_size(out) == _size(5, groups=2)
    pad, gap = heatmap._PAD, heatmap._GROUP_GAP
    cell_w = 2 * 128 + pad
    x = pad + cell_w + gap + 128 + pad + 64           # second column, relevance panel
    y = pad + 4 * (128 + pad) + 64                    # fifth row
    px = _pixels(out)
    assert px[y, x].tolist() == BLUE
    assert px[pad + 64, x].tolist() == WHITE          # item 5 (first row there) has no relevance


def test_explanation_and_channels_last_batches(tmp_path):
    r = np.random.default_rng(1).standard_normal((2, 3, 16, 16))
    exp = Explanation((r,), np.zeros((2, 10)), None, None, None)
    a = save_heatmap(tmp_path / "exp.png", exp)
    b = save_heatmap(tmp_path / "arr.png", r)
    np.testing.assert_array_equal(_pixels(a), _pixels(b))
    c = save_heatmap(tmp_path / "hwc.png", np.moveaxis(r, 1, -1), channels_last=True)
    np.testing.assert_array_equal(_pixels(c), _pixels(b))


def test_mismatched_counts_are_errors(tmp_path):
    r = np.zeros((3, 3, 8, 8))
    with pytest.raises(InputError, match="2 image"):
        save_heatmap(tmp_path / "x.png", r, image=np.zeros((2, 3, 8, 8)))
    with pytest.raises(InputError, match="1 image"):
        save_heatmap(tmp_path / "x.png", r, image=np.zeros((8, 8, 3)))
    with pytest.raises(InputError, match="2 title"):
        save_heatmap(tmp_path / "x.png", r, titles=["a", "b"])
    with pytest.raises(InputError, match="percentile"):
        save_heatmap(tmp_path / "x.png", r, percentile=-1)
    assert not (tmp_path / "x.png").exists()
