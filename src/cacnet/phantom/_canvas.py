"""A CT volume being drawn: geometry of the grid and partial-volume drawing (private).

Coordinates are patient LPS millimetres (x to the patient's left, y to the
back, z to the head); the array is indexed (z, y, x) with identity direction.
Large structures are drawn with an analytic soft edge whose width follows the
slice profile; small ones (calcium, coronaries, leads) are supersampled
through the slice profile and inside the pixel, so partial volume is real.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Grid", "Canvas"]


@dataclass
class Grid:
    """The grid of a volume: index helpers and supersampled partial volume.

    No image is allocated, so a grid can describe a real scan (see
    :mod:`cacnet.phantom.insertion`) as cheaply as a phantom.

    Attributes
    ----------
    shape : tuple of int
        (nz, ny, nx).
    spacing : tuple of float
        (dz, dy, dx) mm; dz is the slice increment.
    origin : tuple of float
        (z, y, x) mm of voxel (0, 0, 0).
    thickness : float
        Nominal slice thickness (the width of the slice profile), mm.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    thickness: float

    def __post_init__(self) -> None:
        self.axes = [self.origin[i] + self.spacing[i] * np.arange(self.shape[i]) for i in range(3)]

    # -- index helpers ---------------------------------------------------
    def index_range(self, axis: int, lo: float, hi: float, pad: float = 0.0) -> slice:
        """Voxel index slice covering physical [lo - pad, hi + pad] along an axis."""
        o, s, n = self.origin[axis], self.spacing[axis], self.shape[axis]
        a = int(np.floor((lo - pad - o) / s))
        b = int(np.ceil((hi + pad - o) / s)) + 1
        return slice(max(a, 0), min(max(b, 0), n))

    def box(self, lo, hi, pad=(0.0, 0.0, 0.0)) -> tuple[slice, slice, slice] | None:
        """Index box of a physical (z, y, x) box, or None when outside the grid."""
        sl = tuple(self.index_range(i, lo[i], hi[i], pad[i]) for i in range(3))
        if any(s.stop <= s.start for s in sl):
            return None
        return sl  # type: ignore[return-value]

    # -- supersampled small structures ---------------------------------------
    def _samples(self, n_inplane: int, n_z: int):
        oz = ((np.arange(n_z) + 0.5) / n_z - 0.5) * self.thickness
        oy = ((np.arange(n_inplane) + 0.5) / n_inplane - 0.5) * self.spacing[1]
        ox = ((np.arange(n_inplane) + 0.5) / n_inplane - 0.5) * self.spacing[2]
        return oz, oy, ox

    def ball_occupancy(self, center, radius, n_inplane: int = 3, n_z: int = 6):
        """Exact-ish fraction of each voxel (slice profile x pixel) inside a ball.

        Returns (box, occupancy) or None outside the grid.
        """
        c = np.asarray(center, dtype=float)
        r = float(radius)
        b = self.box(c - r, c + r, (self.thickness / 2, self.spacing[1], self.spacing[2]))
        if b is None:
            return None
        oz, oy, ox = self._samples(n_inplane, n_z)
        z = (self.axes[0][b[0]][:, None] + oz[None, :] - c[0]) ** 2  # (nz, sz)
        y = (self.axes[1][b[1]][:, None] + oy[None, :] - c[1]) ** 2  # (ny, sy)
        x = (self.axes[2][b[2]][:, None] + ox[None, :] - c[2]) ** 2  # (nx, sx)
        inside = (
            z[:, None, None, :, None, None] + y[None, :, None, None, :, None] + x[None, None, :, None, None, :]
            <= r * r
        )
        return b, inside.mean(axis=(3, 4, 5), dtype=np.float32)

    # -- distances (no image needed) -------------------------------------------
    def edge_width(self, nz: np.ndarray | float) -> np.ndarray | float:
        """Width (mm) of a partial-volume edge whose normal has z-component nz."""
        px = self.spacing[2]
        return np.sqrt(px * px + (self.thickness * nz) ** 2) + 1e-6

    def ellipsoid_distance(self, center, axes_mat, radii, box, coords: bool = False):
        """Signed distance (mm, first order) to an oriented ellipsoid on ``box``.

        Returns ``(sd, width, t)``: the distance (negative inside), the
        partial-volume edge width (:meth:`edge_width` of the surface normal)
        and, with ``coords``, the normalised coordinates ``t`` (one array per
        row of ``axes_mat``: the position along that axis over its radius;
        ``None`` without ``coords``), all float32 arrays of the box's shape.
        """
        b = box
        z = (self.axes[0][b[0]] - center[0]).astype(np.float32)[:, None, None]
        y = (self.axes[1][b[1]] - center[1]).astype(np.float32)[None, :, None]
        x = (self.axes[2][b[2]] - center[2]).astype(np.float32)[None, None, :]
        q = np.zeros((z.shape[0], y.shape[1], x.shape[2]), dtype=np.float32)
        g = [np.zeros_like(q) for _ in range(3)]
        kept = []
        for axis, rad in zip(axes_mat, radii):
            t = (np.float32(axis[0] / rad) * z + np.float32(axis[1] / rad) * y) + np.float32(axis[2] / rad) * x
            q += t * t
            for i in range(3):
                g[i] += t * np.float32(axis[i] / rad)
            if coords:
                kept.append(t)
        rho = np.sqrt(q)
        gn = np.sqrt(g[0] * g[0] + g[1] * g[1] + g[2] * g[2])
        # grad of rho = g / rho; signed distance ~ (rho - 1) / |grad rho|
        sd = (rho - 1.0) * rho / np.maximum(gn, 1e-6)
        width = self.edge_width(np.abs(g[0]) / np.maximum(gn, 1e-6)).astype(np.float32)
        return sd, width, (kept if coords else None)


