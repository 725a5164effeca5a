"""Batches for `cac score`: finding scans, CSV rows (private-ish API); the outputs: :mod:`cacnet.outputs`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from ._deprecated import moved
from .errors import InvalidScanError, UsageError
from .io import IMAGE_SUFFIXES, scan_id

__all__ = ["expand_inputs", "check_unique_ids", "csv_row", "CSV_COLUMNS"]

CSV_COLUMNS = ["id", "agatston", "category", "volume_mm3", "mass_mg", "LM", "LAD", "LCX", "RCA", "n_lesions",
               "cac_drs", "n_review", "warnings", "status", "error", "input"]


def _is_image(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)


#: Names of files that are DICOM by their name alone (``.gz``: gzipped slices); other files are read.
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima", ".dcm.gz", ".dicom.gz", ".ima.gz")


def _looks_dicom(path: Path) -> bool:
    """Whether a (non-image) file is a DICOM file: by its name, the ``DICM`` mark at byte 128, or a first tag."""
    name = path.name.lower()
    if name.endswith(_DICOM_SUFFIXES) or name == "dicomdir":
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
        if head[:2] == b"\x1f\x8b" and "." not in name.removesuffix(".gz"):  # a gzipped slice with a bare name
            import gzip

            with gzip.open(path, "rb") as fh:
                head = fh.read(132)
    except (OSError, EOFError):
        return False
    # the DICM mark after the preamble; a file without a preamble starts with a group 0002 or 0008 tag
    return head[128:132] == b"DICM" or (len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00")
                                        and head[4:6].isalpha())


def _children(folder: Path) -> tuple[list[Path], list[Path], list[Path], list[Path]]:
    """Image files, sub-folders (links followed), other files and broken links in ``folder``, hidden names left out."""
    images, folders, others, broken = [], [], [], []
    for c in sorted(folder.iterdir()):
        if c.name.startswith("."):
            continue
        if c.is_dir():
            folders.append(c)
        elif _is_image(c):
            images.append(c)
        elif c.is_file():
            others.append(c)
        else:
            broken.append(c)  # a link to nothing (or a socket, a fifo)
    return images, folders, others, broken


def _names(paths: list[Path], n: int = 5) -> str:
    return ", ".join(p.name for p in paths[:n]) + (f", ... ({len(paths)} in all)" if len(paths) > n else "")


def expand_inputs(inputs: Iterable[Path], on_note: Optional[Callable[[str], None]] = None) -> list[Path]:
    """Scans named by the inputs.

    A file is a scan. A folder holding DICOM files is one DICOM scan (its
    sub-folders searched too). A folder holding image files (``.nii.gz``,
    ``.nii``, ``.nrrd``, ``.mha``/``.mhd``, ``.zip``) or sub-folders is a batch:
    each image file is a scan, and each sub-folder is one scan (a DICOM
    series, or a patient or study folder whose series are searched), except a
    sub-folder that holds image files itself, which is a batch of its own.
    Other files in a batch folder (``README.txt``, ``truth.csv``, ...) are
    skipped, each folder's named in a note through ``on_note``, as are
    broken links; links to folders are followed (a link back to a folder
    already searched is skipped with a note). An input reached twice (given
    twice, or through a link) is scored once, with a note. Missing paths and
    empty folders are reported as scans that fail (so a batch goes on).
    """
    note = on_note or (lambda _msg: None)
    out: list[Path] = []
    seen: dict[str, Path] = {}  # real path -> the path it was first reached by

    def add(p: Path) -> None:
        real = os.path.realpath(p) if p.exists() else str(p)
        if real in seen:
            note(f"{p} is the same scan as {seen[real]} (given twice, or a link); scored once.")
            return
        seen[real] = p
        out.append(p)

    def batch(folder: Path, images: list[Path], folders: list[Path], others: list[Path], broken: list[Path],
              searched: set[str]) -> None:
        dicom = [f for f in others if _looks_dicom(f)]
        if dicom:
            note(f"{folder}: {len(dicom)} DICOM file(s) beside the scans of this folder are not scored "
                 f"({_names(dicom)}); a DICOM scan is a folder of its own: move them into one.")
        strays = [f for f in others if f not in dicom]
        if strays:
            note(f"{folder}: skipped {len(strays)} file(s) that are not scans ({_names(strays)}).")
        if broken:
            note(f"{folder}: skipped {len(broken)} broken link(s) ({_names(broken)}).")
        for c in sorted(images + folders):
            if c in images:
                add(c)
                continue
            real = os.path.realpath(c)
            if real in searched:
                note(f"{c}: a link to a folder already searched ({real}); skipped.")
                continue
            try:
                sub = _children(c)
            except OSError:
                add(c)  # read_scan says what is wrong
                continue
            if sub[0] and not any(_looks_dicom(f) for f in sub[2]):
                batch(c, *sub, searched | {real})
            else:
                add(c)  # one DICOM scan: a series, or a patient or study folder (read_scan chooses the series)

    for p in inputs:
        p = Path(p)
        if not p.is_dir():
            add(p)
            continue
        try:
            images, folders, others, broken = _children(p)
        except OSError:
            add(p)  # read_scan says what is wrong (no permission, ...)
            continue
        if (images or folders) and not (others and not images and any(_looks_dicom(f) for f in others)):
            batch(p, images, folders, others, broken, {os.path.realpath(p)})
        else:
            add(p)  # one DICOM series (or an empty folder: read_scan says so)
    return out


def check_unique_ids(scans: Iterable[Path]) -> None:
    """Refuse (:class:`~cacnet.errors.UsageError`, exit 2) scans whose ids clash, before anything is scored.

    The id names a scan's outputs (``<id>.json``, ``<id>_calcium.nii.gz``, ...), its CSV row and its
    ``--json`` object, so two inputs with one id (``c1/ct.nii.gz`` and ``c2/ct.nii.gz``: ``ct``) would
    overwrite each other. Ids that differ only in case clash too (one file on macOS and Windows).
    """
    by_id: dict[str, list[Path]] = {}
    for p in scans:
        by_id.setdefault(scan_id(Path(p)).casefold(), []).append(Path(p))
    clashes = [paths for paths in by_id.values() if len(paths) > 1]
    if not clashes:
        return
    shown = "; ".join(f"id {scan_id(paths[0])!r}: " + ", ".join(str(p) for p in paths) for paths in clashes[:5])
    more = f"; and {len(clashes) - 5} more" if len(clashes) > 5 else ""
    raise UsageError(
        f"{sum(len(c) for c in clashes)} inputs share {len(clashes)} id(s) (the id is the file name without its "
        f"extension, or the folder name), so their outputs, CSV rows and results would overwrite each other: "
        f"{shown}{more}. Nothing was scored. Give each scan a name of its own (rename it, or link it under a "
        f"new name, e.g. ln -s /data/c1/ct.nii.gz scans/c1.nii.gz), or score them in separate runs with separate -o "
        f"and --csv.")


def csv_row(data: Optional[dict[str, Any]], *, input_path: Path, status: str, error: str = "") -> dict[str, Any]:
    """One CSV row of a scan (``data`` is a result's JSON, None on error)."""
    row: dict[str, Any] = {c: "" for c in CSV_COLUMNS}
    row.update({"id": scan_id(input_path) if data is None else data["id"], "status": status, "error": error,
                "input": str(input_path)})
    if data is not None:
        row.update({
            "agatston": round(data["agatston"], 4), "category": data["category"],
            "volume_mm3": round(data["volume_mm3"], 4),
            "mass_mg": "" if data["mass_mg"] is None else round(data["mass_mg"], 4),
            **{k: round(v["agatston"], 4) for k, v in data["arteries"].items()},
            "n_lesions": data["n_lesions"], "cac_drs": data["cac_drs"]["label"],
            "n_review": len(data["review"]), "warnings": " | ".join(data["warnings"]),
        })
    return row


def read_result(path: Path) -> dict[str, Any]:
    """A result JSON written by :func:`cacnet.outputs.write.write_outputs`."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidScanError(f"{path}: cannot read a previous result ({exc}).") from None


#: Names that moved, with their new module: importable from here for one release, with a DeprecationWarning.
_MOVED = {"write_outputs": "cacnet.outputs.write"}
__getattr__ = moved(__name__, _MOVED)
