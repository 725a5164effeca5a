"""The `cac` command: a thin layer over the cacnet Python API.

Exit codes: 0 ok, 2 usage error, 3 invalid input, 4 partial batch failure,
5 device unavailable.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, List, Optional, Tuple

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperCommand, TyperGroup


def _quiet_flags(params: List[Any]) -> List[Any]:
    """Give on/off flags an empty metavar, so that --help shows no ``<bool>`` type.

    typer's rich help prints the type of every option, flags (``--json``,
    ``--help``) included, where there is no value to give.
    """
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class _Command(TyperCommand):
    """A `cac` sub-command: flags listed without a type in --help."""

    def get_params(self, ctx: typer.Context) -> List[Any]:
        return _quiet_flags(super().get_params(ctx))


class _Group(TyperGroup):
    """The `cac` command group: flags listed without a type in --help."""

    def get_params(self, ctx: typer.Context) -> List[Any]:
        return _quiet_flags(super().get_params(ctx))


app = typer.Typer(
    name="cac",
    cls=_Group,
    help="Automatic coronary artery calcium scoring from non-contrast cardiac CT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, soft_wrap=True)

EXIT_OK, EXIT_USAGE, EXIT_INVALID, EXIT_PARTIAL, EXIT_DEVICE = 0, 2, 3, 4, 5


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"cac {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Automatic coronary artery calcium scoring from non-contrast cardiac CT.

    Exit codes: 0 ok, 2 usage error, 3 invalid input, 4 partial batch
    failure, 5 device unavailable.
    """


