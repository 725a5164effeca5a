"""Training data: cached preprocessed cases and augmented patches (private)."""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing as mp
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..datasets.layout import CATEGORY, I, ID, J, K, LABEL, POINTS_FILE, TRUTH_FILE, X_MM, Y_MM, Z_MM
from ..preprocess import downsample_labels, pad_to_multiple, preprocess

__all__ = ["Case", "save_case", "load_case", "phantom_cases", "phantom_case_id", "PhantomStream", "dataset_cases",
           "split_by_id",
           "negative_case", "PatchSampler", "BatchSampler", "pad_to_multiple"]


@dataclass
class Case:
    """A preprocessed case: coarse input in [0, 1] and coarse labels."""

    case_id: str
    x: np.ndarray
    y: np.ndarray
    meta: dict


def phantom_case_id(set_seed: int, i: int, variant: str = "default") -> str:
    """Id (and cache file stem) of case ``i`` of a phantom set: ``phantom[-<variant>]_<seed>_<i>``."""
    return f"phantom_{set_seed}_{i:04d}" if variant == "default" else f"phantom-{variant}_{set_seed}_{i:04d}"


def _phantom_case(args) -> Case:
    from ..phantom import case_seed, generate_phantom

    set_seed, i, cat, variant = args
    case = generate_phantom(case_seed(set_seed, i), category=cat, case_id=phantom_case_id(set_seed, i, variant),
                            variant=variant)
    x, grid = preprocess(case.hu.astype(np.float32), case.spacing)
    y = downsample_labels(case.labels, grid)
    meta = {"category": case.truth.category, "agatston": case.truth.agatston, **{
        k: case.meta[k] for k in ("faint_lesion", "mitral_annulus", "lookalikes")}}
    return Case(case.case_id, x, y, meta)


def save_case(case: Case, cache: Path) -> Path:
    """Write a case into a cache folder atomically (``<case_id>.npz``)."""
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{case.case_id}.tmp.npz"
    np.savez_compressed(tmp, x=case.x, y=case.y, meta=json.dumps(case.meta))
    return tmp.replace(cache / f"{case.case_id}.npz")


def load_case(path: Path) -> Case:
    """A case written by :func:`save_case`."""
    path = Path(path)
    with np.load(path) as z:
        return Case(path.stem, z["x"], z["y"], json.loads(str(z["meta"])))


def phantom_cases(set_seed: int, n: int, cache: Optional[Path] = None, workers: int = 2,
                  balanced: bool = True, deadline: Optional[float] = None, variant: str = "default") -> list[Case]:
    """``n`` phantoms of a set (balanced A-E), preprocessed; cached as .npz files.

    With ``deadline`` (a ``time.perf_counter()`` value), no new case is waited
    for once it has passed: the cases come in order, and the ones made so far
    (the first ``k <= n``) are returned. ``variant``: the generator
    (:func:`cacnet.phantom.generate_phantom`); its cases have their own ids
    (:func:`phantom_case_id`).
    """
    cats = ["ABCDE"[i % 5] if balanced else None for i in range(n)]
    todo, cases = [], [None] * n
    for i in range(n):
        path = cache / f"{phantom_case_id(set_seed, i, variant)}.npz" if cache else None
        if path is not None and path.exists():
            cases[i] = load_case(path)
        else:
            todo.append(i)
    if todo:
        args = [(set_seed, i, cats[i], variant) for i in todo]
        pool = mp.get_context("spawn").Pool(workers) if workers > 1 else None
        try:
            made = pool.imap(_phantom_case, args, chunksize=1) if pool else map(_phantom_case, args)
            for i, case in zip(todo, made):  # cached as they come: an interrupted run resumes
                cases[i] = case
                if cache is not None:
                    save_case(case, cache)
                if deadline is not None and time.perf_counter() > deadline:
                    break
        finally:
            if pool:  # every result asked for has come: nothing of use is stopped
                pool.terminate()
                pool.join()
    done = next((i for i, c in enumerate(cases) if c is None), n)
    return cases[:done]  # type: ignore[return-value]


