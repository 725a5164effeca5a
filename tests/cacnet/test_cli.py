"""The `cac` command through typer's CliRunner and a real subprocess."""

import csv
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from cacnet.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_single_scan_json(phantom_scans, toy_weights):
    folder, _ = phantom_scans
    r = run("score", folder / "case21.nii.gz", "--json", "--weights", toy_weights, "--force")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["id"] == "case21" and {"agatston", "category", "volume_mm3", "arteries", "lesions", "warnings"} <= set(d)


def test_table_output(phantom_scans, toy_weights):
    folder, _ = phantom_scans
    r = run("score", folder / "case23.nii.gz", "--weights", toy_weights, "--force")
    assert r.exit_code == 0 and "case23" in r.stdout and "Agatston" in r.stdout


def test_outputs_on_the_input_grid(phantom_scans, toy_weights, tmp_path):
    folder, cases = phantom_scans
    r = run("score", folder / "case22.nii.gz", "-o", tmp_path / "out", "--preview", "--csv", tmp_path / "s.csv",
            "--weights", toy_weights, "--force")
    assert r.exit_code == 0, r.output
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {"case22.json", "case22_calcium.nii.gz", "case22.png"}
    src = sitk.ReadImage(str(folder / "case22.nii.gz"))
    mask = sitk.ReadImage(str(out / "case22_calcium.nii.gz"))
    assert mask.GetSize() == src.GetSize() and mask.GetSpacing() == pytest.approx(src.GetSpacing())
    assert mask.GetOrigin() == pytest.approx(src.GetOrigin(), abs=1e-3)
    assert mask.GetDirection() == pytest.approx(src.GetDirection())
    m, hu = sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(src)
    assert m.dtype == np.uint8 and m.any() and (hu[m > 0] >= 130).all()
    with open(tmp_path / "s.csv") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["id"] == "case22" and row["status"] == "ok"
    d = json.loads((out / "case22.json").read_text())
    assert float(row["agatston"]) == pytest.approx(d["agatston"], abs=1e-3)


def test_batch_goes_on_past_a_bad_scan(phantom_scans, toy_weights, tmp_path):
    folder, _ = phantom_scans
    batch = tmp_path / "batch"
    batch.mkdir()
    for name in ("case21.nii.gz", "case23.nii.gz"):
        shutil.copy(folder / name, batch / name)
    (batch / "broken.nii.gz").write_bytes((folder / "case22.nii.gz").read_bytes()[:5000])
    r = run("score", batch, "--csv", tmp_path / "b.csv", "-o", tmp_path / "o", "--weights", toy_weights, "--force")
    assert r.exit_code == 4
    assert "broken.nii.gz" in r.stderr and "Traceback" not in r.output
    with open(tmp_path / "b.csv") as fh:
        rows = {row["id"]: row for row in csv.DictReader(fh)}
    assert rows["broken"]["status"] == "error" and "truncated" in rows["broken"]["error"]
    assert rows["case21"]["status"] == "ok" and rows["case23"]["status"] == "ok"
    assert not list((tmp_path / "o").glob(".*"))  # nothing half-written
    again = run("score", batch, "-o", tmp_path / "o", "--skip-existing", "--csv", tmp_path / "c.csv",
                "--weights", toy_weights, "--force")
    with open(tmp_path / "c.csv") as fh:
        statuses = {row["id"]: row["status"] for row in csv.DictReader(fh)}
    assert statuses == {"case21": "skipped", "case23": "skipped", "broken": "error"} and again.exit_code == 4
    ff = run("score", batch / "broken.nii.gz", batch / "case21.nii.gz", "--fail-fast", "--csv", tmp_path / "f.csv",
             "--weights", toy_weights)
    assert ff.exit_code == 3
    with open(tmp_path / "f.csv") as fh:
        assert [row["id"] for row in csv.DictReader(fh)] == ["broken"]


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["score", "MISSING.nii.gz"], 3, "no such file"),
        (["score", "X", "--device", "tpu"], 2, "--device must be auto, cpu or cuda"),
        (["score", "X", "--calibration", "-1"], 2, "--calibration must be a positive"),
        (["score", "X", "--preview"], 2, "need -o OUTDIR"),
    ],
)
def test_usage_and_input_errors(tmp_path, toy_weights, args, code, message):
    args = [a.replace("MISSING", str(tmp_path / "missing")) for a in args]
    r = run(*args, "--weights", toy_weights)
    assert r.exit_code == code and message in r.stderr and "Traceback" not in r.output