def _progress() -> Progress:
    """A progress bar on stderr, silent when stderr is not a terminal."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, disable=not sys.stderr.isatty(), transient=False,
    )


@app.command(cls=_Command)
def phantom(
    outdir: Path = typer.Argument(..., help="Folder to write scans/, labels/, truth.csv and points.csv into."),
    n: int = typer.Option(10, "--n", min=1, help="Number of cases."),
    seed: int = typer.Option(0, "--seed", help="Seed of the set; case i is reproducible bit for bit."),
    category: Optional[str] = typer.Option(None, "--category", help="Make every case of this risk category (A-E)."),
    balanced: bool = typer.Option(False, "--balanced", help="Cycle the categories A-E (equal counts when N is a multiple of 5)."),
    hard_fraction: float = typer.Option(0.3, "--hard-fraction", min=0.0, max=1.0,
                                        help="Share of cases with a small faint lesion / with mitral annulus calcification."),
    lookalike_rate: float = typer.Option(0.4, "--lookalike-rate", min=0.0, max=1.0,
                                         help="Probability of each other look-alike in a case."),
    preview: bool = typer.Option(False, "--preview", help="Also write previews/<id>.png montages."),
) -> None:
    """Generate synthetic cardiac CT scans with exact coronary calcium ground truth."""
    from .phantom import make_phantoms

    if category is not None:
        category = category.upper()
        if category not in ("A", "B", "C", "D", "E"):
            err.print(f"[red]error:[/red] --category must be one of A, B, C, D, E; got {category!r}.")
            raise typer.Exit(EXIT_USAGE)
        if balanced:
            err.print("[red]error:[/red] use either --category or --balanced, not both.")
            raise typer.Exit(EXIT_USAGE)
    with _progress() as progress:
        task = progress.add_task("phantoms", total=n)
        rows = make_phantoms(outdir, n, seed, category=category, balanced=balanced, hard_fraction=hard_fraction,
                             lookalike_rate=lookalike_rate, preview=preview,
                             on_case=lambda _id: progress.advance(task))
    counts = {c: sum(r["category"] == c for r in rows) for c in "ABCDE"}
    err.print(f"wrote {len(rows)} cases to {outdir} ({', '.join(f'{k}: {v}' for k, v in counts.items())})")


@app.command(cls=_Command)
def train(
    outdir: Path = typer.Argument(..., help="Folder for caches, checkpoints, logs and weights/ (rerun the same command to resume)."),
    data: Optional[List[Path]] = typer.Option(
        None, "--data", help="User data set (repeatable): images/<id>.nii.gz with labels/ or points.csv; split by case id."),
    negatives: Optional[List[Path]] = typer.Option(
        None, "--negatives",
        help="Hard negative (repeatable): a real scan without coronary calcium (file or DICOM folder); every label is background."),
    phantoms: int = typer.Option(300, "--phantoms", min=0, help="Synthetic training cases."),
    val_phantoms: int = typer.Option(20, "--val-phantoms", min=0, help="Synthetic validation cases."),
    init: Optional[Path] = typer.Option(
        None, "--init",
        help="Start weights: a weights folder (unet_<k>.onnx), a cac train folder (model_<k>/best.pt) or model_<k>.npz files. Default: from scratch."),
    models: int = typer.Option(5, "--models", min=1, help="Models in the ensemble, trained together in one process."),
    steps: Optional[int] = typer.Option(
        None, "--steps", min=0, help="Training steps per model (default: 2000, or no limit with --max-minutes)."),
    max_minutes: Optional[float] = typer.Option(
        None, "--max-minutes", min=0.01,
        help="Stop after this many minutes of training (all models together) even before --steps; rate drops follow the time."),
    batch: int = typer.Option(2, "--batch", min=1,
                              help="Patches per step and model (2 suits a CPU; 16 keeps a GPU busy)."),
    real_per_batch: Optional[int] = typer.Option(
        None, "--real-per-batch", min=0,
        help="Patches of --data training cases per batch (default: half of what negatives leave, all of it without phantoms)."),
    neg_per_batch: Optional[int] = typer.Option(
        None, "--neg-per-batch", min=0, help="Patches of --negatives per batch (default: a quarter of the batch, at least 1)."),
    val_fraction: Optional[float] = typer.Option(
        None, "--val-fraction", min=0.0, max=0.9, help="Share of each --data set's cases (by id) that validates (default: 0.2)."),
    exclude_start: bool = typer.Option(
        False, "--exclude-start", help="With --init: never keep the start weights, only steps trained here."),
    lr: float = typer.Option(1e-3, "--lr", min=0.0, help="Adam's learning rate (x0.3 at 70 % and 90 % of the run)."),
    warmup: Optional[float] = typer.Option(
        None, "--warmup", min=0.0, max=0.5, help="Share of the run over which the rate warms up (default: 0.03 with --init, else 0)."),
    val_every: Optional[int] = typer.Option(
        None, "--val-every", min=1, help="Validate every this many steps (default: 250, or only by --val-seconds when given)."),
    val_seconds: Optional[float] = typer.Option(None, "--val-seconds", min=1.0, help="Validate every this many seconds."),
    checkpoint_every: int = typer.Option(100, "--checkpoint-every", min=1, help="Checkpoint every this many steps (and at every validation)."),
    patch: Tuple[int, int, int] = typer.Option((40, 64, 64), "--patch", min=8, help="Patch size (z, y, x), multiples of 8."),
    workers: int = typer.Option(2, "--workers", min=1, help="Processes making phantoms."),
    stream: bool = typer.Option(
        False, "--stream", help="Start training while the phantoms not cached yet are made (resumes, but not bit-exactly)."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from the checkpoint in OUTDIR."),
) -> None:
    """Train the U-Net ensemble, all models together in one process (CPU or GPU), and export it to OUTDIR/weights.

    Needs the `train` extra. Each model keeps its step with the best calcium Dice over all validation cases
    (validation phantoms and the --data validation split pooled).
    """
    try:
        from .train import TrainConfig, train_ensemble
    except ImportError as exc:
        err.print(f"[red]error:[/red] training needs the train extra: pip install '.[train]' ({exc}).")
        raise typer.Exit(EXIT_USAGE)
    for d in data or []:
        if not (d / "images").is_dir():
            err.print(f"[red]error:[/red] {d} has no images/ folder; expected images/<id>.nii.gz with labels/ or points.csv.")
            raise typer.Exit(EXIT_INVALID)
    for n in negatives or []:
        if not n.exists():
            err.print(f"[red]error:[/red] no such scan: {n}")
            raise typer.Exit(EXIT_INVALID)
    if init is not None and not init.is_dir():
        err.print(f"[red]error:[/red] --init {init} is not a folder")
        raise typer.Exit(EXIT_INVALID)
    if any(n % 8 for n in patch):
        err.print(f"[red]error:[/red] --patch sizes must be multiples of 8, not {patch}")
        raise typer.Exit(EXIT_USAGE)
    if outdir.exists() and any(outdir.glob("model_*/checkpoint.pt")) and not (outdir / "checkpoint.pt").exists():
        err.print(f"[red]error:[/red] {outdir} holds the per-model checkpoints of an older cac train, which trained the "
                  f"models one after another; continue from their best weights with: cac train NEW --init {outdir}")
        raise typer.Exit(EXIT_USAGE)
    if not resume and (outdir / "checkpoint.pt").exists():
        err.print(f"[red]error:[/red] {outdir} holds a checkpoint; use --resume or another OUTDIR.")
        raise typer.Exit(EXIT_USAGE)
    config = TrainConfig(
        steps=steps if steps is not None else (10**9 if max_minutes else 2000),
        val_every=val_every or (10**9 if val_seconds else 250), val_seconds=val_seconds,
        checkpoint_every=checkpoint_every, batch=batch, patch=tuple(patch), lr=lr,
        warmup=warmup if warmup is not None else (0.03 if init else 0.0),
        real_per_batch=real_per_batch or 0, neg_per_batch=neg_per_batch or 0,
        max_seconds=None if max_minutes is None else max_minutes * 60.0)
    with _progress() as progress:
        task: dict = {}

        def on_event(kind: str, info: dict) -> None:
            if kind == "data_start":
                err.print(f"preparing {info['phantoms']} training and {info['val']} validation phantoms (cached)"
                          + (f", {len(info['data'])} data set(s)" if info["data"] else "")
                          + (f", {info['negatives']} hard negative(s)" if info["negatives"] else ""))
            elif kind == "data":
                c = info["config"]
                err.print(f"training on {info['phantoms']} phantoms, {info['real']} real cases, {info['negatives']} "
                          f"negatives; validating on {info['val']} phantoms and {info['real_val']} real cases; batch "
                          f"{c['batch'] - c['real_per_batch'] - c['neg_per_batch']} phantom + {c['real_per_batch']} "
                          f"real + {c['neg_per_batch']} negative patches")
            elif kind == "streamed":
                err.print(f"training starts on {info['train_cases']} phantoms; {info['pending']} more are being made")
            elif kind == "resume":
                err.print(f"resuming from step {info['step']}")
            elif kind == "start":
                total = info["steps"] if info["steps"] < 10**9 else None
                task["id"] = progress.add_task(f"{info['models']} models ({info['device']})", total=total,
                                               completed=info["step"])
            elif kind == "step" and "id" in task:
                progress.update(task["id"], completed=info["step"])
            elif kind == "val":
                err.print(f"step {info['step']}: validation Dice " + " ".join(f"{d:.3f}" for d in info["dice"]))

        try:
            manifest = train_ensemble(outdir, data=data or [], negatives=negatives or [], phantoms=phantoms,
                                      val_phantoms=val_phantoms, models=models, config=config, init=init,
                                      val_fraction=val_fraction, exclude_start=exclude_start, stream=stream,
                                      workers=workers, on_event=on_event)
        except (ValueError, FileNotFoundError) as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(EXIT_USAGE)
    err.print(f"weights and manifest written: {manifest}")


def _fail(message: str, code: int) -> "typer.Exit":
    err.print(f"[red]error:[/red] {message}", highlight=False, markup=True)
    return typer.Exit(code)


def _load_ensemble(weights: Optional[Path], device: str):
    from .ensemble import DEFAULT_WEIGHTS, Ensemble
    from .errors import CacError

    try:
        return Ensemble(weights or DEFAULT_WEIGHTS, device=device)
    except CacError as exc:
        raise _fail(str(exc), exc.exit_code)


def _score_table(rows: list[dict]) -> Table:
    table = Table(title="Coronary artery calcium", show_lines=False)
    for col in ("scan", "Agatston", "cat.", "LM", "LAD", "LCX", "RCA", "volume mm3", "lesions", "CAC-DRS", "status"):
        table.add_column(col, justify="left" if col in ("scan", "status") else "right")
    for r in rows:
        if r["status"] == "error":
            table.add_row(r["id"], "", "", "", "", "", "", "", "", "", "[red]error[/red]")
            continue
        table.add_row(r["id"], f"{float(r['agatston']):.1f}", r["category"],
                      *[f"{float(r[k]):.1f}" for k in ("LM", "LAD", "LCX", "RCA")],
                      f"{float(r['volume_mm3']):.1f}", str(r["n_lesions"]), r["cac_drs"],
                      r["status"] + (f" ({r['n_review']} to review)" if r["n_review"] else ""))
    return table


def _error_object(sid: str, path: Path, message: str, exit_code: int) -> dict:
    """The `cac score --json` object of a scan that failed."""
    return {"id": sid, "input": str(path), "status": "error", "error": message, "exit_code": exit_code}


@app.command(cls=_Command)
def score(
    inputs: List[Path] = typer.Argument(..., help="Scans: NIfTI/NRRD/MHA files, DICOM folders or .zip, or folders of them."),
    outdir: Optional[Path] = typer.Option(None, "-o", "--outdir", help="Write <id>.json and <id>_calcium.nii.gz here."),
    as_json: bool = typer.Option(
        False, "--json",
        help="Print JSON on stdout: one object per scan, with status ok, skipped or error (a list for several scans)."),
    csv_file: Optional[Path] = typer.Option(None, "--csv", help="Write one row per scan to this CSV file."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    series: Optional[str] = typer.Option(None, "--series", help="SeriesInstanceUID when a DICOM folder holds several."),
    calibration: Optional[float] = typer.Option(None, "--calibration", help="Mass calibration factor c (mg HA/cm3/HU)."),
    preview: bool = typer.Option(False, "--preview", help="With -o: also write <id>.png with lesions outlined."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="With -o: skip scans whose <id>.json exists."),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first scan that fails."),
    early_stop: bool = typer.Option(
        False, "--early-stop",
        help="Stop running models (after 3 or 4 of 5) once the rest cannot change any lesion's "
             "outcome (same mask and scores; vote counts cover the models run)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Weights folder (default: the shipped ensemble)."),
    force: bool = typer.Option(
        False, "--force",
        help="Score scans that triage refuses (contrast-enhanced, no heart found, sharp kernel); "
             "the reasons become warnings."),
) -> None:
    """Score coronary calcium in one or more scans."""
    from ._files import write_csv_atomic
    from .batch import CSV_COLUMNS, csv_row, expand_inputs, read_result, write_outputs
    from .errors import CacError
    from .io import scan_id
    from .pipeline import score_scan

    if device not in ("auto", "cpu", "cuda"):
        raise _fail(f"--device must be auto, cpu or cuda; got {device!r}.", EXIT_USAGE)
    if calibration is not None and not calibration > 0:
        raise _fail(f"--calibration must be a positive number (mg HA/cm3/HU); got {calibration}.", EXIT_USAGE)
    if (preview or skip_existing) and outdir is None:
        raise _fail("--preview and --skip-existing need -o OUTDIR.", EXIT_USAGE)
    scans = expand_inputs(inputs)
    ensemble = _load_ensemble(weights, device)
    rows, results, failed_code = [], [], 0
    printed: list[dict] = []  # --json: one object per scan, in input order, failures included
    with _progress() as progress:
        task = progress.add_task("scoring", total=len(scans))
        for path in scans:
            sid = scan_id(path)
            try:
                if skip_existing and outdir is not None and (outdir / f"{sid}.json").exists():
                    data = read_result(outdir / f"{sid}.json")
                    rows.append(csv_row(data, input_path=path, status="skipped"))
                    results.append(data)
                    printed.append({"id": data["id"], "status": "skipped", "input": str(path), **data})
                    continue
                res = score_scan(path, ensemble, calibration=calibration, series=series, early_stop=early_stop,
                                 force=force)
                if outdir is not None:
                    write_outputs(res, outdir, preview=preview)
                rows.append(csv_row(res.data, input_path=path, status="ok"))
                results.append(res.data)
                printed.append({"id": res.data["id"], "status": "ok", "input": str(path), **res.data})
            except CacError as exc:
                rows.append(csv_row(None, input_path=path, status="error", error=str(exc)))
                printed.append(_error_object(sid, path, str(exc), exc.exit_code))
                err.print(f"[red]error:[/red] {exc}", highlight=False)
                failed_code = failed_code or exc.exit_code
                if fail_fast:
                    break
            except Exception as exc:  # noqa: BLE001 - a batch must go on; say what happened
                rows.append(csv_row(None, input_path=path, status="error", error=f"internal error: {exc!r}"))
                printed.append(_error_object(sid, path, f"internal error: {exc!r}", 1))
                err.print(f"[red]internal error on {path}:[/red] {exc!r} (please report it)", highlight=False)
                failed_code = failed_code or 1
                if fail_fast:
                    break
            finally:
                progress.advance(task)
    if csv_file is not None:
        write_csv_atomic(csv_file, CSV_COLUMNS, rows)
    if as_json:
        typer.echo(json.dumps(printed[0] if len(scans) == 1 and printed else printed, indent=2))
    else:
        Console(width=None if sys.stdout.isatty() else 160).print(_score_table(rows))
        for data in results:
            for w in data.get("warnings", []):
                err.print(f"[yellow]warning[/yellow] {data['id']}: {w}", highlight=False)
    n_bad = sum(r["status"] == "error" for r in rows)
    if n_bad:
        if len(scans) == 1 or fail_fast:
            raise typer.Exit(failed_code if failed_code in (EXIT_INVALID, EXIT_DEVICE) else EXIT_PARTIAL)
        err.print(f"{n_bad} of {len(scans)} scans failed; see the messages above" + (f" and {csv_file}" if csv_file else ""))
        raise typer.Exit(EXIT_PARTIAL)


@app.command(name="eval", cls=_Command)
def evaluate_cmd(
    truth: Path = typer.Option(..., "--truth", help="CSV with id and agatston and/or category."),
    pred: Optional[Path] = typer.Option(None, "--pred", help="CSV of predictions (e.g. from cac score --csv)."),
    inputs: Optional[List[Path]] = typer.Argument(None, help="Scans to score instead of --pred."),
    truth_masks: Optional[Path] = typer.Option(None, "--truth-masks", help="Folder of <id>.nii.gz label masks."),
    pred_masks: Optional[Path] = typer.Option(None, "--pred-masks",
                                              help="Folder of <id>_calcium.nii.gz (default: the masks of INPUT scoring)."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
    device: str = typer.Option("auto", "--device", help="With INPUT scans: auto, cpu or cuda to run the models on."),
    weights: Optional[Path] = typer.Option(None, "--weights",
                                           help="With INPUT scans: weights folder (default: the shipped ensemble)."),
    force: bool = typer.Option(False, "--force",
                               help="With INPUT scans: score scans the triage refuses (contrast, sharp kernel, no heart)."),
) -> None:
    """Agreement of predicted scores (and masks) with ground truth."""
    from .errors import CacError
    from .evaluate import evaluate_predictions, predictions_from_csv, predictions_from_scans, read_truth

    if pred is None and not inputs:
        raise _fail("nothing to evaluate: give --pred PRED.csv (e.g. from cac score --csv) or scans to score.",
                    EXIT_USAGE)
    if pred is not None and inputs:
        raise _fail("give either --pred PRED.csv or scans to score, not both.", EXIT_USAGE)
    if device not in ("auto", "cpu", "cuda"):
        raise _fail(f"--device must be auto, cpu or cuda; got {device!r}.", EXIT_USAGE)
    try:
        truth_rows = read_truth(truth)
        if pred is not None:
            predictions, masks = predictions_from_csv(pred), None
        else:
            ensemble = _load_ensemble(weights, device)
            predictions, masks = predictions_from_scans(inputs or [], ensemble, force=force)
        report = evaluate_predictions(truth_rows, predictions, truth_masks=truth_masks, pred_masks=pred_masks,
                                      pred_mask_arrays=masks)
    except CacError as exc:
        raise _fail(str(exc), exc.exit_code)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    from .evaluate import print_report

    print_report(report, Console())


@app.command(cls=_Command)
def info(weights: Optional[Path] = typer.Option(None, "--weights", help="Weights folder (default: shipped).")) -> None:
    """Versions, onnxruntime providers and the weight files with their hashes."""
    import onnxruntime as ort

    from .ensemble import DEFAULT_WEIGHTS, load_manifest, verify_weights
    from .errors import CacError
    from .pipeline import versions

    out = Console()
    for k, v in versions().items():
        out.print(f"{k:<14} {v}")
    out.print(f"{'providers':<14} {', '.join(ort.get_available_providers())}")
    wdir = weights or DEFAULT_WEIGHTS
    out.print(f"{'weights':<14} {wdir}")
    try:
        manifest = load_manifest(wdir)
        ok = {m["file"] for m in verify_weights(wdir)}
    except CacError as exc:
        raise _fail(str(exc), exc.exit_code)
    table = Table("file", "sha256", "val Dice", "status")
    for m in manifest["models"]:
        table.add_row(m["file"], m["sha256"][:16] + "...", str(m.get("val_dice", "")),
                      "ok" if m["file"] in ok else "[red]mismatch[/red]")
    out.print(table)
    out.print(f"trained on: {manifest.get('training', {}).get('data', 'unknown')}")


dataset_app = typer.Typer(
    name="dataset",
    cls=_Group,
    help="Convert public calcium data sets (COCA, orCaScore) into the layout `cac train --data` reads.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(dataset_app, name="dataset")


def _convert_dataset(kind: str, src: Path, out: Path, **options: Any) -> None:
    """Run one converter of :mod:`cacnet.datasets` with a progress bar; exit 0, 3 (layout) or 4 (some cases)."""
    from rich.markup import escape

    from . import datasets
    from .errors import CacError

    convert = {"coca": datasets.convert_coca, "orcascore": datasets.convert_orcascore}[kind]
    with _progress() as progress:
        task = progress.add_task(f"{kind} cases", total=None)

        def on_start(total: int) -> None:
            progress.update(task, total=total)

        def on_case(row: dict) -> None:
            progress.advance(task)
            if row["status"] == "error":
                shown.append(row)
                err.print(f"[red]error:[/red] {escape(row['id'])}: {escape(row['message'])} (skipped)",
                          highlight=False)

        shown: list = []

        try:
            rows = convert(src, out, on_start=on_start, on_case=on_case, **options)
        except CacError as exc:
            raise _fail(escape(str(exc)), exc.exit_code)
    count = {s: sum(r["status"] == s for r in rows) for s in ("converted", "skipped", "error", "ignored")}
    for r in rows:
        if r["status"] == "error" and not any(r is x for x in shown):
            err.print(f"[red]error:[/red] {escape(r['id'])}: {escape(r['message'])}", highlight=False)
    ignored = [r for r in rows if r["status"] == "ignored"]
    if ignored:
        names = ", ".join(r["id"] for r in ignored[:8]) + (", ..." if len(ignored) > 8 else "")
        err.print(f"[yellow]note:[/yellow] {len(ignored)} left out: {escape(ignored[0]['message'])} ({escape(names)})",
                  highlight=False)
    rois = {s: sum(int(r.get(f"n_{s}", 0)) for r in rows) for s in ("ok", "mismatch", "error")}
    err.print(f"{kind}: {count['converted']} converted, {count['skipped']} already done, {count['error']} failed; "
              f"annotations {rois['ok']} ok, {rois['mismatch']} mismatch, {rois['error']} left out; "
              f"see {out / 'report.csv'} and {out / 'truth.csv'}", highlight=False)
    if count["error"]:
        raise typer.Exit(EXIT_PARTIAL)


@dataset_app.command("coca", cls=_Command)
def dataset_coca(
    src: Path = typer.Argument(..., help="COCA gated folder: patient/<id>/<series>/*.dcm and calcium_xml/<id>.xml."),
    out: Path = typer.Argument(..., help="Output: images/, labels/, truth.csv, report.csv (rerun to resume)."),
    missing_xml: str = typer.Option("zero", "--missing-xml",
                                    help="A patient without calcium_xml/<id>.xml: zero (no calcium, all-zero "
                                         "label) or skip."),
) -> None:
    """Convert COCA (Stanford AIMI, gated: DICOM + OsiriX ROI xml) for `cac train --data`."""
    if missing_xml not in ("zero", "skip"):
        raise _fail(f"--missing-xml must be zero or skip; got {missing_xml!r}.", EXIT_USAGE)
    _convert_dataset("coca", src, out, missing_xml=missing_xml)


@dataset_app.command("orcascore", cls=_Command)
def dataset_orcascore(
    src: Path = typer.Argument(..., help="Folder with orCaScore <stem>.mhd images and their reference labels."),
    out: Path = typer.Argument(..., help="Output: images/, labels/, truth.csv, report.csv, labels_meta.json."),
) -> None:
    """Convert orCaScore (MetaImage + reference labels; LM merged into LAD) for `cac train --data`."""
    _convert_dataset("orcascore", src, out)


def main() -> None:  # pragma: no cover - console entry point
    from ._memory import return_large_buffers_to_os

    return_large_buffers_to_os()
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
