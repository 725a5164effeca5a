"""What `cac` prints: text with square brackets, output locations, --help at 80 columns, Ctrl-C (issue 24)."""

import csv
import json
import os
import re
import shutil
import sys

import pytest
import typer
from typer.testing import CliRunner

from cacnet.cli import app

runner = CliRunner()


def run(*args, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


@pytest.fixture
def bracket_batch(phantom_scans, tmp_path):
    """A batch whose scan names hold rich markup: two good scans and a broken one (score with --force: tiny scans)."""
    folder, _ = phantom_scans
    batch = tmp_path / "in[b]"
    batch.mkdir()
    shutil.copy(folder / "case21.nii.gz", batch / "scan[dicom].nii.gz")
    shutil.copy(folder / "case23.nii.gz", batch / "[red]x.nii.gz")
    (batch / "bad[x].nii.gz").write_bytes((folder / "case22.nii.gz").read_bytes()[:5000])
    return batch


# ----------------------------------------------------------------------------------------- 1. square brackets


def test_bracketed_names_and_paths_print_as_they_are(bracket_batch, toy_weights, tmp_path, monkeypatch):
    from cacnet.cohort import _scan

    real = _scan.score_scan

    def with_a_warning(*args, **kwargs):  # a warning naming the scan, through the warnings route
        res = real(*args, **kwargs)
        res.data["warnings"].append("look at [bold]this[/bold]")
        return res

    monkeypatch.setattr(_scan, "score_scan", with_a_warning)
    out = tmp_path / "brout[x]"
    r = run("score", bracket_batch, "-o", out, "--csv", out / "s.csv", "--force", "--weights", toy_weights)
    assert r.exit_code == 4, r.output
    table = r.stdout
    assert "scan[dicom]" in table and "[red]x" in table and "bad[x]" in table
    assert "warning scan[dicom]: look at [bold]this[/bold]" in r.stderr
    assert "warning [red]x: look at [bold]this[/bold]" in r.stderr
    assert f"error: {bracket_batch / 'bad[x].nii.gz'}: " in r.stderr
    assert f"see the messages above and {out / 's.csv'}" in r.stderr
    assert "Traceback" not in r.output


def test_bracketed_option_values_and_internal_errors(phantom_scans, toy_weights, monkeypatch):
    folder, _ = phantom_scans
    r = run("score", folder / "case21.nii.gz", "--device", "[red]gpu", "--weights", toy_weights)
    assert r.exit_code == 2 and "got '[red]gpu'" in r.stderr
    r = run("score", folder / "case21.nii.gz", "--no-such[x]")  # click's own error
    assert r.exit_code == 2 and "--no-such[x]" in r.output

    from cacnet.cohort import _scan

    def boom(*args, **kwargs):
        raise RuntimeError("boom [red]here[/red]")

    monkeypatch.setattr(_scan, "score_scan", boom)
    r = run("score", folder / "case21.nii.gz", "--force", "--weights", toy_weights)
    assert "RuntimeError('boom [red]here[/red]') (please report it)" in r.stderr and "Traceback" not in r.output


def test_install_hints_keep_their_extras(phantom_scans, tmp_path, monkeypatch):
    folder, _ = phantom_scans
    monkeypatch.setitem(sys.modules, "highdicom", None)  # the dicom extra is not installed
    r = run("score", folder, "--dicom", "-o", tmp_path / "o")
    assert r.exit_code == 2 and "pip install 'cac-toolkit[dicom]'" in r.stderr
    monkeypatch.setitem(sys.modules, "cacnet.train", None)  # the train extra (torch) is not installed
    r = run("train", tmp_path / "run")
    assert r.exit_code == 2 and "pip install '.[train]'" in r.stderr


def test_eval_notes_keep_bracketed_ids(tmp_path):
    (tmp_path / "t.csv").write_text("id,agatston\na[1],0\n[red]b,10\n")
    (tmp_path / "p.csv").write_text("id,agatston,status\na[1],0,ok\n")
    (tmp_path / "ids.txt").write_text("a[1]\n[red]b\n[bold]c\n")
    r = run("eval", "--truth", tmp_path / "t.csv", "--pred", tmp_path / "p.csv", "--ids", tmp_path / "ids.txt")
    assert r.exit_code == 0, r.output
    assert "have no truth row: [bold]c" in r.stderr
    assert "no prediction for: [red]b" in r.stdout


# ----------------------------------------------------------------------------------------- 4. output locations


@pytest.fixture
def no_scoring(monkeypatch):
    """Fail the test if a scan is scored: output problems must come first."""
    from cacnet.cohort import _scan

    def scored(*args, **kwargs):
        raise AssertionError("a scan was scored")

    monkeypatch.setattr(_scan, "score_scan", scored)


def _assert_output_error(r, *phrases):
    assert r.exit_code == 7, r.output
    assert "internal error" not in r.output and "Traceback" not in r.output and "AssertionError" not in r.output
    for p in phrases:
        assert p in r.stderr, r.stderr


def test_outdir_that_is_a_file(phantom_scans, toy_weights, tmp_path, no_scoring):
    folder, _ = phantom_scans
    (tmp_path / "taken").write_text("x")
    r = run("score", folder / "case21.nii.gz", "-o", tmp_path / "taken", "--json", "--weights", toy_weights)
    _assert_output_error(r, f"-o {tmp_path / 'taken'} is a file, not a folder")  # was: internal error FileExistsError
    r = run("score", folder / "case21.nii.gz", "-o", tmp_path / "taken" / "sub", "--weights", toy_weights)
    _assert_output_error(r, f"-o {tmp_path / 'taken' / 'sub'}: cannot create this folder, a part of its path is a file")


def test_outdir_not_writable(phantom_scans, toy_weights, tmp_path, no_scoring, monkeypatch):
    from cacnet import _files

    def read_only(folder, prefix, suffix):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(_files, "_create_temp_file", read_only)
    folder, _ = phantom_scans
    r = run("score", folder / "case21.nii.gz", "-o", tmp_path / "ro", "--json", "--weights", toy_weights)
    _assert_output_error(r, f"-o {tmp_path / 'ro'}: cannot write files there (Read-only file system)")
    assert r.stdout == ""


def test_outdir_the_kernel_refuses(phantom_scans, toy_weights, no_scoring):
    """A folder that refuses root too (sysfs), where the file system is there to try it."""
    try:
        os.mkdir("/sys/cac-write-test")
    except OSError:
        pass
    else:  # pragma: no cover - a writable /sys
        os.rmdir("/sys/cac-write-test")
        pytest.skip("/sys can be written here")
    folder, _ = phantom_scans
    r = run("score", folder / "case21.nii.gz", "-o", "/sys/cac-out", "--weights", toy_weights)
    _assert_output_error(r, "-o /sys/cac-out: cannot create this folder")


def test_csv_locations(phantom_scans, toy_weights, tmp_path, no_scoring):
    folder, _ = phantom_scans
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder.csv").mkdir()
    scan = folder / "case21.nii.gz"
    r = run("score", scan, "--csv", tmp_path / "folder.csv", "--weights", toy_weights)
    _assert_output_error(r, f"--csv {tmp_path / 'folder.csv'} is a folder, not a file")
    r = run("score", scan, "--csv", tmp_path / "file" / "s.csv", "--weights", toy_weights)
    _assert_output_error(r, f"{tmp_path / 'file'} is a file, not a folder")
    (tmp_path / "m.csv.manifest.jsonl").mkdir()
    r = run("score", scan, "--csv", tmp_path / "m.csv", "--weights", toy_weights)
    _assert_output_error(r, "is a folder, not a file")


def test_existing_csv_not_writable(phantom_scans, toy_weights, tmp_path, no_scoring, monkeypatch):
    import builtins

    (tmp_path / "s.csv").write_text("id\n")
    real_open = builtins.open

    def refusing(path, mode="r", *args, **kwargs):
        if str(path) == str(tmp_path / "s.csv") and mode != "r":
            raise PermissionError(13, "Permission denied")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing)
    folder, _ = phantom_scans
    r = run("score", folder / "case21.nii.gz", "--csv", tmp_path / "s.csv", "--weights", toy_weights)
    _assert_output_error(r, f"--csv {tmp_path / 's.csv'}: cannot write this file (Permission denied)")
    assert (tmp_path / "s.csv").read_text() == "id\n"


