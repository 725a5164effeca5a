"""Measure :func:`cacnet.anatomy.anatomical_map` against every independent reference we have.

The map (heart, pericardial sac, lungs, body on the triage's smoothed grid) is
built from the image alone. Here it is checked against:

1. **TotalSegmentator labels** of LIDC-IDRI-0001 (``shared/data/real-ct/lidc-idri-0001``;
   heart = 51, aorta = 52, ``cacnet.phantom.decontrast``): Dice of the map's heart
   (fine mask) with the labelled heart, the share of the labelled heart outside
   the sac, and the share of the labelled aorta inside the sac (split per
   axial slice into the ascending aorta and root, the descending aorta and the
   arch). The scan is contrast-enhanced, and the map is meant for non-contrast
   scans, so it is measured both as it is and de-contrasted
   (:func:`cacnet.phantom.decontrast.decontrast_scan`). The map's aorta tubes (``fine_mask("asc_aorta")``,
   ``fine_mask("desc_aorta")``) against the labelled ascending aorta and root and the descending aorta:
   Dice over the whole scan, over the tube's slices and over the slices both have, their z ranges, the
   share of each labelled part inside its tube and of each tube inside the labelled aorta, and the
   estimated root's slice next to the labelled ascending aorta's lowest slice.
2. **Traced anatomy** of the real backgrounds (``src/cacnet/train/anatomy/*.json``;
   every scan a tracing is valid for): the share of traced coronary points (LM,
   LAD, LCX, RCA) inside the sac (``outside_reason`` is None; must be 100 %),
   their distance to the heart's surface, and the share of traced aortic wall,
   aortic valve plane and mitral annulus points inside the sac. LIDC-IDRI-0001
   is de-contrasted first (its tracing's ``decontrast`` key). Also the volume of
   >= 130 HU voxels inside the sac (none of these scans has coronary calcium
   that we could see: what the sac holds there is bone, aortic calcium or devices). The aorta: whether
   each tube was found, the distance of the traced aortic root and ascending aorta wall points to the
   ascending tube's surface (median, max, share within 5 and 10 mm), and the traced aortic valve plane's
   mean height above the estimated root (``root_dz_mm``).
3. **Phantoms' exact anatomy**: ``--phantoms`` cases of each generator
   (``generate_phantom(case_seed(8100, i), category="ABCDE"[i % 5], variant=...)``):
   the share of truth coronary calcium voxels inside the sac (fine mask; should
   be 100 %), of the other >= 130 HU voxels (bone, look-alikes), and of each
   look-alike kind's voxels; how often each aorta tube was found, and how close the aortic wall (and
   root) look-alike voxels lie to the nearer tube's surface.
4. **The QRM phantom scan** (``shared/data/qrm-canon-large-rep1``, a thorax
   phantom with a calcium insert, no heart): the sac's volume, and whether the
   calibration rod (slices 31-36, centre row 218, col 258, 20 mm) and the insert
   cylinders (slices 19-25) lie inside it.
5. **Speed**: median of 5 runs of :func:`cacnet.triage.triage`, of
   :func:`cacnet.anatomy.anatomical_map` and of the first use of its aortas
   (found lazily), separately, on a 512 x 512 x ~60 phantom and on every real
   scan (this machine, whatever else runs on it).

Run:  python -m experiments.anatomy_map [--data ../shared/data] [--phantoms 20] [--out docs/anatomy/map_results.json]
Prints markdown tables and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import types
from pathlib import Path

import numpy as np
from scipy import ndimage

from experiments._common import ROOT
TRACINGS = ROOT / "src" / "cacnet" / "train" / "anatomy"
CORONARY = ("LM", "LAD", "LCX", "RCA")
AORTIC_WALL = ("aortic_root_wall", "ascending_aorta_wall")
#: Non-contrast real scans (path under real-ct) without a tracing of their own folder name.
QRM = "qrm-canon-large-rep1"
QRM_ROD = {"slices": (31, 36), "row": 218, "col": 258, "radius_mm": 10.0}
QRM_INSERTS = {"large_HD": (220, 180), "medium_HD": (220, 205), "small_HD": (220, 230), "large_MD": (150, 291),
               "medium_MD": (173, 280), "large_LD": (281, 298), "medium_LD": (260, 285)}
QRM_INSERT_SLICES = (19, 25)


def _median_time(fn, n: int = 5) -> tuple[float, object]:
    out, times = None, []
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def build(scan, timed: bool = False) -> dict:
    """Triage and map ``scan``; with ``timed``, medians of 5 runs of each (s)."""
    from cacnet.anatomy import anatomical_map
    from cacnet.triage import triage

    def aortas(m) -> float:  # the aortas are found on first use of the map's asc_aorta / desc_aorta
        t = time.perf_counter()
        m.asc_aorta, m.desc_aorta
        return time.perf_counter() - t

    if timed:
        t_tri, tri = _median_time(lambda: triage(scan))
        t_map, amap = _median_time(lambda: anatomical_map(tri))
        t_aorta = statistics.median([aortas(anatomical_map(tri)) for _ in range(4)] + [aortas(amap)])
    else:
        t = time.perf_counter()
        tri = triage(scan)
        t_tri = time.perf_counter() - t
        t = time.perf_counter()
        amap = anatomical_map(tri)
        t_map = time.perf_counter() - t
        t_aorta = aortas(amap)
    return {"triage": tri, "map": amap, "triage_s": t_tri, "map_s": t_map, "aortas_s": t_aorta}


def _pct(num, den) -> float | None:
    return None if not den else round(100.0 * float(num) / float(den), 1)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return round(2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0), 3)


def _aorta_found(amap) -> dict[str, bool]:
    """Whether the map found the ascending and the descending aorta (found on first use)."""
    return {"ascending_aorta_found": bool(amap.asc_aorta.found), "descending_aorta_found": bool(amap.desc_aorta.found)}


def _map_info(amap, scan) -> dict:
    vox_ml = float(np.prod(scan.spacing)) / 1000.0
    sac = amap.fine_mask("sac", scan.hu.shape)
    dense = np.asarray(scan.hu) >= 130
    return {**amap.summary(), **_aorta_found(amap), "found": amap.found, "block": list(amap.block),
            "cell_mm": [round(c, 2) for c in amap.cell_mm],
            "dense_in_sac_ml": round(float((dense & sac).sum()) * vox_ml, 2)}


# -- 1. TotalSegmentator --------------------------------------------------------------

def _split_aorta(aorta: np.ndarray) -> dict[str, np.ndarray]:
    """Per axial slice: with two pieces, the front one is the ascending aorta/root, the others descending;
    one piece below the lowest two-piece slice is the descending aorta, above the highest the arch."""
    asc, desc, arch = (np.zeros_like(aorta) for _ in range(3))
    two = []
    labs = []
    for z in range(aorta.shape[0]):
        lab, n = ndimage.label(aorta[z])
        labs.append((lab, n))
        if n >= 2:
            two.append(z)
    lo, hi = (min(two), max(two)) if two else (aorta.shape[0], -1)
    for z, (lab, n) in enumerate(labs):
        if n == 0:
            continue
        sizes = ndimage.sum(np.ones_like(lab), lab, range(1, n + 1))
        rows = [c[0] for c in ndimage.center_of_mass(aorta[z], lab, range(1, n + 1))]
        if n >= 2:
            big = [i for i in np.argsort(-sizes)[:2]]
            front = min(big, key=lambda i: rows[i]) + 1
            asc[z] = lab == front
            desc[z] = (lab > 0) & (lab != front)
        elif z < lo:
            desc[z] = lab > 0
        else:
            arch[z] = lab > 0
    return {"ascending_and_root": asc, "descending": desc, "arch_and_above": arch}


#: TotalSegmentator (v1) ids grouped for the map's contents (structures.csv).
TS_GROUPS = {"heart": (51,), "pulmonary veins, left atrial appendage": (53, 61), "venae cavae": (62, 63),
             "liver": (5,), "stomach": (6,), "oesophagus": (15,), "lungs": tuple(range(10, 15)),
             "vertebrae": tuple(range(25, 51)), "ribs": tuple(range(92, 116)), "sternum": (116,),
             "costal cartilages": (118,), "spinal cord": (79,), "back muscles": (86, 87)}


def _contents(labels: np.ndarray, where: np.ndarray, aorta_parts: dict, vox_ml: float) -> dict[str, float]:
    """Volume (mL) of each labelled structure (:data:`TS_GROUPS`, the aorta's parts) inside ``where``;
    'unlabelled' is the rest (fat, muscle, pericardium, vessels the label map does not hold)."""
    lab = labels[where]
    out = {}
    for name, ids in TS_GROUPS.items():
        out[name] = round(float(np.isin(lab, ids).sum()) * vox_ml, 1)
    for part, m in aorta_parts.items():
        out[f"aorta, {part.replace('_', ' ')}"] = round(float((m & where).sum()) * vox_ml, 1)
    known = set(i for ids in TS_GROUPS.values() for i in ids) | {52}
    out["other labels"] = round(float(((lab > 0) & ~np.isin(lab, list(known))).sum()) * vox_ml, 1)
    out["unlabelled"] = round(float((lab == 0).sum()) * vox_ml, 1)
    return {k: v for k, v in out.items() if v > 0}


def _zrange(m: np.ndarray) -> list[int] | None:
    """First and last axial slice (fine index) where ``m`` has a voxel, or None."""
    zs = np.flatnonzero(m.any(axis=(1, 2)))
    return [int(zs[0]), int(zs[-1])] if zs.size else None


def _root_slice(amap) -> float | None:
    """The fine slice index (continuous) of the estimated aortic root, or None when not found."""
    if not np.isfinite(amap.root_z_mm):
        return None
    c = amap.root_z_mm / amap.cell_mm[0]
    return round(float((c + 0.5) * amap.block[0] - 0.5), 1)


def _aorta_vs_ts(amap, shape, aorta: np.ndarray, parts: dict) -> dict:
    """The map's ascending / descending aorta tubes against TotalSegmentator's aorta (label 52, split per slice).

    Per tube: Dice with its TS part over the whole scan, over the tube's slices only (the TS part on the
    slices the tube does not reach is left out: accuracy where it was followed) and over the slices both
    have; the z ranges of both (coverage); the share of the TS part inside the tube and of the tube
    inside the TS aorta (all parts).
    """
    out = {"root_slice_est": _root_slice(amap),
           "ts_ascending_lowest_slice": (_zrange(parts["ascending_and_root"]) or [None])[0]}
    for key, part in (("asc", "ascending_and_root"), ("desc", "descending")):
        tube = amap.fine_mask(f"{key}_aorta", shape)
        ts = parts[part]
        tz, pz = tube.any(axis=(1, 2)), ts.any(axis=(1, 2))
        both = tz & pz
        out[key] = {"found": bool(tube.any()), "tube_z": _zrange(tube), "ts_z": _zrange(ts),
                    "tube_slices": int(tz.sum()), "ts_slices": int(pz.sum()), "common_slices": int(both.sum()),
                    "dice": _dice(tube, ts),
                    "dice_tube_slices": _dice(tube[tz], ts[tz]) if tz.any() else None,
                    "dice_common_slices": _dice(tube[both], ts[both]) if both.any() else None,
                    "ts_part_in_tube_pct": _pct((ts & tube).sum(), ts.sum()),
                    "ts_part_in_tube_common_slices_pct": (_pct((ts[both] & tube[both]).sum(), ts[both].sum())
                                                          if both.any() else None),
                    "tube_in_ts_aorta_pct": _pct((tube & aorta).sum(), tube.sum()),
                    "tube_in_ts_part_pct": _pct((tube & ts).sum(), tube.sum())}
    return out


def totalsegmentator(data: Path, timing: dict) -> list[dict]:
    from cacnet.io import read_scan
    from cacnet.phantom.decontrast import HEART_LABEL, decontrast_scan, read_mask

    folder = data / "real-ct" / "lidc-idri-0001"
    scan = read_scan(folder / "ct.nii.gz")
    mask_path = folder / "totalsegmentator_mask.nii.gz"
    labels = read_mask(mask_path, scan.image)
    heart, aorta = labels == HEART_LABEL, labels == HEART_LABEL + 1  # 52: aorta (structures.csv)
    parts = _split_aorta(aorta)
    vox_ml = float(np.prod(scan.spacing)) / 1000.0
    rows = []
    t = time.perf_counter()
    dec = decontrast_scan(scan, mask_path)
    t_dec = time.perf_counter() - t
    for name, s in (("contrast (as acquired)", scan), ("de-contrasted", dec)):
        b = build(s, timed=True)
        timing[f"lidc-idri-0001 {name}"] = {"shape": list(s.hu.shape), "triage_s": round(b["triage_s"], 3),
                                             "map_s": round(b["map_s"], 3), "aortas_s": round(b["aortas_s"], 3)}
        amap = b["map"]
        hm, sm = amap.fine_mask("heart", s.hu.shape), amap.fine_mask("sac", s.hu.shape)
        out_z = (heart & ~sm).sum(axis=(1, 2))
        row = {"scan": f"lidc-idri-0001, {name}", **_map_info(amap, s),
               "blood_pool_hu": b["triage"].checks.get("contrast", {}).get("blood_pool_hu"),
               "ts_heart_ml": round(float(heart.sum()) * vox_ml, 1),
               "heart_dice": _dice(hm, heart),
               "map_heart_in_ts_heart_pct": _pct((hm & heart).sum(), hm.sum()),
               "ts_heart_outside_sac_pct": _pct((heart & ~sm).sum(), heart.sum()),
               "ts_heart_outside_sac_slices": [int(z) for z in np.flatnonzero(out_z > 0.05 * max(heart.sum((1, 2)).max(), 1))],
               "ts_heart_z": [int(np.flatnonzero(heart.any((1, 2)))[[0, -1]][i]) for i in (0, 1)],
               "sac_z": ([int(z) for z in np.flatnonzero(sm.any((1, 2)))[[0, -1]]] if sm.any() else None),
               "ts_aorta_in_sac_pct": _pct((aorta & sm).sum(), aorta.sum())}
        for part, m in parts.items():
            row[f"ts_aorta_{part}_in_sac_pct"] = _pct((m & sm).sum(), m.sum())
        px_cm2 = scan.spacing[1] * scan.spacing[2] / 100.0
        zs = np.flatnonzero((heart | hm | sm).any(axis=(1, 2)))
        row["per_slice_cm2"] = [  # z: TS heart, map heart, both, TS liver in the map heart, TS heart outside the sac
            [int(z), *(round(float(m.sum()) * px_cm2, 1) for m in (heart[z], hm[z], heart[z] & hm[z],
                                                                   (labels[z] == 5) & hm[z], heart[z] & ~sm[z]))]
            for z in zs]
        row["heart_contents_ml"] = _contents(labels, hm, parts, vox_ml)
        row["sac_contents_ml"] = _contents(labels, sm, parts, vox_ml)
        row["aorta"] = _aorta_vs_ts(amap, s.hu.shape, aorta, parts)
        rows.append(row)
    timing["lidc-idri-0001 decontrast_scan (once)"] = {"seconds": round(t_dec, 2)}
    return rows


# -- 2. tracings ------------------------------------------------------------------------

def tracings(data: Path, timing: dict) -> list[dict]:
    from cacnet.io import read_scan
    from cacnet.phantom.decontrast import decontrast_scan
    from cacnet.phantom.insertion import decontrast_mask_of, load_tracing

    rows = []
    for path in sorted(TRACINGS.glob("*.json")):
        tracing = load_tracing(path)
        structures = tracing.get("structures", tracing)
        for rel in [tracing["scan"], *tracing.get("also_valid_for", [])]:
            scan_path = data / "real-ct" / rel
            if not scan_path.exists():
                print(f"{path.name}: {scan_path} not found; skipped")
                continue
            scan = read_scan(scan_path)
            mask = decontrast_mask_of(tracing, scan_path, str(path))
            if mask is not None:
                scan = decontrast_scan(scan, mask)
            label = rel + (" (de-contrasted)" if mask is not None else "")
            b = build(scan, timed=mask is None)
            if mask is None:
                timing[rel] = {"shape": list(scan.hu.shape), "triage_s": round(b["triage_s"], 3),
                               "map_s": round(b["map_s"], 3), "aortas_s": round(b["aortas_s"], 3)}
            amap = b["map"]
            row = {"tracing": tracing["name"], "scan": label, **_map_info(amap, scan)}
            per = {}
            for group, names in (("coronary", CORONARY), ("aortic_wall", AORTIC_WALL),
                                 ("aortic_valve_plane", ("aortic_valve_plane",)),
                                 ("mitral_annulus", ("mitral_annulus",))):
                pts = [(n, p) for n in names if n in structures for p in _points(structures[n])]
                if not pts:
                    continue
                idx = np.array([scan.image.TransformPhysicalPointToContinuousIndex(p)
                                for _, p in pts])  # (i, j, k) = (x, y, z) on the canonical grid
                feats = amap.at(idx[:, 2], idx[:, 1], idx[:, 0])
                inside = np.array([r is None for r in amap.outside_reason(feats)])
                per[group] = {"n": len(pts), "inside_pct": _pct(inside.sum(), len(pts)),
                              "heart_sdist_mm": [round(float(feats[:, 0].min()), 1),
                                                 round(float(feats[:, 0].max()), 1)],
                              "sac_sdist_max_mm": round(float(feats[:, 1].max()), 1),
                              "z": [round(float(idx[:, 2].min()), 1), round(float(idx[:, 2].max()), 1)]}
                aorta_m = amap.aorta_at(idx[:, 2], idx[:, 1], idx[:, 0])
                if group == "aortic_wall" and amap.asc_aorta.found:
                    d = np.abs(aorta_m[:, 0])
                    per[group]["asc_sdist_abs_mm"] = {
                        "median": round(float(np.median(d)), 1), "max": round(float(d.max()), 1),
                        "within_5mm_pct": _pct((d <= 5).sum(), len(d)),
                        "within_10mm_pct": _pct((d <= 10).sum(), len(d))}
                    for n in AORTIC_WALL:  # per structure (root rings, ascending rings)
                        sel = np.array([q == n for q, _ in pts])
                        if sel.any():
                            per[group][f"{n}_asc_sdist_abs_median_mm"] = round(float(np.median(d[sel])), 1)
                if group == "aortic_valve_plane" and np.isfinite(amap.root_z_mm):
                    per[group]["valve_minus_root_mm"] = round(float(aorta_m[:, 2].mean()), 1)
                if group == "coronary":
                    per[group]["outside"] = [
                        {"vessel": n, "point": i, "index_xyz": [round(float(v), 1) for v in idx[j]],
                         "heart_sdist_mm": round(float(feats[j, 0]), 1), "sac_sdist_mm": round(float(feats[j, 1]), 1)}
                        for j, (n, i) in enumerate(_numbered(pts)) if not inside[j]]
            row["points"] = per
            row["aorta"] = {"root_slice_est": _root_slice(amap),
                            **{f"{k}_tube_z": _zrange(amap.fine_mask(f"{k}_aorta", scan.hu.shape))
                               for k in ("asc", "desc")}}
            rows.append(row)
    return rows


def _points(value) -> list[list[float]]:
    """A structure's LPS points (a polyline, or rings of points) as a flat list of [x, y, z]."""
    if len(value) and not isinstance(value[0], (list, tuple)):
        return [[float(c) for c in value]]
    return [p for v in value for p in _points(v)]