class PhantomStream:
    """The phantoms of a set, made on CPU worker processes while training runs.

    The phantoms already in ``cache`` are :attr:`cached` at once (in order);
    the others are made in order by ``workers`` processes in a background
    thread, cached as they come, and handed out by :meth:`get`. Training can
    start on the first ones (``cac train --stream``).

    Examples
    --------
    >>> s = PhantomStream(7, 0, cache=None)
    >>> s.cached, s.pending, s.done
    ([], 0, True)
    """

    def __init__(self, set_seed: int, n: int, cache: Optional[Path], workers: int = 2, balanced: bool = True,
                 variant: str = "default"):
        self.cached: list[Case] = []
        todo = []
        for i in range(n):
            path = cache / f"{phantom_case_id(set_seed, i, variant)}.npz" if cache else None
            if path is not None and path.exists():
                self.cached.append(load_case(path))
            else:
                todo.append(i)
        #: Phantoms still to come.
        self.pending = len(todo)
        self.done = not todo
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._pool = None
        if todo:
            args = [(set_seed, i, "ABCDE"[i % 5] if balanced else None, variant) for i in todo]
            threading.Thread(target=self._produce, args=(args, cache, workers), daemon=True).start()

    def _produce(self, args: list, cache: Optional[Path], workers: int) -> None:
        try:
            self._pool = mp.get_context("spawn").Pool(max(1, workers))
            for case in self._pool.imap(_phantom_case, args, chunksize=1):  # in order: the same set every run
                if cache is not None:
                    save_case(case, cache)
                self._queue.put(case)
                if self._stop.is_set():
                    break
        except BaseException as exc:  # noqa: BLE001 - raised in the trainer by get()
            self._queue.put(exc)
        finally:
            if self._pool is not None:
                self._pool.terminate()
            self._queue.put(None)

    def get(self, block: bool = False, timeout: float = 1.0) -> list[Case]:
        """The phantoms made since the last call (waiting up to ``timeout`` s for one when ``block``)."""
        out: list[Case] = []
        while not self.done:
            try:
                item = self._queue.get(timeout=timeout) if block and not out else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self.done = True
            elif isinstance(item, BaseException):
                self.done = True
                raise item
            else:
                self.pending -= 1
                out.append(item)
        return out

    def close(self) -> None:
        """Stop making phantoms (the ones made are cached)."""
        self._stop.set()
        if self._pool is not None:
            self._pool.terminate()
        self.done = True


def dataset_cases(data_dir: Path) -> list[Case]:
    """A user data set: ``images/<id>.nii.gz`` with ``labels/<id>.nii.gz`` or ``points.csv``.

    ``points.csv`` has columns ``id, label`` and either ``x_mm, y_mm, z_mm``
    (LPS) or voxel indices ``k, j, i`` of the image file. Masks are built with
    :func:`agatston.mask_from_points` (the paper's rule). When ``truth.csv``
    (``id, category``) is present, the paper's consistency check runs: a case
    whose mask scores in another risk category than annotated is reported and
    left out (the paper reviewed such masks by hand).
    """
    import SimpleITK as sitk

    import agatston

    from ..io import read_scan

    data_dir = Path(data_dir)
    images = sorted(p for p in (data_dir / "images").glob("*.nii*") if not p.name.startswith("."))  # no temp files
    if not images:
        raise FileNotFoundError(f"no images/<id>.nii.gz found in {data_dir}")
    points: dict[str, list[dict]] = {}
    if (data_dir / POINTS_FILE).exists():
        with open(data_dir / POINTS_FILE, newline="") as fh:
            for row in csv.DictReader(fh):
                points.setdefault(row[ID], []).append(row)
    annotated = {}
    if (data_dir / TRUTH_FILE).exists():
        with open(data_dir / TRUTH_FILE, newline="") as fh:
            annotated = {r[ID]: r.get(CATEGORY, "").strip().upper() for r in csv.DictReader(fh)}
    out = []
    for path in images:
        case_id = path.name.split(".")[0]
        scan = read_scan(path)
        label_path = data_dir / "labels" / path.name
        if label_path.exists():
            lab_img = sitk.DICOMOrient(sitk.ReadImage(str(label_path)), "LPS")
            labels = sitk.GetArrayFromImage(lab_img).astype(np.uint8)
        elif case_id in points:
            pts = []
            for r in points[case_id]:
                if r.get(X_MM):
                    phys = (float(r[X_MM]), float(r[Y_MM]), float(r[Z_MM]))
                    i, j, k = scan.image.TransformPhysicalPointToIndex(phys)
                else:
                    phys = scan.source_image.TransformIndexToPhysicalPoint((int(r[I]), int(r[J]), int(r[K])))
                    i, j, k = scan.image.TransformPhysicalPointToIndex(phys)
                pts.append((k, j, i))
            res = agatston.mask_from_points(scan.hu, pts, labels=[int(r[LABEL]) for r in points[case_id]],
                                            spacing=scan.spacing)
            if res.missed:
                print(f"warning: {case_id}: {len(res.missed)} annotation point(s) found no voxel >= 130 HU")
            labels = res.mask.astype(np.uint8)
        else:
            print(f"warning: {case_id}: no labels/{path.name} and no points in points.csv; skipped")
            continue
        x, grid = preprocess(scan.hu, scan.spacing)
        y = downsample_labels(labels, grid)
        truth = agatston.score(scan.hu, scan.spacing, labels)
        if annotated.get(case_id) and annotated[case_id] != truth.category:
            print(f"warning: {case_id}: the mask scores {truth.agatston:.1f} ({truth.category}) but the case is "
                  f"annotated {annotated[case_id]}; left out, review its mask")
            continue
        out.append(Case(case_id, x, y, {"category": truth.category, "agatston": truth.agatston}))
    return out


