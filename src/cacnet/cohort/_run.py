"""The run: :func:`run_cohort`, serially or on a Dask cluster, resumably.

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
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from .._files import check_output_dir, check_output_file
from ..batch import check_unique_ids, read_result
from ..ensemble import Ensemble, verify_weights
from ..errors import CacError, ClusterUnavailableError, UsageError
from ..io import scan_id
from ._manifest import CsvStream, RunManifest, manifest_key, manifest_path, run_settings
from ._scan import ScanOutcome, ScoreOptions, error_outcome, input_identity, iter_serial
from ._workers import EnsembleSpec, plan_threads, score_task, warm_task

__all__ = ["CONNECT_TIMEOUT_S", "CohortRun", "run_cohort"]

#: Seconds to wait for the scheduler of ``--scheduler`` before giving up (exit 5).
CONNECT_TIMEOUT_S = 10.0


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
    csv_stream = CsvStream(None if csv_file is None else Path(csv_file), csv_interval_s)
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
            candidates = [i for i in todo if manifest_key(scans[i]) in finished]
            if candidates and need_data and options.outdir is None:
                note("--json without -o: the results of the scans that finished earlier are not kept, so every "
                     "scan is scored again.")
            with ThreadPoolExecutor(max_workers=8) as pool:
                resumed = list(pool.map(lambda i: _resumed(i, scans[i], finished[manifest_key(scans[i])], options,
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
                manifest.record(out, manifest_key(scans[out.index]))
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
        warm = [client.submit(warm_task, spec, workers=[a], allow_other_workers=False, pure=False,
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
            f = client.submit(score_task, i, str(path), spec, options, identify, pure=False,
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
                    out = error_outcome(i, path, f"internal error: the Dask task of {path} failed ({exc!r}); if "
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