def test_device_and_weights_errors(phantom_scans, tmp_path, toy_weights):
    import onnxruntime as ort

    folder, _ = phantom_scans
    r = run("score", folder / "case21.nii.gz", "--weights", tmp_path)
    assert r.exit_code == 3 and "no weights manifest" in r.stderr
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        r = run("score", folder / "case21.nii.gz", "--device", "cuda", "--weights", toy_weights)
        assert r.exit_code == 5 and "onnxruntime-gpu" in r.stderr


def test_eval_from_csv(tmp_path):
    (tmp_path / "truth.csv").write_text("id,agatston\na,0\nb,5\nc,50\nd,250\ne,900\nf,3\n")
    (tmp_path / "pred.csv").write_text("id,agatston,status\na,0,ok\nb,4,ok\nc,60,ok\nd,500,ok\ne,1000,ok\ng,1,ok\n")
    r = run("eval", "--truth", tmp_path / "truth.csv", "--pred", tmp_path / "pred.csv", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["n"] == 5 and d["accuracy"] == pytest.approx(0.8) and d["missing_predictions"] == ["f"]
    assert d["extra_predictions"] == ["g"] and d["confusion_matrix"]["counts"][3][4] == 1
    assert 0 < d["c_index"] <= 1 and "icc" in d and "bland_altman" in d
    human = run("eval", "--truth", tmp_path / "truth.csv", "--pred", tmp_path / "pred.csv")
    assert human.exit_code == 0 and "C-index" in human.stdout
    bad = run("eval", "--truth", tmp_path / "nope.csv", "--pred", tmp_path / "pred.csv")
    assert bad.exit_code == 3 and "no such truth CSV" in bad.stderr


def test_eval_scans_with_masks(phantom_scans, toy_weights, tmp_path):
    folder, cases = phantom_scans
    masks = tmp_path / "masks"
    masks.mkdir()
    rows = ["id,agatston"]
    for cid, (case, orientation) in cases.items():
        from cacnet.phantom import oriented_image

        sitk.WriteImage(oriented_image(case.labels, case, orientation), str(masks / f"{cid}.nii.gz"))
        rows.append(f"{cid},{case.truth.agatston}")
    (tmp_path / "truth.csv").write_text("\n".join(rows) + "\n")
    r = run("eval", folder, "--truth", tmp_path / "truth.csv", "--truth-masks", masks, "--json",
            "--weights", toy_weights, "--force")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["n"] == 3 and d["lesions"]["n_cases"] == 3
    assert d["lesions"]["sensitivity_count"] == 1.0  # >= 130 HU everywhere finds every lesion
    assert d["lesions"]["ppv_count"] < 0.5  # ... and bone with it


def test_info(toy_weights):
    r = run("info", "--weights", toy_weights)
    assert r.exit_code == 0 and "toy_0.onnx" in r.stdout and "CPUExecutionProvider" in r.stdout


def test_real_subprocess(phantom_scans, toy_weights):
    folder, _ = phantom_scans
    out = subprocess.run([sys.executable, "-m", "cacnet", "score", str(folder / "case23.nii.gz"), "--json",
                          "--weights", str(toy_weights), "--force"], capture_output=True, encoding="utf-8", errors="replace", timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["id"] == "case23"
    bad = subprocess.run([sys.executable, "-m", "cacnet", "score", str(folder / "nope.nii.gz"),
                          "--weights", str(toy_weights)], capture_output=True, encoding="utf-8", errors="replace", timeout=120)
    assert bad.returncode == 3 and "no such file" in bad.stderr and "Traceback" not in bad.stderr


def _modes(folder):
    import stat

    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640)])
def test_score_outputs_get_the_umask_permissions(phantom_scans, toy_weights, tmp_path, mask, expected):
    import os

    folder, _ = phantom_scans
    old = os.umask(mask)
    try:
        r = run("score", folder / "case23.nii.gz", "-o", tmp_path / "out", "--preview", "--csv",
                tmp_path / "out" / "scores.csv", "--weights", toy_weights, "--force")
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    assert _modes(tmp_path / "out") == {name: expected for name in
                                        ("case23.json", "case23_calcium.nii.gz", "case23.png", "scores.csv",
                                         "scores.csv.manifest.jsonl")}


