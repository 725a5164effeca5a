"""Atomic file writing: nothing half-written is ever left behind (private)."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import secrets
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

__all__ = ["atomic_path", "write_text_atomic", "write_csv_atomic", "write_image_atomic", "sha256_file",
           "check_output_dir", "check_output_file"]


def _create_temp_file(folder: Path, prefix: str, suffix: str) -> Path:
    """Create a new empty file with a random name in ``folder``.

    Unlike :func:`tempfile.mkstemp` (always mode 0600), the file is created
    with mode 0666 and the kernel applies the user's umask, so the finished
    output gets the permissions of any normally written file (0644 under
    umask 022). ``O_EXCL`` makes sure no existing file is reused.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        candidate = folder / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            fd = os.open(candidate, flags, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return candidate
    raise FileExistsError(f"{folder}: could not create a temporary file named {prefix}*{suffix}.")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it into place on success.

    The temporary name keeps the full suffix (``.nii.gz``) so that writers
    that choose the format by extension still work. The file gets the
    permissions the umask gives a new file (not mkstemp's 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    tmp_path = _create_temp_file(path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_csv_atomic(path: Path, fieldnames: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    """Write rows as CSV atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(fieldnames), extrasaction="raise")
            writer.writeheader()
            for row in rows:
                writer.writerow(row)


def write_image_atomic(image: Any, path: Path, compress: bool = True) -> None:
    """Write a SimpleITK image atomically."""
    import SimpleITK as sitk

    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_output_dir(folder: Path, what: str) -> Path:
    """Create ``folder`` (and its parents) and make sure files can be written in it, before any work is done.

    Writing is checked by creating and removing an empty temporary file: that also finds a read-only file
    system, and holds for root, whom permission bits do not stop. ``what`` names the folder in the
    message (``-o``, ``OUTDIR``).

    Raises
    ------
    OutputError
        (exit 7) saying which path, what is wrong and what to do.
    """
    from .errors import OutputError

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{what} {folder} is a file, not a folder: name a folder for the outputs (it is created "
                          "if missing).") from None
    except NotADirectoryError:
        raise OutputError(f"{what} {folder}: cannot create this folder, a part of its path is a file: name a "
                          "folder for the outputs (it is created if missing).") from None
    except OSError as exc:
        raise OutputError(f"{what} {folder}: cannot create this folder ({exc.strerror or exc}): choose a folder "
                          "you can write to.") from None
    try:
        _create_temp_file(folder, prefix=".cac-write-check.", suffix=".tmp").unlink()
    except OSError as exc:
        raise OutputError(f"{what} {folder}: cannot write files there ({exc.strerror or exc}): choose a folder you "
                          "can write to.") from None
    return folder


def check_output_file(path: Path, what: str) -> Path:
    """Make sure the file ``path`` can be written (its folder created and writable, an existing file writable).

    Raises
    ------
    OutputError
        (exit 7) when ``path`` is a folder, its folder cannot be created or written
        (:func:`check_output_dir`), or an existing ``path`` cannot be opened for writing.
    """
    from .errors import OutputError

    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder, not a file: name a file, e.g. {path / 'scores.csv'}.")
    check_output_dir(path.parent, f"the folder of {what} {path}:")
    if path.exists():
        try:
            open(path, "ab").close()  # opened for writing, not changed
        except OSError as exc:
            raise OutputError(f"{what} {path}: cannot write this file ({exc.strerror or exc}): make it writable or "
                              "name another file.") from None
    return path
