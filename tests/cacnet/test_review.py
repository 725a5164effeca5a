"""Reviews: stable component ids, review files, and `cac review apply` (exact recomputation, refusals)."""

import csv
import json
import re
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

import agatston
from cacnet import components
from cacnet.cli import app
from cacnet.errors import ReviewError
from cacnet.components import find_components
from cacnet.io import read_scan, scan_sha256
from cacnet.review import apply_decisions, apply_review, read_review

runner = CliRunner()
SPACING = (3.0, 0.5, 0.5)


def synthetic():
    """A small volume with lesions, a voted candidate, a quiet one, bone and one outside the heart box."""
    hu = np.full((4, 60, 60), 40.0, np.float32)
    labels = np.zeros(hu.shape, np.uint8)

    def put(z, ys, xs, value, label=0):
        hu[z, ys, xs] = value
        labels[z, ys, xs] = label

    put(1, slice(10, 14), slice(10, 14), 250, 2)  # lesion A (LAD) on two slices
    put(2, slice(10, 14), slice(10, 14), 450, 2)
    put(1, slice(30, 33), slice(30, 33), 350, 4)  # lesion B (RCA) ...
    put(1, slice(30, 33), slice(33, 36), 150, 3)  # ... touching lesion C (LCX) in-plane
    put(3, 50, 50, 200, 1)  # one voxel of LM: in the mask, not counted (0.25 mm2)
    put(2, slice(40, 43), slice(10, 13), 300)  # a candidate two models voted for
    put(0, slice(20, 22), slice(40, 42), 500)  # a quiet candidate in the heart box (1 mm2)
    hu[:, 40:52, 25:45] = 700  # bone: 4 slices x 12 x 20 voxels = 720 mm3
    put(0, slice(2, 4), slice(55, 57), 600)  # outside the heart box
    data = {
        "id": "syn", "settings": {"threshold_hu": 130.0, "min_area_mm2": 1.0, "min_voxels": 1, "connectivity": 8},
        "lesions": [{"slice_index": 1, "centroid_yx": [11.5, 11.5], "votes": 5, "review": False},
                    {"slice_index": 2, "centroid_yx": [11.5, 11.5], "votes": 3, "review": True}],
        "rejected_candidates": [{"slice_index": 2, "centroid_yx": [41.0, 11.0], "votes": 2, "artery": "LCX"}],
        "triage": {"checks": {"heart": {"bbox_zyx": [[0, 3], [5, 50], [5, 50]]}}},
        "models": {"n_models": 5, "models_run": 5},
    }
    return hu, labels, data


def test_components_ids_groups_and_candidates(monkeypatch):
    hu, labels, data = synthetic()
    monkeypatch.setattr(components, "MAX_QUIET_CANDIDATE_MM3", 500.0)  # the bone block (720 mm3) is left out
    table = find_components(hu, SPACING, labels, data)
    les = {c.id: c for c in table.in_mask}
    assert [c.id for c in table.lesions] == ["1-10-10", "1-30-30", "1-30-33"]  # by Agatston
    assert [c.number for c in table.lesions] == ["1", "2", "3"]
    # the LM voxel is in the mask but too small to count: not a lesion
    assert [(c.id, c.number, c.counted) for c in table.uncounted] == [("3-50-50", "U1", False)]
    a = les["1-10-10"]
    assert a.label == 2 and [p.id for p in a.parts] == ["1-10-10", "2-10-10"] and a.slices == [1, 2]
    assert a.agatston == pytest.approx(4 * 2 + 4 * 4)  # 4 mm2 x factor 2 and 4 x factor 4, dz/3 = 1
    assert a.votes == 3 and a.review  # the fewest votes of its parts, flagged by one of them
    assert les["1-30-30"].label == 4 and les["1-30-33"].label == 3  # touching arteries stay apart
    tiny = les["3-50-50"]
    assert not tiny.parts[0].counted and tiny.agatston == 0.0 and tiny.votes is None
    cands = {c.id: c for c in table.candidates}
    assert list(cands) == ["2-40-10", "0-20-40"]
    # the result's rejected candidates (C) and those no model voted for (H) are numbered apart
    assert [(c.id, c.number) for c in table.rejected] == [("2-40-10", "C1")]
    assert [(c.id, c.number) for c in table.unvoted] == [("0-20-40", "H1")]
    assert cands["2-40-10"].votes == 2 and cands["2-40-10"].label == 3 and cands["2-40-10"].source == "models"
    assert cands["0-20-40"].votes == 0 and cands["0-20-40"].source == "heart region"
    assert not table.unmatched
    # the parts' contributions are agatston's
    ref = agatston.score(hu, SPACING, labels)
    for k, s in ref.by_label.items():
        assert sum(c.agatston for c in table.lesions if c.label == k) == pytest.approx(s.agatston, abs=1e-9)
        assert sum(c.volume_mm3 for c in table.lesions if c.label == k) == pytest.approx(s.volume_mm3, abs=1e-9)
    # voxels: the component's voxels are exactly its mask voxels
    assert set(a.voxels.tolist()) == set(np.flatnonzero(labels == 2).tolist())


