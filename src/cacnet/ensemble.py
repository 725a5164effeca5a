"""The ONNX U-Net ensemble: verified loading, backend and device choice, majority vote."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from ._files import sha256_file
from .errors import DeviceUnavailableError, UsageError, WeightsError
from .preprocess import pad_to_multiple

__all__ = ["BACKENDS", "DEFAULT_WEIGHTS", "Ensemble", "PRECISIONS", "Vote", "combine_votes", "cpu_supports_bf16",
           "decided", "load_manifest", "load_second_stage", "openvino_available", "resolve_backend", "verify_weights",
           "weights_version"]


def _default_weights(module_file: Optional[str] = None) -> Path:
    """The shipped weights: the copy installed with the package, else ``weights/`` of the source checkout.

    A wheel (``pip install .``) holds them as ``cacnet/weights`` (setup.py copies them at build time); an
    editable install or ``src/`` on the path reads ``weights/`` at the checkout's root (no symlink). When
    neither holds a manifest, the checkout's folder is named, so that the error says where they belong.
    ``module_file``: this module's path (tests give another layout).
    """
    here = Path(module_file or __file__).resolve()
    for candidate in (here.parent / "weights", here.parents[2] / "weights"):
        if (candidate / "manifest.json").is_file():
            return candidate
    return here.parents[2] / "weights"


DEFAULT_WEIGHTS = _default_weights()


def load_manifest(weights_dir: Path) -> dict:
    """Read ``manifest.json`` of a weights folder."""
    path = Path(weights_dir) / "manifest.json"
    if not path.exists():
        raise WeightsError(f"{path}: no weights manifest; pass --weights DIR holding manifest.json and the "
                           "ONNX files (cac train writes one).")
    try:
        manifest = json.loads(path.read_text())
        models = manifest["models"]
        assert isinstance(models, list) and models
    except (ValueError, KeyError, AssertionError):
        raise WeightsError(f"{path}: not a valid weights manifest (needs a non-empty 'models' list).") from None
    return manifest


def weights_version(manifest: dict) -> Optional[str]:
    """The version of a weights folder: its manifest's ``"version"`` (``"0.6"`` for the shipped ensemble), or None.

    `cac train` writes no version: a trained folder is told apart by its files' sha256.
    """
    version = manifest.get("version")
    return None if version in (None, "") else str(version)


def verify_weights(weights_dir: Path) -> list[dict]:
    """Check every model file of the manifest exists and matches its sha256."""
    weights_dir = Path(weights_dir)
    manifest = load_manifest(weights_dir)
    out = []
    for m in manifest["models"]:
        f = weights_dir / m["file"]
        if not f.exists():
            raise WeightsError(f"{f}: listed in the manifest but missing.")
        digest = sha256_file(f)
        if digest != m["sha256"]:
            raise WeightsError(f"{f}: sha256 {digest[:16]}... does not match the manifest ({m['sha256'][:16]}...); "
                               "the file is corrupt or was replaced.")
        out.append({**m, "path": str(f)})
    return out


def load_second_stage(weights_dir: Path, manifest: Optional[dict] = None):
    """The weights folder's second stage (:class:`cacnet.candidates.SecondStage`), or None when it has none.

    The manifest names it (``second_stage.file``) with its sha256, checked
    like the models'.
    """
    from .candidates import SecondStage

    weights_dir = Path(weights_dir)
    manifest = load_manifest(weights_dir) if manifest is None else manifest
    entry = manifest.get("second_stage")
    if not entry:
        return None
    f = weights_dir / entry["file"]
    if not f.exists():
        raise WeightsError(f"{f}: the manifest's second stage is missing; restore it, or score with the "
                           "majority vote alone (cac score --no-second-stage).")
    digest = sha256_file(f)
    if digest != entry["sha256"]:
        raise WeightsError(f"{f}: sha256 {digest[:16]}... does not match the manifest ({entry['sha256'][:16]}...); "
                           "the file is corrupt or was replaced.")
    try:
        return SecondStage.load(f)
    except ValueError as exc:
        raise WeightsError(str(exc)) from None


@dataclass
class Vote:
    """Per coarse voxel: how many models said calcium, and the winning artery.

    ``calcium`` is the majority (more than half of the models);
    ``artery`` (1-4) the artery most voted among the models that said
    calcium (ties: lowest label), 0 elsewhere.
    """

    votes: np.ndarray  # uint8, models voting calcium
    artery: np.ndarray  # uint8, 0 where no model voted calcium
    n_models: int
    models_run: int
    per_artery: Optional[np.ndarray] = None  # uint8 (4, ...), models voting each artery

    @property
    def calcium(self) -> np.ndarray:
        return self.votes * 2 > self.n_models


def combine_votes(classes: list[np.ndarray], n_models: int) -> Vote:
    """Majority vote of per-model class maps (0 background, 1-4 arteries).

    ``n_models`` is the size of the whole ensemble (the majority is taken
    over it), ``classes`` the maps of the models actually run.
    """
    votes = np.zeros(classes[0].shape, dtype=np.uint8)
    per_artery = np.zeros((4,) + classes[0].shape, dtype=np.uint8)
    for cls in classes:
        votes += cls > 0
        for a in range(4):
            per_artery[a] += cls == a + 1
    artery = np.where(votes > 0, per_artery.argmax(axis=0) + 1, 0).astype(np.uint8)
    return Vote(votes=votes, artery=artery, n_models=n_models, models_run=len(classes), per_artery=per_artery)


def decided(vote: Vote) -> np.ndarray:
    """Voxels whose outcome the models not yet run cannot change.

    Of a partial vote (``vote.models_run`` of ``vote.n_models`` models), a
    voxel is decided when, for every way the remaining ``r`` models could
    vote, the calcium majority is the same and, where it is calcium, so is
    the most voted artery (ties go to the lowest label): the calcium votes
    already reach the majority or cannot reach it any more, and the leading
    artery is ahead of every other by more than ``r`` (by ``r`` when the
    other has a higher label).

    Examples
    --------
    >>> import numpy as np
    >>> maps = [np.array([2, 2, 0, 2]), np.array([2, 2, 0, 0]), np.array([2, 3, 0, 0]), np.array([2, 2, 0, 3])]
    >>> decided(combine_votes(maps, 5)).tolist()  # 4 of 5 models run
    [True, True, True, False]
    """
    if vote.per_artery is None:
        raise ValueError("decided() needs the per-artery counts of a vote made by combine_votes().")
    r = vote.n_models - vote.models_run
    need = vote.n_models // 2 + 1
    calcium_fixed = (vote.votes >= need) | (vote.votes.astype(np.int16) + r < need)
    counts = vote.per_artery.astype(np.int16)
    lead = vote.artery.astype(np.int16) - 1  # 0-3 where any model voted calcium
    lead_count = np.take_along_axis(counts, np.maximum(lead, 0)[None], axis=0)[0]
    artery_fixed = np.ones(vote.votes.shape, dtype=bool)
    for b in range(counts.shape[0]):
        # a higher label must stay below the leader, a lower one must not reach it
        margin = np.where(b > lead, lead_count - counts[b] >= r, lead_count - counts[b] > r)
        artery_fixed &= (lead == b) | margin
    return calcium_fixed & ((vote.votes < need) | artery_fixed)


def _argmax_node(ops, logits):
    """OpenVINO nodes for ``numpy.argmax(logits, axis=1)`` with a class axis kept, as int32.

    A TopK of 1 sorted by value and stable: among equal maxima the lowest
    index comes first, as in numpy. ``ops`` is an OpenVINO opset module (11+).
    """
    import openvino as ov

    k = ops.constant(np.int64(1))
    return ops.topk(logits, k, 1, "max", "value", ov.Type.i32, stable=True).output(1)


def _named(model):
    """``model`` with a fixed name on every node and output tensor, in topological order.

    OpenVINO names new nodes (those made here, and many made by its ONNX
    reader) after a counter of the process, and its model cache keys an
    in-memory model by a hash that includes the names: without this the same
    ensemble built twice in a process, or after other models, would never
    find its compiled blob.
    """
    for k, op in enumerate(model.get_ordered_ops()):
        op.set_friendly_name(f"n{k}_{op.get_type_name()}")
    for k, out in enumerate(model.outputs):  # a Result names its tensor after itself, counter included
        out.get_tensor().set_names({f"output{k}"})
    return model


BACKENDS = ("auto", "openvino", "onnxruntime")
PRECISIONS = ("fp32", "bf16")


def _import_openvino():
    """Import OpenVINO's runtime, without its model-conversion tools (``openvino.tools.ovc``) when it is first.

    ``import openvino`` also imports ovc, whose import starts OpenVINO's
    telemetry: it sends an event from a background thread through a forked
    process that may wait 3 s for the network, which the interpreter waits
    for at exit (~0.2-0.3 s and a fork per process on a busy 2-core machine).
    cacnet converts no model. ``openvino.convert_model`` stays available: it
    imports ovc when it is first called.
    """
    import sys

    if "openvino" in sys.modules:
        import openvino

        return openvino
    blocked = "openvino.tools.ovc" not in sys.modules
    if blocked:
        sys.modules["openvino.tools.ovc"] = None  # type: ignore[assignment]  # openvino catches the ImportError
    try:
        import openvino
    finally:
        if blocked and "openvino.tools.ovc" in sys.modules and sys.modules["openvino.tools.ovc"] is None:
            del sys.modules["openvino.tools.ovc"]
    if blocked and not hasattr(openvino, "convert_model"):
        def convert_model(*args, **kwargs):
            from openvino.tools.ovc import convert_model as convert

            return convert(*args, **kwargs)

        openvino.convert_model = convert_model
    return openvino


def openvino_available() -> bool:
    """Whether the OpenVINO runtime can be imported here."""
    try:
        _import_openvino()
    except Exception:  # noqa: BLE001 - a broken install counts as absent
        return False
    return True


def _onnxruntime_has_cuda() -> bool:
    """Whether onnxruntime offers its CUDA provider; imports onnxruntime only where its CUDA library is installed.

    The CUDA provider of onnxruntime(-gpu) is a shared library of its own
    (``capi/libonnxruntime_providers_cuda.so``, ``.dll`` on Windows): where it
    is absent, ``get_available_providers()`` cannot list it, and the
    OpenVINO path need not import onnxruntime at all.
    """
    import importlib.util
    from glob import glob

    try:
        spec = importlib.util.find_spec("onnxruntime")
    except (ImportError, ValueError):
        return False
    if spec is None or not any(glob(os.path.join(folder, "capi", "*providers_cuda*"))
                               for folder in spec.submodule_search_locations or []):
        return False
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def cpu_supports_bf16() -> bool:
    """Whether OpenVINO's CPU plugin can run bf16 here (``BF16`` in ``OPTIMIZATION_CAPABILITIES``)."""
    if not openvino_available():
        return False
    import openvino as ov

    try:
        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # noqa: BLE001
        return False


