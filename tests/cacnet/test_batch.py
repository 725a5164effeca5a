"""Batches of `cac score`: which scans a folder holds (cacnet.batch.expand_inputs) and ids that clash."""

import csv
import json
import os
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from cacnet.batch import expand_inputs
from cacnet.cli import app
from cacnet.cohort import EnsembleSpec, ScoreOptions, run_cohort
from cacnet.errors import UsageError
from cacnet.io import read_scan

from .dicom_helpers import write_series

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def ct_like(shape=(6, 32, 40), seed=0):
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -1000.0)
    hu[:, 4:-4, 4:-4] = rng.normal(40, 10, size=(shape[0], shape[1] - 8, shape[2] - 8)).round()
    hu[:, 10:12, 10:12] = 400
    return hu


def series(folder, k=0):
    write_series(folder, ct_like(seed=k), series_uid=f"1.2.826.0.1.3680043.8.498.{100 + k}")
    return folder


def notes_of(inputs):
    notes = []
    return expand_inputs(inputs, on_note=notes.append), notes


# --------------------------------------------------------------------------- ids that clash (issue 24, item 3)


@pytest.fixture()
def same_name(phantom_scans, tmp_path):
    """c1/ct.nii.gz and c2/ct.nii.gz: two scans, one id."""
    folder, _ = phantom_scans
    for sub, name in (("c1", "case21.nii.gz"), ("c2", "case23.nii.gz")):
        (tmp_path / sub).mkdir()
        shutil.copy(folder / name, tmp_path / sub / "ct.nii.gz")
    return tmp_path / "c1" / "ct.nii.gz", tmp_path / "c2" / "ct.nii.gz"


def test_inputs_with_one_id_are_refused_before_anything_is_scored(same_name, toy_weights, tmp_path):
    c1, c2 = same_name
    out, table = tmp_path / "out", tmp_path / "scores.csv"
    r = run("score", c1, c2, "-o", out, "--csv", table, "--weights", toy_weights)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and "id 'ct'" in r.stderr
    assert str(c1) in r.stderr and str(c2) in r.stderr and "Nothing was scored" in r.stderr
    # nothing written: no outputs that overwrite each other, no CSV with two rows 'ct', no manifest to resume
    assert not (out.exists() and any(out.iterdir())) and not table.exists()
    assert not (tmp_path / "scores.csv.manifest.jsonl").exists()
    # the same through the folders: each holds an image, so each is a batch of its own
    r = run("score", c1.parent, c2.parent, "--json", "--weights", toy_weights)
    assert r.exit_code == 2 and "id 'ct'" in r.stderr
    # a name of its own (here a link) is the way out
    (tmp_path / "scans").mkdir()
    os.symlink(c1, tmp_path / "scans" / "c1.nii.gz")
    os.symlink(c2, tmp_path / "scans" / "c2.nii.gz")
    r = run("score", tmp_path / "scans", "-o", out, "--csv", table, "--force", "--weights", toy_weights)
    assert r.exit_code == 0, r.output
    with open(table) as fh:
        assert [row["id"] for row in csv.DictReader(fh)] == ["c1", "c2"]
    assert {p.name for p in out.iterdir()} == {"c1.json", "c1_calcium.nii.gz", "c2.json", "c2_calcium.nii.gz"}


def test_ids_that_differ_in_case_clash_and_eval_refuses_them_too(same_name, toy_weights, tmp_path):
    from cacnet.batch import check_unique_ids

    c1, _ = same_name
    upper = tmp_path / "c3" / "CT.nii.gz"
    upper.parent.mkdir()
    shutil.copy(c1, upper)
    with pytest.raises(UsageError, match="id 'ct'"):
        check_unique_ids([c1, upper])
    check_unique_ids([c1, tmp_path / "other.nii.gz"])  # no clash: nothing raised
    (tmp_path / "truth.csv").write_text("id,agatston\nct,0\n")
    r = run("eval", c1, upper, "--truth", tmp_path / "truth.csv", "--weights", toy_weights)
    assert r.exit_code == 2 and "id 'ct'" in r.stderr and "Traceback" not in r.output


def test_the_cohort_path_refuses_clashing_ids_before_a_cluster_or_a_manifest(same_name, toy_weights, tmp_path):
    c1, c2 = same_name
    csv_file = tmp_path / "run" / "scores.csv"
    for workers in (None, 2):  # serial and Dask: the check comes before any worker starts
        with pytest.raises(UsageError, match="id 'ct'"):
            run_cohort([c1, c2], EnsembleSpec(toy_weights), ScoreOptions(outdir=tmp_path / "o"), csv_file=csv_file,
                       workers=workers)
    assert not csv_file.exists() and not (tmp_path / "run" / "scores.csv.manifest.jsonl").exists()
    r = run("score", c1, c2, "--workers", "2", "--csv", csv_file, "--weights", toy_weights)
    assert r.exit_code == 2 and "id 'ct'" in r.stderr