def test_outputs_failing_mid_run_are_an_output_error(phantom_scans, toy_weights, tmp_path, monkeypatch):
    from cacnet.cohort import _manifest, _scan

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_scan, "write_outputs", disk_full)
    folder, _ = phantom_scans
    r = run("score", folder / "case21.nii.gz", "-o", tmp_path / "o", "--json", "--force", "--weights", toy_weights)
    assert r.exit_code == 7 and "internal error" not in r.output
    d = json.loads(r.stdout)
    assert d["exit_code"] == r.exit_code and "No space left on device" in d["error"]
    assert "case21: cannot write its outputs in" in r.stderr

    monkeypatch.setattr(_manifest, "write_csv_atomic", disk_full)  # the CSV, mid-run
    r = run("score", folder / "case21.nii.gz", "--csv", tmp_path / "s.csv", "--force", "--weights", toy_weights)
    _assert_output_error(r, "cannot write the run's results", "No space left on device")


def test_json_exit_code_is_the_exit_code(phantom_scans, toy_weights, monkeypatch):
    from cacnet.cohort import _scan

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(_scan, "score_scan", boom)
    folder, _ = phantom_scans
    r = run("score", folder / "case21.nii.gz", "--json", "--force", "--weights", toy_weights)
    assert json.loads(r.stdout)["exit_code"] == r.exit_code == 1  # was: JSON 1, exit 4


