"""The second stage's band shares, computed a slice at a time, are bit for bit those of the whole-volume
bincount they replaced (kept here as the reference), and so is every candidate feature."""

from __future__ import annotations

import numpy as np
import pytest

from cacnet import candidates
from cacnet.candidates import HU_BANDS, candidate_features, find_candidates, mean_probabilities
from cacnet.phantom import generate_phantom
from cacnet.preprocess import CoarseGrid, coarse_grid, preprocess


def reference_band_shares(hu: np.ndarray, grid: CoarseGrid) -> list[np.ndarray]:
    """cacnet.candidates._band_shares as it was (commit e094f8b): one bincount over the whole volume."""
    band = np.zeros(hu.shape, dtype=np.uint8)
    for lo, _ in HU_BANDS[1:]:
        band += hu >= lo
    nz, ny, nx = grid.coarse_shape
    nb = len(HU_BANDS)
    dtype = np.int32 if nz * ny * nx * nb < 2**31 else np.int64  # int32 halves the fine-sized temporary
    iz, iy, ix = (a.astype(dtype) for a in grid.index)
    flat = iz[:, None, None] * (ny * nx * nb) + iy[None, :, None] * (nx * nb) + ix[None, None, :] * nb + band
    counts = np.bincount(flat.ravel(), minlength=nz * ny * nx * nb).reshape(nz, ny, nx, nb).astype(np.float32)
    total = counts.sum(axis=-1)
    return [counts[..., k] / total for k in range(nb)]


def same_bits(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
                                    for x, y in zip(a, b))


def edge_volume(seed: int, shape, dtype=np.float32) -> np.ndarray:
    """Noise over every band, with many voxels exactly on the band edges and just below them, and infinities."""
    rng = np.random.default_rng(seed)
    hu = rng.uniform(-1100, 1500, shape)
    edges = np.array([lo for lo, _ in HU_BANDS[1:]])
    pick = rng.random(shape)
    hu[pick < 0.15] = rng.choice(edges, size=int((pick < 0.15).sum()))
    low = (pick >= 0.15) & (pick < 0.25)
    hu[low] = np.nextafter(rng.choice(edges, size=int(low.sum())).astype(dtype), -np.inf)
    hu = hu.astype(dtype)
    if np.issubdtype(dtype, np.floating):
        hu.flat[rng.choice(hu.size, 5, replace=False)] = np.inf
        hu.flat[rng.choice(hu.size, 5, replace=False)] = -np.inf
    return hu


@pytest.mark.parametrize("shape,spacing", [
    ((60, 64, 64), (3.0, 0.6, 0.6)),        # 3 mm slices: one slice per coarse z
    ((29, 50, 47), (2.5, 0.7, 0.55)),       # uneven blocks in y and x
    ((37, 33, 41), (0.8, 0.5, 0.9)),        # thin slices: several slices per coarse z
    ((9, 21, 19), (5.0, 3.2, 0.4)),         # coarser than the grid along z and y: blocks of one
    ((4, 3, 5), (1.0, 1.0, 1.0)),           # tiny
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
def test_band_shares_bit_identical_to_the_whole_volume_bincount(shape, spacing, dtype):
    hu = edge_volume(sum(shape), shape, dtype)
    grid = coarse_grid(hu.shape, spacing)
    assert same_bits(candidates._band_shares(hu, grid), reference_band_shares(hu, grid))


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_band_shares_in_pieces_of_a_few_rows(monkeypatch, chunk):
    """Slices wider than a piece are split into row blocks (here forced small), same counts."""
    monkeypatch.setattr(candidates, "_BAND_CHUNK", chunk)
    hu = edge_volume(7, (13, 45, 38))
    grid = coarse_grid(hu.shape, (2.5, 0.66, 0.7))
    assert same_bits(candidates._band_shares(hu, grid), reference_band_shares(hu, grid))


def test_band_shares_of_a_non_contiguous_volume():
    hu = edge_volume(8, (20, 60, 70))[:, ::-1, 5:]  # a flipped, cropped view
    grid = coarse_grid(hu.shape, (3.0, 0.6, 0.6))
    assert same_bits(candidates._band_shares(hu, grid), reference_band_shares(hu, grid))


def features(hu, spacing, seed, anatomy, shares_fn):
    x, grid = preprocess(hu, spacing)
    rng = np.random.default_rng(seed)
    logits = [rng.normal(size=(5,) + x.shape).astype(np.float32) for _ in range(5)]
    probs = mean_probabilities(logits)
    votes = sum((lg.argmax(0) > 0).astype(np.uint8) for lg in logits)
    c = find_candidates(hu)
    original = candidates._band_shares
    candidates._band_shares = shares_fn
    try:
        return c.n, candidate_features(hu, spacing, grid, probs, votes, c, anatomy)
    finally:
        candidates._band_shares = original


def prepared(path):
    from cacnet.pipeline import prepare_scan

    p = prepare_scan(path, force=True)
    # the array views the scan's image: a copy outlives the scan
    return np.array(p.scan.hu), tuple(p.scan.spacing), p.anatomy


@pytest.mark.parametrize("seed,category,size", [(31, "D", 160), (32, "C", 128), (33, "B", 192), (34, "A", 96)])
def test_every_candidate_feature_bit_identical_on_phantoms(tmp_path, seed, category, size):
    import SimpleITK as sitk

    from cacnet.phantom import oriented_image

    case = generate_phantom(seed, category=category, size=size)
    path = tmp_path / "case.nii.gz"
    sitk.WriteImage(oriented_image(case.hu, case, "identity"), str(path))
    hu, spacing, anatomy = prepared(path)
    n, new = features(hu, spacing, seed, anatomy, candidates._band_shares)
    _, ref = features(hu, spacing, seed, anatomy, reference_band_shares)
    assert n > 0 and new.shape == ref.shape
    assert new.tobytes() == ref.tobytes()


def test_every_candidate_feature_bit_identical_on_the_example():
    from pathlib import Path

    hu, spacing, anatomy = prepared(Path(__file__).resolve().parents[2] / "examples" / "data"
                                    / "phantom_example.nii.gz")
    n, new = features(hu, spacing, 5, anatomy, candidates._band_shares)
    _, ref = features(hu, spacing, 5, anatomy, reference_band_shares)
    assert n > 0 and new.tobytes() == ref.tobytes()


def test_every_candidate_feature_bit_identical_on_a_real_scan():
    """A real non-contrast chest CT (bones, lung, couch), when the shared data folder is there."""
    from pathlib import Path

    real = Path(__file__).resolve().parents[3] / "shared" / "data" / "real-ct" / "lung-pet-ct-dx" / "A0002-8mm-B40f"
    if not real.exists():
        pytest.skip(f"{real} is not here")
    hu, spacing, anatomy = prepared(real)
    n, new = features(hu, spacing, 6, anatomy, candidates._band_shares)
    _, ref = features(hu, spacing, 6, anatomy, reference_band_shares)
    assert n > 100 and new.tobytes() == ref.tobytes()
