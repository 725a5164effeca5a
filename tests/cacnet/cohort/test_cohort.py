"""Cohort runs: one per-scan function, serial prefetch, a real local Dask cluster, the run manifest and resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from cacnet.batch import expand_inputs
from cacnet.cli import app
from cacnet.cohort import (EnsembleSpec, RunManifest, ScoreOptions, iter_serial, manifest_path, plan_threads,
                           run_cohort, worker_ensemble)
from cacnet.cohort import _run, _workers
from cacnet.errors import UsageError
from cacnet.phantom import generate_phantom, oriented_image

distributed = pytest.importorskip("distributed", reason="dask[distributed] (cohort extra) runs the workers")

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def manifest_lines(csv_file: Path) -> list[dict]:
    """The manifest's complete lines (a line being written, or cut by a kill, is left out)."""
    text = manifest_path(csv_file).read_text()
    return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines() if line.strip()]


def scan_entries(csv_file: Path) -> list[dict]:
    return [e for e in manifest_lines(csv_file) if e["kind"] == "scan"]


def without_timings(obj: dict) -> dict:
    """A --json object less what depends on the run, not the scan: timings and the model threads."""
    out = {k: v for k, v in obj.items() if k != "timings_s"}
    if "models" in out:
        out["models"] = {k: v for k, v in out["models"].items() if k != "threads"}
    return out


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> Path:
    """Four small phantoms and one truncated file."""
    folder = tmp_path_factory.mktemp("cohort") / "batch"
    folder.mkdir()
    for seed, category in ((31, "C"), (32, "A"), (33, "D"), (34, "B")):
        case = generate_phantom(seed, category=category, size=128)
        sitk.WriteImage(oriented_image(case.hu, case, "identity"), str(folder / f"p{seed}.nii.gz"))
    (folder / "broken.nii.gz").write_bytes((folder / "p33.nii.gz").read_bytes()[:4000])
    return folder


@pytest.fixture(scope="module")
def serial(batch, toy_weights, tmp_path_factory) -> dict:
    """The plain serial run of the batch: its CSV text and --json objects."""
    out = tmp_path_factory.mktemp("serial")
    r = run("score", batch, "--csv", out / "s.csv", "-o", out / "o", "--json", "--weights", toy_weights, "--force")
    assert r.exit_code == 4, r.output
    return {"csv": (out / "s.csv").read_text(), "json": json.loads(r.stdout)}


def test_prefetch_gives_the_plain_loop_results(batch, toy_weights, tmp_path):
    spec = EnsembleSpec(toy_weights)
    ensemble = spec.load()
    scans = expand_inputs([batch])
    plain = list(iter_serial(scans, ensemble, ScoreOptions(outdir=tmp_path / "a", force=True), prefetch=False))
    ahead = list(iter_serial(scans, ensemble, ScoreOptions(outdir=tmp_path / "b", force=True), prefetch=True))
    assert [o.row for o in ahead] == [o.row for o in plain]
    assert [o.status for o in plain] == ["error", "ok", "ok", "ok", "ok"]
    for a, b in zip(plain, ahead):
        assert (a.data is None) == (b.data is None)
        if a.data is not None:
            assert without_timings(a.data) == without_timings(b.data)
            for name in (f"{a.id}_calcium.nii.gz",):
                ma = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a" / name)))
                mb = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "b" / name)))
                assert (ma == mb).all()
    # stopping early (as --fail-fast does) drops the scan being read ahead, without error
    gen = iter_serial(scans, ensemble, ScoreOptions(), prefetch=True)
    assert next(gen).status == "error"
    gen.close()


def test_plan_threads():
    assert plan_threads(1, cores=16) == 16
    assert plan_threads(4, cores=16) == 4
    assert plan_threads(3, cores=16) == 5
    assert plan_threads(2, 8, cores=16) == 8
    with pytest.raises(UsageError, match="each worker needs one"):
        plan_threads(3, cores=2)
    with pytest.raises(UsageError, match="4 threads for 2 cores"):
        plan_threads(2, 2, cores=2)


def test_each_process_loads_the_ensemble_once(toy_weights):
    a = worker_ensemble(EnsembleSpec(toy_weights, threads=1))
    assert worker_ensemble(EnsembleSpec(toy_weights, threads=1)) is a
    b = worker_ensemble(EnsembleSpec(toy_weights, backend="onnxruntime", threads=1))
    assert b is not a and b.backend == "onnxruntime"


