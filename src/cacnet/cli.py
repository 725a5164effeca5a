"""The `cac` command: a thin layer over the cacnet Python API.

Exit codes: 0 ok, 2 usage error, 3 invalid input, 4 partial batch failure,
5 device (or Dask cluster) unavailable, 6 DICOM send failed (--send; the files stay in -o),
7 an output cannot be written, 1 internal error, 130 interrupted (Ctrl-C).
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
from rich.text import Text
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


class _HelpFormatter(typer.Context.formatter_class):  # type: ignore[misc,name-defined]  # click's, or typer's copy
    """click's plain help, but a line never breaks at the hyphen of an option name (``--no-second-stage``).

    textwrap breaks words after a hyphen; the text is wrapped with non-breaking hyphens (U+2011, one column
    like ``-``) that are turned back into ``-`` once written.
    """

    def _unbroken(self, write: Any, *args: Any) -> None:
        start = len(self.buffer)
        write(*args)
        self.buffer[start:] = [s.replace("\u2011", "-") for s in self.buffer[start:]]

    def write_text(self, text: str) -> None:
        self._unbroken(super().write_text, text.replace("-", "\u2011"))

    def write_dl(self, rows: Any, col_max: int = 30, col_spacing: int = 2) -> None:
        self._unbroken(super().write_dl, [(a, b.replace("-", "\u2011")) for a, b in rows], col_max, col_spacing)


class _Context(typer.Context):
    formatter_class = _HelpFormatter


class _Command(TyperCommand):
    """A `cac` sub-command: flags listed without a type, help readable at 80 columns."""

    context_class = _Context

    def get_params(self, ctx: typer.Context) -> List[Any]:
        return _quiet_flags(super().get_params(ctx))

    def get_short_help_str(self, limit: int = 45) -> str:
        return super().get_short_help_str(limit=10**6)  # the first sentence whole in the group's list, wrapped


class _Group(TyperGroup):
    """The `cac` command group: flags listed without a type, help readable at 80 columns."""

    context_class = _Context

    def get_params(self, ctx: typer.Context) -> List[Any]:
        return _quiet_flags(super().get_params(ctx))

    def get_short_help_str(self, limit: int = 45) -> str:
        return super().get_short_help_str(limit=10**6)  # the first sentence whole in the group's list, wrapped


app = typer.Typer(
    name="cac",
    cls=_Group,
    help="Automatic coronary artery calcium scoring from non-contrast cardiac CT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: readable at 80 columns, help text printed as it is
    context_settings={"max_content_width": 100},  # up to 100 columns in a wider terminal
)
# No rich markup on the consoles: scan names, paths, messages and install hints ('cac-toolkit[dicom]') print as
# they are; styled labels go through _say, tables take Text cells.
err = Console(stderr=True, soft_wrap=True, markup=False)


def _stdout(width: Optional[int] = None) -> Console:
    """The console of a command's results on stdout; like ``err``, without rich markup."""
    return Console(markup=False, width=width)


def _say(label: str, style: str, message: str) -> None:
    """``label message`` on stderr: the label styled, the message exactly as it is (brackets included)."""
    err.print(Text.assemble((label, style), " ", message))


def _fail(message: str, code: int) -> "typer.Exit":
    """Say ``error: message`` (printed as it is) and return the Exit to raise."""
    _say("error:", "red", message)
    return typer.Exit(code)


def _check_output_dir(folder: Path, what: str) -> None:
    """Create the output folder and check that it can be written, before any work; exit 7 if not."""
    from ._files import check_output_dir
    from .errors import CacError

    try:
        check_output_dir(folder, what)
    except CacError as exc:
        raise _fail(str(exc), exc.exit_code)


EXIT_OK, EXIT_USAGE, EXIT_INVALID, EXIT_PARTIAL, EXIT_DEVICE = 0, 2, 3, 4, 5
EXIT_SEND = 6  # --send: the DICOM node is unreachable or refused the objects (they stay in -o)
EXIT_OUTPUT = 7  # an output (-o, --csv, OUTDIR) cannot be created or written
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


def _version(value: bool) -> None:
    if value:
        from . import __version__

        try:  # the shipped weights have a version of their own
            from .ensemble import DEFAULT_WEIGHTS, load_manifest, weights_version

            shipped = weights_version(load_manifest(DEFAULT_WEIGHTS))
        except Exception:  # noqa: BLE001 - no weights manifest: the package's version alone
            shipped = None
        typer.echo(f"cac {__version__}" + (f" (shipped weights {shipped})" if shipped else ""))
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version (and the shipped weights') and exit."),
) -> None:
    """Automatic coronary artery calcium scoring from non-contrast cardiac CT.

    Exit codes: 0 ok, 2 usage error, 3 invalid input, 4 partial batch
    failure, 5 device (or Dask cluster) unavailable, 6 DICOM send failed
    (--send; the files stay in OUTDIR), 7 an output cannot be written
    (-o, --csv, OUTDIR), 1 internal error, 130 interrupted (Ctrl-C).
    """