def test_counts_are_the_results(monkeypatch):
    """Lesions are the result's n_lesions (3D lesions holding a counted part); candidates its rejected_candidates."""
    from cacnet.outputs.preview import preview_caption

    hu, labels, data = synthetic()
    monkeypatch.setattr(components, "MAX_QUIET_CANDIDATE_MM3", 500.0)
    ref = agatston.score(hu, SPACING, labels)
    data = dict(data, n_lesions=ref.n_lesions, review=[2])
    table = find_components(hu, SPACING, labels, data)
    assert ref.n_lesions == 3 and len(table.in_mask) == 4  # the uncounted LM voxel is a 3D group of the mask
    assert table.counts(data) == {"lesions": 3, "uncounted": 1, "rejected_candidates": 1, "rejected_groups": 1,
                                  "unvoted": 1, "flagged": 1}
    assert [line for line, _ in preview_caption(data, table)][2:4] == [
        "3 LESIONS  1 FLAGGED  1 NOT COUNTED (BELOW 1 MM2, GREY)",
        "1 REJECTED CANDIDATE (C1)  1 UNVOTED IN HEART (H1)"]
    # two rejected parts that touch in 3D are one candidate: the caption says both numbers
    hu[3, 40:43, 10:13] = 300
    two = dict(data, rejected_candidates=data["rejected_candidates"] + [
        {"slice_index": 3, "centroid_yx": [41.0, 11.0], "votes": 1, "artery": "LCX"}])
    table = find_components(hu, SPACING, labels, two)
    assert [c.number for c in table.rejected] == ["C1"] and len(table.rejected[0].parts) == 2
    assert preview_caption(two, table)[3][0] == "2 REJECTED CANDIDATES IN 1 GROUP (C1)  1 UNVOTED IN HEART (H1)"
    # long lines are broken between their items
    narrow = preview_caption(two, table, max_chars=40)
    assert len(narrow) > 5 and all(len(line) <= 40 for line, _ in narrow)


def test_quiet_candidates_are_capped(monkeypatch):
    hu, labels, data = synthetic()
    with_bone = find_components(hu, SPACING, labels, data)
    assert "0-40-25" in {c.id for c in with_bone.candidates}  # 720 mm3 <= the default cap
    monkeypatch.setattr(components, "MAX_QUIET_CANDIDATES", 0)
    table = find_components(hu, SPACING, labels, data)
    assert [c.source for c in table.candidates] == ["models"]  # voted candidates are listed first
    monkeypatch.setattr(components, "MAX_VOTED_CANDIDATES", 0)
    table = find_components(hu, SPACING, labels, data)
    assert not table.candidates and table.left_out == 1


def test_digest_is_stable_and_follows_the_mask():
    hu, labels, data = synthetic()
    t1 = find_components(hu, SPACING, labels, data)
    t2 = find_components(hu.copy(), SPACING, labels.copy(), json.loads(json.dumps(data)))
    assert t1.digest == t2.digest
    edited = labels.copy()
    edited[3, 50, 50] = 0
    assert find_components(hu, SPACING, edited, data).digest != t1.digest


def test_apply_decisions():
    hu, labels, data = synthetic()
    table = find_components(hu, SPACING, labels, data)
    out = apply_decisions(labels, table, {
        "1-10-10": {"kind": "lesion", "action": "reject"},
        "1-30-30": {"kind": "lesion", "action": "relabel", "artery": "LAD"},
        "2-40-10": {"kind": "candidate", "action": "add", "artery": "RCA"},
        "1-30-33": {"kind": "lesion", "action": "accept"}})
    assert not (out[1:3, 10:14, 10:14]).any()
    assert (out[1, 30:33, 30:33] == 2).all() and (out[1, 30:33, 33:36] == 3).all()
    assert (out[2, 40:43, 10:13] == 4).all() and (labels[2, 40:43, 10:13] == 0).all()  # input untouched
    with pytest.raises(ReviewError, match="stale"):
        apply_decisions(labels, table, {"0-0-0": {"kind": "lesion", "action": "reject"}})
    with pytest.raises(ReviewError, match="is a lesion in this result but a candidate"):
        apply_decisions(labels, table, {"1-10-10": {"kind": "candidate", "action": "add", "artery": "LM"}})


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a readable review file"),
    ('{"format": "other"}', "not a review file"),
    ('{"format": "cac-review", "version": 9}', "version 9"),
    ('{"format": "cac-review", "version": 1, "id": "x", "scan_sha256": "a", "components_sha256": "b", '
     '"decisions": []}', "keyed by component id"),
    ('{"format": "cac-review", "version": 1, "id": "x", "scan_sha256": "a", "components_sha256": "b", '
     '"decisions": {"1-2-3": {"kind": "lesion", "action": "add", "artery": "LAD"}}}', "accept or reject or relabel"),
    ('{"format": "cac-review", "version": 1, "id": "x", "scan_sha256": "a", "components_sha256": "b", '
     '"decisions": {"1-2-3": {"kind": "candidate", "action": "add", "artery": "LXX"}}}', "unknown artery"),
    ('{"format": "cac-review", "version": 1, "id": "x", "components_sha256": "b", "decisions": {}}',
     "no 'scan_sha256'"),
])
def test_read_review_rejects_bad_files(tmp_path, content, message):
    p = tmp_path / "r.json"
    p.write_text(content)
    with pytest.raises(ReviewError, match=re.escape(message)):
        read_review(p)


