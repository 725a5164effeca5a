"""The vote arithmetic of cacnet.ensemble against brute force over every way the rest could vote."""

import itertools

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cacnet.ensemble import Ensemble, combine_votes, decided
from cacnet.errors import DeviceUnavailableError


def reference_outcome(maps: list[int], n_models: int) -> tuple[bool, int]:
    """Majority calcium and most voted artery (lowest label on ties) of one voxel, obviously."""
    calcium_votes = sum(1 for m in maps if m > 0)
    calcium = 2 * calcium_votes > n_models
    counts = {a: sum(1 for m in maps if m == a) for a in (1, 2, 3, 4)}
    best = max(counts.values())
    artery = min(a for a in (1, 2, 3, 4) if counts[a] == best) if calcium else 0
    return calcium, artery


def reference_decided(maps: list[int], n_models: int) -> bool:
    """True when every completion of the remaining models' votes gives the same outcome."""
    outcomes = {reference_outcome(maps + list(rest), n_models)
                for rest in itertools.product(range(5), repeat=n_models - len(maps))}
    return len(outcomes) == 1


@settings(max_examples=300, deadline=None)
@given(n_models=st.sampled_from([1, 2, 3, 4, 5]), data=st.data())
def test_decided_matches_brute_force(n_models, data):
    k = data.draw(st.integers(1, n_models), label="models run")
    voxels = data.draw(st.lists(st.lists(st.integers(0, 4), min_size=k, max_size=k), min_size=1, max_size=12))
    maps = [np.array([v[i] for v in voxels], dtype=np.uint8) for i in range(k)]
    vote = combine_votes(maps, n_models)
    got = decided(vote)
    expected = [reference_decided(v, n_models) for v in voxels]
    assert got.tolist() == expected
    # where decided, the partial vote already gives the final outcome
    for i, v in enumerate(voxels):
        if expected[i]:
            calcium, artery = reference_outcome(v, n_models)
            assert bool(vote.calcium[i]) == calcium
            if calcium:
                assert int(vote.artery[i]) == artery


def test_four_of_five_decides_more_than_unanimity():
    # 3 of 4 models say LAD, one says nothing: the fifth cannot change it
    maps = [np.array([2]), np.array([2]), np.array([2]), np.array([0])]
    assert decided(combine_votes(maps, 5)).all()
    assert not decided(combine_votes(maps[1:], 5)).any()  # 2 LAD, 1 none after 3: undecided
    # a 2-2 split after 4 is undecided
    assert not decided(combine_votes([np.array([1]), np.array([1]), np.array([0]), np.array([0])], 5)).any()


def test_auto_on_the_cpu_is_not_a_warning(toy_weights):
    ens = Ensemble(toy_weights, device="auto")
    assert ens.warnings == []
    assert ens.provider in ("CPUExecutionProvider", "CUDAExecutionProvider")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert ens.provider == "CPUExecutionProvider"
        with pytest.raises(DeviceUnavailableError) as info:
            Ensemble(toy_weights, device="cuda")
        assert info.value.exit_code == 5
