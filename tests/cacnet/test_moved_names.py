"""Names that moved to another module stay importable from the old one for one release, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

MOVED = [
    ("cacnet.review", "Part", "cacnet.components"),
    ("cacnet.review", "Component", "cacnet.components"),
    ("cacnet.review", "ComponentTable", "cacnet.components"),
    ("cacnet.review", "find_components", "cacnet.components"),
    ("cacnet.review", "MAX_QUIET_CANDIDATES", "cacnet.components"),
    ("cacnet.review", "MAX_QUIET_CANDIDATE_MM3", "cacnet.components"),
    ("cacnet.review", "MAX_VOTED_CANDIDATES", "cacnet.components"),
    ("cacnet.review", "scan_sha256", "cacnet.io"),
    ("cacnet.pipeline", "lesion_position", "cacnet.io"),
    ("cacnet.batch", "write_outputs", "cacnet.outputs.write"),
    # calcium insertion moved into cacnet.phantom; the training cases made with it into cacnet.train._backgrounds
    ("cacnet.train._insert", "insert_calcium", "cacnet.phantom.insertion"),
    ("cacnet.train._insert", "iter_inserted_scans", "cacnet.phantom.insertion"),
    ("cacnet.train._insert", "iter_inserted_cases", "cacnet.train._backgrounds"),
    # whole modules that moved into cacnet.outputs: a thin module at the old path serves every name
    ("cacnet.report", "write_report", "cacnet.outputs.report"),
    ("cacnet.report", "render_report", "cacnet.outputs.report"),
    ("cacnet.preview", "write_result_preview", "cacnet.outputs.preview"),
    ("cacnet.preview", "ARTERY_COLORS", "cacnet.outputs.preview"),
    ("cacnet._render", "encode_png", "cacnet.outputs._render"),
    ("cacnet.dicom_out", "write_dicom_outputs", "cacnet.outputs.dicom"),
    ("cacnet.dicom_out", "_save", "cacnet.outputs.dicom"),
    ("cacnet.send", "send_files", "cacnet.outputs.send"),
    ("cacnet.send", "parse_node", "cacnet.outputs.send"),
]

#: Modules that moved whole: old name -> new name.
MOVED_MODULES = {"cacnet.report": "cacnet.outputs.report", "cacnet.preview": "cacnet.outputs.preview",
                 "cacnet._render": "cacnet.outputs._render", "cacnet.dicom_out": "cacnet.outputs.dicom",
                 "cacnet.send": "cacnet.outputs.send", "cacnet.train._decontrast": "cacnet.phantom.decontrast"}


@pytest.mark.parametrize("old, name, new", MOVED)
def test_old_name_warns_and_is_the_new_one(old, name, new):
    with pytest.warns(DeprecationWarning, match=rf"{old}\.{name} moved to {new}\.{name}"):
        got = getattr(importlib.import_module(old), name)
    assert got is getattr(importlib.import_module(new), name)


@pytest.mark.parametrize("old, name, new", MOVED[:1] + MOVED[-1:])
def test_from_import_of_an_old_name_warns(old, name, new):
    with pytest.warns(DeprecationWarning):
        exec(f"from {old} import {name}", {})


@pytest.mark.parametrize("old", sorted({old for old, _, _ in MOVED}))
def test_unknown_names_still_raise(old):
    with pytest.raises(AttributeError):
        getattr(importlib.import_module(old), "no_such_name")


@pytest.mark.parametrize("old, new", sorted(MOVED_MODULES.items()))
def test_a_moved_module_serves_all_its_names(old, new):
    old_mod, new_mod = importlib.import_module(old), importlib.import_module(new)
    assert old_mod.__all__ == new_mod.__all__  # served without a warning: it only lists the names
    for name in new_mod.__all__:
        with pytest.warns(DeprecationWarning, match=rf"{old}\.{name} moved to {new}\.{name}"):
            assert getattr(old_mod, name) is getattr(new_mod, name)
    with pytest.warns(DeprecationWarning):
        namespace: dict = {}
        exec(f"from {old} import *", namespace)
    served = {k: v for k, v in namespace.items() if not k.startswith("__")}
    assert served == {n: getattr(new_mod, n) for n in new_mod.__all__}


def test_the_new_paths_do_not_warn():
    """Nothing inside the package goes through an old path: importing and using the new ones warns nothing."""
    code = ("import warnings; warnings.simplefilter('error', DeprecationWarning); "
            "import cacnet.cli, cacnet.cohort, cacnet.review, cacnet.node, cacnet.node.refusal, cacnet.batch; "
            "import cacnet.train._backgrounds, cacnet.train._second_stage; "
            "import cacnet.outputs as o; [getattr(o, n) for n in o.__all__]; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