def test_phantom_output_problems(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    r = run("phantom", tmp_path / "file" / "sub", "--n", "1")
    _assert_output_error(r, f"OUTDIR {tmp_path / 'file' / 'sub'}: cannot create this folder")
    r = run("phantom", tmp_path / "file", "--n", "1")
    _assert_output_error(r, f"OUTDIR {tmp_path / 'file'} is a file")

    import cacnet.phantom

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cacnet.phantom, "make_phantoms", disk_full)
    r = run("phantom", tmp_path / "p", "--n", "1")
    _assert_output_error(r, f"cannot write the phantoms in {tmp_path / 'p'}", "No space left on device")


# ----------------------------------------------------------------------------------------- 9. help at 80 columns


def _command_paths(command, path=()):
    yield path, command
    if hasattr(command, "commands"):  # a group (of click, or of typer's copy of click)
        for name, sub in command.commands.items():
            yield from _command_paths(sub, (*path, name))


COMMANDS = list(_command_paths(typer.main.get_command(app)))


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) or "cac" for p, _ in COMMANDS])
def test_help_reads_at_80_columns(path, command):
    r = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in r.stdout
    words = r.stdout.split()
    for param in command.params:  # every option name whole, none cut at the end of a line
        for name in [*param.opts, *param.secondary_opts]:
            if name.startswith("-"):
                assert name in words or any(w.startswith(name) for w in words), (name, r.stdout)
    assert not [line for line in lines if re.search(r"--[\w-]*-$", line)], r.stdout
    if hasattr(command, "commands"):  # each sub-command's first sentence whole, not cut with '...'
        flat = " ".join(words)
        for sub in command.commands.values():
            first = re.split(r"(?<=\.)\s", " ".join((sub.help or "").split()), maxsplit=1)[0]
            assert first in flat, (first, r.stdout)


def test_help_keeps_brackets():
    r = runner.invoke(app, ["score", "--help"], env={"COLUMNS": "80"})
    assert "HOST:PORT[:AET]" in r.stdout


# ----------------------------------------------------------------------------------------- 10. Ctrl-C


@pytest.fixture
def interrupted_after_one(monkeypatch):
    """Ctrl-C while the second scan is scored."""
    from cacnet.cohort import _scan

    real, calls = _scan.score_scan, []

    def score_scan(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(_scan, "score_scan", score_scan)
    return monkeypatch


def _three(phantom_scans, tmp_path):
    folder, _ = phantom_scans
    batch = tmp_path / "batch"
    batch.mkdir()
    for name in ("case21.nii.gz", "case22.nii.gz", "case23.nii.gz"):
        shutil.copy(folder / name, batch / name)
    return batch


def _no_temp_files(*folders):
    return not [p for f in folders if f.exists() for p in f.rglob("*") if ".tmp" in p.name]


def test_ctrl_c_with_csv_says_how_to_resume(phantom_scans, toy_weights, tmp_path, interrupted_after_one):
    batch = _three(phantom_scans, tmp_path)
    out, table = tmp_path / "out", tmp_path / "res" / "s.csv"
    r = run("score", batch, "-o", out, "--csv", table, "--force", "--weights", toy_weights)
    assert r.exit_code == 130, r.output
    assert "interrupted: 1 of 3 scans finished." in r.stderr
    assert f"Rerun the same command to resume: --csv {table} logged the finished scans" in r.stderr
    assert "Traceback" not in r.output and "Aborted" not in r.output
    assert _no_temp_files(out, table.parent)
    with open(table) as fh:
        assert [row["id"] for row in csv.DictReader(fh)] == ["case21"]
    interrupted_after_one.undo()
    again = run("score", batch, "-o", out, "--csv", table, "--force", "--weights", toy_weights)
    assert again.exit_code == 0 and "resuming: 1 of 3 scans finished in an earlier run" in again.stderr


@pytest.mark.parametrize("extra,hint", [
    (["-o", "{out}"], "rerun the same command with --skip-existing"),
    (["-o", "{out}", "--skip-existing"], "Rerun the same command to resume: --skip-existing skips the scans"),
    ([], "to make a batch resumable, give --csv FILE"),
])
def test_ctrl_c_without_csv(phantom_scans, toy_weights, tmp_path, interrupted_after_one, extra, hint):
    batch = _three(phantom_scans, tmp_path)
    out = tmp_path / "out"
    r = run("score", batch, *[a.format(out=out) for a in extra], "--force", "--weights", toy_weights)
    assert r.exit_code == 130, r.output
    assert "interrupted: 1 of 3 scans finished." in r.stderr and hint in r.stderr
    assert "Traceback" not in r.output and _no_temp_files(out)
