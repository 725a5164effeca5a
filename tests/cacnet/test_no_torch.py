"""torch only in training: every cacnet module outside cacnet.train's torch modules imports without torch."""

from __future__ import annotations

import json
import subprocess
import sys

#: The modules that need torch (the `train` extra): the U-Net, its loop, joint training, export, orchestration.
TORCH_MODULES = {"cacnet.train._model", "cacnet.train._loop", "cacnet.train._joint", "cacnet.train._export",
                 "cacnet.train._ensemble"}

_WALK = """
import importlib, json, pkgutil, sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError, as in a venv without torch
import cacnet
torch_modules = set(json.loads(sys.argv[1]))
names = sorted(m.name for m in pkgutil.walk_packages(cacnet.__path__, "cacnet."))
imported, failed, torch_ok = [], {}, []
for name in ["cacnet"] + names:
    if name == "cacnet.__main__":  # runs the `cac` command
        continue
    try:
        importlib.import_module(name)
    except ImportError as exc:
        if name not in torch_modules:
            failed[name] = repr(exc)
        continue
    (torch_ok if name in torch_modules else imported).append(name)
print(json.dumps({"imported": imported, "failed": failed, "torch_ok": torch_ok}))
"""


def test_every_module_outside_training_imports_without_torch():
    proc = subprocess.run([sys.executable, "-c", _WALK, json.dumps(sorted(TORCH_MODULES))], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["failed"] == {}
    assert not out["torch_ok"]  # torch was blocked: the modules that need it did not import
    assert {"cacnet.train", "cacnet.phantom.insertion", "cacnet.phantom.decontrast", "cacnet.train._data",
            "cacnet.train._backgrounds", "cacnet.phantom", "cacnet.pipeline", "cacnet.cli",
            "cacnet.train._insert", "cacnet.train._decontrast"} <= set(out["imported"])  # the old paths, one release
