"""Where one model's inference time goes, on the coarse volume of the bench_score scan.

* multiply-adds of the convolutions (from the ONNX graph, shapes inferred);
* onnxruntime's per-operator profile (mean over three runs, default threads);
* one model with 2 threads, with 1 thread, and two 1-thread models at once.

Run:  python -m benchmarks.profile_model [--weights weights] [--seed 4242]
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from cacnet.ensemble import DEFAULT_WEIGHTS, verify_weights
from cacnet.preprocess import coarse_grid, downsample, normalize, pad_to_multiple


def benchmark_input(seed: int) -> np.ndarray:
    """The padded model input of bench_score.py's 512 x 512 x 60 scan."""
    from cacnet.phantom import generate_phantom
    from cacnet.phantom._base import sample_acquisition

    for s in range(seed, seed + 5000):  # the same search as bench_score.py
        if sample_acquisition(np.random.default_rng(s)).n_slices == 60:
            case = generate_phantom(s, category="D")
            if case.hu.shape[0] == 60:
                break
    hu = case.hu.astype(np.float32)
    grid = coarse_grid(hu.shape, case.spacing)
    return pad_to_multiple(normalize(downsample(hu, grid)).astype(np.float32))[None, None]


def conv_macs(model_path: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """Multiply-adds of the Conv and of the ConvTranspose nodes for an input of ``shape``."""
    import onnx
    from onnx import numpy_helper, shape_inference

    m = onnx.load(model_path)
    for d, v in zip(m.graph.input[0].type.tensor_type.shape.dim, shape):
        d.ClearField("dim_param")
        d.dim_value = v
    m = shape_inference.infer_shapes(m)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(m.graph.value_info) + list(m.graph.output)}
    shapes[m.graph.input[0].name] = list(shape)
    weights = {i.name: numpy_helper.to_array(i).shape for i in m.graph.initializer}
    conv = transposed = 0.0
    for n in m.graph.node:
        if n.op_type == "Conv":
            conv += np.prod(shapes[n.output[0]][1:]) * np.prod(weights[n.input[1]][1:])
        elif n.op_type == "ConvTranspose":
            transposed += np.prod(shapes[n.input[0]][1:]) * np.prod(weights[n.input[1]][1:])
    return float(conv), float(transposed)


def session(path: str, threads: int | None = None, profile: str | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.enable_cpu_mem_arena = False
    if threads:
        opts.intra_op_num_threads = threads
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--seed", type=int, default=4242)
    args = parser.parse_args()
    path = verify_weights(args.weights)[0]["path"]
    x = benchmark_input(args.seed)
    macs, t_macs = conv_macs(path, x.shape)
    print(f"model input {tuple(x.shape)}; multiply-adds: Conv {macs / 1e9:.1f} G, ConvTranspose {t_macs / 1e9:.2f} G")

    sess = session(path, profile=str(Path(tempfile.mkdtemp()) / "prof"))
    name = sess.get_inputs()[0].name
    for _ in range(3):
        sess.run(None, {name: x})
    events = json.loads(Path(sess.end_profiling()).read_text())
    by_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"] / 3e6  # s per run
    total = sum(by_op.values())
    print(f"\nonnxruntime profile, one model (mean of 3 runs): {total:.3f} s in operators")
    for op, s in by_op.most_common():
        print(f"  {op:<16}{s * 1e3:8.1f} ms {100 * s / total:6.1f} %")
    print(f"  Conv runs at {2 * macs / by_op['Conv'] / 1e9:.0f} GFLOP/s")

    two, one, one_b = session(path, 2), session(path, 1), session(path, 1)

    def run(s: ort.InferenceSession) -> None:
        s.run(None, {name: x})

    for s in (two, one, one_b):
        run(s)
    t2, t1, tp = [], [], []
    for _ in range(3):
        t = time.perf_counter(); run(two); t2.append(time.perf_counter() - t)
        t = time.perf_counter(); run(one); t1.append(time.perf_counter() - t)
        with ThreadPoolExecutor(2) as ex:
            t = time.perf_counter(); list(ex.map(run, [one, one_b])); tp.append(time.perf_counter() - t)
    med = np.median
    print(f"\none model, 2 threads: {med(t2):.3f} s; 1 thread: {med(t1):.3f} s; "
          f"two 1-thread models at once: {med(tp):.3f} s ({med(tp) / 2:.3f} s per model)")


if __name__ == "__main__":
    main()