def split_by_id(cases: list[Case], fraction: float) -> tuple[list[Case], list[Case]]:
    """Training and validation cases, split by case id: ``round(fraction * n)`` cases validate.

    Deterministic: the cases are ranked by the SHA-256 of their id and the
    first ones validate; at least one when ``fraction > 0`` and there are two
    cases or more, never all of them.

    Examples
    --------
    >>> cases = [Case(f"c{i}", np.zeros(1), np.zeros(1), {}) for i in range(5)]
    >>> train, val = split_by_id(cases, 0.2)
    >>> len(train), len(val), [c.case_id for c in val] == [c.case_id for c in split_by_id(cases[::-1], 0.2)[1]]
    (4, 1, True)
    """
    n = len(cases)
    n_val = min(n - 1, max(1, round(fraction * n))) if fraction > 0 and n >= 2 else 0
    ranked = sorted(cases, key=lambda c: hashlib.sha256(c.case_id.encode()).hexdigest())
    val_ids = {c.case_id for c in ranked[:n_val]}
    return [c for c in cases if c.case_id not in val_ids], [c for c in cases if c.case_id in val_ids]


def negative_case(path: Path, case_id: Optional[str] = None) -> Case:
    """A real scan without coronary calcium, preprocessed, every label background (a hard negative).

    Every voxel >= 130 HU of such a scan (bone, cartilage, aortic wall,
    couch, noise, kernel overshoot) is something the models must not call
    coronary calcium.
    """
    from ..io import read_scan

    scan = read_scan(path)
    x, _ = preprocess(scan.hu, scan.spacing)
    return Case(case_id or scan.id, x, np.zeros(x.shape, np.uint8),
                {"category": "A", "agatston": 0.0, "negative": True, "source": str(path)})


@dataclass
class PatchDraw:
    """The random choices behind one augmented patch."""

    case: int
    center: np.ndarray  # (z, y, x) voxel the patch centre maps to
    matrix: np.ndarray  # 3 x 3: in-plane rotation and scaling, patch voxel offsets -> case voxel offsets
    noise_sd: float
    gain: float
    offset: float


def draw_patch(rng: np.random.Generator, shapes, fg: list[np.ndarray], patch) -> PatchDraw:
    """Draw one patch's augmentation (shared by :class:`PatchSampler` and :class:`BatchSampler`).

    Two thirds of the patches are centred near a calcium voxel. Their centre
    is shifted by half a voxel along each axis where the patch size is even,
    so that without rotation and scaling (always so along z) patch voxels land
    on voxel centres: the image is then not interpolated half-way between two
    slices while the label comes from one of them.
    """
    i = int(rng.integers(len(shapes)))
    shape = np.asarray(shapes[i])
    if len(fg[i]) and rng.random() < 0.67:
        center = fg[i][rng.integers(len(fg[i]))] + rng.integers(-12, 13, size=3) + (np.asarray(patch) - 1) / 2 % 1
    else:
        center = rng.uniform(0, 1, size=3) * shape
    ang = np.deg2rad(rng.uniform(-10, 10))
    scale = rng.uniform(0.9, 1.1)
    rot = np.array([[1, 0, 0], [0, np.cos(ang), -np.sin(ang)], [0, np.sin(ang), np.cos(ang)]])
    return PatchDraw(i, center.astype(np.float64), rot * np.array([1, scale, scale])[None, :],
                     rng.uniform(0, 0.01), rng.uniform(0.95, 1.05), rng.uniform(-15, 15) / 1100)


