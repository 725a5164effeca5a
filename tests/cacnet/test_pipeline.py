"""Ensemble vote, whole-component decisions and end-to-end scoring (toy models)."""

import json

import numpy as np
import pytest

import agatston
from cacnet.ensemble import Ensemble, Vote, verify_weights
from cacnet.errors import DeviceUnavailableError, WeightsError
from cacnet.io import read_scan
from cacnet.pipeline import decide_components, score_scan
from cacnet.preprocess import coarse_grid, downsample, normalize

from .conftest import make_weights


def test_decide_whole_components_by_their_peak():
    hu = np.zeros((1, 12, 24), np.float32)
    hu[0, 2:4, 3:10] = 200.0  # crosses the coarse border at x = 6
    hu[0, 2, 8] = 450.0  # its peak lies in coarse voxel x = 1
    hu[0, 8:10, 2:5] = 300.0  # a second component, peak in coarse voxel x = 0
    grid = coarse_grid(hu.shape, (3.0, 0.5, 0.5))
    assert grid.coarse_shape == (1, 2, 4)
    votes = np.zeros(grid.coarse_shape, np.uint8)
    artery = np.zeros(grid.coarse_shape, np.uint8)
    votes[0, 0, 1], artery[0, 0, 1] = 5, 3  # only the peak's coarse voxel of the first lesion
    votes[0, 1, 0], artery[0, 1, 0] = 2, 4  # minority vote on the second one
    labels, records = decide_components(hu, Vote(votes, artery, 5, 5), grid)
    assert (labels[0, 2:4, 3:10] == 3).all()  # kept whole, although half lies in an unvoted coarse voxel
    assert (labels[0, 8:10, 2:5] == 0).all()  # rejected whole
    assert sorted((r[3], r[5]) for r in records) == [(2, False), (5, True)]


@pytest.mark.parametrize("seed", range(6))
def test_candidates_only_shrink_the_box_labelled(seed):
    """Votes outside the coarse candidates cannot decide a component: same labels and records with or without."""
    rng = np.random.default_rng(seed)
    hu = rng.normal(40, 60, (10, 90, 90)).astype(np.float32)
    for _ in range(25):  # dense spots and streaks, some crossing coarse borders
        z, y, x = rng.integers(0, 10), rng.integers(0, 80), rng.integers(0, 80)
        hu[z, y:y + rng.integers(1, 10), x:x + rng.integers(1, 10)] = rng.uniform(130, 900)
    hu[3, 40, :] = 400.0  # one component spanning the whole width
    grid = coarse_grid(hu.shape, (3.0, 0.5, 0.5))
    votes = rng.integers(0, 6, grid.coarse_shape).astype(np.uint8) * (rng.random(grid.coarse_shape) < 0.3)
    artery = np.where(votes > 0, rng.integers(1, 5, grid.coarse_shape), 0).astype(np.uint8)
    vote = Vote(votes, artery, 5, 5)
    candidates = downsample(hu, grid) >= 130.0
    assert (votes > 0).sum() > (votes[candidates] > 0).sum()  # stray votes off the candidates
    labels, records = decide_components(hu, vote, grid)
    fast_labels, fast_records = decide_components(hu, vote, grid, candidates=candidates)
    assert np.array_equal(labels, fast_labels) and records == fast_records and records


def test_weights_are_verified(tmp_path):
    w = make_weights(tmp_path / "w", thresholds=(130, 300))
    assert len(verify_weights(w)) == 2
    (w / "toy_1.onnx").write_bytes((w / "toy_1.onnx").read_bytes() + b"x")
    with pytest.raises(WeightsError, match="does not match the manifest"):
        verify_weights(w)
    (w / "toy_1.onnx").unlink()
    with pytest.raises(WeightsError, match="missing"):
        verify_weights(w)
    with pytest.raises(WeightsError, match="no weights manifest"):
        verify_weights(tmp_path)


def test_explicit_cuda_without_gpu_is_an_error(toy_weights):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a CUDA provider is present")
    with pytest.raises(DeviceUnavailableError, match="onnxruntime-gpu"):
        Ensemble(toy_weights, device="cuda")
    auto = Ensemble(toy_weights, device="auto")
    cpu = {"openvino": "OpenVINO:CPU", "onnxruntime": "CPUExecutionProvider"}[auto.backend]
    assert auto.provider == cpu and auto.warnings == []  # the CPU is a normal outcome of auto
    plain = Ensemble(toy_weights, device="auto", backend="onnxruntime")
    assert plain.provider == "CPUExecutionProvider" and plain.warnings == []