def _progress() -> Progress:
    """A progress bar on stderr, silent when stderr is not a terminal."""
    return Progress(
        TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
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
    variant: str = typer.Option("default", "--variant",
                                help="Generator: default (what the shipped models learned) or varied (chambers, "
                                     "fat, fields of view, kernels, streaks, aortic calcium; see docs/phantoms.md)."),
) -> None:
    """Generate synthetic cardiac CT scans with exact coronary calcium ground truth."""
    from .phantom import make_phantoms

    if category is not None:
        category = category.upper()
        if category not in ("A", "B", "C", "D", "E"):
            raise _fail(f"--category must be one of A, B, C, D, E; got {category!r}.", EXIT_USAGE)
        if balanced:
            raise _fail("use either --category or --balanced, not both.", EXIT_USAGE)
    variant = variant.lower()
    if variant not in ("default", "varied"):
        raise _fail(f"--variant must be default or varied; got {variant!r}.", EXIT_USAGE)
    _check_output_dir(outdir, "OUTDIR")
    with _progress() as progress:
        task = progress.add_task("phantoms", total=n)
        try:
            rows = make_phantoms(outdir, n, seed, category=category, balanced=balanced, hard_fraction=hard_fraction,
                                 lookalike_rate=lookalike_rate, preview=preview,
                                 on_case=lambda _id: progress.advance(task), variant=variant)
        except OSError as exc:  # e.g. a full disk; the folder was checked before
            raise _fail(f"cannot write the phantoms in {outdir} ({exc}).", EXIT_OUTPUT)
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
    phantom_variant: str = typer.Option(
        "default", "--phantom-variant",
        help="Generator of the training and validation phantoms: default or varied (see cac phantom --variant; "
             "cached separately, recorded in the manifest)."),
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
        help="Patches of --data training cases and --backgrounds cases (drawn alike) per batch (default: half of what negatives leave, all of it without phantoms)."),
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
    backgrounds: Optional[Path] = typer.Option(
        None, "--backgrounds",
        help="Folder of real CT scans named by the traced anatomy (e.g. ../shared/data/real-ct): each traced scan found there "
             "gives --background-cases cases with inserted calcium, trained on as real cases (--real-per-batch)."),
    background_cases: int = typer.Option(
        40, "--background-cases", min=1, help="Inserted-calcium cases per traced reconstruction (balanced A-E; cached)."),
    max_negative_voxels: Optional[int] = typer.Option(
        None, "--max-negative-voxels", min=0,
        help="Keep only validated steps whose model labels at most this many coarse voxels of the --negatives as "
             "calcium (e.g. 0; default: no limit). If no step does, the step with the fewest is kept, with a "
             "warning and a selection_note in the manifest."),
    val_background_cases: int = typer.Option(
        0, "--val-background-cases", min=0,
        help="Also validate on this many other inserted-calcium cases per traced reconstruction (other seeds, same "
             "patients; default 0: backgrounds never validate)."),
    hold_out_background: Optional[List[str]] = typer.Option(
        None, "--hold-out-background",
        help="Traced patient (tracing name, e.g. lung_pet_ct_dx_a0002; repeatable) left out of training entirely."),
    tracings: Optional[Path] = typer.Option(
        None, "--tracings", help="Folder of tracing JSON files to use instead of the shipped ones (with --backgrounds)."),
    second_stage_cases: int = typer.Option(
        0, "--second-stage-cases", min=0,
        help="After export, fit the second stage (a per-candidate classifier over the ensemble's soft output and "
             "local anatomy, see cacnet.candidates) on this many inserted-calcium cases per traced reconstruction "
             "(other seeds), as many phantoms of each generator and every candidate of the --negatives; needs "
             "--backgrounds and scikit-learn (train extra). Default 0: none (the majority vote decides)."),
    second_stage_validation: int = typer.Option(
        0, "--second-stage-validation", min=0,
        help="Choose the second stage's two thresholds (a U-Net voted / none did) on validation cases it never "
             "saw: this many inserted-calcium cases per traced reconstruction (other seeds), twice as many phantoms "
             "of each generator (half of them category A) and the --validation-scans; the operating point is at "
             "most 2 % of the zero-calcium ones scored. Default 0: threshold 0.5 for both."),
    validation_scans: Optional[List[Path]] = typer.Option(
        None, "--validation-scans",
        help="Real scan without coronary calcium (file or DICOM folder; repeatable): a zero-calcium validation "
             "case of --second-stage-validation."),
) -> None:
    """Train the U-Net ensemble, all models together in one process (CPU or GPU), and export it to OUTDIR/weights.

    Needs the `train` extra. Each model keeps its step with the best calcium Dice over all validation cases
    (validation phantoms, the --data validation split and --val-background-cases pooled).
    """
    try:
        from .train import TrainConfig, train_ensemble
    except ImportError as exc:
        raise _fail(f"training needs the train extra: pip install '.[train]' ({exc}).", EXIT_USAGE)
    if phantom_variant not in ("default", "varied"):
        raise _fail(f"--phantom-variant must be default or varied; got {phantom_variant!r}.", EXIT_USAGE)
    for d in data or []:
        if not (d / "images").is_dir():
            raise _fail(f"{d} has no images/ folder; expected images/<id>.nii.gz with labels/ or points.csv.",
                        EXIT_INVALID)
    for n in [*(negatives or []), *(validation_scans or [])]:
        if not n.exists():
            raise _fail(f"no such scan: {n}", EXIT_INVALID)
    if init is not None and not init.is_dir():
        raise _fail(f"--init {init} is not a folder", EXIT_INVALID)
    if backgrounds is not None:
        from .train import find_backgrounds

        try:
            find_backgrounds(backgrounds, tracings_dir=tracings, hold_out=hold_out_background or [])
        except FileNotFoundError as exc:
            raise _fail(str(exc), EXIT_INVALID)
        except ValueError as exc:
            raise _fail(str(exc), EXIT_USAGE)
    elif (hold_out_background or tracings is not None or val_background_cases or second_stage_cases
          or second_stage_validation):
        raise _fail("--hold-out-background, --tracings, --val-background-cases, --second-stage-cases and "
                    "--second-stage-validation need --backgrounds", EXIT_USAGE)
    if (second_stage_validation or validation_scans) and not second_stage_cases:
        raise _fail("--second-stage-validation and --validation-scans choose the thresholds of a second stage: "
                    "give --second-stage-cases too", EXIT_USAGE)
    if any(n % 8 for n in patch):
        raise _fail(f"--patch sizes must be multiples of 8, not {patch}", EXIT_USAGE)
    if outdir.exists() and any(outdir.glob("model_*/checkpoint.pt")) and not (outdir / "checkpoint.pt").exists():
        raise _fail(f"{outdir} holds the per-model checkpoints of an older cac train, which trained the models one "
                    f"after another; continue from their best weights with: cac train NEW --init {outdir}", EXIT_USAGE)
    if not resume and (outdir / "checkpoint.pt").exists():
        raise _fail(f"{outdir} holds a checkpoint; use --resume or another OUTDIR.", EXIT_USAGE)
    _check_output_dir(outdir, "OUTDIR")
    config = TrainConfig(
        steps=steps if steps is not None else (10**9 if max_minutes else 2000),
        val_every=val_every or (10**9 if val_seconds else 250), val_seconds=val_seconds,
        checkpoint_every=checkpoint_every, batch=batch, patch=tuple(patch), lr=lr,
        warmup=warmup if warmup is not None else (0.03 if init else 0.0),
        real_per_batch=real_per_batch or 0, neg_per_batch=neg_per_batch or 0,
        max_negative_voxels=max_negative_voxels,
        max_seconds=None if max_minutes is None else max_minutes * 60.0)
    with _progress() as progress:
        task: dict = {}

        def on_event(kind: str, info: dict) -> None:
            if kind == "data_start":
                err.print(f"preparing {info['phantoms']} training and {info['val']} validation phantoms (cached)"
                          + (f", {len(info['data'])} data set(s)" if info["data"] else "")
                          + (f", {info['negatives']} hard negative(s)" if info["negatives"] else "")
                          + (f", {info['background_cases']} inserted-calcium case(s) on each of "
                             f"{len(info['backgrounds'])} real background(s) (cached)" if info["backgrounds"] else ""))
            elif kind == "data":
                c = info["config"]
                err.print(f"training on {info['phantoms']} phantoms, {info['real']} real cases"
                          + (f" ({info['backgrounds']} on backgrounds)" if info.get("backgrounds") else "")
                          + f", {info['negatives']} "
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
            elif kind == "warning":
                _say("warning:", "yellow", f"model {info['model']}: {info['message']}")
            elif kind == "second_stage_case":
                err.print(f"second stage: {info['case']}: {info['rows']} candidates ({info['coronary']} coronary)")
            elif kind == "second_stage_validation_case":
                err.print(f"second stage validation: {info['case']}: {info['rows']} candidates"
                          + (" (zero calcium)" if info["zero_calcium"] else ""))
            elif kind == "second_stage_thresholds":
                err.print(f"second stage thresholds: {info['threshold_majority']:g} with a majority's vote, "
                          f"{info['threshold']:g} with a minority's, "
                          f"{info['threshold_no_vote']:g} without; {info['zero_calcium_scored']} of "
                          f"{info['zero_calcium_cases']} zero-calcium validation cases scored, "
                          f"{info['coronary_accepted']} of {info['coronary_candidates']} coronary candidates found")
            elif kind == "second_stage":
                err.print(f"second stage written: {info['file']} ({info['rows']} candidates, "
                          f"{info['coronary']} coronary)")

        try:
            manifest = train_ensemble(outdir, data=data or [], negatives=negatives or [], phantoms=phantoms,
                                      val_phantoms=val_phantoms, models=models, config=config, init=init,
                                      val_fraction=val_fraction, exclude_start=exclude_start, stream=stream,
                                      workers=workers, backgrounds=backgrounds, background_cases=background_cases,
                                      val_background_cases=val_background_cases,
                                      hold_out_backgrounds=hold_out_background or [], tracings_dir=tracings,
                                      on_event=on_event, phantom_variant=phantom_variant,
                                      second_stage_cases=second_stage_cases,
                                      second_stage_validation=second_stage_validation,
                                      second_stage_validation_scans=validation_scans or [])
        except (ValueError, FileNotFoundError) as exc:
            raise _fail(str(exc), EXIT_USAGE)
    err.print(f"weights and manifest written: {manifest}")


_BACKEND_HELP = ("auto (OpenVINO on the CPU when installed, onnxruntime for CUDA), openvino or onnxruntime; "
                 "both give the same masks in fp32.")
_PRECISION_HELP = ("fp32 (exact, default) or bf16 (OpenVINO on a CPU with bf16 support: faster, "
                   "masks may differ slightly; see docs/performance.md).")


_SECOND_STAGE_HELP = ("Decide each candidate with the weights' second stage when they have one (default; see "
                      "docs/validation.md); --no-second-stage: the paper's majority vote of the models alone.")


def _check_backend(device: str, backend: str, precision: str) -> None:
    if device not in ("auto", "cpu", "cuda"):
        raise _fail(f"--device must be auto, cpu or cuda; got {device!r}.", EXIT_USAGE)
    if backend not in ("auto", "openvino", "onnxruntime"):
        raise _fail(f"--backend must be auto, openvino or onnxruntime; got {backend!r}.", EXIT_USAGE)
    if precision not in ("fp32", "bf16"):
        raise _fail(f"--precision must be fp32 or bf16; got {precision!r}.", EXIT_USAGE)


def _load_ensemble(weights: Optional[Path], device: str, backend: str = "auto", precision: str = "fp32",
                   second_stage: bool = True):
    from .ensemble import DEFAULT_WEIGHTS, Ensemble
    from .errors import CacError

    try:
        return Ensemble(weights or DEFAULT_WEIGHTS, device=device, backend=backend, precision=precision,
                        second_stage=second_stage)
    except CacError as exc:
        raise _fail(str(exc), exc.exit_code)


def _score_table(rows: list[dict]) -> Table:
    table = Table(title="Coronary artery calcium", show_lines=False)
    for col in ("scan", "Agatston", "cat.", "LM", "LAD", "LCX", "RCA", "volume mm3", "lesions", "CAC-DRS", "status"):
        table.add_column(col, justify="left" if col in ("scan", "status") else "right")
    for r in rows:
        if r["status"] == "error":
            table.add_row(Text(r["id"]), "", "", "", "", "", "", "", "", "", Text("error", style="red"))
            continue
        table.add_row(Text(r["id"]), f"{float(r['agatston']):.1f}", r["category"],
                      *[f"{float(r[k]):.1f}" for k in ("LM", "LAD", "LCX", "RCA")],
                      f"{float(r['volume_mm3']):.1f}", str(r["n_lesions"]), r["cac_drs"],
                      r["status"] + (f" ({r['n_review']} to review)" if r["n_review"] else ""))
    return table


def _check_dicom_options(dicom: bool, send: Optional[str], calling_aet: str, outdir: Optional[Path],
                         scans: List[Path]):
    """Usage errors of --dicom/--send, before any scan is scored; the node to send to (or None)."""
    from .errors import UsageError
    from .io import IMAGE_SUFFIXES

    if send is not None and not dicom:
        raise _fail("--send sends the DICOM SEG and SR: add --dicom (and -o OUTDIR).", EXIT_USAGE)
    if not dicom:
        return None
    if outdir is None:
        raise _fail("--dicom needs -o OUTDIR (the SEG and SR are written there).", EXIT_USAGE)
    try:
        import highdicom  # noqa: F401
        import pynetdicom  # noqa: F401
    except ImportError as exc:
        raise _fail(f"--dicom and --send need the dicom extra: pip install 'cac-toolkit[dicom]' ({exc}).", EXIT_USAGE)
    images = [p for p in scans if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)
              and not p.name.lower().endswith(".zip")]
    if images:
        names = ", ".join(str(p) for p in images[:3]) + (", ..." if len(images) > 3 else "")
        raise _fail(f"--dicom needs DICOM input (a folder or .zip of the CT series): {names} "
                    f"{'is' if len(images) == 1 else 'are'} not DICOM. A DICOM SEG and SR reference the source DICOM "
                    "instances; score the original series, or leave out --dicom.", EXIT_USAGE)
    if send is None:
        return None
    from .outputs.send import check_ae_title, parse_node

    try:
        check_ae_title(calling_aet, "--calling-aet")
        return parse_node(send)
    except UsageError as exc:
        raise _fail(str(exc), EXIT_USAGE)


