"""Imports only for what runs: the plain `cac score` path loads no Dask, no DICOM writer, no report, no phantom
generator, no OpenVINO model converter (whose import starts OpenVINO's telemetry), and no onnxruntime when
OpenVINO runs the models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cacnet.ensemble import _onnxruntime_has_cuda, openvino_available

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "data" / "phantom_example.nii.gz"

#: Never imported by `cac score SCAN --json` (module names and their submodules).
NOT_ON_THE_SCORE_PATH = ("dask", "distributed", "highdicom", "pydicom", "pynetdicom", "cacnet.outputs.report",
                         "cacnet.phantom", "cacnet.outputs.dicom", "cacnet.outputs.preview", "cacnet.outputs.send",
                         "cacnet.outputs._render", "cacnet.report", "cacnet.dicom_out", "cacnet.preview", "cacnet.send",
                         "cacnet.node",
                         "cacnet.train", "cacnet.datasets", "cacnet.evaluate", "cacnet.insert", "openvino.tools.ovc",
                         "openvino_telemetry", "torch", "sklearn", "matplotlib", "PIL", "jinja2", "pandas")

_RUN = """
import json, sys
{body}
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""
_SCORE = """
from cacnet.cli import app  # cacnet.cli.main would end the process before the modules are listed
sys.argv = ["cac", "score", sys.argv[1], "--json"]
try:
    app()
except SystemExit as exc:
    assert not exc.code, exc.code
"""


def modules_after(body: str, *args: str) -> set[str]:
    proc = subprocess.run([sys.executable, "-c", _RUN.format(body=body), *args], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return set(json.loads(proc.stderr.strip().splitlines()[-1]))


def loaded(modules: set[str], names) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


def test_importing_the_cli_loads_no_numerics():
    mods = modules_after("import cacnet.cli")
    assert not loaded(mods, NOT_ON_THE_SCORE_PATH + ("numpy", "scipy", "SimpleITK", "openvino", "onnxruntime"))


@pytest.mark.skipif(not openvino_available(), reason="OpenVINO is not installed")
def test_score_path_loads_only_what_runs():
    mods = modules_after(_SCORE, str(EXAMPLE))
    assert "cacnet.candidates" in mods and "openvino" in mods  # it did score, with the second stage, on OpenVINO
    assert not loaded(mods, NOT_ON_THE_SCORE_PATH)
    if not _onnxruntime_has_cuda():  # OpenVINO ran the models: onnxruntime is not needed
        assert not loaded(mods, ("onnxruntime",))


@pytest.mark.skipif(not openvino_available(), reason="OpenVINO is not installed")
def test_openvino_without_its_converter_still_converts_on_demand():
    code = ("import sys; from cacnet.ensemble import openvino_available; assert openvino_available(); "
            "import openvino; assert 'openvino.tools.ovc' not in sys.modules; "
            "assert callable(openvino.convert_model); assert 'openvino.tools.ovc' not in sys.modules; "
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