def test_vote_and_early_stop(toy_weights):
    ens = Ensemble(toy_weights, device="cpu")
    x = ((np.array([0.0, 140.0, 250.0, 500.0], np.float32) + 300) / 1100).reshape(1, 1, 4)
    full = ens.vote(x)
    assert full.votes.ravel().tolist() == [0, 3, 3, 5] and full.models_run == 5
    assert full.calcium.ravel().tolist() == [False, True, True, True]
    assert full.artery.ravel().tolist() == [0, 2, 2, 2]
    fast = ens.vote(x, candidates=x >= (130 + 300) / 1100, early_stop=True)
    assert fast.models_run == 3
    assert np.array_equal(fast.calcium, full.calcium) and np.array_equal(fast.artery, full.artery)


@pytest.fixture(scope="module", params=["auto", "onnxruntime"])
def ensemble(toy_weights, request):
    return Ensemble(toy_weights, device="cpu", backend=request.param)


def test_score_scan_end_to_end(phantom_scans, ensemble):
    folder, cases = phantom_scans
    res = score_scan(folder / "case22.nii.gz", ensemble, calibration=0.8, force=True)  # a crop too small for a heart
    case, _ = cases["case22"]
    d = res.data
    for key in ("id", "agatston", "category", "volume_mm3", "arteries", "lesions", "warnings", "cac_drs",
                "timings_s", "versions", "models"):
        assert key in d
    assert d["id"] == "case22" and set(d["arteries"]) == {"LM", "LAD", "LCX", "RCA"}
    # toy models call every coarse candidate calcium: the result is the >= 130 HU score, all LAD
    expected = agatston.score(case.hu, case.spacing, (case.hu >= 130).astype(np.uint8) * 2, calibration=0.8)
    assert d["agatston"] == pytest.approx(expected.agatston) and d["mass_mg"] == pytest.approx(expected.mass_mg)
    assert d["arteries"]["LAD"]["agatston"] == pytest.approx(expected.agatston)
    votes = {les["votes"] for les in d["lesions"]}
    assert votes <= {3, 5} and any(les["review"] for les in d["lesions"]) == (3 in votes)
    json.dumps(d)  # JSON-ready



@pytest.mark.parametrize("calibration", [None, 0.8])
def test_scan_result_properties_read_the_json(phantom_scans, toy_weights, calibration):
    """ScanResult's typed properties are the JSON report's entries (``data`` stays the one source)."""
    folder, _ = phantom_scans
    res = score_scan(folder / "case22.nii.gz", Ensemble(toy_weights, device="cpu"), calibration=calibration,
                     force=True)
    d = res.data
    assert res.n_lesions > 0 and res.agatston > 0
    assert res.agatston == d["agatston"] and type(res.agatston) is float
    assert res.category == d["category"] and isinstance(res.category, str)
    assert res.arteries == {name: a["agatston"] for name, a in d["arteries"].items()}
    assert list(res.arteries) == ["LM", "LAD", "LCX", "RCA"]
    assert all(type(v) is float for v in res.arteries.values())
    assert res.lesions == d["lesions"] and len(res.lesions) == d["n_lesions_2d"]
    assert res.n_lesions == d["n_lesions"] and type(res.n_lesions) is int
    assert res.volume_mm3 == d["volume_mm3"] and type(res.volume_mm3) is float
    assert res.mass_mg == d["mass_mg"] and (res.mass_mg is None) == (calibration is None)
    assert res.warnings == d["warnings"] and res.warnings
    # read-only, and what they return is the caller's: changing it leaves the JSON alone
    with pytest.raises(AttributeError):
        res.agatston = 0.0
    res.lesions[0]["agatston"] = -1.0
    res.warnings.append("x")
    res.arteries["LAD"] = -1.0
    assert res.lesions == d["lesions"] and res.warnings == d["warnings"] and res.arteries["LAD"] >= 0
    # derived from data: a changed JSON (as cac review apply makes) is what they read
    d["agatston"] = 1.5
    assert res.agatston == 1.5