def _numbered(pts) -> list[tuple[str, int]]:
    """(structure, point number within it) of each of ``pts`` ((name, point) pairs)."""
    out, count = [], {}
    for n, _ in pts:
        out.append((n, count.get(n, 0)))
        count[n] = count.get(n, 0) + 1
    return out


# -- 3. phantoms ---------------------------------------------------------------------

def phantoms(n: int, timing: dict) -> list[dict]:
    from cacnet.phantom import LOOKALIKES, case_seed, generate_phantom
    from cacnet.phantom._varied import VARIED_LOOKALIKES

    names = {v: k for k, v in LOOKALIKES.items()}
    varied_names = {}
    for k, v in VARIED_LOOKALIKES.items():
        varied_names.setdefault(v, []).append(k)
    out = []
    timed = False
    for variant in ("default", "varied"):
        cases = []
        wall_d: list[np.ndarray] = []  # per case: distance (mm) of aortic-wall look-alike voxels to the nearer tube
        for i in range(n):
            case = generate_phantom(case_seed(8100, i), category="ABCDE"[i % 5], variant=variant)
            scan = types.SimpleNamespace(hu=case.hu, spacing=case.spacing, meta={})
            want_time = (not timed and variant == "default" and case.hu.shape[1:] == (512, 512)
                         and abs(case.hu.shape[0] - 60) <= 5)
            b = build(scan, timed=want_time)
            if want_time:
                timed = True
                timing[f"phantom default {case_seed(8100, i)}"] = {
                    "shape": list(case.hu.shape), "triage_s": round(b["triage_s"], 3), "map_s": round(b["map_s"], 3),
                    "aortas_s": round(b["aortas_s"], 3)}
            amap = b["map"]
            sac = amap.fine_mask("sac", case.hu.shape)
            heart = amap.fine_mask("heart", case.hu.shape)
            cor = case.labels > 0
            other = (np.asarray(case.hu) >= 130) & ~cor
            rec = {"index": i, "seed": case_seed(8100, i), "category": "ABCDE"[i % 5], "shape": list(case.hu.shape),
                   "triage_heart": b["triage"].checks["heart"]["verdict"],
                   "triage_heart_ml": b["triage"].checks["heart"]["volume_ml"],
                   "spacing": [round(s, 3) for s in case.spacing], "found": amap.found, **amap.summary(),
                   **_aorta_found(amap),
                   "coronary_vox": int(cor.sum()), "coronary_in_sac": int((cor & sac).sum()),
                   "coronary_in_heart": int((cor & heart).sum()),
                   "other_dense_vox": int(other.sum()), "other_dense_in_sac": int((other & sac).sum()),
                   "lookalikes": {}}
            if cor.any():
                f = amap.at(*np.nonzero(cor))
                rec["coronary_heart_sdist_mm"] = [round(float(f[:, 0].min()), 1), round(float(f[:, 0].max()), 1)]
                rec["coronary_sac_sdist_max_mm"] = round(float(f[:, 1].max()), 1)
            if case.lookalike_voxels is not None and len(case.lookalike_voxels[0]):
                idx, kind = case.lookalike_voxels
                idx = np.asarray(idx)
                ins = sac[idx[:, 0], idx[:, 1], idx[:, 2]]
                for k in np.unique(kind):
                    name = names.get(int(k), str(k)) if variant == "default" else "/".join(varied_names.get(int(k), [str(k)]))
                    sel = kind == k
                    rec["lookalikes"][name] = [int(sel.sum()), int((ins & sel).sum())]
                    if "aortic_wall" in name or "aortic_root" in name:
                        f = amap.aorta_at(idx[sel, 0], idx[sel, 1], idx[sel, 2])
                        d = np.minimum(np.abs(f[:, 0]), np.abs(f[:, 1]))
                        wall_d.append(d)
                        rec["aortic_wall_lookalike"] = {"n": int(sel.sum()), "within_5mm": int((d <= 5).sum()),
                                                        "median_mm": round(float(np.median(d)), 1)}
            cases.append(rec)
            print(f"  phantom {variant} {i}: coronary in sac {rec['coronary_in_sac']}/{rec['coronary_vox']}, "
                  f"heart {rec['heart_ml']} mL, sac {rec['sac_ml']} mL, aorta asc/desc "
                  f"{int(rec['ascending_aorta_found'])}/{int(rec['descending_aorta_found'])}", flush=True)
        tot = lambda key: sum(c[key] for c in cases)  # noqa: E731
        look: dict[str, list[int]] = {}
        for c in cases:
            for k, (a, b_) in c["lookalikes"].items():
                look.setdefault(k, [0, 0])
                look[k][0] += a
                look[k][1] += b_
        with_cor = [c for c in cases if c["coronary_vox"]]
        ok = [c for c in with_cor if c["triage_heart"] == "ok"]
        out.append({"variant": variant, "n": len(cases), "found": sum(c["found"] for c in cases),
                    "coronary_in_sac_pct": _pct(tot("coronary_in_sac"), tot("coronary_vox")),
                    "coronary_in_heart_pct": _pct(tot("coronary_in_heart"), tot("coronary_vox")),
                    "cases_all_coronary_in_sac": sum(c["coronary_in_sac"] == c["coronary_vox"] for c in with_cor),
                    "cases_with_coronary": len(with_cor),
                    "triage_heart_ok": sum(c["triage_heart"] == "ok" for c in cases),
                    "coronary_in_sac_pct_heart_ok": _pct(sum(c["coronary_in_sac"] for c in ok),
                                                         sum(c["coronary_vox"] for c in ok)),
                    "worst_case_coronary_in_sac_pct": min((_pct(c["coronary_in_sac"], c["coronary_vox"]) for c in with_cor),
                                                          default=None),
                    "other_dense_in_sac_pct": _pct(tot("other_dense_in_sac"), tot("other_dense_vox")),
                    "lookalikes_in_sac_pct": {k: _pct(v[1], v[0]) for k, v in sorted(look.items())},
                    "ascending_aorta_found": sum(c["ascending_aorta_found"] for c in cases),
                    "descending_aorta_found": sum(c["descending_aorta_found"] for c in cases),
                    "cases_with_aortic_wall_lookalike": len(wall_d),
                    "aortic_wall_lookalike_within_5mm_pct": (_pct(sum((d <= 5).sum() for d in wall_d),
                                                                  sum(d.size for d in wall_d)) if wall_d else None),
                    "aortic_wall_lookalike_median_mm": (round(float(np.median(np.concatenate(wall_d))), 1)
                                                        if wall_d else None),
                    "heart_ml_median": statistics.median(c["heart_ml"] for c in cases),
                    "sac_ml_median": statistics.median(c["sac_ml"] for c in cases),
                    "cases": cases})
    return out


