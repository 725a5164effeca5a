"""Cohorts: scoring many scans, serially or on a Dask cluster, resumably.

One function, :func:`score_path`, does everything `cac score` does for one
scan (skip, score, write the ``-o`` outputs, make its CSV row and ``--json``
object, turn any failure into an error row). The serial batch
(:func:`iter_serial`, which reads and preprocesses the next scan in a
background thread while the current one runs through the models) and the
Dask tasks (one task per scan, ``cac score --workers N`` on a local cluster
or ``--scheduler ADDRESS`` on an existing one) both call it, and
:func:`run_cohort` runs either way the same: results stream into the CSV
(rewritten atomically, rows in input order) and into a run manifest next to
it, so that rerunning the same command skips what finished and retries what
failed.

The run manifest, ``<csv>.manifest.jsonl``, is an append-only JSON-lines
log: a ``run`` line with the settings that decide the results (weights,
precision, calibration, series, early stop, force, outputs, version), then
one ``scan`` line per scan that finished (path, size, mtime, sha256 of the
first MiB, status, CSV row, seconds, worker, peak memory), each flushed and
fsynced before the next; a killed run loses at most the scans in flight.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from ._files import check_output_dir, check_output_file, write_csv_atomic
from .batch import CSV_COLUMNS, check_unique_ids, csv_row, read_result
from .ensemble import DEFAULT_WEIGHTS, Ensemble, default_threads, load_manifest, verify_weights
from .errors import CacError, ClusterUnavailableError, OutputError, UsageError
from .io import scan_id
from .outputs.write import write_outputs
from .pipeline import PreparedScan, prepare_scan, score_scan

__all__ = ["CONNECT_TIMEOUT_S", "MANIFEST_SUFFIX", "CohortRun", "EnsembleSpec", "RunManifest", "ScanOutcome",
           "ScoreOptions", "input_identity", "iter_serial", "manifest_path", "peak_rss_mb", "plan_threads",
           "run_cohort", "run_settings", "score_path", "worker_ensemble"]

#: Seconds to wait for the scheduler of ``--scheduler`` before giving up (exit 5).
CONNECT_TIMEOUT_S = 10.0
#: The run manifest of ``--csv FILE`` is ``FILE`` + this suffix.
MANIFEST_SUFFIX = ".manifest.jsonl"
#: Bytes of a scan file hashed to tell whether it changed since it was scored.
_HASHED_BYTES = 1 << 20
_MANIFEST_VERSION = 1


@dataclass(frozen=True)
class EnsembleSpec:
    """How to load the ensemble: what a worker needs to load its own copy.

    Parameters
    ----------
    weights : path
        Weights folder (manifest.json and the ONNX files); absolute paths
        when the workers run elsewhere.
    device, backend, precision : str
        As for :class:`cacnet.ensemble.Ensemble`.
    model_cache : bool
        OpenVINO's model cache, as for :class:`cacnet.ensemble.Ensemble` (default on).
    second_stage : bool
        Use the weights' second stage when they have one (default), as
        :class:`cacnet.ensemble.Ensemble`.
    threads : int, optional
        Inference threads per model. None: the backend's default in a serial
        run; on a Dask worker, the worker's own thread count (``dask worker
        --nthreads``, dask-jobqueue's cores / processes).
    """

    weights: Path = DEFAULT_WEIGHTS
    device: str = "auto"
    backend: str = "auto"
    precision: str = "fp32"
    threads: Optional[int] = None
    second_stage: bool = True
    model_cache: bool = True

    def load(self) -> Ensemble:
        """Load and verify the ensemble (sha256 of every model file), compile each model once."""
        return Ensemble(Path(self.weights), device=self.device, threads=self.threads, backend=self.backend,
                        precision=self.precision, second_stage=self.second_stage, model_cache=self.model_cache)


@dataclass(frozen=True)
class ScoreOptions:
    """What to do with each scan besides scoring it; travels to the Dask workers with every task.

    Parameters
    ----------
    outdir : path, optional
        ``-o``: write each scan's outputs here (:func:`cacnet.batch.write_outputs`).
    calibration, series, early_stop, force
        As for :func:`cacnet.pipeline.score_scan`.
    skip_existing : bool
        Skip scans whose ``<id>.json`` exists in ``outdir`` (their row says ``skipped``).
    outputs : mapping
        Keyword arguments of :func:`cacnet.batch.write_outputs` beyond the
        result and the folder (``preview``, and whatever output options it
        takes); values must pickle, since they go to the workers.
    """

    outdir: Optional[Path] = None
    calibration: Optional[float] = None
    series: Optional[str] = None
    early_stop: bool = False
    force: bool = False
    skip_existing: bool = False
    outputs: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class ScanOutcome:
    """What became of one scan: its CSV row, its ``--json`` object and how it went.

    Attributes
    ----------
    index : int
        Position of the scan among the run's inputs.
    input : str
        The path as scored (and as in the CSV's ``input`` column).
    id : str
    status : {"ok", "skipped", "error"}
    row : dict
        The CSV row (:func:`cacnet.batch.csv_row`).
    data : dict or None
        The result JSON; None on error, and for a scan resumed from the
        manifest whose ``<id>.json`` was not read.
    error : str
    exit_code : int
        0, or the exit code of the error (3 invalid scan, 5 device, 1 internal).
    internal : bool
        The error was unexpected (a bug or a dead worker), not a bad scan.
    identity : dict or None
        :func:`input_identity` of the input when it was scored (with a manifest).
    seconds : float
        Wall time of the scan in :func:`score_path`.
    worker : str
        Dask worker address; empty in a serial run.
    peak_rss_mb : float
        Peak resident memory of the process that scored it, so far.
    resumed : bool
        Taken from the manifest of an earlier run, not scored now.
    """

    index: int
    input: str
    id: str
    status: str
    row: dict[str, Any]
    data: Optional[dict[str, Any]] = None
    error: str = ""
    exit_code: int = 0
    internal: bool = False
    identity: Optional[dict[str, Any]] = None
    seconds: float = 0.0
    worker: str = ""
    peak_rss_mb: float = 0.0
    resumed: bool = False

    @property
    def warnings(self) -> list[str]:
        """The scan's warnings (from its result, or from its CSV row when resumed)."""
        if self.data is not None:
            return list(self.data.get("warnings", []))
        text = str(self.row.get("warnings", ""))
        return text.split(" | ") if text else []

    def json_object(self) -> dict[str, Any]:
        """The scan's ``cac score --json`` object.

        A scored scan: its result plus ``status`` and ``input``; a failed
        one: ``id``, ``input``, ``status``, ``error``, ``exit_code``; a scan
        resumed from the manifest: its result when it was read (else its CSV
        row's fields), with ``"resumed": true``.
        """
        if self.status == "error":
            return {"id": self.id, "input": self.input, "status": "error", "error": self.error,
                    "exit_code": self.exit_code}
        base = self.data if self.data is not None else self.row
        out = {"id": self.id, "status": self.status, "input": self.input, **base}
        out.update({"status": self.status, "input": self.input})
        if self.resumed:
            out["resumed"] = True
        return out


@dataclass
class CohortRun:
    """What :func:`run_cohort` did.

    Attributes
    ----------
    outcomes : list of ScanOutcome
        In input order; scans not tried (``fail_fast``) are absent.
    n_inputs, n_resumed : int
    mode : str
        ``serial``, ``local`` (``--workers``) or ``scheduler``.
    workers : list of dict
        Per Dask worker present at the start: address and what runs the models.
    startup_s, scoring_s : float
        Starting workers and loading the models; scoring the scans.
    manifest : path or None
    """

    outcomes: list[ScanOutcome]
    n_inputs: int
    n_resumed: int = 0
    mode: str = "serial"
    workers: list[dict[str, Any]] = field(default_factory=list)
    startup_s: float = 0.0
    scoring_s: float = 0.0
    manifest: Optional[Path] = None


# --------------------------------------------------------------------------- one scan


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (VmHWM; ``ru_maxrss`` where /proc is absent)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    try:
        import resource
        import sys

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / (2**20 if sys.platform == "darwin" else 1024.0)
    except (ImportError, OSError):
        return 0.0


def input_identity(path: Path) -> Optional[dict[str, Any]]:
    """What tells whether an input changed since it was scored: size, mtime and a hash.

    A file: its size, mtime (ns) and the sha256 of its first MiB. A folder
    (DICOM): the total size and latest mtime of its files, and the sha256 of
    their sorted relative names and sizes followed by the first MiB of the
    first file. None when the path cannot be read.
    """
    path = Path(path)
    try:
        h = hashlib.sha256()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            stats = [p.stat() for p in files]
            for p, st in zip(files, stats):
                h.update(f"{p.relative_to(path).as_posix()}\0{st.st_size}\n".encode())
            if files:
                with open(files[0], "rb") as fh:
                    h.update(fh.read(_HASHED_BYTES))
            return {"size": sum(st.st_size for st in stats),
                    "mtime_ns": max((st.st_mtime_ns for st in stats), default=path.stat().st_mtime_ns),
                    "sha256_1mib": h.hexdigest()}
        st = path.stat()
        with open(path, "rb") as fh:
            h.update(fh.read(_HASHED_BYTES))
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256_1mib": h.hexdigest()}
    except OSError:
        return None


def _skips(path: Path, options: ScoreOptions) -> bool:
    return bool(options.skip_existing and options.outdir is not None
                and (Path(options.outdir) / f"{scan_id(path)}.json").exists())


def _error_outcome(index: int, path: Path, message: str, exit_code: int, internal: bool = False) -> ScanOutcome:
    return ScanOutcome(index=index, input=str(path), id=scan_id(path), status="error",
                       row=csv_row(None, input_path=path, status="error", error=message), error=message,
                       exit_code=exit_code, internal=internal)


def score_path(
    path: Path,
    ensemble: Ensemble,
    options: ScoreOptions,
    *,
    index: int = 0,
    prepared: Optional[Callable[[], PreparedScan]] = None,
    identify: bool = False,
) -> ScanOutcome:
    """Everything `cac score` does for one scan; never raises for a bad scan.

    Skips the scan (``options.skip_existing``) or scores it, writes its
    ``-o`` outputs, and returns its CSV row and ``--json`` object. A scan
    that cannot be read or scored gives an outcome with status ``error``
    (the error's exit code; 1 and ``internal`` for an unexpected error), so
    that a batch goes on.

    Parameters
    ----------
    path : path
        The scan (file or DICOM folder).
    ensemble : Ensemble
        Loaded once and reused.
    options : ScoreOptions
    index : int
        The scan's position among the run's inputs (kept in the outcome).
    prepared : callable, optional
        Returns the scan already read and preprocessed (or raises what
        reading it raised), e.g. the ``result`` of a background thread's
        :func:`cacnet.pipeline.prepare_scan`; the result is the same.
    identify : bool
        Record :func:`input_identity` of the input (for a run manifest).

    Returns
    -------
    ScanOutcome
    """
    start = time.perf_counter()
    path = Path(path)
    identity = input_identity(path) if identify else None
    try:
        if _skips(path, options):
            assert options.outdir is not None
            data = read_result(Path(options.outdir) / f"{scan_id(path)}.json")
            out = ScanOutcome(index=index, input=str(path), id=data["id"], status="skipped",
                              row=csv_row(data, input_path=path, status="skipped"), data=data)
        else:
            source = prepared() if prepared is not None else path
            res = score_scan(source, ensemble, calibration=options.calibration, series=options.series,
                             early_stop=options.early_stop, force=options.force)
            if options.outdir is not None:
                try:
                    write_outputs(res, Path(options.outdir), **dict(options.outputs))
                except OSError as exc:  # e.g. a full disk: an error of this scan, not an internal one
                    raise OutputError(f"{res.data['id']}: cannot write its outputs in {options.outdir} "
                                      f"({exc}).") from None
            out = ScanOutcome(index=index, input=str(path), id=res.data["id"], status="ok",
                              row=csv_row(res.data, input_path=path, status="ok"), data=res.data)
    except CacError as exc:
        out = _error_outcome(index, path, str(exc), exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - a batch must go on; the error row says what happened
        out = _error_outcome(index, path, f"internal error: {exc!r}", 1, internal=True)
    out.identity = identity
    out.seconds = time.perf_counter() - start
    out.peak_rss_mb = peak_rss_mb()
    return out


def iter_serial(
    paths: Sequence[Path],
    ensemble: Ensemble | Callable[[], Ensemble],
    options: ScoreOptions,
    *,
    indices: Optional[Sequence[int]] = None,
    prefetch: bool = True,
    identify: bool = False,
) -> Iterator[ScanOutcome]:
    """Score scans one after another in this process, yielding each outcome in order.

    With ``prefetch``, a background thread reads and preprocesses the next
    scan (:func:`cacnet.pipeline.prepare_scan`) while the current one runs
    through the models: at most two scans are held at once, and every
    outcome is what the plain loop gives (:func:`score_path` either way).
    Stopping the iteration (e.g. at the first error) drops the scan being
    read.

    Parameters
    ----------
    paths : sequence of path
    ensemble : Ensemble, or a callable that loads one
        A callable is called once, after the first scan started being read
        (with ``prefetch``): loading the models and reading the first scan
        overlap, which is most of a one-scan process's set-up.
    options : ScoreOptions
    indices : sequence of int, optional
        The scans' positions among the run's inputs (default 0, 1, ...).
    prefetch : bool
        Read the next scan while the current one runs through the models.
    identify : bool
        Record each input's :func:`input_identity`.

    Yields
    ------
    ScanOutcome
    """
    paths = [Path(p) for p in paths]
    idx = list(range(len(paths))) if indices is None else list(indices)
    if not prefetch:
        ensemble = ensemble() if callable(ensemble) else ensemble
        for i, p in zip(idx, paths):
            yield score_path(p, ensemble, options, index=i, identify=identify)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cac-prefetch") as pool:

        def submit(k: int):
            if k >= len(paths) or _skips(paths[k], options):
                return None
            return pool.submit(prepare_scan, paths[k], series=options.series, force=options.force)

        upcoming = submit(0)
        if callable(ensemble):
            ensemble = ensemble()  # loads while the first scan is read
        try:
            for k, (i, p) in enumerate(zip(idx, paths)):
                current, upcoming = upcoming, submit(k + 1)  # the next scan is read while this one is scored
                yield score_path(p, ensemble, options, index=i, identify=identify,
                                 prepared=None if current is None else current.result)
                current = None  # let the scan go before the next one is waited for
        finally:
            if upcoming is not None:
                upcoming.cancel()


# --------------------------------------------------------------------------- workers


def plan_threads(workers: int, threads: Optional[int] = None, cores: Optional[int] = None) -> int:
    """Model threads per worker so that workers x threads never exceed the cores.

    Parameters
    ----------
    workers : int
        Worker processes on this machine (1 for a serial run).
    threads : int, optional
        Threads asked for per worker; default: ``cores // workers``.
    cores : int, optional
        CPUs this process may use (default: its affinity mask).

    Returns
    -------
    int

    Raises
    ------
    UsageError
        More workers than cores, or ``workers * threads`` more than the cores.
    """
    cores = cores or default_threads()
    if workers < 1:
        raise UsageError(f"--workers must be at least 1; got {workers}.")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1; got {threads}.")
    if workers > cores:
        raise UsageError(f"--workers {workers}: this process may use {cores} cores, and each worker needs one; "
                         f"use --workers {cores} or fewer.")
    if threads is None:
        return max(1, cores // workers)
    if workers * threads > cores:
        raise UsageError(f"--workers {workers} x --threads {threads} = {workers * threads} threads for {cores} "
                         f"cores; use --threads {max(1, cores // workers)} or fewer.")
    return threads


_ENSEMBLES: dict[EnsembleSpec, Ensemble] = {}
_ENSEMBLES_LOCK = threading.Lock()
_SCAN_LOCK = threading.Lock()  # one scan at a time per worker process: one scan's memory, no shared inference


def _set_up_process(threads: Optional[int]) -> None:
    """A worker process: freed large buffers go back to the OS; ITK's threads follow the model threads."""
    from ._memory import return_large_buffers_to_os

    return_large_buffers_to_os()
    if threads:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))


def worker_ensemble(spec: EnsembleSpec) -> Ensemble:
    """The ensemble of this process for ``spec``: loaded and verified once, then reused.

    A process keeps one ensemble: another spec replaces it.
    """
    with _ENSEMBLES_LOCK:
        ensemble = _ENSEMBLES.get(spec)
        if ensemble is None:
            _ENSEMBLES.clear()
            _set_up_process(spec.threads)
            ensemble = _ENSEMBLES[spec] = spec.load()
        return ensemble


def _dask_worker() -> Any:
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def _on_worker(spec: EnsembleSpec) -> EnsembleSpec:
    """``spec`` with the threads of this worker filled in (its Dask thread count, at most its CPUs)."""
    if spec.threads is not None:
        return spec
    worker = _dask_worker()
    n = getattr(getattr(worker, "state", None), "nthreads", None) or getattr(worker, "nthreads", None) or 1
    return replace(spec, threads=max(1, min(int(n), default_threads())))


def _warm_task(spec: EnsembleSpec) -> dict[str, Any]:
    """Dask task: load this worker's ensemble now; say what runs it, or the error (returned, not raised)."""
    worker = _dask_worker()
    try:
        ensemble = worker_ensemble(_on_worker(spec))
    except CacError as exc:
        return {"address": getattr(worker, "address", ""), "error": exc}
    return {"address": getattr(worker, "address", ""), "pid": os.getpid(), **ensemble.describe()}


def _score_task(index: int, path: str, spec: EnsembleSpec, options: ScoreOptions, identify: bool) -> ScanOutcome:
    """Dask task: one scan, with this worker's ensemble (loaded on its first task)."""
    with _SCAN_LOCK:
        try:
            ensemble = worker_ensemble(_on_worker(spec))
        except CacError as exc:
            out = _error_outcome(index, Path(path), f"this worker cannot load the models: {exc}", exc.exit_code)
        else:
            out = score_path(Path(path), ensemble, options, index=index, identify=identify)
    out.worker = str(getattr(_dask_worker(), "address", ""))
    return out


# --------------------------------------------------------------------------- manifest and CSV


def manifest_path(csv_file: Path) -> Path:
    """The run manifest of a CSV: ``scores.csv`` -> ``scores.csv.manifest.jsonl``."""
    csv_file = Path(csv_file)
    return csv_file.with_name(csv_file.name + MANIFEST_SUFFIX)


def run_settings(spec: EnsembleSpec, options: ScoreOptions) -> dict[str, Any]:
    """What decides a run's results; a manifest written with other settings is not resumed.

    Not included: the device, backend, threads and workers, which give the
    same masks and scores (fp32).
    """
    from . import __version__

    models = load_manifest(Path(spec.weights))["models"]
    settings = {
        "cac_toolkit": __version__, "weights": [m.get("sha256", m.get("file")) for m in models],
        "precision": spec.precision, "calibration": options.calibration, "series": options.series,
        "early_stop": options.early_stop, "force": options.force, "skip_existing": options.skip_existing,
        "outdir": None if options.outdir is None else os.path.abspath(options.outdir),
        "outputs": dict(options.outputs),
    }
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def _key(path: Path) -> str:
    return os.path.abspath(path)


class RunManifest:
    """The append-only log of a run, locked against a second run on the same CSV.

    Use :meth:`open`; :meth:`record` appends one scan's outcome and fsyncs it.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = Path(path)
        self._fd = fd

    @classmethod
    def open(cls, path: Path, settings: dict[str, Any]) -> tuple["RunManifest", dict[str, dict[str, Any]], str]:
        """Open (or start) the manifest at ``path`` for a run with ``settings``.

        Returns
        -------
        manifest : RunManifest
        finished : dict
            The last ``scan`` entry with status ok or skipped of each input
            (by absolute path), when the manifest was written with the same
            settings; else empty (the manifest starts over).
        note : str
            Why an existing manifest was not resumed ('' otherwise).

        Raises
        ------
        UsageError
            Another run holds the manifest.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except ImportError:  # not POSIX: no lock
                pass
            except OSError:
                raise UsageError(f"{path}: another cac score run is writing this manifest (and its CSV); wait for "
                                 f"it to finish or use another --csv.") from None
            with os.fdopen(os.dup(fd), "rb") as fh:
                text = fh.read()
            finished, note, keep = cls._read(text, settings, path)
            if not keep:
                os.ftruncate(fd, 0)
            elif not text.endswith(b"\n"):  # a line cut short by a kill: drop it before appending
                os.ftruncate(fd, text.rfind(b"\n") + 1)
            manifest = cls(path, fd)
            kind = "resume" if keep else "run"
            manifest._append({"kind": kind, "manifest_version": _MANIFEST_VERSION, "settings": settings,
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            return manifest, finished, note
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _read(text: bytes, settings: dict[str, Any], path: Path) -> tuple[dict[str, dict[str, Any]], str, bool]:
        if not text.strip():
            return {}, "", False
        entries, header = [], None
        for line in text.split(b"\n"):
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # the last line of a killed run, or damage: that scan is scored again
            if not isinstance(entry, dict):
                continue
            if entry.get("kind") in ("run", "resume") and header is None:
                header = entry
            elif entry.get("kind") == "scan":
                entries.append(entry)
        if header is None or header.get("manifest_version") != _MANIFEST_VERSION:
            return {}, f"{path} is not a run manifest of this version; starting it afresh.", False
        if header.get("settings") != settings:
            old = header.get("settings") or {}
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            return {}, (f"{path} was written by a run with other settings ({', '.join(changed)}); "
                        f"scoring every scan again."), False
        finished: dict[str, dict[str, Any]] = {}
        for e in entries:
            key = e.get("key")
            if not isinstance(key, str):
                continue
            if e.get("status") in ("ok", "skipped") and isinstance(e.get("row"), dict):
                finished[key] = e
            else:
                finished.pop(key, None)  # a later failure (e.g. the file changed) outranks an earlier success
        return finished, "", True

    def _append(self, entry: dict[str, Any]) -> None:
        data = (json.dumps(entry, default=str) + "\n").encode()
        os.lseek(self._fd, 0, os.SEEK_END)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)

    def record(self, outcome: ScanOutcome, key: str) -> None:
        """Append one finished scan (flushed and fsynced before returning)."""
        self._append({"kind": "scan", "key": key, "input": outcome.input, "index": outcome.index, "id": outcome.id,
                      "status": outcome.status, "exit_code": outcome.exit_code, "error": outcome.error,
                      "identity": outcome.identity, "row": outcome.row, "seconds": round(outcome.seconds, 3),
                      "worker": outcome.worker, "peak_rss_mb": round(outcome.peak_rss_mb, 1),
                      "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def close(self) -> None:
        """Release the lock and the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _CsvStream:
    """The CSV of a run, rewritten atomically as rows arrive (rows in input order), at most every ``interval_s``."""

    def __init__(self, path: Optional[Path], interval_s: float) -> None:
        self.path, self.interval_s = path, interval_s
        self.rows: dict[int, dict[str, Any]] = {}
        self._written = 0.0

    def put(self, index: int, row: dict[str, Any]) -> None:
        self.rows[index] = row
        if self.path is not None and time.monotonic() - self._written >= self.interval_s:
            self.write()

    def write(self) -> None:
        if self.path is None:
            return
        rows = [{c: self.rows[i].get(c, "") for c in CSV_COLUMNS} for i in sorted(self.rows)]
        write_csv_atomic(self.path, CSV_COLUMNS, rows)
        self._written = time.monotonic()


# --------------------------------------------------------------------------- the run


def _resumed(index: int, path: Path, entry: dict[str, Any], options: ScoreOptions,
             need_data: bool) -> Optional[ScanOutcome]:
    """The outcome of a scan that finished in an earlier run, or None when it must be scored again.

    It counts when its input is unchanged (:func:`input_identity`) and its
    ``<id>.json`` is still in ``-o``; with ``need_data`` (``--json``) that
    file must also be readable, so without ``-o`` nothing is resumed.
    """
    if entry.get("identity") is None or input_identity(path) != entry["identity"]:
        return None
    sid = str(entry.get("id") or scan_id(path))
    data = None
    if options.outdir is not None:
        result = Path(options.outdir) / f"{sid}.json"
        if not result.exists():
            return None
        if need_data:
            try:
                data = read_result(result)
            except CacError:
                return None
    elif need_data:
        return None
    return ScanOutcome(index=index, input=str(path), id=sid, status=entry["status"],
                       row={**entry["row"], "input": str(path)}, data=data, identity=entry.get("identity"),
                       seconds=float(entry.get("seconds") or 0.0), worker=str(entry.get("worker", "")),
                       peak_rss_mb=float(entry.get("peak_rss_mb") or 0.0), resumed=True)


def run_cohort(
    scans: Sequence[Path],
    spec: EnsembleSpec,
    options: ScoreOptions,
    *,
    csv_file: Optional[Path] = None,
    workers: Optional[int] = None,
    scheduler: Optional[str] = None,
    fail_fast: bool = False,
    prefetch: bool = True,
    need_data: bool = False,
    csv_interval_s: float = 1.0,
    ensemble: Optional[Ensemble] = None,
    on_outcome: Optional[Callable[[ScanOutcome], None]] = None,
    on_note: Optional[Callable[[str], None]] = None,
) -> CohortRun:
    """Score a list of scans: serially, on local Dask workers, or on an existing Dask cluster.

    With ``csv_file``, rows stream into it (rewritten atomically, in input
    order, at most every ``csv_interval_s`` and at the end) and every
    finished scan is logged in its run manifest (:func:`manifest_path`); a
    rerun with the same settings takes the scans that finished from there
    (unless their input changed or their ``<id>.json`` in ``-o`` is gone)
    and scores the rest, failed ones included. The final CSV is the same
    however the run was split.

    Parameters
    ----------
    scans : sequence of path
        The inputs, as :func:`cacnet.batch.expand_inputs` gives them.
    spec : EnsembleSpec
        The models; each worker loads its own copy once.
    options : ScoreOptions
    csv_file : path, optional
    workers : int, optional
        Start this many local worker processes (a Dask ``LocalCluster``, one
        scan at a time each, ``spec.threads`` model threads; see
        :func:`plan_threads`).
    scheduler : str, optional
        Address (``tcp://host:8786``) or scheduler file (JSON) of a running
        Dask scheduler to submit to. Inputs and ``-o`` go to the workers as
        absolute paths: they must see the same files at the same place.
    fail_fast : bool
        Stop at the first scan that fails (pending tasks are cancelled).
    prefetch : bool
        Serial runs: read the next scan while the current one is scored.
    need_data : bool
        Read the ``<id>.json`` of scans resumed from the manifest (for ``--json``).
    csv_interval_s : float
    ensemble : Ensemble, optional
        Serial runs: an ensemble already loaded (default: ``spec.load()``).
    on_outcome : callable, optional
        Called with each outcome as it lands (resumed ones first).
    on_note : callable, optional
        Called with messages for the user (resuming, workers ready, ...).

    Returns
    -------
    CohortRun

    Raises
    ------
    CacError
        Bad weights (3), options that cannot go together or scans whose ids
        clash (2, :func:`cacnet.batch.check_unique_ids`), a device or a
        cluster that cannot be used (5), an ``-o`` folder or ``csv_file``
        that cannot be written (7, checked before any scan is scored). A bad
        scan never raises.
    """
    if workers is not None and scheduler is not None:
        raise UsageError("use either --workers N (local worker processes) or --scheduler ADDRESS (a running "
                         "Dask cluster), not both.")
    check_unique_ids(scans)  # one id, one set of outputs, one CSV row: clashing ids are refused before anything
    note = on_note or (lambda _msg: None)
    emit = on_outcome or (lambda _o: None)
    if options.outdir is not None:  # output problems before any scan is scored (exit 7)
        check_output_dir(Path(options.outdir), "-o")
    if csv_file is not None:
        check_output_file(Path(csv_file), "--csv")
        check_output_file(manifest_path(Path(csv_file)), "the run manifest of --csv,")
    mode = "scheduler" if scheduler is not None else ("local" if workers is not None else "serial")
    if mode != "scheduler":  # workers x threads within this machine's cores
        threads = plan_threads(workers or 1, spec.threads)
        spec = replace(spec, threads=threads if (workers is not None or spec.threads is not None) else None)
    if mode == "scheduler":  # workers elsewhere: absolute paths
        scans = [Path(os.path.abspath(p)) for p in scans]
        options = replace(options, outdir=None if options.outdir is None else Path(os.path.abspath(options.outdir)))
        spec = replace(spec, weights=Path(os.path.abspath(spec.weights)))
    scans = [Path(p) for p in scans]
    outcomes: dict[int, ScanOutcome] = {}
    csv_stream = _CsvStream(None if csv_file is None else Path(csv_file), csv_interval_s)
    manifest: Optional[RunManifest] = None
    run = CohortRun(outcomes=[], n_inputs=len(scans), mode=mode,
                    manifest=None if csv_file is None else manifest_path(Path(csv_file)))
    verify_weights(Path(spec.weights))  # bad weights: exit 3 before any manifest, cluster or scan
    finished_run = False
    try:
        todo = list(range(len(scans)))
        if csv_file is not None:
            manifest, finished, why = RunManifest.open(manifest_path(Path(csv_file)), run_settings(spec, options))
            if why:
                note(why)
            candidates = [i for i in todo if _key(scans[i]) in finished]
            if candidates and need_data and options.outdir is None:
                note("--json without -o: the results of the scans that finished earlier are not kept, so every "
                     "scan is scored again.")
            with ThreadPoolExecutor(max_workers=8) as pool:
                resumed = list(pool.map(lambda i: _resumed(i, scans[i], finished[_key(scans[i])], options,
                                                           need_data), candidates))
            for out in resumed:
                if out is not None:
                    outcomes[out.index] = out
                    csv_stream.rows[out.index] = out.row
                    emit(out)
            run.n_resumed = len(outcomes)
            if outcomes:
                changed = len(candidates) - len(outcomes)
                note(f"resuming: {len(outcomes)} of {len(scans)} scans finished in an earlier run ({manifest.path})"
                     + (f"; {changed} changed since or lost their outputs and are scored again" if changed else "")
                     + "; delete that file to score all again.")
            todo = [i for i in todo if i not in outcomes]

        def land(out: ScanOutcome) -> None:
            outcomes[out.index] = out
            if manifest is not None:
                manifest.record(out, _key(scans[out.index]))
            csv_stream.put(out.index, out.row)
            emit(out)

        if todo and mode == "serial":
            t0 = time.perf_counter()
            loaded_at: list[float] = []

            def load() -> Ensemble:
                loaded = spec.load()  # while the first scan is read (iter_serial)
                loaded_at.append(time.perf_counter())
                return loaded

            for out in iter_serial([scans[i] for i in todo], load if ensemble is None else ensemble, options,
                                   indices=todo, prefetch=prefetch, identify=manifest is not None):
                land(out)
                if fail_fast and out.status == "error":
                    break
            t1 = loaded_at[0] if loaded_at else t0
            run.startup_s = t1 - t0
            run.scoring_s = time.perf_counter() - t1
        elif todo:
            _run_distributed(run, [(i, scans[i]) for i in todo], spec, options, workers=workers, scheduler=scheduler,
                             fail_fast=fail_fast, identify=manifest is not None, land=land, note=note)
        finished_run = True
    finally:
        if finished_run or csv_stream.rows:  # not when nothing could start (bad weights, no cluster)
            with contextlib.suppress(OSError):
                csv_stream.write()
        if manifest is not None:
            manifest.close()
    run.outcomes = [outcomes[i] for i in sorted(outcomes)]
    return run


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise UsageError("--workers and --scheduler run on Dask, which is not installed here: "
                         f"pip install 'cac-toolkit[cohort]' (dask[distributed]) ({exc}).") from None
    return distributed


def _scheduler_address(scheduler: str) -> str:
    """The address of ``--scheduler``: given, or read from a scheduler file (JSON with "address")."""
    if os.path.isfile(scheduler):
        try:
            address = json.loads(Path(scheduler).read_text())["address"]
            assert isinstance(address, str)
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            raise UsageError(f"--scheduler {scheduler}: a file, but not a Dask scheduler file "
                             f"(JSON with an \"address\").") from None
        return address
    return scheduler


def _probe(address: str, timeout_s: float) -> None:
    """Fail fast and clearly when nothing listens at a tcp:// address (the Dask client would wait, then print a traceback)."""
    import socket

    from distributed.comm import parse_address
    from distributed.comm.addressing import parse_host_port

    try:
        scheme, location = parse_address(address)
        if scheme not in ("tcp", "tls"):
            return
        host, port = parse_host_port(location)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--scheduler {address!r} is not a scheduler address like tcp://host:8786 ({exc}).") from None
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=max(0.5, deadline - time.monotonic())):
                return
        except OSError as exc:
            if time.monotonic() >= deadline or isinstance(exc, socket.gaierror):
                raise ClusterUnavailableError(
                    f"cannot reach the Dask scheduler at {address} ({exc.strerror or exc}); start one (dask "
                    f"scheduler, or a dask-jobqueue cluster) or check the address.") from None
            time.sleep(0.5)


@contextlib.contextmanager
def _client(workers: Optional[int], scheduler: Optional[str], threads: Optional[int]) -> Iterator[tuple[Any, Any]]:
    distributed = _import_distributed()
    cluster = None
    try:
        if scheduler is not None:
            address = _scheduler_address(scheduler)
            _probe(address, CONNECT_TIMEOUT_S)
            try:
                client = distributed.Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
            except (OSError, TypeError, ValueError) as exc:
                raise ClusterUnavailableError(f"cannot connect to the Dask scheduler at {address}: {exc}") from None
        else:
            assert workers is not None and threads is not None
            env = {name: str(threads) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
            try:
                # the workers' own logs stay quiet: what matters reaches the user as outcomes and notes
                cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                   dashboard_address=None, silence_logs=logging.CRITICAL, env=env)
                client = distributed.Client(cluster, set_as_default=False)
                client.wait_for_workers(workers, timeout=120)
            except (OSError, RuntimeError, TimeoutError) as exc:
                raise ClusterUnavailableError(f"could not start {workers} local Dask workers: {exc}") from None
        try:
            yield client, cluster
        finally:
            with contextlib.suppress(Exception):
                client.close()
    finally:
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()


def _run_distributed(run: CohortRun, todo: list[tuple[int, Path]], spec: EnsembleSpec, options: ScoreOptions, *,
                     workers: Optional[int], scheduler: Optional[str], fail_fast: bool, identify: bool,
                     land: Callable[[ScanOutcome], None], note: Callable[[str], None]) -> None:
    t0 = time.perf_counter()
    with _client(workers, scheduler, spec.threads) as (client, _cluster):
        from distributed import as_completed

        token = uuid.uuid4().hex[:8]
        addresses = sorted(client.scheduler_info().get("workers", {}))
        if not addresses:
            note("no Dask workers yet: the scans wait for workers to join the scheduler.")
        # each worker loads and verifies the models once, now: bad weights fail the run here, not scan by scan
        warm = [client.submit(_warm_task, spec, workers=[a], allow_other_workers=False, pure=False,
                              key=f"cac-load-{k}-{token}") for k, a in enumerate(addresses)]
        try:
            run.workers = list(client.gather(warm))
        except Exception as exc:  # noqa: BLE001 - a worker that died while loading, say
            raise ClusterUnavailableError(f"the Dask workers could not load the models: {exc!r}") from None
        for w in run.workers:
            if isinstance(w.get("error"), CacError):
                raise w["error"]
        if run.workers:
            w = run.workers[0]
            note(f"{len(run.workers)} Dask worker(s) ready; each runs one scan at a time with {w['backend']} "
                 f"({w['provider']}), {w['threads']} model thread(s).")
        run.startup_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        futures = {}
        for i, path in todo:
            f = client.submit(_score_task, i, str(path), spec, options, identify, pure=False,
                              key=f"cac-score-{i}-{token}")
            futures[f.key] = (f, i, path)
        try:
            for f in as_completed([v[0] for v in futures.values()], loop=client.loop):
                _, i, path = futures.pop(f.key)
                try:
                    out = f.result()
                except Exception as exc:  # noqa: BLE001 - the task never finished: its workers died, or it was lost
                    if isinstance(exc, OSError) and client.status != "running":
                        raise
                    out = _error_outcome(i, path, f"internal error: the Dask task of {path} failed ({exc!r}); if "
                                                  f"its worker was killed, the scan may need more memory than a "
                                                  f"worker has.", 1, internal=True)
                f.release()
                land(out)
                if fail_fast and out.status == "error":
                    client.cancel([v[0] for v in futures.values()])
                    futures.clear()
                    break
        except OSError as exc:  # the scheduler went away (CommClosedError is an OSError)
            raise ClusterUnavailableError(f"lost the Dask scheduler in the middle of the run ({exc}); "
                                          f"{len(futures)} scans were not scored: rerun the same command to resume "
                                          f"(with --csv).") from None
        run.scoring_s = time.perf_counter() - t1