def test_rerun_gives_identical_output(phantom_scans, ensemble):
    folder, _ = phantom_scans
    a = score_scan(folder / "case21.nii.gz", ensemble, force=True).data
    b = score_scan(folder / "case21.nii.gz", ensemble, force=True).data
    a.pop("timings_s"), b.pop("timings_s")
    assert a == b


def test_no_candidates_skips_the_models(tmp_path, ensemble):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.full((4, 20, 20), -50, np.int16))
    img.SetSpacing((0.5, 0.5, 3.0))
    sitk.WriteImage(img, str(tmp_path / "empty.nii.gz"))
    res = score_scan(read_scan(tmp_path / "empty.nii.gz"), ensemble, force=True)  # too small to hold a heart
    assert res.data["agatston"] == 0.0 and res.data["models"]["models_run"] == 0


def test_early_stop_ignores_disagreement_where_no_component_is_decided(tmp_path):
    """Models disagree only at a coarse voxel that holds no component's densest voxel: stop after 3, same mask."""
    from cacnet.pipeline import deciding_any

    ens = Ensemble(make_weights(tmp_path / "w", thresholds=(130, 130, 200, 130, 130)), device="cpu")
    hu = np.full((6, 24, 24), -50.0, np.float32)
    hu[2, 10:13, 1:5] = 500.0  # the peak of the component: every model says calcium here
    hu[2, 10:13, 5:14] = 150.0  # its faint tail reaches other coarse voxels, where model 3 says no
    spacing = (3.0, 0.5, 0.5)
    grid = coarse_grid(hu.shape, spacing)
    coarse = downsample(hu, grid)
    x = normalize(coarse)
    cand = coarse >= 130
    full = ens.vote(x)
    plain_stop = ens.vote(x, candidates=cand, early_stop=True)
    # not unanimous after 3; after 4, three say calcium, and the fifth cannot change that
    assert plain_stop.models_run == 4
    assert np.array_equal(plain_stop.calcium, full.calcium) and np.array_equal(plain_stop.artery, full.artery)

    def irrelevant(undecided):
        return not deciding_any(hu, undecided, grid)

    fast = ens.vote(x, candidates=cand, early_stop=True, irrelevant=irrelevant)
    assert fast.models_run == 3
    lab_full, _ = decide_components(hu, full, grid)
    lab_fast, _ = decide_components(hu, fast, grid)
    assert np.array_equal(lab_full, lab_fast) and (lab_full[2, 10:13, 1:14] == 2).all()
    # a disagreement at the peak's own coarse voxel does matter
    peak = np.zeros(coarse.shape, bool)
    peak[grid.index[0][2], grid.index[1][10], grid.index[2][1]] = True
    assert deciding_any(hu, peak, grid) and not deciding_any(hu, cand & ~peak, grid)


def test_large_buffers_go_back_to_the_os():
    """glibc keeps freed 8 MB buffers resident after a 16 MB free; with the setting they go back."""
    import os
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import numpy as np\n"
        "from cacnet._memory import return_large_buffers_to_os\n"
        "ok = return_large_buffers_to_os() if sys.argv[1] == '1' else None\n"
        "a = np.ones(2**22, np.float32); del a\n"  # 16 MB by mmap, freed: glibc raises its threshold
        "b = [np.ones(2**21, np.float32) for _ in range(8)]\n"  # 64 MB in 8 MB buffers
        "keep = [np.ones(64) for _ in range(1000)]\n"  # small objects above them in the heap
        "del b\n"
        "print(ok, int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # dask sets MALLOC_TRIM_THRESHOLD_
    runs = {}
    for flag in "01":
        out = subprocess.run([sys.executable, "-c", code, flag], capture_output=True, text=True, env=env, check=True)
        ok, rss_kb = out.stdout.split()
        runs[flag] = (ok, int(rss_kb))
    if not sys.platform.startswith("linux"):
        assert runs["1"][0] == "False"
        return
    assert runs["1"][0] == "True"
    assert runs["0"][1] - runs["1"][1] > 40_000  # kB: the freed 64 MB stayed resident only without it


def _lesion_scan():
    """(z, y, x) HU: a 500 HU lesion (every toy model votes), a 200 HU one (one of five votes)."""
    hu = np.full((6, 32, 40), -1000.0)
    hu[:, 4:-4, 4:-4] = 40.0
    hu[2, 20:23, 25:29] = 500.0
    hu[4, 8:11, 30:34] = 200.0
    return hu