def _send_outputs(node: Any, calling_aet: str, outdir: Optional[Path], ids: List[str]) -> bool:
    """C-STORE the SEG and SR of the scans ``ids`` in ``outdir``; False (after saying why) when that fails."""
    from .outputs.dicom import output_paths
    from .errors import CacError
    from .outputs.send import send_files

    assert outdir is not None
    paths: list[Path] = []
    for sid in ids:
        found = output_paths(outdir, sid)
        if not found:
            _say("note:", "yellow", f"{sid}: no {sid}_sr.dcm in {outdir} (scored earlier without --dicom?); "
                                    "nothing sent for it.")
        paths += found
    if not paths:
        return True
    try:
        sent = send_files(paths, node, calling_aet=calling_aet)
    except CacError as exc:
        _say("error:", "red", f"{exc} The DICOM files stay in {outdir}; send them again by rerunning the command.")
        return False
    err.print(f"sent {len(sent)} DICOM object(s) to {node}", highlight=False)
    return True


def _interrupted_message(landed: list, total: int, csv_file: Optional[Path], outdir: Optional[Path],
                         skip_existing: bool, as_json: bool) -> str:
    """What a Ctrl-C of cac score left: how many scans finished, and how a rerun resumes."""
    failed = sum(o.status == "error" for o in landed)
    done = f"{len(landed)} of {total} scans finished" + (f" ({failed} failed)" if failed else "") + ". "
    if csv_file is not None and not (as_json and outdir is None):
        return done + (f"Rerun the same command to resume: --csv {csv_file} logged the finished scans in "
                       f"{csv_file}.manifest.jsonl; the rest (and the failed ones) are scored.")
    if csv_file is not None:
        return done + "A rerun with --json scores every scan again unless -o OUTDIR keeps the results: add -o."
    if outdir is not None and skip_existing:
        return done + f"Rerun the same command to resume: --skip-existing skips the scans whose <id>.json is in {outdir}."
    if outdir is not None:
        return done + (f"To resume, rerun the same command with --skip-existing (it skips the scans whose <id>.json "
                       f"is in {outdir}), or with --csv FILE, which also logs every finished scan.")
    return done + ("Their results were not kept; to make a batch resumable, give --csv FILE (and -o OUTDIR): "
                   "rerunning the same command then skips the scans that finished.")


