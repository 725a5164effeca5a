"""A serial run loads the models while its first scan is read (cohort.iter_serial with a loader), with the
results of an ensemble loaded beforehand."""

from __future__ import annotations

import threading

import numpy as np
import SimpleITK as sitk

from cacnet.cohort import _scan
from cacnet.cohort import EnsembleSpec, ScoreOptions, iter_serial
from cacnet.phantom import generate_phantom, oriented_image


def test_models_load_while_the_first_scan_is_read(toy_weights, tmp_path, monkeypatch):
    paths = []
    for seed in (51, 52):
        case = generate_phantom(seed, category="C", size=96)
        paths.append(tmp_path / f"s{seed}.nii.gz")
        sitk.WriteImage(oriented_image(case.hu, case, "identity"), str(paths[-1]))
    spec = EnsembleSpec(toy_weights)
    before = list(iter_serial(paths, spec.load(), ScoreOptions(outdir=tmp_path / "a", force=True)))

    reading = threading.Event()
    prepare = _scan.prepare_scan

    def prepare_scan(*args, **kwargs):
        reading.set()
        return prepare(*args, **kwargs)

    monkeypatch.setattr(_scan, "prepare_scan", prepare_scan)
    seen = []

    def load():
        seen.append(reading.wait(timeout=60))  # the first scan is being read already
        return spec.load()

    after = list(iter_serial(paths, load, ScoreOptions(outdir=tmp_path / "b", force=True)))
    assert seen == [True]
    assert [o.row for o in after] == [o.row for o in before] and all(o.status == "ok" for o in after)
    for o in after:
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a" / f"{o.id}_calcium.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "b" / f"{o.id}_calcium.nii.gz")))
        assert np.array_equal(a, b)
    # without prefetch the loader is called first, once
    calls = []
    plain = list(iter_serial(paths, lambda: calls.append(1) or spec.load(), ScoreOptions(force=True), prefetch=False))
    assert calls == [1] and [o.status for o in plain] == ["ok", "ok"]
