"""The shipped weights without a symlink: weights/ at the root, copied into the wheel as cacnet/weights by setup.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cacnet.ensemble import DEFAULT_WEIGHTS, _default_weights

ROOT = Path(__file__).resolve().parents[2]
IN_A_CHECKOUT = (ROOT / "setup.py").is_file() and (ROOT / "weights" / "manifest.json").is_file()


def test_the_default_weights_are_found():
    assert (DEFAULT_WEIGHTS / "manifest.json").is_file()


def test_the_installed_copy_first_then_the_checkouts(tmp_path):
    module = tmp_path / "src" / "cacnet" / "ensemble.py"  # where the module would be; it need not exist
    checkout, installed = tmp_path / "weights", tmp_path / "src" / "cacnet" / "weights"
    assert _default_weights(str(module)) == checkout  # neither: the checkout's folder is named in the error
    checkout.mkdir()
    (checkout / "manifest.json").write_text("{}")
    assert _default_weights(str(module)) == checkout  # an editable install, or src/ on the path
    installed.mkdir(parents=True)
    (installed / "manifest.json").write_text("{}")
    assert _default_weights(str(module)) == installed  # a wheel's copy


@pytest.mark.skipif(not IN_A_CHECKOUT, reason="needs the source checkout (setup.py, weights/)")
def test_no_symlink_in_the_package_sources():
    assert not [p for p in (ROOT / "src").rglob("*") if p.is_symlink()]


@pytest.mark.skipif(not IN_A_CHECKOUT, reason="needs the source checkout (setup.py, weights/)")
def test_the_build_copies_the_weights_into_the_package(tmp_path):
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = tmp_path / "cacnet" / "weights"
    shipped = sorted(p.name for pattern in ("*.onnx", "*.npz", "*.json", "*.md")
                     for p in (ROOT / "weights").glob(pattern))
    assert "manifest.json" in shipped and sorted(p.name for p in built.iterdir()) == shipped
    for name in shipped:
        assert (built / name).read_bytes() == (ROOT / "weights" / name).read_bytes()
    assert (tmp_path / "cacnet" / "outputs" / "dicom.py").is_file()  # the package itself is built as before