# --------------------------------------------------------------------------- discovery (issue 24, item 5)


def test_a_folder_of_series_folders_with_a_stray_file_is_a_batch(tmp_path, toy_weights):
    cohort = tmp_path / "cohort"
    a, b = series(cohort / "patient_a", 1), series(cohort / "patient_b", 2)
    (cohort / "README.txt").write_text("where these scans come from")
    (cohort / "truth.csv").write_text("id,agatston\n")
    scans, notes = notes_of([cohort])
    assert scans == [a, b]
    assert len(notes) == 1 and "README.txt" in notes[0] and "truth.csv" in notes[0] and str(cohort) in notes[0]
    r = run("score", cohort, "--json", "--force", "--weights", toy_weights)
    assert "choose one with --series" not in r.output and "Traceback" not in r.output
    assert r.exit_code == 0, r.output
    assert [d["id"] for d in json.loads(r.stdout)] == ["patient_a", "patient_b"]
    assert "note:" in r.stderr and "README.txt" in r.stderr  # the skipped files, named, on stderr
    # a folder of DICOM slices with notes beside them stays one scan
    (a / "notes.txt").write_text("slice notes")
    assert expand_inputs([a]) == [a]
    # a DICOMDIR (or any DICOM file) beside the series folders: one DICOM study, as before
    shutil.copy(a / "slice_000.dcm", cohort / "IM0001")
    assert expand_inputs([cohort]) == [cohort]


def test_linked_series_folders_are_followed_and_loops_are_not(tmp_path):
    store, cohort = tmp_path / "store", tmp_path / "cohort"
    a = series(store / "a", 1)
    cohort.mkdir()
    os.symlink(a, cohort / "linked")  # a link to a series folder in a batch
    series(cohort / "plain", 2)
    os.symlink(cohort, cohort / "loop")  # a link back to the batch itself
    os.symlink(tmp_path / "nowhere", cohort / "broken")
    scans, notes = notes_of([cohort])
    assert scans == [cohort / "linked", cohort / "plain"]
    assert any("loop" in n and "already searched" in n for n in notes)
    assert any("broken" in n and "broken link" in n for n in notes)
    assert read_scan(cohort / "linked").id == "linked"
    # a patient folder whose series folder is a link: read through the link (it was 'no DICOM files found')
    patient = tmp_path / "patient"
    (patient / "study").mkdir(parents=True)
    os.symlink(a, patient / "study" / "series")
    os.symlink(patient, patient / "study" / "up")  # a loop inside a DICOM folder: searched once
    assert read_scan(patient).hu.shape == read_scan(a).hu.shape


def test_nested_folders_images_and_inputs_reached_twice(tmp_path, phantom_scans):
    folder, _ = phantom_scans
    cohort = tmp_path / "cohort"
    (cohort / "lidc").mkdir(parents=True)
    shutil.copy(folder / "case21.nii.gz", cohort / "lidc" / "case21.nii.gz")
    (cohort / "lidc" / "structures.csv").write_text("label,name\n")
    patient = cohort / "patient"  # a patient folder with two reconstructions, each in its own folder
    series(patient / "recon_b30", 1)
    series(patient / "recon_b70", 2)
    series(tmp_path / "loose", 3)
    shutil.copy(tmp_path / "loose" / "slice_000.dcm", cohort / "stray.dcm")  # DICOM beside scans: not scored
    shutil.copy(folder / "case23.nii.gz", cohort / "case23.nii.gz")
    scans, notes = notes_of([cohort, cohort / "lidc" / "case21.nii.gz"])
    assert scans == [cohort / "case23.nii.gz", cohort / "lidc" / "case21.nii.gz", patient]
    assert any("structures.csv" in n for n in notes)
    assert any("stray.dcm" in n and "DICOM" in n for n in notes)
    assert any("same scan" in n and "scored once" in n for n in notes)
    # the patient folder is one scan; its two series say how to score each (not just --series)
    with pytest.raises(Exception, match="each in its own sub-folder") as info:
        read_scan(patient)
    assert "recon_b30/" in str(info.value) and "recon_b70/" in str(info.value) and f"{patient}/*/" in str(info.value)
    # given itself, the patient folder of series folders is a batch
    assert expand_inputs([patient]) == [patient / "recon_b30", patient / "recon_b70"]