def test_scan_sha256_of_files_and_folders(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.dcm").write_bytes(b"one")
    (tmp_path / "d" / "sub" / "b.dcm").write_bytes(b"two")
    (tmp_path / "d" / ".hidden").write_bytes(b"x")
    h1 = scan_sha256(tmp_path / "d")
    (tmp_path / "d" / ".hidden").write_bytes(b"y")  # hidden files do not count
    assert scan_sha256(tmp_path / "d") == h1
    (tmp_path / "d" / "sub" / "b.dcm").write_bytes(b"tw0")
    assert scan_sha256(tmp_path / "d") != h1
    (tmp_path / "f.nii.gz").write_bytes(b"abc")
    assert scan_sha256(tmp_path / "f.nii.gz") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# --- end to end on the bundled example (scored once by the shipped ensemble) ------------------------------------


def make_review(table, decisions, **changes):
    out = {"format": "cac-review", "version": 1, "id": "phantom_example", "scan_sha256": None,
           "components_sha256": table.digest, "reviewer": "test", "saved": "2024-01-01T00:00:00Z",
           "decisions": decisions}
    out.update(changes)
    return out


@pytest.fixture()
def example(scored_example, tmp_path):
    out, res = scored_example
    table = find_components(res.scan.hu, res.scan.spacing, res.labels, res.data)
    sha = res.data["source"]["sha256"]
    return out, res, table, sha


def decisions_for(table):
    lesions = [c for c in table.lesions if c.agatston > 0]
    assert len(lesions) >= 2 and table.candidates, "the example has two counted lesions and a candidate"
    return {lesions[0].id: {"kind": "lesion", "action": "reject"},
            lesions[1].id: {"kind": "lesion", "action": "relabel", "artery": "RCA"},
            table.candidates[0].id: {"kind": "candidate", "action": "add", "artery": "LCX"}}


def test_apply_review_recomputes_exactly_and_writes_training_data(example, tmp_path):
    out, res, table, sha = example
    rpath = tmp_path / "phantom_example_review.json"
    rpath.write_text(json.dumps(make_review(table, decisions_for(table), scan_sha256=sha)))
    r = runner.invoke(app, ["review", "apply", str(out / "phantom_example.json"), str(rpath), "-o", str(tmp_path / "o2")])
    assert r.exit_code == 0, r.output
    assert "1 rejected, 1 relabelled, 1 added" in r.stdout
    o2 = tmp_path / "o2"
    data = json.loads((o2 / "phantom_example.json").read_text())
    scan = read_scan(res.scan.source_path)
    mask = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(o2 / "phantom_example_calcium.nii.gz")), "LPS"))
    ref = agatston.score(scan.hu, scan.spacing, mask)
    assert data["agatston"] == ref.agatston and data["category"] == ref.category
    assert {k: v["agatston"] for k, v in data["arteries"].items()} == {
        name: (ref.by_label[k].agatston if k in ref.by_label else 0.0) for k, name in agatston.ARTERY_NAMES.items()}
    d = decisions_for(table)
    rejected, relabelled, added = (table.get(k) for k in d)
    assert not mask.reshape(-1)[rejected.voxels].any()
    assert (mask.reshape(-1)[relabelled.voxels] == 4).all() and (mask.reshape(-1)[added.voxels] == 3).all()
    assert data["review_outcome"]["decisions"] == {"accept": 0, "reject": 1, "relabel": 1, "add": 1}
    assert data["review_outcome"]["points_rebuild_mask"] is True
    assert {les["reviewed"] for les in data["lesions"]} >= {"relabelled", "added"}
    # the rejected lesion is now a candidate a later review can add back
    assert any(c.get("source") == "reader" for c in data["rejected_candidates"])
    assert (o2 / "phantom_example.html").exists() and (o2 / "images" / "phantom_example.nii.gz").exists()
    with open(o2 / "points.csv", newline="") as fh:
        points = list(csv.DictReader(fh))
    assert {p["artery"] for p in points} >= {"RCA", "LCX"} and all(p["id"] == "phantom_example" for p in points)
    # `cac train --data` reads the folder and, by the paper's rule, gets the reviewed score
    from cacnet.train import dataset_cases

    (case,) = dataset_cases(o2)
    assert case.case_id == "phantom_example" and case.meta["agatston"] == pytest.approx(ref.agatston, abs=1e-9)
    # a second review of the reviewed result: the rejected lesion comes back
    table2 = find_components(scan.hu, scan.spacing, mask, data)
    back = next(c for c in table2.candidates if c.id == rejected.id)
    assert back.source == "reader"
    r2 = tmp_path / "r2.json"
    r2.write_text(json.dumps(make_review(table2, {back.id: {"kind": "candidate", "action": "add", "artery": "LAD"}},
                                         scan_sha256=sha)))
    done = apply_review(o2 / "phantom_example.json", r2, tmp_path / "o3", write_image=False)
    assert done.after == pytest.approx(ref.agatston + rejected.agatston, abs=1e-9)
    with open(tmp_path / "o3" / "truth.csv", newline="") as fh:
        assert [row["id"] for row in csv.DictReader(fh)] == ["phantom_example"]


