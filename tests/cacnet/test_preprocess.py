"""cacnet.preprocess against obviously correct loops."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cacnet.preprocess import coarse_grid, downsample, downsample_labels, normalize, preprocess, target_spacing, upsample


def naive_downsample(hu, grid):
    out = np.zeros(grid.coarse_shape, np.float64)
    for idx in np.ndindex(*grid.coarse_shape):
        sel = [np.flatnonzero(grid.index[a] == idx[a]) for a in range(3)]
        block = hu[np.ix_(*sel)]
        out[idx] = block.max() if block.max() >= 130 else block.mean()
    return out


@st.composite
def volumes(draw):
    shape = draw(st.tuples(st.integers(1, 6), st.integers(1, 14), st.integers(1, 14)))
    hu = draw(arrays(np.float32, shape, elements=st.sampled_from([-1000.0, -100.0, 0.0, 40.0, 129.0, 130.0, 500.0])))
    spacing = (draw(st.sampled_from([1.5, 2.5, 3.0])), draw(st.sampled_from([0.4, 0.7, 1.1])),
               draw(st.sampled_from([0.4, 0.5, 0.9])))
    return hu, spacing


@given(volumes())
def test_downsample_matches_naive_blocks(vol):
    hu, spacing = vol
    grid = coarse_grid(hu.shape, spacing)
    assert np.allclose(downsample(hu, grid), naive_downsample(hu, grid), atol=1e-4)
    # footprints partition the fine grid
    for a in range(3):
        assert grid.index[a][0] == 0 and np.all(np.diff(grid.index[a]) >= 0)
        assert grid.index[a][-1] == grid.coarse_shape[a] - 1 and np.all(np.diff(grid.index[a]) <= 1)


def test_target_spacing_and_grid():
    assert target_spacing(3.0) == 3.0 and target_spacing(2.5) == 2.5 and target_spacing(1.5) == 2.5
    g = coarse_grid((60, 512, 512), (3.0, 0.4, 0.4))
    assert g.coarse_shape == (60, 68, 68) and g.coarse_spacing[1] == pytest.approx(512 * 0.4 / 68)
    thick = coarse_grid((20, 10, 10), (5.0, 0.5, 0.5))  # 5 mm slices are kept, never split
    assert thick.coarse_shape[0] == 20


def test_enhancement_keeps_small_faint_calcium():
    hu = np.full((3, 60, 60), 40.0, np.float32)
    hu[1, 30, 30] = 160.0  # one faint voxel among ~56 per coarse voxel
    x, grid = preprocess(hu, (3.0, 0.4, 0.4))
    assert x.max() == pytest.approx((160 + 300) / 1100)
    plain_mean = (160 + 40 * 55) / 56
    assert plain_mean < 130  # averaging alone would have erased it


def test_normalize_clips_and_scales():
    assert np.allclose(normalize(np.array([-1000, -300, 250, 800, 3000], np.float32)), [0, 0, 0.5, 1, 1])


@given(volumes(), st.data())
def test_labels_down_and_up(vol, data):
    hu, spacing = vol
    grid = coarse_grid(hu.shape, spacing)
    labels = data.draw(arrays(np.uint8, hu.shape, elements=st.integers(0, 4)))
    coarse = downsample_labels(labels, grid)
    for idx in np.ndindex(*grid.coarse_shape):
        sel = [np.flatnonzero(grid.index[a] == idx[a]) for a in range(3)]
        block = labels[np.ix_(*sel)].ravel()
        counts = np.bincount(block, minlength=5)[1:]
        expected = 0 if counts.max() == 0 else int(counts.argmax()) + 1
        assert coarse[idx] == expected
    up = upsample(coarse, grid)
    assert up.shape == hu.shape and np.array_equal(downsample_labels(up, grid), coarse)