def test_option_errors_are_clear(batch, toy_weights, tmp_path, monkeypatch):
    monkeypatch.setattr(_workers, "default_threads", lambda: 2)
    cases = [
        (["--workers", "2", "--scheduler", "tcp://127.0.0.1:8786"], 2, "not both"),
        (["--workers", "3"], 2, "use --workers 2 or fewer"),
        (["--workers", "2", "--threads", "2"], 2, "use --threads 1 or fewer"),
        (["--scheduler", "no port here"], 2, "not a scheduler address"),
    ]
    for extra, code, message in cases:
        r = run("score", batch, "--csv", tmp_path / "x.csv", "--weights", toy_weights, *extra)
        assert r.exit_code == code, (extra, r.output)
        assert message in r.stderr and "Traceback" not in r.output
        assert not (tmp_path / "x.csv").exists()
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if dask were not installed
    r = run("score", batch, "--weights", toy_weights, "--workers", "2")
    assert r.exit_code == 2 and "cac-toolkit[cohort]" in r.stderr


def test_unreachable_scheduler_exits_5(batch, toy_weights, tmp_path, monkeypatch):
    monkeypatch.setattr(_run, "CONNECT_TIMEOUT_S", 1.0)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run("score", batch, "--csv", tmp_path / "u.csv", "--weights", toy_weights,
            "--scheduler", f"tcp://127.0.0.1:{port}")
    assert r.exit_code == 5, r.output
    assert "cannot reach the Dask scheduler" in r.stderr and "Traceback" not in r.output
    assert not (tmp_path / "u.csv").exists()


def test_serial_run_resumes_from_its_manifest(batch, toy_weights, serial, tmp_path):
    folder = tmp_path / "batch"
    shutil.copytree(batch, folder)
    csv_file = tmp_path / "r.csv"
    args = ["score", folder, "--csv", csv_file, "-o", tmp_path / "o", "--weights", toy_weights, "--force"]
    assert run(*args).exit_code == 4
    first = scan_entries(csv_file)
    assert [e["status"] for e in first] == ["error", "ok", "ok", "ok", "ok"]
    assert all(e["identity"]["size"] > 0 for e in first if e["status"] == "ok")
    assert csv_file.read_text() == serial["csv"].replace(str(batch), str(folder))

    # the same command again: only the failed scan is tried; a changed input is scored again
    (folder / "p32.nii.gz").write_bytes((batch / "p31.nii.gz").read_bytes())
    r = run(*args)
    assert r.exit_code == 4 and "resuming: 3 of 5" in r.stderr and "1 changed since" in r.stderr
    again = scan_entries(csv_file)[len(first):]
    assert sorted(Path(e["input"]).name for e in again) == ["broken.nii.gz", "p32.nii.gz"]
    rows = {line.split(",")[0]: line for line in csv_file.read_text().splitlines()}
    assert rows["p32"].split(",")[1] == rows["p31"].split(",")[1]  # p32 now holds p31's scan

    # a run cut short mid-line: the partial line is dropped, the rest resumes
    text = manifest_path(csv_file).read_text()
    manifest_path(csv_file).write_text(text + '{"kind": "scan", "key": "/x", "sta')
    r = run(*args)
    assert r.exit_code == 4 and "resuming: 4 of 5" in r.stderr
    assert all(line.endswith("}") for line in manifest_path(csv_file).read_text().splitlines())

    # --json prints the resumed scans' results (from -o), marked as resumed
    r = run(*args, "--json")
    printed = json.loads(r.stdout)
    assert r.exit_code == 4 and [o["status"] for o in printed] == ["error", "ok", "ok", "ok", "ok"]
    assert all(o["resumed"] and "lesions" in o for o in printed[1:])

    # other settings: every scan is scored again
    r = run(*args, "--calibration", "0.8")
    assert r.exit_code == 4 and "other settings (calibration)" in r.stderr
    assert len(scan_entries(csv_file)) == 5

    # a second run on the same CSV at the same time is refused
    manifest, _, _ = RunManifest.open(manifest_path(csv_file), {"x": 1})
    try:
        r = run(*args)
        assert r.exit_code == 2 and "another cac score run" in r.stderr
    finally:
        manifest.close()