def test_apply_review_refusals(example, tmp_path):
    out, res, table, sha = example
    result = out / "phantom_example.json"
    good = make_review(table, {}, scan_sha256=sha)

    def apply(review, *args):
        p = tmp_path / "r.json"
        p.write_text(json.dumps(review))
        return runner.invoke(app, ["review", "apply", str(result), str(p), "-o", str(tmp_path / "o"), *args])

    cases = [
        (dict(good, scan_sha256="0" * 64), "saved for another scan"),
        (dict(good, components_sha256="f" * 64), "is stale"),
        (dict(good, id="other"), "is a review of scan 'other'"),
        (dict(good, decisions={"0-0-0": {"kind": "lesion", "action": "reject"}}), "does not have"),
    ]
    for review, message in cases:
        r = apply(review)
        assert r.exit_code == 3, r.output
        assert message in r.stderr and "Traceback" not in r.output
    # the scan changed since it was scored, or another file is given with --scan
    changed = tmp_path / "changed.nii.gz"
    shutil.copy(res.scan.source_path, changed)
    with open(changed, "ab") as fh:
        fh.write(b"\0")
    r = apply(good, "--scan", str(changed))
    assert r.exit_code == 3 and "changed since it was scored" in r.stderr
    r = apply(good, "--scan", str(tmp_path / "nope.nii.gz"))
    assert r.exit_code == 3 and "no such scan" in r.stderr
    # not over the original result
    p = tmp_path / "ok.json"
    p.write_text(json.dumps(good))
    r = runner.invoke(app, ["review", "apply", str(result), str(p), "-o", str(out)])
    assert r.exit_code == 2 and "is the folder of the result" in r.stderr
    r = runner.invoke(app, ["review", "apply", str(result), str(p), "-o", str(result)])
    assert r.exit_code == 2 and "is a file, not a folder" in r.stderr
    r = runner.invoke(app, ["review", "apply", str(result), str(tmp_path)])
    assert r.exit_code == 3 and "not a readable review file" in r.stderr
    r = runner.invoke(app, ["review", "apply", str(tmp_path / "none.json"), str(p)])
    assert r.exit_code == 3 and "no such result file" in r.stderr


def test_result_without_mask_or_sha_is_refused(example, tmp_path):
    out, res, table, sha = example
    folder = tmp_path / "copy"
    folder.mkdir()
    data = dict(res.data, source={"path": None, "sha256": None})
    (folder / "phantom_example.json").write_text(json.dumps(data))
    p = tmp_path / "r.json"
    p.write_text(json.dumps(make_review(table, {}, scan_sha256=sha)))
    with pytest.raises(ReviewError, match="does not record the scan's sha256"):
        apply_review(folder / "phantom_example.json", p)
    (folder / "phantom_example.json").write_text(json.dumps(res.data))
    with pytest.raises(ReviewError, match="mask is missing"):
        apply_review(folder / "phantom_example.json", p)


def test_review_apply_help():
    r = runner.invoke(app, ["review", "apply", "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert r.exit_code == 0 and "--scan" in r.stdout and "<bool>" not in r.stdout and "BOOLEAN" not in r.stdout.upper()