def test_json_reports_every_input_in_order(phantom_scans, toy_weights, tmp_path):
    folder, _ = phantom_scans
    batch = tmp_path / "batch"
    batch.mkdir()
    shutil.copy(folder / "case21.nii.gz", batch / "case21.nii.gz")
    (batch / "broken.nii.gz").write_bytes((folder / "case22.nii.gz").read_bytes()[:5000])
    r = run("score", batch, "--json", "-o", tmp_path / "o", "--weights", toy_weights, "--force")
    assert r.exit_code == 4
    broken, ok = json.loads(r.stdout)
    assert broken["id"] == "broken" and broken["status"] == "error" and broken["exit_code"] == 3
    assert broken["input"] == str(batch / "broken.nii.gz") and "truncated" in broken["error"]
    assert set(broken) == {"id", "input", "status", "error", "exit_code"}
    assert ok["id"] == "case21" and ok["status"] == "ok" and ok["input"] == str(batch / "case21.nii.gz")
    written = json.loads((tmp_path / "o" / "case21.json").read_text())
    assert "status" not in written and {k: v for k, v in ok.items() if k not in ("status", "input")} == written
    again = run("score", batch / "case21.nii.gz", batch / "broken.nii.gz", "--json", "-o", tmp_path / "o",
                "--skip-existing", "--weights", toy_weights)
    assert again.exit_code == 4
    assert [(d["id"], d["status"]) for d in json.loads(again.stdout)] == [("case21", "skipped"), ("broken", "error")]


def test_json_of_one_failed_input_is_one_object(tmp_path, toy_weights):
    empty = tmp_path / "emptydir"
    empty.mkdir()
    r = run("score", empty, "--json", "--weights", toy_weights)
    assert r.exit_code == 3
    d = json.loads(r.stdout)
    assert d == {"id": "emptydir", "input": str(empty), "status": "error", "exit_code": 3,
                 "error": f"{empty}: no DICOM files found; expected a folder of DICOM slices of one CT series."}
    missing = run("score", tmp_path / "nope.nii.gz", "--json", "--weights", toy_weights)
    assert missing.exit_code == 3 and json.loads(missing.stdout)["status"] == "error"


def test_result_json_fields(phantom_scans, toy_weights):
    import onnxruntime as ort

    folder, _ = phantom_scans
    r = run("score", folder / "case22.nii.gz", "--json", "--weights", toy_weights, "--force")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["status"] == "ok"
    # running on the CPU under --device auto is normal: reported as the provider, not warned about
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        from cacnet.ensemble import openvino_available

        backend = "openvino" if openvino_available() else "onnxruntime"
        assert {k: d["models"][k] for k in ("backend", "provider", "device", "precision")} == {
            "backend": backend, "provider": {"openvino": "OpenVINO:CPU", "onnxruntime": "CPUExecutionProvider"}[backend],
            "device": "cpu", "precision": "fp32"}
        assert ("openvino" in d["versions"]) == (backend == "openvino")
    assert not any("CUDA" in w or "device" in w for w in d["warnings"])
    # n_lesions counts 3D lesions; lesions holds the 2D records, n_lesions_2d of them
    assert d["n_lesions_2d"] == len(d["lesions"]) and d["n_lesions"] == len({les["lesion_id"] for les in d["lesions"]})
    assert d["n_lesions"] < d["n_lesions_2d"]  # the phantom's plaques span several slices
    assert d["cac_drs"]["label"].startswith("CAC-DRS A")


def test_cac_drs_label_is_the_same_in_json_csv_and_table(phantom_scans, toy_weights, tmp_path):
    folder, _ = phantom_scans
    r = run("score", folder / "case21.nii.gz", "-o", tmp_path, "--csv", tmp_path / "s.csv", "--weights", toy_weights,
            "--force")
    assert r.exit_code == 0, r.output
    label = json.loads((tmp_path / "case21.json").read_text())["cac_drs"]["label"]
    with open(tmp_path / "s.csv") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["cac_drs"] == label and label.startswith("CAC-DRS A") and label in r.stdout