@pytest.mark.parametrize("orientation", [[1, 0, 0, 0, 1, 0], [1, 0, 0, 0, -1, 0]], ids=["normal+z", "normal-z"])
def test_lesion_positions_on_the_input_grid_dicom(tmp_path, orientation):
    import pydicom

    from .conftest import make_weights
    from .dicom_helpers import write_series

    hu = _lesion_scan()
    folder = tmp_path / "s"
    for f in write_series(folder, hu):
        ds = pydicom.dcmread(f)
        ds.ImageOrientationPatient = orientation
        ds.save_as(f)
    ens = Ensemble(make_weights(tmp_path / "w", thresholds=(130, 300, 300, 300, 300)), device="cpu")
    res = score_scan(folder, ens, force=True)  # 20 x 16 mm: too small to hold a heart, triage refuses it
    d = res.data
    assert d["lesions"] and d["rejected_candidates"]
    source = res.scan.source_image
    for les in d["lesions"] + d["rejected_candidates"]:
        pos = les["position"]
        assert set(pos) == {"voxel_ijk", "patient_lps_mm", "sop_instance_uid", "instance_number"}
        i, j, k = pos["voxel_ijk"]
        # the file index and the patient point are the same place
        assert source.TransformContinuousIndexToPhysicalPoint((i, j, k)) == pytest.approx(pos["patient_lps_mm"],
                                                                                          abs=0.02)
        # write_series stored hu[n] in the file of instance n + 1, at z = 3 n mm, rows and columns as given
        n = pos["instance_number"] - 1
        assert pos["patient_lps_mm"][2] == pytest.approx(3.0 * n)
        assert pos["sop_instance_uid"] == f"1.2.826.0.1.3680043.8.498.2.{n + 1}"
        assert hu[n, round(j), round(i)] >= 130
        assert k == (n if orientation[4] > 0 else 5 - n)  # the series is indexed along its slice normal
    rejected = d["rejected_candidates"][0]["position"]
    assert rejected["instance_number"] == 5 and hu[4, round(rejected["voxel_ijk"][1]),
                                                    round(rejected["voxel_ijk"][0])] == 200
    json.dumps(d)


def test_lesion_positions_on_the_input_grid_nifti(tmp_path, ensemble):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(_lesion_scan().astype(np.int16))
    img.SetSpacing((0.5, 0.5, 3.0))
    stored = sitk.DICOMOrient(img, "ASL")  # axial slices stored in another axis order
    sitk.WriteImage(stored, str(tmp_path / "asl.nii.gz"))
    res = score_scan(tmp_path / "asl.nii.gz", ensemble, force=True)  # too small to hold a heart
    arr = sitk.GetArrayFromImage(stored)  # (k, j, i) as the file stores it
    assert res.data["lesions"]
    for les in res.data["lesions"]:
        pos = les["position"]
        assert set(pos) == {"voxel_ijk", "patient_lps_mm"}
        i, j, k = pos["voxel_ijk"]
        assert arr[round(k), round(j), round(i)] >= 130
        assert stored.TransformContinuousIndexToPhysicalPoint((i, j, k)) == pytest.approx(pos["patient_lps_mm"],
                                                                                          abs=0.02)
        # the canonical keys stay canonical
        assert res.scan.hu[les["slice_index"], round(les["centroid_yx"][0]), round(les["centroid_yx"][1])] >= 130


def test_a_scan_whose_file_was_deleted_still_scores(phantom_scans, toy_weights, tmp_path):
    """The result records the source's sha256 for `cac review apply`; a file gone since reading gives None."""
    import shutil

    folder, _ = phantom_scans
    path = tmp_path / "gone.nii.gz"
    shutil.copy(folder / "case21.nii.gz", path)
    scan = read_scan(path)
    ens = Ensemble(toy_weights, device="cpu")
    kept = score_scan(scan, ens, force=True)
    path.unlink()
    gone = score_scan(scan, ens, force=True)
    assert kept.data["source"]["sha256"] and gone.data["source"] == {"path": str(path), "sha256": None}
    assert np.array_equal(kept.labels, gone.labels) and gone.score.agatston == kept.score.agatston
