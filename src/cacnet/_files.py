"""Atomic file writing: nothing half-written is ever left behind (private)."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import secrets
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

__all__ = ["atomic_path", "write_text_atomic", "write_csv_atomic", "write_image_atomic", "sha256_file"]


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
