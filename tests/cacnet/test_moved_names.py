"""Names that moved to another module stay importable from the old one for one release, with a DeprecationWarning."""

from __future__ import annotations

import importlib

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
]


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
