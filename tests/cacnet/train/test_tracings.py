"""The shipped tracings of real CT anatomy (src/cacnet/train/anatomy): well formed, plausible, attributed."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from cacnet.train._backgrounds import ANATOMY_DIR
from cacnet.phantom.insertion import load_tracing

TRACINGS = sorted(ANATOMY_DIR.glob("*.json"))
CORONARIES = ("LM", "LAD", "LCX", "RCA")
OTHERS = ("aortic_root_wall", "ascending_aorta_wall", "aortic_valve_plane", "mitral_annulus")


def test_tracings_are_shipped():
    assert len(TRACINGS) >= 3
    assert (ANATOMY_DIR / "README.md").exists()


@pytest.mark.parametrize("path", TRACINGS, ids=lambda p: p.stem)
def test_tracing_is_complete_and_plausible(path):
    doc = load_tracing(path)
    assert doc["name"] == path.stem
    assert isinstance(doc["scan"], str) and doc["scan"] and isinstance(doc.get("also_valid_for", []), list)
    st = doc["structures"]
    for key in CORONARIES + OTHERS:
        assert key in st, f"{path.name}: no {key}"
    # every point finite (load_tracing checks the types; check the values once more, all structures)
    flat = [p for key in ("aortic_root_wall", "ascending_aorta_wall") for ring in st[key] for p in ring]
    flat += [p for key in CORONARIES + ("aortic_valve_plane", "mitral_annulus") for p in st[key]]
    assert all(len(p) == 3 and all(math.isfinite(v) for v in p) for p in flat)
    for key in CORONARIES:
        pts = np.asarray(st[key], float)
        assert len(pts) >= 3, f"{path.name}: {key} has {len(pts)} points"
        steps = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        assert steps.max() <= 20.0, f"{path.name}: {key} has a {steps.max():.1f} mm gap"
    root_centre = np.concatenate([np.asarray(r, float) for r in st["aortic_root_wall"]]).mean(axis=0)
    lm_start = np.asarray(st["LM"][0], float)
    assert np.linalg.norm(lm_start - root_centre) <= 30.0, f"{path.name}: LM starts far from the aortic root"


def test_readme_attributes_every_tracing():
    text = (ANATOMY_DIR / "README.md").read_text()
    sections = {m.group(1): m.group(2) for m in re.finditer(r"^## (\S+)\n(.*?)(?=^## |\Z)", text, re.S | re.M)}
    for path in TRACINGS:
        body = sections.get(path.stem)
        assert body is not None, f"README.md has no section '## {path.stem}'"
        attribution = re.search(r"Attribution:(.*?)(?=\n- |\Z)", body, re.S)
        assert attribution is not None, f"{path.stem}: no attribution"
        assert re.search(r"doi:10\.\d{4,}/\S+", attribution.group(1)), f"{path.stem}: no collection DOI"
        assert "licence" in attribution.group(1).lower() or "license" in attribution.group(1).lower()
        assert json.loads(path.read_text())["scan"] in body  # the section names the scan it traces