@app.command(cls=_Command)
def score(
    inputs: List[Path] = typer.Argument(
        ..., help="Scans: NIfTI/NRRD/MHA files, DICOM folders or .zip, or folders of them (other files there are "
                  "skipped with a note; inputs sharing an id are refused, see docs/cli.md)."),
    outdir: Optional[Path] = typer.Option(None, "-o", "--outdir", help="Write <id>.json and <id>_calcium.nii.gz here."),
    as_json: bool = typer.Option(
        False, "--json",
        help="Print JSON on stdout: one object per scan, with status ok, skipped or error (a list for several scans)."),
    csv_file: Optional[Path] = typer.Option(None, "--csv", help="Write one row per scan to this CSV file."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    backend: str = typer.Option("auto", "--backend", help=_BACKEND_HELP),
    precision: str = typer.Option("fp32", "--precision", help=_PRECISION_HELP),
    second_stage: bool = typer.Option(True, "--second-stage/--no-second-stage", help=_SECOND_STAGE_HELP),
    series: Optional[str] = typer.Option(None, "--series", help="SeriesInstanceUID when a DICOM folder holds several."),
    calibration: Optional[float] = typer.Option(None, "--calibration", help="Mass calibration factor c (mg HA/cm3/HU)."),
    preview: bool = typer.Option(
        False, "--preview",
        help="With -o: also write <id>.png, a quick look: the slices with the largest lesions and candidates, "
             "outlined and numbered by artery."),
    report: bool = typer.Option(
        False, "--report",
        help="With -o: also write <id>.html, a self-contained review report (lesion crops, rejected candidates, "
             "accept/reject/relabel, Save review); see docs/review.md."),
    dicom: bool = typer.Option(
        False, "--dicom",
        help="With -o, DICOM input only: also write <id>_seg.dcm (DICOM SEG) and <id>_sr.dcm (TID 1500 SR) in the "
             "source study; see docs/dicom.md."),
    send: Optional[str] = typer.Option(
        None, "--send", metavar="HOST:PORT[:AET]",
        help="With --dicom: C-STORE the SEG and SR to this DICOM node (called AE title default ANY-SCP); "
             "exit 6 if that fails (the files stay in -o)."),
    calling_aet: str = typer.Option("CACTOOLKIT", "--calling-aet", help="With --send: our AE title."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="With -o: skip scans whose <id>.json exists."),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first scan that fails."),
    early_stop: bool = typer.Option(
        False, "--early-stop",
        help="Stop running models (after 3 or 4 of 5) once the rest cannot change any lesion's "
             "outcome (same mask and scores; vote counts cover the models run)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Weights folder (default: the shipped ensemble)."),
    model_cache: bool = typer.Option(
        True, "--model-cache/--no-model-cache",
        help="Load the models compiled by an earlier run from the user's cache folder (default; CAC_CACHE_DIR, else "
             "~/.cache/cac-toolkit; off also with CAC_NO_MODEL_CACHE=1), or compile them in this run only."),
    force: bool = typer.Option(
        False, "--force",
        help="Score scans that triage refuses (contrast-enhanced, no heart found, sharp kernel); "
             "the reasons become warnings."),
    workers: Optional[int] = typer.Option(
        None, "--workers", min=1,
        help="Score on N local worker processes (Dask), one scan at a time each, the cores shared among them "
             "(needs the cohort extra). With --csv, a rerun resumes: see docs/cohorts.md."),
    scheduler: Optional[str] = typer.Option(
        None, "--scheduler",
        help="Submit the scans to a running Dask cluster: scheduler address (tcp://host:8786) or scheduler file; "
             "its workers must see the scans and -o at the same absolute paths."),
    threads: Optional[int] = typer.Option(
        None, "--threads", min=1,
        help="Model threads per worker (default: cores / --workers; with --scheduler each worker's own "
             "thread count; serially, all cores)."),
) -> None:
    """Score coronary calcium in one or more scans.

    With --csv FILE, every finished scan is also logged in FILE.manifest.jsonl: rerunning the same
    command skips the scans that finished and retries those that failed.
    """
    from .batch import expand_inputs
    from .cohort import EnsembleSpec, ScanOutcome, ScoreOptions, run_cohort
    from .ensemble import DEFAULT_WEIGHTS
    from .errors import CacError

    global _SCORE_RAN
    _SCORE_RAN = True
    _check_backend(device, backend, precision)
    if calibration is not None and not calibration > 0:
        raise _fail(f"--calibration must be a positive number (mg HA/cm3/HU); got {calibration}.", EXIT_USAGE)
    if (preview or report or skip_existing) and outdir is None:
        raise _fail("--preview, --report and --skip-existing need -o OUTDIR.", EXIT_USAGE)
    scans = expand_inputs(inputs, on_note=lambda msg: _say("note:", "yellow", msg))  # files skipped, links
    node = _check_dicom_options(dicom, send, calling_aet, outdir, scans)
    # what each scan gets besides its score; the outputs' options go to batch.write_outputs (and to Dask workers)
    options = ScoreOptions(outdir=outdir, calibration=calibration, series=series, early_stop=early_stop, force=force,
                           skip_existing=skip_existing, outputs={"preview": preview, "report": report, "dicom": dicom})
    spec = EnsembleSpec(weights or DEFAULT_WEIGHTS, device=device, backend=backend, precision=precision,
                        threads=threads, second_stage=second_stage, model_cache=model_cache)
    landed: list = []  # the outcomes so far, for the message of a Ctrl-C
    with _progress() as progress:
        task = progress.add_task("scoring", total=len(scans))

        def on_outcome(o: ScanOutcome) -> None:
            landed.append(o)
            progress.advance(task)
            if o.status == "error" and o.internal:
                _say(f"internal error on {o.input}:", "red",
                     f"{o.error.removeprefix('internal error: ')} (please report it)")
            elif o.status == "error":
                _say("error:", "red", o.error)

        try:
            run = run_cohort(scans, spec, options, csv_file=csv_file, workers=workers, scheduler=scheduler,
                             fail_fast=fail_fast, need_data=as_json, on_outcome=on_outcome,
                             on_note=lambda msg: _say("note:", "yellow", msg))
        except CacError as exc:
            raise _fail(str(exc), exc.exit_code)
        except OSError as exc:  # the CSV or its run manifest, mid-run (e.g. a full disk); -o was checked before
            raise _fail(f"cannot write the run's results ({exc}); make room or choose another --csv, then rerun "
                        "the same command.", EXIT_OUTPUT)
        except KeyboardInterrupt:
            _say("interrupted:", "yellow", _interrupted_message(landed, len(scans), csv_file, outdir, skip_existing,
                                                                as_json))
            raise typer.Exit(EXIT_INTERRUPTED)
    rows = [o.row for o in run.outcomes]
    failed_code = next((o.exit_code for o in run.outcomes if o.status == "error"), 0)
    printed = [o.json_object() for o in run.outcomes]  # --json: one object per scan, in input order, failures included
    if as_json:
        typer.echo(json.dumps(printed[0] if len(scans) == 1 and printed else printed, indent=2))
    else:
        _stdout(width=None if sys.stdout.isatty() else 160).print(_score_table(rows))
        for o in run.outcomes:
            for w in o.warnings if o.status != "error" else []:
                _say("warning", "yellow", f"{o.id}: {w}")
    # --send: the SEG and SR of every scan scored or skipped, in one association (exit 6 when that fails)
    sent_ok = node is None or _send_outputs(node, calling_aet, outdir,
                                            [o.id for o in run.outcomes if o.status != "error"])
    n_bad = sum(r["status"] == "error" for r in rows)
    if n_bad:
        if len(scans) == 1 or fail_fast:  # the exit code of the scan that failed, as in its --json exit_code
            raise typer.Exit(failed_code)
        err.print(f"{n_bad} of {len(scans)} scans failed; see the messages above" + (f" and {csv_file}" if csv_file else ""),
                  highlight=False)
        raise typer.Exit(EXIT_PARTIAL)
    if not sent_ok:
        raise typer.Exit(EXIT_SEND)


@app.command(name="eval", cls=_Command)
def evaluate_cmd(
    truth: Optional[Path] = typer.Option(None, "--truth", help="CSV with id and agatston and/or category."),
    pred: Optional[Path] = typer.Option(None, "--pred", help="CSV of predictions (e.g. from cac score --csv)."),
    inputs: Optional[List[Path]] = typer.Argument(None, help="Scans to score instead of --pred."),
    truth_masks: Optional[Path] = typer.Option(None, "--truth-masks", help="Folder of <id>.nii.gz label masks."),
    pred_masks: Optional[Path] = typer.Option(None, "--pred-masks",
                                              help="Folder of <id>_calcium.nii.gz (default: the masks of INPUT scoring)."),
    dataset: Optional[Path] = typer.Option(
        None, "--dataset",
        help="A converted data set (cac dataset): score DIR/images/<id>.nii.gz of the --split cases against "
             "DIR/truth.csv and DIR/labels/ (lesion metrics); instead of --truth, --truth-masks and scans."),
    split: Optional[str] = typer.Option(
        None, "--split",
        help="With --dataset: val (default) or train, the cases of that split of the training run (ids from "
             "--manifest), or all."),
    manifest: Optional[Path] = typer.Option(
        None, "--manifest",
        help="With --dataset: manifest.json of the weights trained on it, whose ids give --split "
             "(default: manifest.json in the folder of --weights)."),
    ids_file: Optional[Path] = typer.Option(
        None, "--ids", help="Text file, one id a line: evaluate only these cases (scans, predictions and truth)."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
    device: str = typer.Option("auto", "--device", help="With INPUT scans or --dataset: auto, cpu or cuda to run the models on."),
    backend: str = typer.Option("auto", "--backend", help="With INPUT scans or --dataset: " + _BACKEND_HELP),
    precision: str = typer.Option("fp32", "--precision", help="With INPUT scans or --dataset: " + _PRECISION_HELP),
    second_stage: bool = typer.Option(True, "--second-stage/--no-second-stage",
                                      help="With INPUT scans or --dataset: " + _SECOND_STAGE_HELP),
    weights: Optional[Path] = typer.Option(None, "--weights",
                                           help="With INPUT scans or --dataset: weights folder (default: the shipped ensemble)."),
    force: bool = typer.Option(False, "--force",
                               help="With INPUT scans or --dataset: score scans the triage refuses (contrast, sharp kernel, "
                                    "no heart)."),
) -> None:
    """Agreement of predicted scores (and masks) with ground truth.

    Either --truth with --pred or scans, or --dataset DIR (a converted data set) and the weights trained
    on it, e.g. cac eval --dataset coca_out --weights=runs/coca/weights --split val.
    """
    from .errors import CacError
    from .datasets.layout import TRUTH_FILE
    from .evaluate import (SPLITS, dataset_scans, evaluate_predictions, manifest_split_ids, predictions_from_csv,
                           predictions_from_scans, read_ids, read_truth)

    if dataset is not None:
        given = [name for name, v in (("--truth", truth), ("--truth-masks", truth_masks)) if v is not None]
        given += ["scans"] if inputs else []
        if given:
            raise _fail(f"--dataset takes the scans, truth and truth masks from {dataset}; do not give "
                        f"{', '.join(given)} with it.", EXIT_USAGE)
        split = split or "val"
        if split not in SPLITS:
            raise _fail(f"--split must be val, train or all; got {split!r}.", EXIT_USAGE)
        if split != "all" and manifest is None and weights is None:
            raise _fail(f"--split {split} takes the ids from the manifest of the weights trained on {dataset}: "
                        f"give --weights WEIGHTS (its manifest.json) or --manifest WEIGHTS/manifest.json, "
                        f"or use --split all.", EXIT_USAGE)
    else:
        extra = [name for name, v in (("--split", split), ("--manifest", manifest)) if v is not None]
        if extra:
            raise _fail(f"{' and '.join(extra)} go with --dataset DIR.", EXIT_USAGE)
        if truth is None:
            raise _fail("no truth: give --truth TRUTH.csv, or --dataset DIR (a converted data set).", EXIT_USAGE)
        if pred is None and not inputs:
            raise _fail("nothing to evaluate: give --pred PRED.csv (e.g. from cac score --csv) or scans to score.",
                        EXIT_USAGE)
    if pred is not None and inputs:
        raise _fail("give either --pred PRED.csv or scans to score, not both.", EXIT_USAGE)
    _check_backend(device, backend, precision)
    selection = None
    try:
        wanted = read_ids(ids_file) if ids_file is not None else None
        if dataset is not None:
            assert split is not None
            source = "every case"
            ids = wanted
            if split != "all":
                mpath = manifest if manifest is not None else weights / "manifest.json"  # type: ignore[operator]
                ids = manifest_split_ids(mpath, dataset, split)
                source = f"{mpath}, training.data_sets[].{split}_ids"
                if wanted is not None:
                    keep = set(wanted)
                    ids = [i for i in ids if i in keep]
                    if not ids:
                        raise _fail(f"none of the {len(wanted)} ids of {ids_file} is in the {split} split "
                                    f"({source}).", EXIT_INVALID)
            scans = dataset_scans(dataset, ids)
            truth_rows = read_truth(dataset / TRUTH_FILE)
            no_truth = [i for i in scans if i not in truth_rows]
            if no_truth:
                raise _fail(f"{len(no_truth)} cases have no row in {dataset / 'truth.csv'}: "
                            f"{', '.join(no_truth[:8])}{', ...' if len(no_truth) > 8 else ''}.", EXIT_INVALID)
            truth_rows = {i: truth_rows[i] for i in scans}
            truth_masks = dataset / "labels" if (dataset / "labels").is_dir() else None
            inputs = None if pred is not None else list(scans.values())
            wanted = list(scans)
            selection = {"dataset": str(dataset), "split": split, "ids_from": source, "n_cases": len(scans)}
        else:
            truth_rows = read_truth(truth)  # type: ignore[arg-type]
        if wanted is not None:
            keep = set(wanted)
            absent = [i for i in wanted if i not in truth_rows]
            if absent:
                _say("note:", "yellow", f"{len(absent)} ids of {ids_file} have no truth row: "
                                        f"{', '.join(absent[:8])}{', ...' if len(absent) > 8 else ''}")
            truth_rows = {i: v for i, v in truth_rows.items() if i in keep}
            if not truth_rows:
                raise _fail(f"no truth row for any id of {ids_file}.", EXIT_INVALID)
        if pred is not None:
            predictions, masks = predictions_from_csv(pred), None
            if wanted is not None:
                predictions = {i: v for i, v in predictions.items() if i in keep}
        else:
            ensemble = _load_ensemble(weights, device, backend, precision, second_stage)
            with _progress() as progress:
                task = progress.add_task("scoring", total=None)
                started = [0]

                def on_scan(total: int, sid: str) -> None:
                    progress.update(task, total=total, completed=started[0], description=f"scoring {sid}")
                    started[0] += 1

                predictions, masks = predictions_from_scans(inputs or [], ensemble, force=force, ids=wanted,
                                                            on_scan=on_scan)
                progress.update(task, completed=started[0], description="scored")
        report = evaluate_predictions(truth_rows, predictions, truth_masks=truth_masks, pred_masks=pred_masks,
                                      pred_mask_arrays=masks)
    except CacError as exc:
        raise _fail(str(exc), exc.exit_code)
    if selection is not None:
        report = {"selection": selection, **report}
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    from .evaluate import print_report

    out = _stdout()
    if selection is not None:
        out.print(f"{selection['dataset']}: {selection['n_cases']} cases of split {selection['split']} "
                  f"(ids: {selection['ids_from']})", highlight=False)
    print_report(report, out)


@app.command(cls=_Command)
def info(weights: Optional[Path] = typer.Option(None, "--weights", help="Weights folder (default: shipped).")) -> None:
    """Versions (the package's and the weights'), onnxruntime providers and the weight files with their hashes."""
    import onnxruntime as ort

    from .ensemble import DEFAULT_WEIGHTS, load_manifest, load_second_stage, verify_weights, weights_version
    from .errors import CacError
    from .pipeline import versions

    out = _stdout()
    for k, v in versions().items():
        out.print(f"{k:<14} {v}")
    out.print(f"{'providers':<14} {', '.join(ort.get_available_providers())}")
    from .ensemble import cpu_supports_bf16, resolve_backend

    out.print(f"{'backend':<14} {resolve_backend('auto', 'auto')} (--backend auto); bf16 "
              + ("available" if cpu_supports_bf16() else "not available") + " (--precision bf16)")
    wdir = weights or DEFAULT_WEIGHTS
    out.print(f"{'weights':<14} {wdir}")
    try:
        manifest = load_manifest(wdir)
        ok = {m["file"] for m in verify_weights(wdir)}
    except CacError as exc:
        raise _fail(str(exc), exc.exit_code)
    out.print(f"{'  version':<14} {weights_version(manifest) or 'none (its manifest.json has no version)'}")
    table = Table("file", "sha256", "val Dice", "status")
    for m in manifest["models"]:
        table.add_row(m["file"], m["sha256"][:16] + "...", str(m.get("val_dice", "")),
                      "ok" if m["file"] in ok else Text("mismatch", style="red"))
    out.print(table)
    out.print(f"trained on: {manifest.get('training', {}).get('data', 'unknown')}")
    entry = manifest.get("second_stage")
    if not entry:
        out.print("second stage: none (the majority vote of the models decides)")
        return
    try:
        load_second_stage(wdir, manifest)
        status = Text("ok")
    except CacError as exc:
        status = Text(str(exc), style="red")
    data = entry.get("data", {})
    out.print(Text.assemble(f"second stage: {entry['file']} {entry['sha256'][:16]}... ", status,
                            f"; P(coronary) >= {entry.get('threshold')}; fitted on {data.get('rows', '?')} candidates "
                            f"({data.get('coronary_rows', '?')} coronary)"))


dataset_app = typer.Typer(
    name="dataset",
    cls=_Group,
    help="Convert public calcium data sets (COCA, orCaScore) into the layout `cac train --data` reads.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: readable at 80 columns, help text printed as it is
)
app.add_typer(dataset_app, name="dataset")


def _convert_dataset(kind: str, src: Path, out: Path, **options: Any) -> None:
    """Run one converter of :mod:`cacnet.datasets` with a progress bar; exit 0, 3 (layout) or 4 (some cases)."""
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
                _say("error:", "red", f"{row['id']}: {row['message']} (skipped)")

        shown: list = []

        try:
            rows = convert(src, out, on_start=on_start, on_case=on_case, **options)
        except CacError as exc:
            raise _fail(str(exc), exc.exit_code)
    count = {s: sum(r["status"] == s for r in rows) for s in ("converted", "skipped", "error", "ignored")}
    for r in rows:
        if r["status"] == "error" and not any(r is x for x in shown):
            _say("error:", "red", f"{r['id']}: {r['message']}")
    ignored = [r for r in rows if r["status"] == "ignored"]
    if ignored:
        names = ", ".join(r["id"] for r in ignored[:8]) + (", ..." if len(ignored) > 8 else "")
        _say("note:", "yellow", f"{len(ignored)} left out: {ignored[0]['message']} ({names})")
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


review_app = typer.Typer(
    name="review",
    cls=_Group,
    help="Apply a review saved from the HTML report of cac score --report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: readable at 80 columns, help text printed as it is
)
app.add_typer(review_app, name="review")


@review_app.command("apply", cls=_Command)
def review_apply(
    result: Path = typer.Argument(..., help="OUT/<id>.json written by cac score -o OUT (its <id>_calcium.nii.gz next to it)."),
    review: Path = typer.Argument(..., help="<id>_review.json saved from the report page (Save review)."),
    outdir: Optional[Path] = typer.Option(
        None, "-o", "--outdir",
        help="Write the reviewed <id>.json, mask, report, points.csv, truth.csv and images/ here (default: OUT/reviewed; "
             "one folder collects many reviewed scans for cac train --data)."),
    scan: Optional[Path] = typer.Option(None, "--scan", help="The scan, if it moved since it was scored (same sha256)."),
    image: bool = typer.Option(True, "--image/--no-image", help="Write images/<id>.nii.gz (cac train --data reads it)."),
    preview: bool = typer.Option(False, "--preview", help="Also write <id>.png, the quick look of the reviewed result."),
    as_json: bool = typer.Option(False, "--json", help="Print the reviewed result as JSON."),
) -> None:
    """Recompute the scores exactly (agatston) after a review; write the new result, mask, report and training points.

    A review of another scan, or one made on an earlier result of this scan (stale), is refused (exit 3).
    """
    from .errors import CacError
    from .review import apply_review

    try:
        done = apply_review(result, review, outdir, scan_path=scan, write_image=image, preview=preview)
    except CacError as exc:
        raise _fail(str(exc), exc.exit_code)
    except OSError as exc:  # e.g. no permission to write -o
        raise _fail(f"cannot write the reviewed result: {exc}", EXIT_OUTPUT)
    if as_json:
        typer.echo(json.dumps(done.data, indent=2))
        return
    d, ro = done.data, done.data["review_outcome"]
    counts = ", ".join(f"{v} {k}" for k, v in
                       zip(("accepted", "rejected", "relabelled", "added"),
                           (ro["decisions"][a] for a in ("accept", "reject", "relabel", "add"))))
    out = _stdout(width=None if sys.stdout.isatty() else 160)
    out.print(f"{d['id']}: Agatston {done.before:.1f} ({ro['category_before']}) -> "
              f"{done.after:.1f} ({d['category']}), {d['cac_drs']['label']}; {counts}", highlight=False)
    out.print("  ".join(f"{a} {d['arteries'][a]['agatston']:.1f}" for a in ("LM", "LAD", "LCX", "RCA")), highlight=False)
    out.print(f"wrote {done.outdir}: " + ", ".join(p.relative_to(done.outdir).as_posix() for p in done.files.values()),
              highlight=False)
    if not done.points_agree:
        _say("note:", "yellow", "points.csv rebuilds a different mask by the paper's rule (a lesion touches other "
                                "dense voxels in 3D); see the warning in the JSON.")


orthanc_app = typer.Typer(
    name="orthanc",
    cls=_Group,
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: readable at 80 columns, help text printed as it is
)
app.add_typer(orthanc_app, name="orthanc")


@orthanc_app.callback()
def orthanc_node(
    ctx: typer.Context,
    url: Optional[str] = typer.Option(None, "--url", help="Orthanc's REST address, e.g. https://pacs:8042 (no "
                                                         "credentials in it)."),
    state: Path = typer.Option(Path("cac-orthanc-state"), "--state",
                               help="Folder of the node's state (place in the feed, outcome of every series), log "
                                    "(node.log) and results."),
    credentials: Optional[Path] = typer.Option(
        None, "--credentials", help="File holding one line user:password (else the environment variables "
                                    "CAC_ORTHANC_USER and CAC_ORTHANC_PASSWORD; never on the command line)."),
    ca_file: Optional[Path] = typer.Option(None, "--ca-file", help="PEM of the CA that signed Orthanc's TLS "
                                                                   "certificate (certificates are always verified)."),
    once: bool = typer.Option(False, "--once", help="Handle what is pending (the feed, and series that failed "
                                                    "before), then exit: for cron and tests."),
    poll: float = typer.Option(5.0, "--poll", min=0.05, help="Seconds between two reads of the feed when idle."),
    give_up_after: Optional[float] = typer.Option(
        None, "--give-up-after", min=0,
        help="Exit 6 when Orthanc stays unreachable this long (seconds; default: retry forever, with --once 300)."),
    max_backoff: float = typer.Option(60.0, "--max-backoff", min=0.1,
                                      help="Longest wait between two tries while Orthanc is unreachable (s)."),
    from_now: bool = typer.Option(False, "--from-now", help="On a new state folder, start at the feed's end (series "
                                                            "stored before are not scored)."),
    report: bool = typer.Option(True, "--report/--no-report", help="Attach the HTML review report to each scored "
                                                                   "series (attachment 4210)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Weights folder (default: the shipped ensemble)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    backend: str = typer.Option("auto", "--backend", help=_BACKEND_HELP),
    second_stage: bool = typer.Option(True, "--second-stage/--no-second-stage", help=_SECOND_STAGE_HELP),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Model threads (default: all cores)."),
    verbose: bool = typer.Option(False, "--verbose", help="Log every step (debug)."),
) -> None:
    """Follow Orthanc's change feed: score each stable CT axial series, store the results in its study.

    Skipped: not CT, localizers, non-axial series (and the node's own objects). Scored: DICOM SEG and SR
    stored into the same study, HTML report attached. Refused by triage (contrast, sharp kernel, no heart) or
    unreadable (missing slices, corrupt instance): a "not scored" SR with the reason. Exit codes: 0 done, 2
    usage, 3 bad weights, 4 some series failed (--once), 6 Orthanc refused the credentials, its certificate is
    not trusted, or it stayed unreachable (--give-up-after), 7 --state not writable, 130 interrupted.
    """
    if ctx.invoked_subcommand is not None:
        return
    import logging

    from .errors import CacError
    from .node.client import OrthancAuthError, check_url, load_credentials
    from .node.runner import Node, NodeConfig, NodeStopped, install_sigterm, setup_logging

    if url is None:
        raise _fail("cac orthanc needs --url (Orthanc's REST address), or a sub-command (status).", EXIT_USAGE)
    _check_backend(device, backend, "fp32")
    try:
        url = check_url(url)
        creds = load_credentials(credentials)
    except CacError as exc:
        raise _fail(str(exc), exc.exit_code)
    _check_output_dir(state, "--state")
    setup_logging(state, verbose)
    config = NodeConfig(url=url, state=state, credentials=creds, ca_file=ca_file, once=once, poll_s=poll,
                        give_up_after_s=give_up_after if give_up_after is not None else (300.0 if once else None),
                        max_backoff_s=max_backoff, report=report, from_now=from_now)
    install_sigterm()
    log = logging.getLogger("cacnet.node")  # stderr and STATE/node.log
    try:
        code = Node(config, lambda: _load_ensemble_for_node(weights, device, backend, second_stage, threads)).run()
    except OrthancAuthError as exc:
        log.error("%s Not retrying: the node stops (exit %d).", exc, EXIT_SEND)
        code = EXIT_SEND
    except CacError as exc:  # Orthanc unreachable past --give-up-after (6), bad weights (3), --state in use (2)
        log.error("%s (exit %d)", exc, exc.exit_code)
        code = exc.exit_code
    except NodeStopped:
        log.info("stopped (SIGTERM); a rerun resumes where the node stopped")
        code = EXIT_OK
    except KeyboardInterrupt:
        log.info("interrupted; a rerun resumes where the node stopped")
        code = EXIT_INTERRUPTED
    raise typer.Exit(code)


def _load_ensemble_for_node(weights: Optional[Path], device: str, backend: str, second_stage: bool,
                            threads: Optional[int]):
    from .cohort import EnsembleSpec
    from .ensemble import DEFAULT_WEIGHTS

    return EnsembleSpec(weights or DEFAULT_WEIGHTS, device=device, backend=backend, threads=threads,
                        second_stage=second_stage).load()


@orthanc_app.command("status", cls=_Command)
def orthanc_status(
    state: Path = typer.Option(Path("cac-orthanc-state"), "--state", help="The node's --state folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the state as JSON (every series' record)."),
    limit: int = typer.Option(20, "--limit", min=1, help="Series listed per kind (text output)."),
) -> None:
    """Say what the node has pending, scored, refused, skipped and failed (read from its --state folder)."""
    from .errors import CacError
    from .node.status import format_status, node_status

    try:
        status = node_status(state)
    except CacError as exc:
        raise _fail(str(exc), exc.exit_code)
    if as_json:
        typer.echo(json.dumps(status, indent=2))
    else:
        typer.echo(format_status(status, limit=limit))


#: Set when `cac score` runs: its process may end without the interpreter's teardown (see :func:`main`).
_SCORE_RAN = False


def main() -> None:  # pragma: no cover - console entry point
    from ._memory import return_large_buffers_to_os

    return_large_buffers_to_os()
    try:
        app()
    except SystemExit as exc:
        # After `cac score` (every output written and closed, the JSON printed), end the process at once: the
        # interpreter's teardown (OpenVINO, ITK, SciPy and NumPy thread pools and modules) took 0.15-0.25 s
        # of a 2-3 s process on 2 cores. Not after a Dask run, whose cluster's exit handlers must run.
        code = exc.code
        if _SCORE_RAN and (code is None or isinstance(code, int)) and "distributed" not in sys.modules:
            import logging
            import os

            try:
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
            except Exception:  # noqa: BLE001 - e.g. a closed pipe: leave it to the normal exit
                raise exc from None
            os._exit(code or 0)
        raise


if __name__ == "__main__":  # pragma: no cover
    main()
