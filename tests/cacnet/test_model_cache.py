"""OpenVINO's model cache (cacnet._model_cache): where it lives, its key, its off switch, and that a stale,
corrupt or unusable cache falls back to compiling, with the same results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cacnet import _model_cache as mc
from cacnet.ensemble import DEFAULT_WEIGHTS, Ensemble, openvino_available

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "data" / "phantom_example.nii.gz"
needs_openvino = pytest.mark.skipif(not openvino_available(), reason="OpenVINO is not installed")


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    """A fresh cache root in CAC_CACHE_DIR, the off switch unset."""
    root = tmp_path / "cache"
    monkeypatch.setenv(mc.CACHE_DIR_ENV, str(root))
    monkeypatch.delenv(mc.NO_CACHE_ENV, raising=False)
    return root


def blobs(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*.blob"))}


def test_cache_root_location(monkeypatch, tmp_path):
    monkeypatch.delenv(mc.CACHE_DIR_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert mc.cache_root() == tmp_path / "home" / ".cache" / "cac-toolkit"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert mc.cache_root() == tmp_path / "xdg" / "cac-toolkit"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # the XDG spec: relative paths are invalid
    assert mc.cache_root() == tmp_path / "home" / ".cache" / "cac-toolkit"
    monkeypatch.setenv(mc.CACHE_DIR_ENV, str(tmp_path / "own"))
    assert mc.cache_root() == tmp_path / "own"


def test_cache_key_is_the_weights_sha256_and_the_openvino_version(tmp_path):
    a = mc.model_cache_dir(["aa", "bb"], "2026.4.1", root=tmp_path)
    assert a.parent == tmp_path / "openvino" and len(a.name) == 16
    assert a == mc.model_cache_dir(["aa", "bb"], "2026.4.1", root=tmp_path)
    assert a != mc.model_cache_dir(["aa", "bc"], "2026.4.1", root=tmp_path)  # other weights
    assert a != mc.model_cache_dir(["bb", "aa"], "2026.4.1", root=tmp_path)  # other order: other models
    assert a != mc.model_cache_dir(["aa", "bb"], "2026.4.2", root=tmp_path)  # other OpenVINO


@pytest.mark.parametrize("value,off", [("1", True), ("true", True), ("ON", True), ("0", False), ("", False)])
def test_off_switch_in_the_environment(monkeypatch, value, off):
    monkeypatch.setenv(mc.NO_CACHE_ENV, value)
    assert mc.cache_disabled() is off


def toy_input(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((12, 20, 28), dtype=np.float32)


@needs_openvino
def test_compiled_once_then_loaded_from_the_cache(toy_weights, cache_env):
    first = Ensemble(toy_weights, device="cpu", backend="openvino")
    assert first.model_cache_dir is not None and first.model_cache_dir.parent == cache_env / "openvino"
    written = blobs(cache_env)
    assert written, "no compiled model was cached"
    for blob in written:  # every blob has its sha256 beside it
        assert (blob.parent / (blob.name + ".sha256")).read_text().strip() == mc.sha256_file(blob)
    x = toy_input()
    ref = first.classes(x)
    second = Ensemble(toy_weights, device="cpu", backend="openvino")
    assert blobs(cache_env) == written  # loaded, not compiled and written again
    assert all(np.array_equal(a, b) for a, b in zip(second.classes(x), ref))
    # the single models (early stop, logits) are cached too, in folders of their own
    list(second.predict(x))
    assert {p.parent.name for p in blobs(cache_env)} >= {"vote-fp32", "model0-fp32", "model4-fp32"}


@needs_openvino
@pytest.mark.parametrize("switch", ["argument", "environment"])
def test_off_switch_compiles_without_a_cache(toy_weights, cache_env, monkeypatch, switch):
    if switch == "environment":
        monkeypatch.setenv(mc.NO_CACHE_ENV, "1")
    ens = Ensemble(toy_weights, device="cpu", backend="openvino", model_cache=switch != "argument")
    assert ens.model_cache_dir is None
    assert not cache_env.exists()
    assert ens.classes(toy_input())[0].shape == (12, 20, 28)


@needs_openvino
def test_unusable_cache_folder_falls_back(toy_weights, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(mc.CACHE_DIR_ENV, str(blocker / "cache"))  # cannot be created
    monkeypatch.delenv(mc.NO_CACHE_ENV, raising=False)
    x = toy_input(1)
    ref = Ensemble(toy_weights, device="cpu", backend="openvino", model_cache=False).classes(x)
    got = Ensemble(toy_weights, device="cpu", backend="openvino").classes(x)
    assert all(np.array_equal(a, b) for a, b in zip(got, ref))


def corrupt(blob: Path, how: str) -> None:
    blob.chmod(0o644)  # OpenVINO writes its blobs read-only
    data = bytearray(blob.read_bytes())
    if how == "bit":  # one flipped bit in the middle (the weights): OpenVINO itself would load it silently
        data[len(data) // 2] ^= 0x01
    elif how == "truncated":
        data = data[: len(data) // 3]
    elif how == "garbage":
        data = bytearray(np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8).tobytes())
    elif how == "empty":
        data = bytearray()
    blob.write_bytes(bytes(data))


@needs_openvino
@pytest.mark.parametrize("how", ["bit", "truncated", "garbage", "empty", "no sidecar", "stale sidecar"])
def test_corrupt_blob_is_dropped_and_compiled_again(toy_weights, cache_env, how):
    x = toy_input(2)
    ref = Ensemble(toy_weights, device="cpu", backend="openvino", model_cache=False).classes(x)
    Ensemble(toy_weights, device="cpu", backend="openvino")
    (blob, good), = blobs(cache_env).items()
    side = blob.parent / (blob.name + ".sha256")
    if how == "no sidecar":
        side.unlink()
    elif how == "stale sidecar":
        side.write_text("0" * 64 + "\n")
    else:
        corrupt(blob, how)
    bad = blob.read_bytes()
    ens = Ensemble(toy_weights, device="cpu", backend="openvino")
    assert all(np.array_equal(a, b) for a, b in zip(ens.classes(x), ref))
    # compiled again: a new blob (OpenVINO's blobs are not byte for byte the same each time) and its sidecar
    assert list(blobs(cache_env)) == [blob]
    assert side.read_text().strip() == mc.sha256_file(blob)
    if how not in ("no sidecar", "stale sidecar"):
        assert blob.read_bytes() != bad and len(blob.read_bytes()) == len(good)


@needs_openvino
def test_shipped_models_with_a_corrupt_cache_score_the_example_identically(cache_env):
    """The shipped ensemble and the default decision: cold cache, warm cache, every blob corrupted - same result."""
    from cacnet.pipeline import score_scan

    def run(model_cache: bool = True):
        res = score_scan(EXAMPLE, Ensemble(DEFAULT_WEIGHTS, device="cpu", backend="openvino",
                                           model_cache=model_cache))
        return res.labels, res.data["agatston"], res.data["lesions"], res.data["rejected_candidates"]

    def same(a, b) -> bool:
        return np.array_equal(a[0], b[0]) and a[1:] == b[1:]

    ref = run(model_cache=False)
    assert same(run(), ref)  # cold: compiled and cached
    written = blobs(cache_env)
    assert written
    assert same(run(), ref)  # warm
    for blob in written:
        corrupt(blob, "bit")
    assert same(run(), ref)  # every blob corrupt: dropped, compiled again
    assert list(blobs(cache_env)) == list(written)
    for blob in written:
        assert (blob.parent / (blob.name + ".sha256")).read_text().strip() == mc.sha256_file(blob)