class _RandomStreams:
    """A sampler's random streams: numpy ``rng`` for the draws, torch ``gen`` on the device for the noise.

    Both are seeded with ``seed`` and saved in checkpoints (:meth:`state`).
    """

    def _seed(self, seed: int, device) -> None:
        import torch

        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed)

    def state(self) -> dict:
        """Random states, for checkpoints."""
        return {"rng": self.rng.bit_generator.state, "gen": self.gen.get_state()}

    def set_state(self, state: dict) -> None:
        """Restore what :meth:`state` returned."""
        self.rng.bit_generator.state = state["rng"]
        self.gen.set_state(state["gen"].cpu())


class PatchSampler(_RandomStreams):
    """Random, augmented (z, y, x) patches from cases, cut on ``device``.

    Augmentation that suits CT: in-plane rotation (+-10 deg) and scaling
    (0.9-1.1), HU offset (+-15 HU) and contrast (+-5 %), a little noise. No
    flips: the heart sits on the left and the arteries' labels depend on it.
    Two thirds of the patches are centred near calcium (see :func:`draw_patch`).

    The cases live on ``device`` and patches are resampled there
    (``grid_sample``: trilinear for the image, nearest for the labels, zeros
    outside), so a GPU is not starved by CPU-side augmentation. The random
    choices come from ``rng`` (numpy) and the noise from a torch generator on
    the device; both states are saved in checkpoints (:meth:`state`).
    """

    def __init__(self, cases: list[Case], patch=(48, 64, 64), seed: int = 0, device="cpu"):
        import torch

        self.cases = cases
        self.patch = np.array(patch)
        self.device = torch.device(device)
        self._seed(seed, self.device)
        self.fg = [np.argwhere(c.y > 0) for c in cases]
        self.shapes = [c.x.shape for c in cases]
        self.x = [torch.from_numpy(np.ascontiguousarray(c.x, dtype=np.float32)).to(self.device) for c in cases]
        self.y = [torch.from_numpy(np.ascontiguousarray(c.y, dtype=np.uint8)).to(self.device) for c in cases]
        grid = np.indices(self.patch, dtype=np.float64).reshape(3, -1) - (self.patch[:, None] - 1) / 2
        self._grid = grid

    def sample(self):
        """One patch as torch tensors on the device: image (1, *patch) float32, labels (*patch) int64."""
        import torch
        import torch.nn.functional as F

        d = draw_patch(self.rng, self.shapes, self.fg, self.patch)
        i, shape = d.case, np.array(self.cases[d.case].x.shape)
        coords = d.matrix @ self._grid + d.center[:, None]  # voxel (z, y, x) of every patch voxel
        norm = 2 * coords / np.maximum(shape[:, None] - 1, 1) - 1  # align_corners=True
        grid = torch.from_numpy(norm[::-1].T.reshape(1, *self.patch, 3).astype(np.float32)).to(self.device)
        x = F.grid_sample(self.x[i][None, None], grid, mode="bilinear", padding_mode="zeros",
                          align_corners=True)[0]
        y = F.grid_sample(self.y[i][None, None].float(), grid, mode="nearest", padding_mode="zeros",
                          align_corners=True)[0, 0]
        noise = torch.randn(x.shape, generator=self.gen, device=self.device) * d.noise_sd
        x = x * d.gain + d.offset + noise
        return x, y.round().long()

    def batch(self, n: int):
        """``n`` patches: image (n, 1, *patch) and labels (n, *patch), torch tensors on the device."""
        import torch

        xs, ys = zip(*(self.sample() for _ in range(n)))
        return torch.stack(xs), torch.stack(ys)


#: Default buffer size of :class:`BatchSampler` (the 320 training and validation phantoms reach 70 x 102 x 102).
MAX_SHAPE = (80, 112, 112)


