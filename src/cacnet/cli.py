"""The `cac` command: a thin layer over the cacnet Python API.

Exit codes: 0 ok, 2 usage error, 3 invalid input, 4 partial batch failure,
5 device unavailable.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

app = typer.Typer(
    name="cac",
    help="Automatic coronary artery calcium scoring from non-contrast cardiac CT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)

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


@app.command()
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


@app.command()
def train(
    outdir: Path = typer.Argument(..., help="Folder for caches, checkpoints, logs and weights/ (rerun to resume)."),
    data: Optional[Path] = typer.Option(None, "--data", help="User data set: images/<id>.nii.gz with labels/ or points.csv."),
    phantoms: int = typer.Option(300, "--phantoms", min=0, help="Synthetic training cases."),
    val_phantoms: int = typer.Option(20, "--val-phantoms", min=1, help="Synthetic validation cases."),
    models: int = typer.Option(5, "--models", min=1, help="Models in the ensemble."),
    steps: int = typer.Option(2000, "--steps", min=1, help="Training steps per model."),
    val_every: int = typer.Option(250, "--val-every", min=1, help="Validate every this many steps."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from checkpoints in OUTDIR."),
) -> None:
    """Train the U-Net ensemble and export it to OUTDIR/weights (needs the `train` extra)."""
    try:
        from .train import TrainConfig, train_ensemble
    except ImportError as exc:
        err.print(f"[red]error:[/red] training needs the train extra: pip install '.[train]' ({exc}).")
        raise typer.Exit(EXIT_USAGE)
    if data is not None and not (data / "images").is_dir():
        err.print(f"[red]error:[/red] {data} has no images/ folder; expected images/<id>.nii.gz with labels/ or points.csv.")
        raise typer.Exit(EXIT_INVALID)
    if not resume and outdir.exists() and any(outdir.glob("model_*/checkpoint.pt")):
        err.print(f"[red]error:[/red] {outdir} holds checkpoints; use --resume or another OUTDIR.")
        raise typer.Exit(EXIT_USAGE)
    config = TrainConfig(steps=steps, val_every=val_every)
    with _progress() as progress:
        tasks: dict = {}

        def on_event(kind: str, info: dict) -> None:
            if kind == "model":
                tasks[info["index"]] = progress.add_task(f"model {info['index']}", total=info["steps"])
            elif kind == "step":
                progress.update(tasks[info["index"]], completed=info["step"],
                                description=f"model {info['index']} loss {info['loss']:.3f}")
            elif kind == "data":
                err.print(f"preparing {info['phantoms']} training and {info['val']} validation phantoms (cached)")

        manifest = train_ensemble(outdir, data=data, phantoms=phantoms, val_phantoms=val_phantoms, models=models,
                                  config=config, on_event=on_event)
    err.print(f"weights and manifest written: {manifest}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
