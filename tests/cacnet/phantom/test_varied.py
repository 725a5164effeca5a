"""cacnet.phantom, variant="varied": exact labels, variety measured over seeds, the default unchanged."""

from __future__ import annotations

import csv
import hashlib
import time

import numpy as np
import pytest
from typer.testing import CliRunner

import agatston
from cacnet.cli import app
from cacnet.phantom import LOOKALIKES, case_seed, generate_phantom
from cacnet.phantom._canvas import Canvas
from cacnet.phantom._varied import (KERNELS, VariedAcquisition, VariedSteps, describe_case, heart_fields,
                                    sample_varied_acquisition, sample_varied_anatomy, streak_image)

SIZE = 160  # smaller matrix than the real 512 (the field of view is kept: pixels grow), to keep the tests quick

#: sha256 of hu + labels of the default generator, computed before the variants existed: the default
#: (what the shipped weights and cached training sets were made with) must stay bit-identical.
DEFAULT_HASHES = {
    (11, "D", 320, 1.0, 1.0):
        "bb8675380b4c1562072ff9baf952650b352105d66fb9ae489118e5f90acaedc6",
    (21, "E", 256, 1.0, 0.3):
        "36adcbe12935718da070011452b3468ee2c8a7b17dd85044bb57869dd4bc4133",
    (4, "A", 200, 0.4, 0.3):
        "625f6ee64133c6d23f47e8813d49b223e3a5d40284572f9538dfff223e5fb8a9",
}


def test_default_generator_is_bit_identical():
    for (seed, cat, size, rate, hard), want in DEFAULT_HASHES.items():
        c = generate_phantom(seed, category=cat, size=size, lookalike_rate=rate, hard_fraction=hard)
        assert hashlib.sha256(c.hu.tobytes() + c.labels.tobytes()).hexdigest() == want, (seed, cat)
        assert c.meta["variant"] == "default"


@pytest.fixture(scope="module")
def cases():
    out, times = [], []
    for i in range(10):
        t = time.perf_counter()
        out.append(generate_phantom(case_seed(5, i), category="ABCDE"[i % 5], variant="varied", size=SIZE))
        times.append(time.perf_counter() - t)
    print(f"\nvaried phantom, {SIZE} x {SIZE}: {np.mean(times):.2f} s per case (max {max(times):.2f} s)")
    return out


@pytest.fixture(scope="module")
def described(cases):
    return [describe_case(c) for c in cases]


def test_labels_are_exact(cases):
    for i, c in enumerate(cases):
        r = agatston.score(c.hu, c.spacing, c.labels)
        assert r.agatston == c.truth.agatston and r.category == "ABCDE"[i % 5] == c.meta["target_category"]
        assert c.hu.dtype == np.int16 and c.labels.dtype == np.uint8
        assert set(np.unique(c.labels)) <= {0, 1, 2, 3, 4}
        assert (c.hu[c.labels > 0] >= 130).all()
        idx, kinds = c.lookalike_voxels
        assert set(np.unique(kinds)) <= set(LOOKALIKES.values())
        assert (c.labels[tuple(idx.T)] == 0).all()  # look-alikes (aortic, valve, wires, ...) are never coronary
        pts = np.array([p["index_zyx"] for p in c.points]).reshape(-1, 3)
        rebuilt = agatston.mask_from_points(c.hu, pts, labels=[p["label"] for p in c.points])
        assert rebuilt.missed == () and rebuilt.conflicts == ()
        assert (rebuilt.mask[c.labels > 0] == c.labels[c.labels > 0]).all()
        assert c.meta["variant"] == "varied"


def test_same_seed_same_case():
    a = generate_phantom(3, category="B", variant="varied", size=96)
    b = generate_phantom(3, category="B", variant="varied", size=96)
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.labels, b.labels) and a.meta == b.meta


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="variant"):
        generate_phantom(1, variant="fancy", size=64)


