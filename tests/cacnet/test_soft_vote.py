"""The soft vote in one OpenVINO graph (Ensemble.soft_vote): the same classes and votes as the single models'
argmax, the mean probabilities of cacnet.candidates.mean_probabilities to float32 rounding, and the same
second-stage masks and records on the bundled example and on phantoms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cacnet.candidates import decide_candidates, mean_probabilities
from cacnet.ensemble import DEFAULT_WEIGHTS, Ensemble, combine_votes, load_second_stage, openvino_available

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "data" / "phantom_example.nii.gz"
pytestmark = pytest.mark.skipif(not openvino_available(), reason="OpenVINO is not installed")


def reference(ens: Ensemble, x: np.ndarray):
    """The soft vote as it was: every model's logits one by one, numpy's softmax, argmax and vote."""
    logits = list(ens.logits(x))
    return mean_probabilities(logits), combine_votes([lg.argmax(0).astype(np.uint8) for lg in logits], ens.n_models)


def test_one_graph_soft_vote_of_toy_models(toy_weights):
    ens = Ensemble(toy_weights, device="cpu", backend="openvino", second_stage=False)
    x = np.random.default_rng(0).random((9, 21, 30), dtype=np.float32)
    probs, vote = ens.soft_vote(x)
    ref_probs, ref_vote = reference(ens, x)
    assert probs.shape == ref_probs.shape == (5,) + x.shape and probs.dtype == np.float32
    assert np.array_equal(vote.votes, ref_vote.votes) and np.array_equal(vote.artery, ref_vote.artery)
    assert np.array_equal(vote.per_artery, ref_vote.per_artery)
    assert np.abs(probs - ref_probs).max() <= 1e-6


@pytest.fixture(scope="module")
def shipped():
    if load_second_stage(DEFAULT_WEIGHTS) is None:
        pytest.skip("the shipped weights have no second stage")
    return Ensemble(DEFAULT_WEIGHTS, device="cpu", backend="openvino", model_cache=False)


def test_only_the_soft_vote_graph_is_compiled_for_a_second_stage(shipped):
    assert shipped._run_soft is not None
    assert shipped._run_all is None and shipped._sessions is None  # the vote graph and single models: on demand


def _scans(tmp_path_factory):
    import SimpleITK as sitk

    from cacnet.phantom import generate_phantom, oriented_image

    out = [EXAMPLE]
    folder = tmp_path_factory.mktemp("soft_vote")
    for seed, category in ((41, "D"), (42, "C")):
        case = generate_phantom(seed, category=category)  # 512 x 512
        path = folder / f"phantom{seed}.nii.gz"
        sitk.WriteImage(oriented_image(case.hu, case, "identity"), str(path))
        out.append(path)
    return out


def test_one_graph_soft_vote_gives_the_same_masks(shipped, tmp_path_factory):
    from cacnet.pipeline import prepare_scan

    labelled = []
    for path in _scans(tmp_path_factory):
        p = prepare_scan(path, force=True)
        probs, vote = shipped.soft_vote(p.x)
        ref_probs, ref_vote = reference(shipped, p.x)
        assert np.array_equal(vote.votes, ref_vote.votes) and np.array_equal(vote.artery, ref_vote.artery), path
        assert np.abs(probs - ref_probs).max() <= 1e-6, path
        labels, records = decide_candidates(p.scan.hu, p.scan.spacing, p.grid, probs, vote.votes, shipped.stage,
                                            p.anatomy)
        ref_labels, ref_records = decide_candidates(p.scan.hu, p.scan.spacing, p.grid, ref_probs, ref_vote.votes,
                                                    shipped.stage, p.anatomy)
        assert np.array_equal(labels, ref_labels), path
        labelled.append(bool(labels.any()))
        assert [r[:6] + r[7:] for r in records] == [r[:6] + r[7:] for r in ref_records], path
        assert [round(r[6], 4) for r in records] == [round(r[6], 4) for r in ref_records], path  # P as reported
    assert labelled[0] and sum(labelled) >= 2  # the example and a phantom have calcium
