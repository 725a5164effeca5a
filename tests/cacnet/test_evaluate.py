"""`cac eval --dataset`: a converted data set's split (ids from the training manifest), and `--ids`."""

import csv
import json
import shutil

import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from cacnet.cli import app
from cacnet.datasets import TRUTH_COLUMNS
from cacnet.phantom import oriented_image

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def converted(phantom_scans, tmp_path_factory):
    """The layout `cac dataset` writes, with the three phantom scans: images/, labels/, truth.csv."""
    folder, cases = phantom_scans
    out = tmp_path_factory.mktemp("conv") / "conv"
    (out / "images").mkdir(parents=True)
    (out / "labels").mkdir()
    rows = []
    for cid, (case, orientation) in cases.items():
        shutil.copy(folder / f"{cid}.nii.gz", out / "images" / f"{cid}.nii.gz")
        sitk.WriteImage(oriented_image(case.labels, case, orientation), str(out / "labels" / f"{cid}.nii.gz"))
        rows.append({"id": cid, "agatston": case.truth.agatston, "category": case.truth.category})
    with open(out / "truth.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, TRUTH_COLUMNS, restval="")
        w.writeheader()
        w.writerows(rows)
    return out


def trained_weights(toy_weights, folder, data_sets):
    """The toy ensemble with a manifest as `cac train --data` writes it (training.data_sets)."""
    shutil.copytree(toy_weights, folder)
    m = json.loads((folder / "manifest.json").read_text())
    m["training"]["data_sets"] = data_sets
    (folder / "manifest.json").write_text(json.dumps(m))
    return folder


def entry(path, train_ids, val_ids, name=None):
    return {"path": str(path), "name": name or path.name, "cases": len(train_ids) + len(val_ids),
            "train_ids": train_ids, "val_ids": val_ids}


def test_eval_dataset_val_and_train_split_from_the_weights_manifest(converted, toy_weights, tmp_path):
    w = trained_weights(toy_weights, tmp_path / "w", [entry(converted, ["case21", "case23"], ["case22"])])  # D
    r = run("eval", "--dataset", converted, "--weights", w, "--json", "--force")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["n"] == 1 and d["selection"]["split"] == "val" and d["selection"]["n_cases"] == 1
    assert "training.data_sets[].val_ids" in d["selection"]["ids_from"]
    assert d["lesions"]["n_cases"] == 1 and d["lesions"]["sensitivity_count"] == 1.0
    assert d["missing_predictions"] == [] and d["extra_predictions"] == []
    human = run("eval", "--dataset", converted, "--weights", w, "--split", "train", "--force")
    assert human.exit_code == 0, human.output
    assert "2 cases of split train" in human.stdout and "C-index" in human.stdout
    assert "lesions (2 scans with masks)" in human.stdout


def test_eval_dataset_all_and_ids_filter(converted, toy_weights, tmp_path):
    r = run("eval", "--dataset", converted, "--split", "all", "--weights", toy_weights, "--json", "--force")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["n"] == 3 and d["lesions"]["n_cases"] == 3 and d["selection"]["ids_from"] == "every case"
    (tmp_path / "ids.txt").write_text("# held out\ncase21\n\ncase23\n")
    # --pred with --dataset: predictions from a CSV, truth and split from the folder.
    (tmp_path / "pred.csv").write_text("id,agatston,status\ncase21,5,ok\ncase22,50,ok\ncase23,0,ok\n")
    r = run("eval", "--dataset", converted, "--split", "all", "--ids", tmp_path / "ids.txt",
            "--pred", tmp_path / "pred.csv", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["n"] == 2 and d["extra_predictions"] == [] and "lesions" not in d


def test_eval_dataset_manifest_matched_by_folder_name(converted, tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"training": {"data_sets": [
        entry(tmp_path / "elsewhere" / "other", ["case21"], ["case22"]),
        entry(tmp_path / "moved" / converted.name, ["case21"], ["case22", "case23"])]}}))
    (tmp_path / "ids.txt").write_text("case23\ncase21\n")
    (tmp_path / "pred.csv").write_text("id,agatston,status\ncase21,5,ok\ncase22,50,ok\ncase23,0,ok\n")
    r = run("eval", "--dataset", converted, "--manifest", tmp_path / "m.json", "--pred", tmp_path / "pred.csv",
            "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n"] == 2
    r = run("eval", "--dataset", converted, "--manifest", tmp_path / "m.json", "--pred", tmp_path / "pred.csv",
            "--ids", tmp_path / "ids.txt", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n"] == 1  # case23: in the val split and in --ids


def test_eval_ids_filters_truth_and_predictions(tmp_path):
    (tmp_path / "truth.csv").write_text("id,agatston\na,0\nb,5\nc,50\nd,250\n")
    (tmp_path / "pred.csv").write_text("id,agatston,status\na,0,ok\nb,4,ok\nc,60,ok\nd,500,ok\n")
    (tmp_path / "ids.txt").write_text("a\nc\nz\n")
    r = run("eval", "--truth", tmp_path / "truth.csv", "--pred", tmp_path / "pred.csv", "--ids", tmp_path / "ids.txt",
            "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["n"] == 2 and d["extra_predictions"] == [] and d["missing_predictions"] == []
    assert "1 ids of" in r.stderr and "z" in r.stderr


def test_eval_ids_filters_scans_before_scoring(phantom_scans, toy_weights, tmp_path):
    folder, cases = phantom_scans
    rows = ["id,agatston"] + [f"{cid},{case.truth.agatston}" for cid, (case, _) in cases.items()]
    (tmp_path / "truth.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "ids.txt").write_text("case22\n")
    r = run("eval", folder, "--truth", tmp_path / "truth.csv", "--ids", tmp_path / "ids.txt", "--weights", toy_weights,
            "--json", "--force")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["n"] == 1 and d["extra_predictions"] == []


@pytest.mark.parametrize(
    "data_sets, args, code, message",
    [
        (None, ["--weights", "TOY"], 3, "looked for training.data_sets[].val_ids"),
        (None, ["--weights", "TOY", "--split", "train"], 3, "looked for training.data_sets[].train_ids"),
        ("other", ["--manifest", "M"], 3, "no data set in training.data_sets is"),
        ("ghost", ["--manifest", "M"], 3, "1 of the 2 ids have no image in"),
        ("empty", ["--manifest", "M"], 3, "val_ids of conv is empty"),
        (None, [], 2, "give --weights WEIGHTS"),
        (None, ["--split", "test", "--manifest", "M"], 2, "--split must be val, train or all"),
        (None, ["--split", "all", "--truth", "T"], 2, "do not give --truth with it"),
        (None, ["--split", "all", "--weights", "TOY", "--ids", "NOPE"], 3, "no such ids file"),
        ("ids", ["--manifest", "M", "--ids", "IDS"], 3, "none of the 1 ids of"),
    ],
)
def test_eval_dataset_errors(converted, toy_weights, tmp_path, data_sets, args, code, message):
    sets = {"other": [{"path": "/x/other", "name": "other", "train_ids": ["a"], "val_ids": ["b"]}],
            "ghost": [entry(converted, ["case21"], ["case22", "ghost"])],
            "empty": [entry(converted, ["case21", "case22", "case23"], [])],
            "ids": [entry(converted, ["case21", "case22"], ["case23"])]}.get(data_sets, data_sets)
    (tmp_path / "m.json").write_text(json.dumps({"training": {"data_sets": sets} if sets else {}}))
    (tmp_path / "ids.txt").write_text("case21\n")
    subst = {"TOY": toy_weights, "M": tmp_path / "m.json", "T": tmp_path / "m.json", "NOPE": tmp_path / "nope.txt",
             "IDS": tmp_path / "ids.txt"}
    r = run("eval", "--dataset", converted, *[subst.get(a, a) for a in args])
    assert r.exit_code == code, r.output
    assert message in r.stderr and "Traceback" not in r.output


def test_eval_split_needs_dataset_and_dataset_needs_layout(tmp_path):
    (tmp_path / "t.csv").write_text("id,agatston\na,0\n")
    (tmp_path / "p.csv").write_text("id,agatston,status\na,0,ok\n")
    r = run("eval", "--truth", tmp_path / "t.csv", "--pred", tmp_path / "p.csv", "--split", "val")
    assert r.exit_code == 2 and "--split go with --dataset" in r.stderr
    r = run("eval", "--pred", tmp_path / "p.csv")
    assert r.exit_code == 2 and "--dataset DIR" in r.stderr
    r = run("eval", "--dataset", tmp_path, "--split", "all", "--pred", tmp_path / "p.csv")
    assert r.exit_code == 3 and "no images/ folder" in r.stderr


GOOD_CSV = "id,agatston\na,0\nb,5\nc,50\n"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "not a CSV file but a PNG image"),
        (bytes(range(256)) * 4, "not a CSV file but binary data"),
        (b"PK\x03\x04" + bytes(60), "an Excel .xlsx workbook"),
        ("id,agatston\n\u00e9,0\n".encode("latin-1"), "line 2: not UTF-8 text"),
        (b"", "CSV is empty"),
        (b"\n \n", "CSV is empty"),
        (b"id,agatston\n", "a header but no rows"),
        (b"case,score\na,1\n", "no 'id' column in its header ('case', 'score')"),
        (b"id;agatston\na;1\n", "separated by something other than commas"),
        (b"id,score\na,1\n", "needs an 'agatston' or a 'category' column"),
        (b"id,agatston\na,12 HU\n", "line 2: agatston '12 HU' is not a number"),
        (b"id,agatston\na,nan\n", "line 2: agatston 'nan' is not a score"),
        (b"id,agatston\na,-3\n", "line 2: agatston '-3' is not a score"),
        (b"id,agatston,category\na\n", "line 2: neither agatston nor category given for 'a'"),
        (b"id,agatston\na,1,5\n", "line 2: more values than the 2 columns"),
        (b"id,agatston\n,4\n", "line 2: the id is empty"),
        (b"id,category\na,Z\n", "line 2: category 'Z'"),
    ],
    ids=["png", "binary", "xlsx", "latin-1", "empty", "blank", "header only", "no id", "semicolons", "no score",
         "text score", "nan", "negative", "short row", "long row", "empty id", "bad category"],
)
@pytest.mark.parametrize("which", ["--pred", "--truth"])
def test_eval_says_what_is_wrong_with_a_csv(tmp_path, which, content, message):
    bad, good = tmp_path / "bad.bin", tmp_path / "good.csv"
    bad.write_bytes(content)
    good.write_text(GOOD_CSV)
    args = ["--truth", bad, "--pred", good] if which == "--truth" else ["--truth", good, "--pred", bad]
    r = run("eval", *args)
    assert r.exit_code == 3, r.output
    assert "Traceback" not in r.output and isinstance(r.exception, SystemExit)
    assert str(bad) in r.stderr and message in r.stderr, r.stderr


def test_eval_reads_excel_csv_with_a_byte_order_mark_and_spaces(tmp_path):
    (tmp_path / "truth.csv").write_bytes("\ufeffid, agatston\r\na, 0\r\nb, 5\r\nc,50\r\n".encode("utf-8"))
    (tmp_path / "pred.csv").write_text("id,agatston,status,warnings\na,0,ok,\nb,4,ok,\"x, y\"\nc,60,ok,\nd,,error,\n")
    r = run("eval", "--truth", tmp_path / "truth.csv", "--pred", tmp_path / "pred.csv", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n"] == 3
    (tmp_path / "folder.csv").mkdir()
    r = run("eval", "--truth", tmp_path / "folder.csv", "--pred", tmp_path / "pred.csv")
    assert r.exit_code == 3 and "a folder, not a truth CSV file" in r.stderr
    (tmp_path / "ids.txt").write_bytes(b"\xff\xfe\x00a")
    r = run("eval", "--truth", tmp_path / "truth.csv", "--pred", tmp_path / "pred.csv", "--ids", tmp_path / "ids.txt")
    assert r.exit_code == 3 and "cannot read the ids file as UTF-8 text" in r.stderr and "Traceback" not in r.output
