"""cacnet._files: atomic writes that get the permissions of a normally written file."""

import contextlib
import os
import stat

import numpy as np
import pytest
import SimpleITK as sitk

from cacnet._files import atomic_path, write_csv_atomic, write_image_atomic, write_text_atomic
from cacnet.outputs.preview import write_preview


@contextlib.contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_get_the_umask_permissions(tmp_path, mask, expected):
    hu = np.full((3, 8, 8), -100, np.int16)
    hu[1, 2:5, 2:5] = 400
    labels = (hu >= 130).astype(np.uint8) * 2
    with umask(mask):
        write_text_atomic(tmp_path / "a.json", "{}")
        write_csv_atomic(tmp_path / "a.csv", ["id", "x"], [{"id": "a", "x": 1}])
        write_image_atomic(sitk.GetImageFromArray(labels), tmp_path / "a_calcium.nii.gz")
        write_preview(hu, labels, tmp_path / "a.png")
    for name in ("a.json", "a.csv", "a_calcium.nii.gz", "a.png"):
        assert mode(tmp_path / name) == expected, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "a.json", "a.png", "a_calcium.nii.gz"]


def test_replacing_a_file_is_atomic_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "r.txt"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.parent == target.parent and tmp.name.endswith(".tmp.txt") and tmp.exists()
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "old" and [p.name for p in target.parent.iterdir()] == ["r.txt"]
    write_text_atomic(target, "new")
    assert target.read_text() == "new" and [p.name for p in target.parent.iterdir()] == ["r.txt"]


def test_temporary_names_keep_the_full_suffix_and_differ(tmp_path):
    with atomic_path(tmp_path / "x.nii.gz") as a, atomic_path(tmp_path / "x.nii.gz") as b:
        assert a != b and a.name.endswith(".tmp.nii.gz") and b.name.endswith(".tmp.nii.gz")
        a.write_text("a")
        b.write_text("b")
    assert (tmp_path / "x.nii.gz").read_text() == "a"  # the last to finish wins