def test_acquisition_ranges_over_seeds():
    acqs = [sample_varied_acquisition(np.random.default_rng(i), 512) for i in range(400)]
    heart = [a.fov_mm for a in acqs if a.fov == "heart"]
    chest = [a.fov_mm for a in acqs if a.fov == "chest"]
    assert 150 <= min(heart) < 160 and 240 < max(heart) <= 250
    assert 340 <= min(chest) < 360 and 460 < max(chest) <= 480
    assert {a.thickness_mm for a in acqs} == {2.5, 3.0, 4.0, 5.0}
    assert any(a.increment_mm < a.thickness_mm for a in acqs)
    assert {a.kernel for a in acqs} == set(KERNELS)
    offsets = [a.hu_offset for a in acqs]
    assert min(offsets) < -15 and max(offsets) > 15 and max(map(abs, offsets)) <= 22
    assert any(a.beam_hardening == 0 for a in acqs) and max(a.beam_hardening for a in acqs) > 0.9


def _noise_only(kernel: str, psf: float, sharpen: float, noise: float) -> np.ndarray:
    acq = VariedAcquisition(pixel_mm=0.4, thickness_mm=3.0, increment_mm=3.0, n_slices=4, psf_mm=psf, kernel=kernel,
                            sharpen=sharpen, noise_sd=noise, hu_offset=0.0, orientation="identity", fov="heart",
                            fov_mm=102.4, noise_exponent=1.0, beam_hardening=0.0, starvation=0.0)
    canvas = Canvas(shape=(4, 256, 256), spacing=(3.0, 0.4, 0.4), origin=(0.0, 0.0, 0.0), thickness=3.0)
    clean = np.full(canvas.shape, 40.0, np.float32)
    return VariedSteps().background(np.random.default_rng(0), canvas, clean, acq, None, [])


def _sharpness(img: np.ndarray, px: float) -> float:
    dev = img - img.mean(axis=(1, 2), keepdims=True)
    power = (np.abs(np.fft.fft2(dev)) ** 2).sum(axis=0)
    f = np.sqrt(np.fft.fftfreq(img.shape[1])[:, None] ** 2 + np.fft.fftfreq(img.shape[2])[None, :] ** 2) / px
    return float((f * power).sum() / power.sum())


def test_kernels_give_the_set_noise_and_matching_texture():
    soft = _noise_only("very_soft", 1.2, 0.0, 10.0)
    lung = _noise_only("lung", 0.3, 1.4, 60.0)
    assert soft.std() == pytest.approx(10.0, rel=0.1) and lung.std() == pytest.approx(60.0, rel=0.1)
    assert soft.mean() == pytest.approx(40.0, abs=1.0)
    # the same white noise through a soft and a sharp lung kernel: mottle vs fine grain
    assert _sharpness(lung, 0.4) > 2.5 * _sharpness(soft, 0.4)


def test_each_variation_varies_over_seeds(cases, described):
    d = {k: np.array([x[k] for x in described]) for k in described[0]}
    assert d["fov_mm"].min() < 250 and d["fov_mm"].max() > 340  # heart-zoomed and whole-chest
    assert len(set(d["thickness_mm"])) >= 3 and d["thickness_mm"].min() >= 2.5 and d["thickness_mm"].max() <= 5
    assert d["noise_sd_measured"].max() > 2.5 * d["noise_sd_measured"].min()
    assert d["sharpness"].max() > 1.5 * d["sharpness"].min()
    assert d["hu_offset"].max() - d["hu_offset"].min() > 15
    assert np.nanmax(d["fat_fraction"]) - np.nanmin(d["fat_fraction"]) > 0.2  # epicardial fat, from the image
    assert d["epicardial_fat_mm"].max() > 2 * d["epicardial_fat_mm"].min()
    assert d["heart_width_mm"].max() - d["heart_width_mm"].min() > 12
    assert d["heart_azimuth_deg"].max() - d["heart_azimuth_deg"].min() > 12
    assert d["heart_elevation_deg"].max() - d["heart_elevation_deg"].min() > 10
    assert d["heart_left_mm"].max() - d["heart_left_mm"].min() > 10 and d["heart_left_mm"].min() > 0
    aortic = d["aortic_calcium_mm3"]
    assert (aortic > 0).mean() >= 0.5 and aortic.max() > 200  # aortic wall / root calcification is common
    kinds = {k for c in cases for k in c.meta["lookalike_detail"]}
    assert {"aortic_wall", "aortic_root"} <= kinds