# -- 4. QRM ------------------------------------------------------------------------------

def qrm(data: Path, timing: dict) -> dict:
    from cacnet.io import read_scan

    scan = read_scan(data / QRM)
    b = build(scan, timed=True)
    timing[QRM] = {"shape": list(scan.hu.shape), "triage_s": round(b["triage_s"], 3), "map_s": round(b["map_s"], 3),
                   "aortas_s": round(b["aortas_s"], 3)}
    amap = b["map"]
    sac = amap.fine_mask("sac", scan.hu.shape)
    nz, ny, nx = scan.hu.shape
    yy, xx = np.mgrid[:ny, :nx]
    r = QRM_ROD["radius_mm"]
    disk = ((yy - QRM_ROD["row"]) * scan.spacing[1]) ** 2 + ((xx - QRM_ROD["col"]) * scan.spacing[2]) ** 2 <= r * r
    z0, z1 = QRM_ROD["slices"]
    rod = np.zeros(scan.hu.shape, bool)
    rod[z0:z1 + 1] = disk
    inserts = {}
    for name, (row, col) in QRM_INSERTS.items():
        zs = range(QRM_INSERT_SLICES[0], QRM_INSERT_SLICES[1] + 1)
        inserts[name] = sum(bool(sac[z, row, col]) for z in zs)
    dense = np.asarray(scan.hu) >= 130
    return {**_map_info(amap, scan), "heart_check": b["triage"].checks.get("heart", {}).get("verdict"),
            "sac_z": ([int(z) for z in np.flatnonzero(sac.any((1, 2)))[[0, -1]]] if sac.any() else None),
            "rod_in_sac_pct": _pct((rod & sac).sum(), rod.sum()),
            "insert_centres_in_sac": {k: f"{v}/{QRM_INSERT_SLICES[1] - QRM_INSERT_SLICES[0] + 1} slices"
                                      for k, v in inserts.items()},
            "dense_in_sac_pct": _pct((dense & sac).sum(), dense.sum())}