@pytest.mark.slow
def test_local_workers_give_the_serial_csv(batch, toy_weights, serial, tmp_path):
    csv_file = tmp_path / "d.csv"
    r = run("score", batch, "--csv", csv_file, "-o", tmp_path / "o", "--json", "--weights", toy_weights,
            "--workers", "2", "--force")
    assert r.exit_code == 4, r.output
    assert "Traceback" not in r.output and "broken.nii.gz" in r.stderr
    assert csv_file.read_text() == serial["csv"]
    assert [without_timings(o) for o in json.loads(r.stdout)] == [without_timings(o) for o in serial["json"]]
    entries = scan_entries(csv_file)
    assert sorted(e["index"] for e in entries) == [0, 1, 2, 3, 4]
    assert all(e["worker"].startswith("tcp://") for e in entries)
    assert all(0 < e["peak_rss_mb"] < 1024 for e in entries)
    assert {p.name for p in (tmp_path / "o").iterdir()} == {f"p{s}{x}" for s in (31, 32, 33, 34)
                                                            for x in (".json", "_calcium.nii.gz")}


@pytest.mark.slow
def test_existing_cluster_survives_a_killed_worker(batch, toy_weights, serial, tmp_path):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client:
        pids = client.run(os.getpid)
        killed: list[int] = []

        def kill_a_worker(outcome) -> None:
            if not killed:  # after the first result, kill the worker that did not send it
                victim = next(pid for addr, pid in pids.items() if addr != outcome.worker)
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)

        csv_file = tmp_path / "k.csv"
        result = run_cohort(expand_inputs([batch]), EnsembleSpec(toy_weights),
                            ScoreOptions(outdir=tmp_path / "o", force=True),
                            csv_file=csv_file, scheduler=cluster.scheduler_address, on_outcome=kill_a_worker)
    assert killed and result.mode == "scheduler" and len(result.workers) == 2
    assert [o.status for o in result.outcomes] == ["error", "ok", "ok", "ok", "ok"]
    assert csv_file.read_text() == serial["csv"]  # the batch's paths are absolute already
    assert sorted(e["index"] for e in scan_entries(csv_file)) == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_killed_run_resumes_without_scoring_twice(batch, toy_weights, tmp_path):
    folder = tmp_path / "batch"
    folder.mkdir()
    for k in range(3):  # 12 good scans (copies) and the broken one
        for p in sorted(batch.glob("p*.nii.gz")):
            shutil.copy(p, folder / f"{p.name[:-7]}_{k}.nii.gz")
    shutil.copy(batch / "broken.nii.gz", folder / "broken.nii.gz")
    n = 13
    csv_file, out = tmp_path / "run.csv", tmp_path / "o"
    args = ["score", str(folder), "--csv", str(csv_file), "-o", str(out), "--weights", str(toy_weights),
            "--workers", "2", "--force"]
    proc = subprocess.Popen([sys.executable, "-m", "cacnet", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest_path(csv_file).exists() and len(scan_entries(csv_file)) >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        os.killpg(proc.pid, signal.SIGKILL)  # the client and its workers, mid-run
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    first = scan_entries(csv_file)
    done_first = {e["key"] for e in first if e["status"] == "ok"}
    assert 1 <= len(first) < n
    written = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}

    r = run(*args)
    assert r.exit_code == 4, r.output
    assert f"resuming: {len(done_first)} of {n}" in r.stderr
    second = scan_entries(csv_file)[len(first):]
    assert not done_first & {e["key"] for e in second}  # nothing finished before was scored again
    ok = [e["key"] for e in first + second if e["status"] == "ok"]
    assert len(ok) == len(set(ok)) == n - 1  # every good scan exactly once
    for e in first:  # the outputs of the first run's scans were left alone
        if e["status"] == "ok":
            assert (out / f"{e['id']}.json").stat().st_mtime_ns == written[f"{e['id']}.json"]
    # the final CSV is the serial run's
    assert run("score", folder, "--csv", tmp_path / "serial.csv", "--weights", toy_weights, "--force").exit_code == 4
    assert csv_file.read_text() == (tmp_path / "serial.csv").read_text()