@pytest.mark.parametrize("command", [[], ["score"], ["eval"], ["phantom"], ["train"], ["info"]])
def test_help_shows_no_bool_type(command):
    r = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert r.exit_code == 0, r.output
    assert "--help" in r.stdout and "<bool>" not in r.stdout and "BOOLEAN" not in r.stdout.upper()


def test_eval_help_documents_device_and_weights():
    r = runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    entries = [" ".join(e.split()) for e in re.split(r"\n(?=  -)", r.stdout)]  # an option's help, wrapped lines joined
    lines = {opt: next(e for e in entries if e.startswith(f"--{opt} ")) for opt in ("device", "weights")}
    assert "auto, cpu or cuda" in lines["device"] and "weights folder" in lines["weights"]


def test_eval_says_what_is_missing_or_too_much(tmp_path):
    (tmp_path / "t.csv").write_text("id,agatston\na,0\n")
    (tmp_path / "p.csv").write_text("id,agatston,status\na,0,ok\n")
    neither = run("eval", "--truth", tmp_path / "t.csv")
    assert neither.exit_code == 2 and "nothing to evaluate" in neither.stderr and "not both" not in neither.stderr
    both = run("eval", "--truth", tmp_path / "t.csv", "--pred", tmp_path / "p.csv", tmp_path)
    assert both.exit_code == 2 and "not both" in both.stderr
    device = run("eval", "--truth", tmp_path / "t.csv", tmp_path, "--device", "tpu")
    assert device.exit_code == 2 and "--device must be auto, cpu or cuda" in device.stderr


def test_empty_folder_has_no_itk_warning(tmp_path, toy_weights):
    empty = tmp_path / "emptydir"
    empty.mkdir()
    out = subprocess.run([sys.executable, "-m", "cacnet", "score", str(empty), "--weights", str(toy_weights)],
                         capture_output=True, encoding="utf-8", errors="replace", timeout=120)
    assert out.returncode == 3
    assert "no DICOM files found" in out.stderr and "No Series were found" not in out.stderr
    assert "WARNING" not in out.stderr


def test_backends_give_the_same_result(phantom_scans, toy_weights):
    folder, _ = phantom_scans
    out = {}
    for backend in ("onnxruntime", "auto"):
        r = run("score", folder / "case21.nii.gz", "--json", "--weights", toy_weights, "--backend", backend, "--force")
        assert r.exit_code == 0, r.output
        out[backend] = json.loads(r.stdout)
    assert out["onnxruntime"]["models"]["backend"] == "onnxruntime"
    assert out["onnxruntime"]["models"]["provider"] == "CPUExecutionProvider"
    for k in ("agatston", "arteries", "lesions", "rejected_candidates"):
        assert out["auto"][k] == out["onnxruntime"][k]


@pytest.mark.parametrize(
    "args, message",
    [
        (["score", "X", "--backend", "tensorrt"], "--backend must be auto, openvino or onnxruntime"),
        (["eval", "--truth", "T", "X", "--backend", "tensorrt"], "--backend must be auto, openvino or onnxruntime"),
        (["score", "X", "--precision", "fp16"], "--precision must be fp32 or bf16"),
        (["score", "X", "--precision", "bf16", "--backend", "onnxruntime"], "needs the OpenVINO backend"),
    ],
)
def test_backend_usage_errors(phantom_scans, toy_weights, args, message):
    folder, _ = phantom_scans
    args = [str(folder / "case21.nii.gz") if a == "X" else a for a in args]
    r = run(*args, "--weights", toy_weights)
    assert r.exit_code == 2 and message in r.stderr and "Traceback" not in r.output


def test_bf16_refused_on_a_cpu_without_it(phantom_scans, toy_weights, monkeypatch):
    import cacnet.ensemble as ensemble_mod

    monkeypatch.setattr(ensemble_mod, "openvino_available", lambda: True)
    monkeypatch.setattr(ensemble_mod, "cpu_supports_bf16", lambda: False)
    folder, _ = phantom_scans
    r = run("score", folder / "case21.nii.gz", "--precision", "bf16", "--device", "cpu", "--weights", toy_weights)
    assert r.exit_code == 2 and "no bf16 support" in r.stderr and "Traceback" not in r.output
