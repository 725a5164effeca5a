"""Package-level contracts: dependencies, public API, docstring examples."""

import doctest
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import agatston

MODULES = ["agatston", "agatston._score", "agatston._categories", "agatston._metrics", "agatston._lesions"]


def test_import_pulls_in_numpy_and_scipy_only():
    code = (
        "import sys, agatston; "
        "bad = [m for m in ('SimpleITK', 'onnxruntime', 'typer', 'rich', 'torch', 'cacnet', 'pydicom') "
        "if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_names_exist_and_are_documented():
    for name in agatston.__all__:
        obj = getattr(agatston, name)
        if callable(obj):
            assert obj.__doc__ and len(obj.__doc__) > 20, name


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0 and (result.attempted > 0 or module == "agatston._errors")


def test_bundled_example_runs():
    script = Path(__file__).resolve().parents[2] / "examples" / "score_qrm_phantom.py"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, encoding="utf-8", errors="replace", timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Large HD" in out.stdout and "402.9" in out.stdout
