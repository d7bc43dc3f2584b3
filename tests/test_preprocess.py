"""Preprocessing: breast mask, orientation, crop geometry, point mapping, pectoral muscle."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import synthetic_breast
from mammodino.errors import ImageTooSmallError, NoBreastFoundError
from mammodino.preprocess.geometry import (
    CacheGeometry,
    cache_to_original,
    original_to_cache,
    plan_geometry,
)
from mammodino.preprocess.mask import (
    breast_mask,
    chest_wall_on_left,
    fill_holes,
    otsu_threshold,
)
from mammodino.preprocess.pectoral import pectoral_mask
from mammodino.preprocess.pipeline import (
    AS_READ,
    CacheOptions,
    plan_cache,
    render_image,
    render_mask,
)


def _unit(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 4095


def _truth(height=256, width=192) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return ((yy - height / 2) / (height * 0.42)) ** 2 + (xx / (width * 0.6)) ** 2 <= 1.0


def test_mask_covers_breast_and_leaves_label_out():
    result = breast_mask(_unit(synthetic_breast()), mask_size=512)
    truth = _truth()
    iou = (result.mask & truth).sum() / (result.mask | truth).sum()
    assert iou > 0.97
    assert not result.mask[8:24, 164:184].any()  # the burned-in label


def test_mask_on_downsampled_copy_keeps_scale():
    image = _unit(synthetic_breast(1024, 768))
    result = breast_mask(image, mask_size=256)
    assert result.mask.shape == (256, 192) and result.scale == pytest.approx(0.25)


def test_label_touching_breast_by_thin_bridge_is_cut():
    image = synthetic_breast(label=False)
    image[20:40, 150:180] = 4000  # a marker ...
    image[28:31, 100:150] = 3000  # ... joined to the breast by a 3-pixel tape strip
    result = breast_mask(_unit(image))
    assert not result.mask[22:38, 160:178].any()


def test_chest_wall_side_from_mask():
    assert chest_wall_on_left(breast_mask(_unit(synthetic_breast())).mask)
    right = breast_mask(_unit(synthetic_breast(chest_wall_left=False))).mask
    assert not chest_wall_on_left(right)


def test_plan_flips_right_facing_breast_and_crops_with_margin():
    settings = CacheOptions(cache_size=128, margin=0.05)
    plan = plan_cache("x.png", _unit(synthetic_breast(chest_wall_left=False)), settings)
    g = plan.geometry
    assert g.flipped == 1 and (g.height, g.width) == (256, 192)
    # Breast spans rows ~21..235 and (flipped) columns 0..~115: crop holds it plus margin.
    assert g.crop_x0 == 0 and g.crop_y0 <= 21 and g.crop_y1 >= 235
    assert 110 <= g.crop_x1 <= 135
    assert max(g.cache_height, g.cache_width) == 128
    mask = render_mask(plan.mask, g)
    columns = np.nonzero(mask)[1]
    assert columns.mean() < (mask.shape[1] - 1) / 2  # chest wall on the left after the flip


def test_no_crop_keeps_the_whole_image_and_still_masks_the_breast():
    unit = _unit(synthetic_breast(chest_wall_left=False))
    cropped = plan_cache("x.png", unit, CacheOptions(cache_size=128))
    plan = plan_cache("x.png", unit, CacheOptions(cache_size=128, crop=False))
    g = plan.geometry
    assert (g.crop_x0, g.crop_y0, g.crop_x1, g.crop_y1) == (0, 0, 192, 256)
    assert g.flipped == 1 and (g.cache_height, g.cache_width) == (128, 96)
    assert plan.mask_fraction == cropped.mask_fraction  # the same mask, on more background
    mask = render_mask(plan.mask, g) > 0
    # The breast covers (flipped) columns 0..~117 of 192: ~61% of the cached width.
    assert 0.55 < mask.any(axis=0).mean() < 0.65 and mask[:, 0].any() and not mask[:, -1].any()
    # The whole image: the cached mask covers what the breast covers of the original (40%), not
    # the 74% of the breast's box.
    assert abs(mask.mean() - plan.mask_fraction) < 0.01
    assert (render_mask(cropped.mask, cropped.geometry) > 0).mean() > 0.7


def test_render_matches_geometry_point_mapping():
    image = synthetic_breast(chest_wall_left=False, label=False)
    image[100:104, 150:154] = 4095  # a bright dot on the breast at x ~151.5, y ~101.5
    unit = _unit(image)
    g = plan_cache("x.png", unit, CacheOptions(cache_size=96)).geometry
    cached = render_image(unit, g, AS_READ)
    cx, cy = original_to_cache(g, 151.5, 101.5)
    peak_y, peak_x = np.unravel_index(np.argmax(cached), cached.shape)
    assert abs(peak_x - cx) <= 1.0 and abs(peak_y - cy) <= 1.0


def test_geometry_from_csv_strings():
    row = {
        "height": "100",
        "width": "80",
        "flipped": "1",
        "crop_x0": "10",
        "crop_y0": "5",
        "crop_x1": "50",
        "crop_y1": "95",
        "scale_x": "0.5",
        "scale_y": "0.5",
    }
    # x=69 flips to 10 (the crop's left edge): cache (10 - 10 + 0.5) * 0.5 - 0.5 = -0.25.
    assert original_to_cache(row, 69, 5) == pytest.approx((-0.25, -0.25))
    assert cache_to_original(row, -0.25, -0.25) == pytest.approx((69, 5))


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(40, 5000),
    width=st.integers(40, 5000),
    flipped=st.booleans(),
    frac=st.tuples(*[st.floats(0.0, 0.45)] * 4),
    size=st.integers(32, 1024),
    point=st.tuples(st.floats(0, 1), st.floats(0, 1)),
)
def test_point_mapping_round_trips(height, width, flipped, frac, size, point):
    box = (
        int(frac[0] * width),
        int(frac[1] * height),
        width - int(frac[2] * width),
        height - int(frac[3] * height),
    )
    g = plan_geometry(height, width, flipped, box, size)
    x, y = point[0] * (width - 1), point[1] * (height - 1)
    back = cache_to_original(g.as_row(), *original_to_cache(g.as_row(), x, y))
    assert back == pytest.approx((x, y), abs=1e-6)
    assert max(g.cache_width, g.cache_height) == min(size, max(box[2] - box[0], box[3] - box[1]))


def test_point_mapping_accepts_arrays():
    g = CacheGeometry(100, 80, 0, 0, 0, 80, 100, 0.5, 0.5)
    cx, cy = original_to_cache(g, np.array([0.0, 79.0]), np.array([0.0, 99.0]))
    np.testing.assert_allclose(cx, [-0.25, 39.25])
    np.testing.assert_allclose(cy, [-0.25, 49.25])


def test_blank_and_tiny_images_are_refused():
    with pytest.raises(NoBreastFoundError):
        plan_cache("blank.png", np.zeros((256, 200), np.float32), CacheOptions())
    with pytest.raises(ImageTooSmallError, match="1 x 1"):
        plan_cache("dot.png", np.ones((1, 1), np.float32), CacheOptions())


def test_pectoral_wedge_found_on_synthetic_mlo():
    image = _unit(synthetic_breast(label=False))
    breast = breast_mask(image).mask
    yy, xx = np.mgrid[0:256, 0:192]
    wedge = (xx < 70 - 0.5 * (yy - 21)) & breast  # bright muscle in the upper chest-wall corner
    image = np.where(wedge, 0.9, image).astype(np.float32)
    found = pectoral_mask(image, breast)
    iou = (found & wedge).sum() / max((found | wedge).sum(), 1)
    assert iou > 0.8
    assert (
        not pectoral_mask(_unit(synthetic_breast(label=False)), breast).sum() > 0.5 * breast.sum()
    )


def test_otsu_and_fill_holes_match_scikit_image_and_scipy():
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(0.1, 0.03, 5000), rng.normal(0.6, 0.1, 3000)])
    assert otsu_threshold(values, 1024) == pytest.approx(threshold_otsu(values, nbins=1024))
    ring = np.zeros((40, 40), bool)
    ring[5:30, 5:30] = True
    ring[10:20, 10:20] = False  # a hole
    ring[0:3, 20:25] = True  # touches the border: not a hole
    ring[32:38, 32:38] = True
    ring[34:36, 34:36] = False
    np.testing.assert_array_equal(fill_holes(ring), ndimage.binary_fill_holes(ring))
