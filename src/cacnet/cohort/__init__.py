"""Cohorts: scoring many scans, serially or on a Dask cluster, resumably."""

# _scan.py: one scan (score_path: everything `cac score` does for it; iter_serial: the serial batch,
# reading the next scan while this one is scored; ScoreOptions, ScanOutcome); _workers.py: the workers
# (EnsembleSpec, plan_threads, the ensemble and the Dask tasks of a worker process); _manifest.py: the run
# manifest and the CSV streamed as rows arrive; _run.py: the run (run_cohort, CohortRun, the Dask client).

from ._manifest import MANIFEST_SUFFIX, RunManifest, manifest_path, run_settings
from ._run import CONNECT_TIMEOUT_S, CohortRun, run_cohort
from ._scan import ScanOutcome, ScoreOptions, input_identity, iter_serial, peak_rss_mb, score_path
from ._workers import EnsembleSpec, plan_threads, worker_ensemble

__all__ = ["CONNECT_TIMEOUT_S", "MANIFEST_SUFFIX", "CohortRun", "EnsembleSpec", "RunManifest", "ScanOutcome",
           "ScoreOptions", "input_identity", "iter_serial", "manifest_path", "peak_rss_mb", "plan_threads",
           "run_cohort", "run_settings", "score_path", "worker_ensemble"]