# -- tables ------------------------------------------------------------------------------

def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return "..".join(_fmt(x) for x in v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def tables(res: dict) -> str:
    v = res.get("versions", {})
    lines = [f"Measured: git {v.get('git_head')}, cacnet/anatomy/_map.py sha256 {v.get('cacnet.anatomy._map')}, "
             f"cacnet/anatomy/_aorta.py sha256 {v.get('cacnet.anatomy._aorta')}, "
             f"cacnet/triage.py sha256 {v.get('cacnet.triage')} (working tree as imported).", "",
             "### 1. LIDC-IDRI-0001 vs TotalSegmentator", "",
             "| scan | map heart mL | TS heart mL | sac mL | heart Dice | TS heart outside sac % | "
             "TS aorta in sac %: all / ascending+root / descending / arch |",
             "|---|---|---|---|---|---|---|"]
    for r in res["totalsegmentator"]:
        lines.append(f"| {r['scan']} | {_fmt(r['heart_ml'])} | {_fmt(r['ts_heart_ml'])} | {_fmt(r['sac_ml'])} | "
                     f"{_fmt(r['heart_dice'])} | {_fmt(r['ts_heart_outside_sac_pct'])} | "
                     f"{_fmt(r['ts_aorta_in_sac_pct'])} / {_fmt(r['ts_aorta_ascending_and_root_in_sac_pct'])} / "
                     f"{_fmt(r['ts_aorta_descending_in_sac_pct'])} / {_fmt(r['ts_aorta_arch_and_above_in_sac_pct'])} |")
    for r in res["totalsegmentator"]:
        lines += ["", f"{r['scan']}: what the map's heart / sac hold (mL, by TotalSegmentator label): "
                  + ", ".join(f"{k} {r['heart_contents_ml'].get(k, 0):g} / {v:g}" for k, v in r["sac_contents_ml"].items())]
    lines += ["", "### 1b. Aorta vs TotalSegmentator", "",
              "TS ascending = TotalSegmentator's aorta on the slices where it is two pieces, the front one "
              "(ascending aorta and root); TS descending = the back piece(s) there and the single piece below. "
              "Dice over the whole scan / over the tube's slices only / over the slices both have; slices are "
              "the fine grid's (first..last).", "",
              "| scan | tube | tube slices | TS part slices | Dice: all / tube's slices / common slices | "
              "TS part in tube % (common slices) | tube in TS aorta % | "
              "estimated root slice / TS ascending lowest |",
              "|---|---|---|---|---|---|---|---|"]
    for r in res["totalsegmentator"]:
        a = r.get("aorta")
        if not a:
            continue
        for key, name in (("asc", "ascending"), ("desc", "descending")):
            t = a[key]
            root = (f"{_fmt(a['root_slice_est'])} / {_fmt(a['ts_ascending_lowest_slice'])}" if key == "asc" else "")
            lines.append(f"| {r['scan']} | {name}{'' if t['found'] else ' (not found)'} | {_fmt(t['tube_z'])} | "
                         f"{_fmt(t['ts_z'])} | {_fmt(t['dice'])} / {_fmt(t['dice_tube_slices'])} / "
                         f"{_fmt(t['dice_common_slices'])} | {_fmt(t['ts_part_in_tube_pct'])} "
                         f"({_fmt(t['ts_part_in_tube_common_slices_pct'])}) | {_fmt(t['tube_in_ts_aorta_pct'])} | "
                         f"{root} |")
    lines += ["", "### 2. Traced anatomy (points inside the sac)", "",
              "| scan | heart / sac mL | coronary pts in sac | coronary heart_sdist mm | aortic wall in sac | "
              "valve plane in sac | mitral annulus in sac | >=130 HU in sac mL |",
              "|---|---|---|---|---|---|---|---|"]
    for r in res["tracings"]:
        p = r["points"]

        def cell(g):
            return f"{_fmt(p[g]['inside_pct'])} % of {p[g]['n']}" if g in p else "-"
        lines.append(f"| {r['scan']} | {_fmt(r['heart_ml'])} / {_fmt(r['sac_ml'])} | {cell('coronary')} | "
                     f"{_fmt(p['coronary']['heart_sdist_mm'])} | {cell('aortic_wall')} | {cell('aortic_valve_plane')} | "
                     f"{cell('mitral_annulus')} | {_fmt(r['dense_in_sac_ml'])} |")
    lines += ["", "### 2b. Aorta vs traced anatomy", "",
              "|distance| = |signed distance| of the traced aortic root and ascending aorta wall rings to the "
              "ascending tube's surface; valve plane minus estimated root = mean height (mm) of the traced "
              "aortic valve plane above the estimated root (the ascending tube's lowest circle).", "",
              "| scan | asc found | desc found | aortic-wall points: median / max \\|distance\\| mm | "
              "within 5 / 10 mm % | valve plane minus estimated root, mm | asc tube slices / traced wall slices |",
              "|---|---|---|---|---|---|---|"]
    for r in res["tracings"]:
        p = r["points"]
        w = p.get("aortic_wall", {})
        d = w.get("asc_sdist_abs_mm")
        a = r.get("aorta", {})
        lines.append(f"| {r['scan']} | {'yes' if r['ascending_aorta_found'] else 'no'} | "
                     f"{'yes' if r['descending_aorta_found'] else 'no'} | "
                     + (f"{_fmt(d['median'])} / {_fmt(d['max'])} of {w['n']} | "
                        f"{_fmt(d['within_5mm_pct'])} / {_fmt(d['within_10mm_pct'])} | " if d else "- | - | ")
                     + f"{_fmt(p.get('aortic_valve_plane', {}).get('valve_minus_root_mm'))} | "
                     f"{_fmt(a.get('asc_tube_z'))} / {_fmt(w.get('z'))} |")
    lines += ["", "### 3. Phantoms (exact anatomy)", "",
              "| generator | n (map heart found / triage heart ok) | coronary truth voxels in sac % (triage heart ok) | "
              "cases with all in sac | worst case % | other >=130 HU in sac % | look-alike voxels in sac % | "
              "median heart / sac mL |",
              "|---|---|---|---|---|---|---|---|"]
    for r in res["phantoms"]:
        look = ", ".join(f"{k} {_fmt(v)}" for k, v in r["lookalikes_in_sac_pct"].items())
        lines.append(f"| {r['variant']} | {r['n']} ({r['found']} / {r['triage_heart_ok']}) | "
                     f"{_fmt(r['coronary_in_sac_pct'])} ({_fmt(r['coronary_in_sac_pct_heart_ok'])}) | "
                     f"{r['cases_all_coronary_in_sac']}/{r['cases_with_coronary']} | "
                     f"{_fmt(r['worst_case_coronary_in_sac_pct'])} | {_fmt(r['other_dense_in_sac_pct'])} | {look} | "
                     f"{_fmt(r['heart_ml_median'])} / {_fmt(r['sac_ml_median'])} |")
    lines += ["", "### 3b. Aorta on phantoms", "",
              "Look-alike voxels of the aortic wall (and, varied generator, root) calcium: the share within "
              "5 mm of either tube's surface (min of |asc_aorta_sdist_mm|, |desc_aorta_sdist_mm|) and the median "
              "of that distance over all their voxels.", "",
              "| generator | asc found | desc found | aortic-wall look-alike voxels within 5 mm of a tube % "
              "(cases with them) | median distance mm |",
              "|---|---|---|---|---|"]
    for r in res["phantoms"]:
        lines.append(f"| {r['variant']} | {r['ascending_aorta_found']}/{r['n']} | "
                     f"{r['descending_aorta_found']}/{r['n']} | "
                     f"{_fmt(r['aortic_wall_lookalike_within_5mm_pct'])} "
                     f"({r['cases_with_aortic_wall_lookalike']}) | "
                     f"{_fmt(r['aortic_wall_lookalike_median_mm'])} |")
    q = res.get("qrm")
    if q:
        lines += ["", "### 4. QRM thorax phantom (no heart; calcium insert)", "",
                  f"heart check {q['heart_check']}; heart {q['heart_ml']} mL, sac {q['sac_ml']} mL "
                  f"(slices {_fmt(q['sac_z'])}); calibration rod in sac {_fmt(q['rod_in_sac_pct'])} %; "
                  f">=130 HU voxels in sac {_fmt(q['dense_in_sac_pct'])} % ({q['dense_in_sac_ml']} mL); "
                  "insert centres in sac (slices 19-25): "
                  + ", ".join(f"{k} {v}" for k, v in q["insert_centres_in_sac"].items())]
    lines += ["", "### 5. Speed (median of 5, s)", "",
              "| scan | shape (z, y, x) | triage | anatomical_map | aortas (first use of asc_aorta / desc_aorta) |",
              "|---|---|---|---|---|"]
    for k, v in res["timing"].items():
        if "triage_s" in v:
            lines.append(f"| {k} | {'x'.join(map(str, v['shape']))} | {v['triage_s']:.3f} | {v['map_s']:.3f} | "
                         + (f"{v['aortas_s']:.3f} |" if "aortas_s" in v else "- |"))
        else:
            lines.append(f"| {k} | | {v['seconds']:.2f} (once) | | |")
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    """The git commit and the sha256 (first 12 hex digits) of the measured modules, as imported now."""
    import hashlib
    import subprocess

    import importlib

    out = {}
    try:
        out["git_head"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                         text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out["git_head"] = "unknown"
    for name in ("cacnet.anatomy._map", "cacnet.anatomy._aorta", "cacnet.triage"):
        mod = importlib.import_module(name)  # the module itself (a package may export a function of its name)
        out[name] = hashlib.sha256(Path(mod.__file__).read_bytes()).hexdigest()[:12]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--phantoms", type=int, default=20, help="phantoms per generator")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "anatomy" / "map_results.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    timing: dict = {}
    res: dict = {"versions": _versions()}
    print(f"measuring {res['versions']}", flush=True)
    print("TotalSegmentator ...", flush=True)
    res["totalsegmentator"] = totalsegmentator(args.data, timing)
    print("tracings ...", flush=True)
    res["tracings"] = tracings(args.data, timing)
    print("QRM ...", flush=True)
    res["qrm"] = qrm(args.data, timing) if (args.data / QRM).exists() else None
    print("phantoms ...", flush=True)
    res["phantoms"] = phantoms(args.phantoms, timing)
    res["timing"] = timing
    res["seconds"] = round(time.perf_counter() - t0, 1)
    end = _versions()
    if end != res["versions"]:  # someone edited the measured modules during the run: the numbers are mixed
        res["versions_at_end"] = end
        print(f"WARNING: the measured modules changed during the run: {res['versions']} -> {end}", flush=True)
    text = tables(res)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"\nwrote {args.out} ({res['seconds']} s)")


if __name__ == "__main__":
    main()