def resolve_backend(backend: str, device: str) -> str:
    """The backend that ``backend`` (auto, openvino, onnxruntime) gives on ``device``.

    ``auto``: onnxruntime for ``--device cuda``, and under ``--device auto``
    when onnxruntime has a CUDA provider; otherwise OpenVINO when it is
    importable, else onnxruntime.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be auto, openvino or onnxruntime; got {backend!r}.")
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda; got {device!r}.")
    if backend != "auto":
        return backend
    if device == "cuda":
        return "onnxruntime"
    if device == "auto" and _onnxruntime_has_cuda():
        return "onnxruntime"
    return "openvino" if openvino_available() else "onnxruntime"


def default_threads() -> int:
    """CPUs this process may run on (its affinity mask; os.cpu_count() where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class Ensemble:
    """Every model of a weights folder, loaded (compiled) once and reused.

    Parameters
    ----------
    weights_dir : path
    device : {"auto", "cpu", "cuda"}
        ``auto`` uses CUDA when onnxruntime-gpu can, else the CPU (a normal
        outcome, not a warning: :attr:`provider` says which ran); ``cuda``
        that cannot be honoured raises :class:`DeviceUnavailableError`.
    threads : int, optional
        inference threads per model (OpenVINO: default the CPUs this process
        may use; onnxruntime: its own choice).
    second_stage : bool
        Decide each candidate with the weights' second stage
        (:mod:`cacnet.candidates`) when the manifest names one (default);
        False: the paper's majority vote alone.
    model_cache : bool
        OpenVINO: keep the compiled models in the user's cache folder and
        load them from there in later processes instead of compiling again
        (default; see :mod:`cacnet._model_cache` for the folder, its key and
        its checks). False, or ``CAC_NO_MODEL_CACHE=1`` in the environment:
        compile in this process only.
    backend : {"auto", "openvino", "onnxruntime"}
        ``auto``: OpenVINO on the CPU when it is importable, onnxruntime for
        CUDA (see :func:`resolve_backend`). Both read the same ONNX files.
    precision : {"fp32", "bf16"}
        ``fp32`` (default) is exact: OpenVINO is told so explicitly, since
        it would otherwise pick bf16 on CPUs that have it. ``bf16`` (faster,
        not exact) needs the OpenVINO backend and a CPU with bf16 support;
        otherwise :class:`UsageError` (exit 2).

    Attributes
    ----------
    backend, provider, device, precision : str
        What actually runs: ``"openvino"``/``"onnxruntime"``; the onnxruntime
        execution provider or ``"OpenVINO:CPU"``; ``"cpu"``/``"cuda"``;
        ``"fp32"``/``"bf16"``.
    sessions : list
        One per model: onnxruntime sessions or OpenVINO compiled models
        (compiled on first use: with OpenVINO, :meth:`classes` and the vote
        without early stop run all models as one compiled graph).
    n_models : int
        How many models vote.
    stage : SecondStage or None
        The second stage in use (None: majority vote).
    """

    weights_dir: Path = DEFAULT_WEIGHTS
    device: str = "auto"
    threads: Optional[int] = None
    warnings: list[str] = field(default_factory=list)
    backend: str = "auto"
    precision: str = "fp32"
    second_stage: bool = True
    model_cache: bool = True

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda; got {self.device!r}.")
        if self.precision in ("f32", "fp32"):
            self.precision = "fp32"
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be fp32 or bf16; got {self.precision!r}.")
        self.requested_backend = self.backend
        self.backend = resolve_backend(self.backend, self.device)
        if self.backend == "openvino":
            if self.device == "cuda":
                raise UsageError("--backend openvino runs on the CPU; for --device cuda use --backend onnxruntime "
                                 "(or auto) with onnxruntime-gpu.")
            if not openvino_available():
                raise DeviceUnavailableError("--backend openvino: OpenVINO cannot be imported here; "
                                             "pip install openvino, or use --backend onnxruntime.")
        if self.precision == "bf16":
            if self.backend != "openvino":
                raise UsageError("--precision bf16 needs the OpenVINO backend on the CPU "
                                 f"(this run would use {self.backend} on device {self.device}).")
            if not cpu_supports_bf16():
                raise UsageError("--precision bf16: this CPU has no bf16 support (OpenVINO's "
                                 "OPTIMIZATION_CAPABILITIES lacks BF16); use --precision fp32.")
        self.model_cache_dir = None  # OpenVINO's model cache (set by _load_openvino)
        # the hashes are checked before any model file is read by a runtime
        self.models = verify_weights(self.weights_dir)
        self.manifest = load_manifest(self.weights_dir)
        self.stage = load_second_stage(self.weights_dir, self.manifest) if self.second_stage else None
        if self.backend == "openvino":
            self._load_openvino()
        else:
            self._load_onnxruntime()

    def _load_onnxruntime(self) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        want_cuda = self.device in ("auto", "cuda") and "CUDAExecutionProvider" in available
        if self.device == "cuda" and not want_cuda:
            raise DeviceUnavailableError(
                "--device cuda: onnxruntime has no CUDA provider here (available: "
                + ", ".join(available) + "); install onnxruntime-gpu in place of onnxruntime, or use --device cpu.")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if want_cuda else ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = int(self.threads)
        opts.log_severity_level = 3
        # No per-session memory arena: five sessions each keeping their peak
        # activations held 2.25 GB on a 512 x 512 x 60 scan; without, 1.39 GB.
        opts.enable_cpu_mem_arena = False
        self._sessions = []
        for m in self.models:
            try:
                sess = ort.InferenceSession(m["path"], sess_options=opts, providers=providers)
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises many kinds
                if self.device == "cuda":
                    raise DeviceUnavailableError(f"--device cuda: the CUDA session failed ({exc}).") from None
                sess = ort.InferenceSession(m["path"], sess_options=opts, providers=["CPUExecutionProvider"])
            self._sessions.append(sess)
        running = self._sessions[0].get_providers()[0]
        if self.device == "cuda" and running != "CUDAExecutionProvider":
            raise DeviceUnavailableError(f"--device cuda: onnxruntime fell back to {running}.")
        self.provider = running
        self.device = "cuda" if running == "CUDAExecutionProvider" else "cpu"
        self.input_name = self._sessions[0].get_inputs()[0].name
        self._runners = [
            (lambda inp, s=sess: s.run(None, {self.input_name: inp})[0]) for sess in self._sessions]

    def _load_openvino(self) -> None:
        import openvino as ov

        core = ov.Core()
        threads = int(self.threads) if self.threads else default_threads()
        # f32 explicitly: on CPUs with AMX/AVX512-BF16 OpenVINO would run bf16 by default
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32"}
        self._ov_core, self._ov_config = core, config
        from ._model_cache import cache_disabled, model_cache_dir

        #: The folder of this ensemble's compiled models (None: no cache), see :mod:`cacnet._model_cache`.
        self.model_cache_dir = (None if not self.model_cache or cache_disabled()
                                else model_cache_dir([m["sha256"] for m in self.models], ov.__version__))
        # the input's spatial dimensions stay dynamic: the CPU plugin compiles once for every shape; the graph
        # that the decision runs is compiled now (the soft vote for a second stage), the other on first use
        self._run_all = self._run_soft = None
        merged = self._compile_openvino_ensemble(soft=self.stage is not None)
        ran = str(merged.get_property("INFERENCE_PRECISION_HINT"))
        self.precision = "bf16" if "bf16" in ran or "bfloat16" in ran else "fp32"
        devices = merged.get_property("EXECUTION_DEVICES")
        self.provider = "OpenVINO:" + ",".join(devices)
        self.device = "cpu"
        self.threads = threads
        self._sessions = None  # one compiled model per model, for early stop and logits: on first need

    @property
    def n_models(self) -> int:
        """How many models the ensemble has."""
        return len(self.models)

    @property
    def sessions(self) -> list:
        """One per model: onnxruntime sessions, or OpenVINO compiled models (compiled on first use)."""
        self._single_runners()
        return self._sessions

    def _single_runners(self) -> list[Callable[[np.ndarray], np.ndarray]]:
        """One callable per model, input to logits; OpenVINO compiles the single models on the first call."""
        if self._sessions is None:
            core = self._ov_core
            self._sessions = [self._compile(core.read_model(m["path"]), f"model{i}")
                              for i, m in enumerate(self.models)]
            self._runners = [self._openvino_runner(c) for c in self._sessions]
        return self._runners

    def _compile_openvino_ensemble(self, soft: bool = False):
        """Compile every model as one OpenVINO graph: a shared input, each model's argmax as an output.

        One graph instead of five compiled models saves ~10 % of the
        inference time (one memory pool, one shape inference per scan) and
        the copies of the (5, z, y, x) logits. The argmax is a stable TopK
        (:func:`_argmax_node`), whose ties go to the lowest class as in
        ``numpy.argmax``, so the class maps are those of :meth:`predict`.

        ``soft``: the graph of :meth:`soft_vote`, which also returns (last)
        the models' mean softmax (1, 5, z, y, x), summed in the models' order
        and divided by their number as :func:`cacnet.candidates.mean_probabilities`
        does (OpenVINO's exp and softmax kernels, so equal to it up to float32
        rounding, ~1e-7). Sets ``_run_soft``; otherwise ``_run_all``.
        """
        import openvino as ov

        try:
            from openvino import opset11 as ops
        except ImportError:  # OpenVINO < 2025
            from openvino.runtime import opset11 as ops  # type: ignore[no-redef]

        core = self._ov_core
        graphs = [core.read_model(m["path"]) for m in self.models]
        self.input_name = graphs[0].input(0).get_any_name()
        shared = ops.parameter(graphs[0].inputs[0].get_partial_shape(), ov.Type.f32, name=self.input_name)
        outputs = []
        total = None
        source = shared.output(0)
        for graph in graphs:
            for target in list(graph.get_parameters()[0].output(0).get_target_inputs()):
                target.replace_source_output(source)
            logits = graph.get_results()[0].input_value(0)
            classes = _argmax_node(ops, logits)
            outputs.append(ops.result(classes))
            if soft:
                p = ops.softmax(logits, 1)
                total = p if total is None else ops.add(total, p)
            # The next model's input waits for this model's classes: input + 0 * min(classes), which is
            # the input exactly. Without that dependency the plugin interleaves the five models and
            # holds all their activations at once (peak RSS 1.04 GB instead of ~0.6 GB on a 2.5 mm scan).
            done = ops.convert(ops.reduce_min(classes, ops.constant(np.arange(5, dtype=np.int64))), ov.Type.f32)
            if soft:
                # ... and for its share of the probabilities (a 0/1 flag, never NaN: the input stays exact)
                summed = ops.greater(ops.reduce_min(total, ops.constant(np.arange(5, dtype=np.int64))),
                                     ops.constant(np.float32(-1.0)))
                done = ops.add(done, ops.convert(summed, ov.Type.f32))
            source = ops.add(shared.output(0), ops.multiply(done, ops.constant(np.float32(0.0)))).output(0)
        if soft:
            outputs.append(ops.result(ops.divide(total, ops.constant(np.float32(len(graphs))))))
        name = "cacnet_soft_vote" if soft else "cacnet_ensemble"
        merged = self._compile(_named(ov.Model(outputs, [shared], name)), "soft" if soft else "vote")
        request = merged.create_infer_request()

        def run(inp: np.ndarray) -> list[np.ndarray]:
            outs = request.infer({0: inp}, share_inputs=True)
            maps = [np.asarray(outs[i]) for i in range(len(outputs))]
            if hasattr(merged, "release_memory"):  # as in _openvino_runner
                merged.release_memory()
            return maps

        if soft:
            self._run_soft = run
        else:
            self._run_all = run
        return merged

    def _compile(self, model, graph: str):
        """Compile an OpenVINO model for the CPU, through the model cache (``graph`` names its folder there)."""
        from ._model_cache import compile_cached

        folder = None if self.model_cache_dir is None else self.model_cache_dir / f"{graph}-{self.precision}"
        return compile_cached(self._ov_core, model, self._ov_config, folder)

    @staticmethod
    def _openvino_runner(compiled) -> Callable[[np.ndarray], np.ndarray]:
        request = compiled.create_infer_request()

        def run(inp: np.ndarray) -> np.ndarray:
            out = request.infer({0: inp}, share_inputs=True)[0]  # a copy: share_outputs is off
            # Each compiled model otherwise keeps its activation buffers for the last
            # shape: five of them held ~0.75 GB more on a 512 x 512 x 60 scan.
            if hasattr(compiled, "release_memory"):  # OpenVINO >= 2024.3
                compiled.release_memory()
            return out

        return run

    def classes(self, x: np.ndarray) -> list[np.ndarray]:
        """Every model's class map of a preprocessed (z, y, x) volume (see :meth:`predict`), all at once.

        With OpenVINO the models run as one graph that returns class maps
        (same maps as :meth:`predict`, faster); otherwise :meth:`predict`.
        """
        if self.backend != "openvino":
            return list(self.predict(x))
        if self._run_all is None:
            self._compile_openvino_ensemble()
        inp = np.ascontiguousarray(pad_to_multiple(x.astype(np.float32))[None, None])
        crop = tuple(slice(0, s) for s in x.shape)
        return [m[0, 0][crop].astype(np.uint8) for m in self._run_all(inp)]

    def logits(self, x: np.ndarray) -> Iterator[np.ndarray]:
        """Each model's float32 logits (5, z, y, x) of a preprocessed (z, y, x) volume, one model at a time."""
        inp = np.ascontiguousarray(pad_to_multiple(x.astype(np.float32))[None, None])
        crop = (slice(None),) + tuple(slice(0, s) for s in x.shape)
        for run in self._single_runners():
            yield np.asarray(run(inp))[0][crop]

    def soft_vote(self, x: np.ndarray) -> tuple[np.ndarray, Vote]:
        """The models' mean class probabilities (5, z, y, x) float32 and their majority :class:`Vote`.

        Every model runs (no early stop); each model's classes are the
        argmax of its logits, as in :meth:`predict`. With OpenVINO the models
        run as one graph that returns the classes and the mean probabilities
        (see :meth:`_compile_openvino_ensemble`: the classes are the same,
        the probabilities equal to float32 rounding); otherwise from
        :meth:`logits` and :func:`cacnet.candidates.mean_probabilities`.
        """
        from .candidates import mean_probabilities

        if self.backend == "openvino":
            if self._run_soft is None:
                self._compile_openvino_ensemble(soft=True)
            inp = np.ascontiguousarray(pad_to_multiple(x.astype(np.float32))[None, None])
            crop = tuple(slice(0, s) for s in x.shape)
            outs = self._run_soft(inp)
            classes = [m[0, 0][crop].astype(np.uint8) for m in outs[:-1]]
            probs = np.ascontiguousarray(outs[-1][0][(slice(None),) + crop])
            return probs, combine_votes(classes, self.n_models)
        logits = list(self.logits(x))
        classes = [lg.argmax(axis=0).astype(np.uint8) for lg in logits]
        return mean_probabilities(logits), combine_votes(classes, self.n_models)

    def predict(self, x: np.ndarray) -> Iterator[np.ndarray]:
        """Each model's class map of a preprocessed (z, y, x) volume, one model at a time.

        Yields uint8 arrays of ``x``'s shape: 0 background, 1-4 LM/LAD/LCX/RCA
        (the argmax of the model's output). Models not yet asked for are not run.
        """
        for logits in self.logits(x):
            yield logits.argmax(axis=0).astype(np.uint8)

    def describe(self) -> dict:
        """What runs the models, for reports: backend, provider, device, precision, threads, and what decides."""
        out = {"backend": self.backend, "provider": self.provider, "device": self.device,
               "precision": self.precision, "threads": self.threads,
               "decision": "second stage" if self.stage is not None else "majority vote"}
        if self.stage is not None:  # the P(coronary) each candidate needed, by the U-Nets' votes for it
            out["thresholds"] = dict(zip(("majority_vote", "minority_vote", "no_vote"), self.stage.tier_thresholds()))
        return out

    def vote(self, x: np.ndarray, candidates: Optional[np.ndarray] = None, early_stop: bool = False,
             irrelevant: Optional[Callable[[np.ndarray], bool]] = None) -> Vote:
        """Majority vote of the models on a preprocessed (z, y, x) volume in [0, 1].

        With ``early_stop``, models stop being run as soon as every coarse
        voxel in ``candidates`` that is not yet :func:`decided` (whatever the
        remaining models say, the majority and the most voted artery stay
        the same) is ``irrelevant`` (a callable given the boolean map of
        such voxels; by default none may be left). After 3 of 5 models that
        needs unanimity; after 4 only no 2-2 split and a clear artery. The
        calcium mask and the arteries are then what the full ensemble gives;
        vote counts only cover the models run.
        """
        n = self.n_models
        need = n // 2 + 1
        if not early_stop or candidates is None:
            return combine_votes(self.classes(x), n)
        classes: list[np.ndarray] = []
        for cls in self.predict(x):
            classes.append(cls)
            if early_stop and candidates is not None and need <= len(classes) < n:
                partial = combine_votes(classes, n)
                undecided = candidates & ~decided(partial)
                if not undecided.any() or (irrelevant is not None and irrelevant(undecided)):
                    return partial
        return combine_votes(classes, n)
