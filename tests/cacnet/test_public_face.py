"""The public face of cacnet (PEP 562): importing it stays cheap, every name it lists is the object of its home."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

import cacnet

#: Not imported by ``import cacnet``: the heavy numerics and the model runtimes.
HEAVY = ("SimpleITK", "openvino", "onnxruntime", "torch", "numpy", "scipy")


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_import_cacnet_is_cheap():
    mods = set(json.loads(_run("import sys, cacnet, json; print(json.dumps(sorted(sys.modules)))")))
    assert not [m for m in mods if m.split(".")[0] in HEAVY]
    # not one submodule until a name is used, but the lazy face's own helper (importlib only)
    assert [m for m in mods if m.startswith("cacnet.")] == ["cacnet._lazy"]


def test_from_cacnet_import_score_scan_works():
    assert _run("from cacnet import score_scan; import cacnet.pipeline as p; print(score_scan is p.score_scan)") \
        == "True"


@pytest.mark.parametrize("name", [n for n in cacnet.__all__ if n != "__version__"])
def test_each_name_is_its_home_modules(name):
    module = next(m for m, names in cacnet._NAMES.items() if name in names)
    home = importlib.import_module(f"cacnet.{module}")
    assert getattr(cacnet, name) is getattr(home, name)
    assert name in dir(cacnet)


def test_face_lists_the_documented_names_and_every_error():
    from cacnet import errors

    assert {"read_scan", "Scan", "score_scan", "prepare_scan", "ScanResult", "Ensemble", "triage",
            "generate_phantom", "__version__"} | set(errors.__all__) == set(cacnet.__all__)
    with pytest.raises(AttributeError):
        cacnet.no_such_name  # noqa: B018


def test_triage_stays_the_function_whatever_was_imported_first():
    """``triage`` is a function and a module: importing the module (as scoring does) leaves the face's function."""
    code = ("import cacnet, cacnet.triage, cacnet.pipeline; from cacnet import triage; "
            "from cacnet.triage import CONTRAST_THRESHOLD_HU, triage as f; "
            "print(callable(cacnet.triage) and triage is f and cacnet.triage is f)")
    assert _run(code) == "True"
    code = "import cacnet; f = cacnet.triage; import cacnet.triage; print(cacnet.triage is f and callable(f))"
    assert _run(code) == "True"


def test_the_outputs_face_loads_no_writer_until_used():
    code = ("import sys, json, cacnet.outputs as o; "
            "before = sorted(m for m in sys.modules if m.startswith('cacnet.')); o.write_report; "
            "print(json.dumps([before, 'cacnet.outputs.report' in sys.modules]))")
    before, loaded_after = json.loads(_run(code))
    assert before == ["cacnet._lazy", "cacnet.outputs"] and loaded_after
    from cacnet import outputs

    for name in outputs.__all__:
        module = next(m for m, names in outputs._NAMES.items() if name in names)
        home = importlib.import_module(f"cacnet.outputs.{module}")
        assert getattr(outputs, name) is getattr(home, name)