@dataclass
class Canvas(Grid):
    """The grid of a volume and the HU image drawn on it."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.hu = np.full(self.shape, -1000.0, dtype=np.float32)
        # Calcium layer: occupancy, HU of the calcium, id of the source
        # (> 0 coronary lesion, < 0 look-alike), composited last.
        self.cal_occ = np.zeros(self.shape, dtype=np.float32)
        self.cal_hu = np.zeros(self.shape, dtype=np.float32)
        self.cal_id = np.zeros(self.shape, dtype=np.int16)

    # -- analytic soft-edged structures -------------------------------------
    def paint(self, box, occ: np.ndarray, value) -> None:
        """Composite: hu = hu + occ * (value - hu) inside ``box``."""
        view = self.hu[box]
        view += (occ * (np.float32(value) - view)).astype(np.float32, copy=False)

    def ellipse_cylinder(self, center_yx, radii_yx, value, z_range=None, angle=0.0) -> None:
        """Elliptic cylinder along z, optionally limited to ``z_range`` (mm)."""
        cy, cx = center_yx
        ry, rx = radii_yx
        r = max(ry, rx)
        b = self.box((self.axes[0][0], cy - r, cx - r), (self.axes[0][-1], cy + r, cx + r), (0, 2, 2))
        if b is None:
            return
        if z_range is not None:
            zsl = self.index_range(0, z_range[0], z_range[1], self.thickness)
            if zsl.stop <= zsl.start:
                return
            z = self.axes[0][zsl]
            zw = np.clip(0.5 + np.minimum(z - z_range[0], z_range[1] - z) / self.thickness, 0.0, 1.0)
            b = (zsl, b[1], b[2])
        y = (self.axes[1][b[1]][:, None] - cy).astype(np.float32)
        x = (self.axes[2][b[2]][None, :] - cx).astype(np.float32)
        ca, sa = np.cos(angle), np.sin(angle)
        u = (ca * x + sa * y) / rx
        v = (-sa * x + ca * y) / ry
        rho = np.sqrt(u * u + v * v)
        sd = (rho - 1.0) * np.sqrt((rx * u) ** 2 + (ry * v) ** 2) / np.maximum(rho, 1e-6)
        occ = np.clip(0.5 - sd / self.spacing[2], 0.0, 1.0).astype(np.float32)
        rows = np.flatnonzero(occ.any(axis=1))
        if rows.size == 0:
            return
        occ = occ[rows[0] : rows[-1] + 1]
        b = (b[0], slice(b[1].start + rows[0], b[1].start + rows[-1] + 1), b[2])
        occ3 = occ[None] if z_range is None else occ[None] * zw[:, None, None].astype(np.float32)
        self.paint(b, occ3, value)

    def ellipsoid_layers(self, center, axes_mat, radii, layers, tight: bool = False) -> None:
        """Nested oriented ellipsoids sharing axes: ``layers`` = [(offset_mm, value)].

        Rows of ``axes_mat`` are unit axes (z, y, x). Each layer is the
        ellipsoid grown by its offset, drawn outermost first; the signed
        distance is computed once (first order) and shifted per layer.
        ``tight`` computes only inside the ellipsoid's own bounding box (the
        extent along each axis) instead of a cube of its largest radius:
        faster for elongated shapes, not bit-identical at the far edges of
        the first-order distance.
        """
        layers = sorted(layers, key=lambda lv: -lv[0])
        grow = max(0.0, layers[0][0])
        r = float(max(radii)) + grow
        if tight:
            r = np.sqrt(((np.asarray(radii, float)[:, None] * np.asarray(axes_mat, float)) ** 2).sum(axis=0)) + grow
        b = self.box(np.subtract(center, r), np.add(center, r), (self.thickness, 2, 2))
        if b is None:
            return
        sd, width, _ = self.ellipsoid_distance(center, axes_mat, radii, b)
        for offset, value in layers:
            occ = np.clip(0.5 - (sd - np.float32(offset)) / width, 0.0, 1.0)
            self.paint(b, occ, value)

    def tube(self, points, radii, value) -> None:
        """Tube along a polyline (n, 3) drawn as soft-edged balls (large tubes)."""
        pts = np.asarray(points, dtype=float)
        rads = np.broadcast_to(np.asarray(radii, dtype=float), (len(pts),))
        for c, r in zip(pts, rads):
            b = self.box(c - r, c + r, (self.thickness / 2, 1, 1))
            if b is None:
                continue
            dzv = self.axes[0][b[0]][:, None, None] - c[0]
            dyv = self.axes[1][b[1]][None, :, None] - c[1]
            dxv = self.axes[2][b[2]][None, None, :] - c[2]
            d = np.sqrt(dzv * dzv + dyv * dyv + dxv * dxv)
            occ = np.clip(0.5 + (r - d) / self.edge_width(np.abs(dzv) / np.maximum(d, 1e-6)), 0.0, 1.0)
            self.paint(b, occ, value)

    def small_tube(self, points, radii, value) -> None:
        """Thin tube (vessel, lead) from supersampled balls, composited as a union."""
        pts = np.asarray(points, dtype=float)
        rads = np.broadcast_to(np.asarray(radii, dtype=float), (len(pts),))
        parts = [p for p in (self.ball_occupancy(c, r, n_inplane=2, n_z=4) for c, r in zip(pts, rads)) if p]
        if not parts:
            return
        lo = [min(b[i].start for b, _ in parts) for i in range(3)]
        hi = [max(b[i].stop for b, _ in parts) for i in range(3)]
        union = np.zeros([h - l for l, h in zip(lo, hi)], dtype=np.float32)
        for b, occ in parts:
            s = tuple(slice(b[i].start - lo[i], b[i].stop - lo[i]) for i in range(3))
            np.maximum(union[s], occ, out=union[s])
        self.paint(tuple(slice(l, h) for l, h in zip(lo, hi)), union, value)

    def calcium(self, centers, radii, value_hu: float, source_id: int) -> None:
        """Calcium made of balls, into the calcium layer (max occupancy wins)."""
        for c, r in zip(np.atleast_2d(centers), np.broadcast_to(radii, (len(np.atleast_2d(centers)),))):
            res = self.ball_occupancy(c, r)
            if res is None:
                continue
            b, occ = res
            cur = self.cal_occ[b]
            win = occ > cur
            cur[win] = occ[win]
            self.cal_hu[b][win] = value_hu
            self.cal_id[b][win] = source_id

    def composite_calcium(self) -> None:
        """Put the calcium layer into the image (last, over every tissue)."""
        occ = self.cal_occ
        nz = np.nonzero(occ)
        self.hu[nz] += occ[nz] * (self.cal_hu[nz] - self.hu[nz])