def test_anatomy_grooves_hold_the_coronaries():
    # The epicardial fat in the grooves covers every coronary (its centre offset + radius + the fat
    # sleeve), and the fat thickness varies over the heart surface and between patients.
    means = []
    for i in range(12):
        anat = sample_varied_anatomy(np.random.default_rng(i), (-80.0, 70.0))
        ff = anat.fat_field
        for label, (pts, radii) in anat.coronaries.items():
            if label == 1:  # the LM runs from the root through its own fat sleeve
                continue
            t = ((pts - anat.heart.center) @ anat.heart.axes.T) / anat.heart.radii
            rho = np.linalg.norm(t, axis=1)
            dent, fat = heart_fields(ff, t[:, 0] / rho, np.arctan2(t[:, 2], t[:, 1]))
            on_surface = rho >= 1  # (the proximal RCA starts inside the base, in its fat sleeve like the LM)
            assert (fat >= anat.fat / 2 + radii)[on_surface].mean() > 0.95, (i, label)
            assert np.median(dent[on_surface]) > 1.0  # the myocardium is indented under the artery
        ss, pp = np.meshgrid(np.linspace(-0.3, 0.95, 20), np.linspace(-np.pi, np.pi, 40))
        fat = heart_fields(ff, ss, pp)[1]
        assert fat.max() > 2 * max(fat.min(), 0.1)
        means.append(fat.mean())
        assert len(anat.cavities) == 4 and len(anat.bulges) == 2  # LV, RV, LA, RA
    assert max(means) > 2 * min(means)


def test_streaks_near_metal_and_bone():
    steps = VariedSteps()
    rng = np.random.default_rng(4)
    acq = sample_varied_acquisition(rng, 128)
    acq.beam_hardening, acq.starvation = 1.0, 1.0
    shape, spacing, origin = steps.geometry(rng, acq, 128)
    canvas = Canvas(shape=shape, spacing=spacing, origin=origin, thickness=acq.thickness_mm)
    anat = steps.anatomy(rng, canvas)
    metal = steps.lookalikes(rng, anat, ["sternal_wire", "pacing_lead"])
    with_metal = streak_image(np.random.default_rng(0), canvas, anat, metal, acq)
    without = streak_image(np.random.default_rng(0), canvas, anat, [], acq)
    assert with_metal.shape == canvas.shape and np.abs(without).max() > 20  # bone alone: beam hardening
    assert np.abs(with_metal - without).max() > 60  # dark halo and streaks of the metal
    assert abs(float(np.median(with_metal))) < 5
    acq.beam_hardening = acq.starvation = 0.0
    assert streak_image(rng, canvas, anat, metal, acq) is None


def test_cli_phantom_variant(tmp_path):
    result = CliRunner().invoke(app, ["phantom", str(tmp_path / "set"), "--n", "1", "--seed", "4", "--category", "c",
                                      "--variant", "varied"])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "set" / "truth.csv") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["variant"] == "varied" and row["category"] == "C" and row["kernel"] in KERNELS
    bad = CliRunner().invoke(app, ["phantom", str(tmp_path / "x"), "--variant", "fancy"])
    assert bad.exit_code == 2


def test_training_phantoms_of_a_variant_have_their_own_ids_and_cache(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")  # noqa: F841 - the train extra
    from cacnet.train import _ensemble
    from cacnet.train._data import phantom_case_id, phantom_cases

    assert phantom_case_id(7, 3) == "phantom_7_0003" and phantom_case_id(7, 3, "varied") == "phantom-varied_7_0003"
    (case,) = phantom_cases(7, 1, cache=tmp_path, workers=1, variant="varied")
    assert case.case_id == "phantom-varied_7_0000" and (tmp_path / "phantom-varied_7_0000.npz").is_file()
    assert case.x.ndim == 3 and case.y.shape == case.x.shape

    asked = []

    class Stop(Exception):
        pass

    def fake(set_seed, n, cache=None, workers=2, variant="default", **kw):
        asked.append((set_seed, cache.name, variant))
        raise Stop

    monkeypatch.setattr(_ensemble, "phantom_cases", fake)
    for variant, folder in (("varied", "val-varied"), ("default", "val")):
        with pytest.raises(Stop):
            _ensemble.train_ensemble(tmp_path / "run", phantoms=2, val_phantoms=1, phantom_variant=variant)
        assert asked[-1] == (_ensemble.VAL_SET_SEED, folder, variant)