class BatchSampler:
    """:class:`PatchSampler`'s augmented patches, a whole batch cut at once on ``device``.

    All cases sit in one zero-padded tensor of ``max_shape`` (so a batch is
    one gather, one batched affine grid and one ``grid_sample``), and cases
    can be added while training runs (:meth:`add`). The random choices come
    from the ``rng`` and torch ``gen`` passed to :meth:`batch`, in the order
    :meth:`PatchSampler.sample` draws them, so several models can share the
    cases with their own random streams (:func:`cacnet.train.train_models`
    steps several models over the same samplers). It runs on a CPU too. Padding with zeros is what
    :class:`PatchSampler` does outside a case, so the patches are the same
    (up to float32 rounding of the coordinates).

    Examples
    --------
    >>> import numpy as np, torch
    >>> s = BatchSampler(capacity=1, patch=(8, 16, 16), device="cpu", max_shape=(16, 32, 32))
    >>> s.add(Case("c", np.zeros((16, 32, 32), np.float32), np.zeros((16, 32, 32), np.uint8), {}))
    True
    >>> x, y = s.batch(2, np.random.default_rng(0), torch.Generator().manual_seed(0))
    >>> tuple(x.shape), tuple(y.shape)
    ((2, 1, 8, 16, 16), (2, 8, 16, 16))
    """

    def __init__(self, capacity: int, patch, device, max_shape=MAX_SHAPE):
        import torch

        self.patch = np.array(patch)
        self.device = device
        self.max_shape = np.array(max_shape)
        self.x = torch.zeros((capacity, 1, *max_shape), dtype=torch.float32, device=device)
        self.y = torch.zeros((capacity, 1, *max_shape), dtype=torch.uint8, device=device)
        self.shapes: list[np.ndarray] = []
        self.fg: list[np.ndarray] = []
        self.ids: list[str] = []
        grid = np.indices(self.patch, dtype=np.float64).reshape(3, -1) - (self.patch[:, None] - 1) / 2
        self.base = torch.from_numpy(grid.astype(np.float32)).to(device)
        self.scale = torch.from_numpy((2.0 / (self.max_shape - 1)).astype(np.float32)).to(device)

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, case, focus: Optional[np.ndarray] = None) -> bool:
        """Put a case in the next free slot; False when it is larger than the buffer.

        ``focus`` ((n, 3) voxel indices) replaces the calcium voxels as the
        places two thirds of the patches are centred near: for a case without
        calcium (a hard negative), e.g. its candidate voxels (>= 130 HU).
        """
        import torch

        shape = np.array(case.x.shape)
        if np.any(shape > self.max_shape) or len(self.ids) >= self.x.shape[0]:
            return False
        i = len(self.ids)
        sl = (i, 0) + tuple(slice(0, n) for n in shape)
        self.x[sl] = torch.from_numpy(np.ascontiguousarray(case.x, dtype=np.float32)).to(self.device)
        self.y[sl] = torch.from_numpy(np.ascontiguousarray(case.y, dtype=np.uint8)).to(self.device)
        self.shapes.append(shape)
        self.fg.append(np.argwhere(case.y > 0) if focus is None else np.asarray(focus))
        self.ids.append(case.case_id)
        return True

    def batch(self, n: int, rng: np.random.Generator, gen):
        """``n`` patches: image (n, 1, *patch) float32 and labels (n, *patch) int64, on the device."""
        import torch
        import torch.nn.functional as F

        draws = [draw_patch(rng, self.shapes, self.fg, self.patch) for _ in range(n)]
        idx = [d.case for d in draws]
        mats, centers = [d.matrix for d in draws], [d.center for d in draws]
        sds, gains, offsets = [d.noise_sd for d in draws], [d.gain for d in draws], [d.offset for d in draws]
        dev = self.device
        mat = torch.tensor(np.array(mats), dtype=torch.float32, device=dev)
        ctr = torch.tensor(np.array(centers), dtype=torch.float32, device=dev)
        coords = mat @ self.base + ctr[:, :, None]  # (n, 3, points): voxel (z, y, x) in the buffer
        norm = coords * self.scale[None, :, None] - 1  # align_corners=True on the padded buffer
        grid = norm.flip(1).transpose(1, 2).reshape(n, *self.patch, 3)
        ii = torch.tensor(idx, device=dev)
        x = F.grid_sample(self.x[ii], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        y = F.grid_sample(self.y[ii].float(), grid, mode="nearest", padding_mode="zeros", align_corners=True)
        shape = (n, 1, 1, 1, 1)
        sd = torch.tensor(sds, dtype=torch.float32, device=dev).view(shape)
        noise = torch.randn(x.shape, generator=gen, device=dev) * sd
        x = x * torch.tensor(gains, dtype=torch.float32, device=dev).view(shape) \
            + torch.tensor(offsets, dtype=torch.float32, device=dev).view(shape) + noise
        return x, y[:, 0].round().long()
