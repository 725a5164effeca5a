"""Small image helpers for the report and the preview: PNG encoding, windows, outlines, a bitmap font (private).

Only numpy and zlib: no imaging library is needed to write the HTML report or
the preview PNG.
"""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Optional

import numpy as np
from scipy import ndimage

__all__ = ["ARTERY_RGB", "CANDIDATE_RGB", "CALCIUM_WINDOW", "encode_png", "png_data_uri", "window", "outline",
           "upscale", "draw_text", "text_width", "GLYPH_W", "GLYPH_H"]

#: Outline colours (RGB) by label: LM yellow, LAD red, LCX green, RCA blue (as :data:`.preview.ARTERY_COLORS`).
ARTERY_RGB = {1: (255, 220, 0), 2: (255, 40, 40), 3: (40, 220, 40), 4: (40, 140, 255)}
#: Colour of a rejected candidate without a proposed artery (magenta).
CANDIDATE_RGB = (255, 0, 255)
#: The calcium window (HU): level 300, width 1000. Calcium (>= 130 HU) stands out from blood and myocardium.
CALCIUM_WINDOW = (-200.0, 800.0)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(img: np.ndarray, level: int = 6) -> bytes:
    """PNG bytes of a uint8 image: (h, w) grey, (h, w, 2) grey+alpha, (h, w, 3) RGB or (h, w, 4) RGBA.

    Each row takes the filter (None, Sub or Up) with the smallest sum of
    absolute differences, the usual heuristic.
    """
    img = np.ascontiguousarray(img, dtype=np.uint8)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 2, 3, 4) or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"encode_png: expected an (h, w[, 1-4]) uint8 image, got shape {img.shape}.")
    h, w, ch = img.shape
    raw = img.reshape(h, w * ch)
    sub = raw.copy()
    sub[:, ch:] = raw[:, ch:] - raw[:, :-ch]
    up = raw.copy()
    up[1:] = raw[1:] - raw[:-1]
    cost = [np.abs(f.view(np.int8).astype(np.int32)).sum(axis=1) for f in (raw, sub, up)]
    choice = np.argmin(np.stack(cost), axis=0)
    rows = np.where(choice[:, None] == 0, raw, np.where(choice[:, None] == 1, sub, up))
    data = np.concatenate([choice.astype(np.uint8)[:, None], rows], axis=1).tobytes()
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[ch]
    header = struct.pack(">IIBBBBB", w, h, 8, ctype, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(data, level))
            + _chunk(b"IEND", b""))


def png_data_uri(img: np.ndarray) -> str:
    """``data:image/png;base64,...`` of :func:`encode_png`."""
    return "data:image/png;base64," + base64.b64encode(encode_png(img)).decode("ascii")


def window(hu: np.ndarray, lo_hi: tuple[float, float] = CALCIUM_WINDOW) -> np.ndarray:
    """HU to uint8 grey through a window (lo -> 0, hi -> 255)."""
    lo, hi = lo_hi
    return np.clip((np.asarray(hu, dtype=np.float32) - lo) * (255.0 / (hi - lo)), 0, 255).round().astype(np.uint8)


def upscale(a: np.ndarray, s: int) -> np.ndarray:
    """Nearest-neighbour upscaling of the first two axes by an integer factor."""
    return np.repeat(np.repeat(a, s, axis=0), s, axis=1) if s > 1 else a


def outline(mask: np.ndarray, scale: int, width: int = 1) -> np.ndarray:
    """Pixels just outside ``mask`` (2D bool), on the grid upscaled by ``scale``.

    The outline lies outside the voxels, so it never hides the calcium it marks.
    """
    big = upscale(mask.astype(bool), scale)
    grown = ndimage.binary_dilation(big, structure=np.ones((3, 3), bool), iterations=width)
    return grown & ~big


# A 5 x 7 bitmap font for the preview's labels: upper case, digits and a few signs.
_FONT_ROWS = {
    "A": ".###.|#...#|#...#|#####|#...#|#...#|#...#", "B": "####.|#...#|#...#|####.|#...#|#...#|####.",
    "C": ".###.|#...#|#....|#....|#....|#...#|.###.", "D": "####.|#...#|#...#|#...#|#...#|#...#|####.",
    "E": "#####|#....|#....|####.|#....|#....|#####", "F": "#####|#....|#....|####.|#....|#....|#....",
    "G": ".###.|#...#|#....|#.###|#...#|#...#|.####", "H": "#...#|#...#|#...#|#####|#...#|#...#|#...#",
    "I": ".###.|..#..|..#..|..#..|..#..|..#..|.###.", "J": "..###|...#.|...#.|...#.|...#.|#..#.|.##..",
    "K": "#...#|#..#.|#.#..|##...|#.#..|#..#.|#...#", "L": "#....|#....|#....|#....|#....|#....|#####",
    "M": "#...#|##.##|#.#.#|#.#.#|#...#|#...#|#...#", "N": "#...#|#...#|##..#|#.#.#|#..##|#...#|#...#",
    "O": ".###.|#...#|#...#|#...#|#...#|#...#|.###.", "P": "####.|#...#|#...#|####.|#....|#....|#....",
    "Q": ".###.|#...#|#...#|#...#|#.#.#|#..#.|.##.#", "R": "####.|#...#|#...#|####.|#.#..|#..#.|#...#",
    "S": ".####|#....|#....|.###.|....#|....#|####.", "T": "#####|..#..|..#..|..#..|..#..|..#..|..#..",
    "U": "#...#|#...#|#...#|#...#|#...#|#...#|.###.", "V": "#...#|#...#|#...#|#...#|#...#|.#.#.|..#..",
    "W": "#...#|#...#|#...#|#.#.#|#.#.#|#.#.#|.#.#.", "X": "#...#|#...#|.#.#.|..#..|.#.#.|#...#|#...#",
    "Y": "#...#|#...#|.#.#.|..#..|..#..|..#..|..#..", "Z": "#####|....#|...#.|..#..|.#...|#....|#####",
    "0": ".###.|#...#|#..##|#.#.#|##..#|#...#|.###.", "1": "..#..|.##..|..#..|..#..|..#..|..#..|.###.",
    "2": ".###.|#...#|....#|...#.|..#..|.#...|#####", "3": "#####|...#.|..#..|...#.|....#|#...#|.###.",
    "4": "...#.|..##.|.#.#.|#..#.|#####|...#.|...#.", "5": "#####|#....|####.|....#|....#|#...#|.###.",
    "6": "..##.|.#...|#....|####.|#...#|#...#|.###.", "7": "#####|....#|...#.|..#..|.#...|.#...|.#...",
    "8": ".###.|#...#|#...#|.###.|#...#|#...#|.###.", "9": ".###.|#...#|#...#|.####|....#|...#.|.##..",
    " ": ".....|.....|.....|.....|.....|.....|.....", ".": ".....|.....|.....|.....|.....|.##..|.##..",
    ",": ".....|.....|.....|.....|.##..|..#..|.#...", ":": ".....|.##..|.##..|.....|.##..|.##..|.....",
    "-": ".....|.....|.....|#####|.....|.....|.....", "+": ".....|..#..|..#..|#####|..#..|..#..|.....",
    "/": "....#|...#.|...#.|..#..|.#...|.#...|#....", "(": "...#.|..#..|.#...|.#...|.#...|..#..|...#.",
    ")": ".#...|..#..|...#.|...#.|...#.|..#..|.#...", "#": ".#.#.|.#.#.|#####|.#.#.|#####|.#.#.|.#.#.",
    "%": "##..#|##..#|...#.|..#..|.#...|#..##|#..##", "=": ".....|.....|#####|.....|#####|.....|.....",
    "<": "...#.|..#..|.#...|#....|.#...|..#..|...#.", ">": ".#...|..#..|...#.|....#|...#.|..#..|.#...",
    "_": ".....|.....|.....|.....|.....|.....|#####", "!": "..#..|..#..|..#..|..#..|..#..|.....|..#..",
    "?": ".###.|#...#|....#|...#.|..#..|.....|..#..", "'": "..#..|..#..|.#...|.....|.....|.....|.....",
    "*": ".....|#.#.#|.###.|#####|.###.|#.#.#|.....", "[": ".###.|.#...|.#...|.#...|.#...|.#...|.###.",
    "]": ".###.|...#.|...#.|...#.|...#.|...#.|.###.",
}
_FONT = {k: np.array([[c == "#" for c in row] for row in v.split("|")], bool) for k, v in _FONT_ROWS.items()}
GLYPH_W, GLYPH_H = 5, 7


def text_width(text: str, scale: int = 1) -> int:
    """Width in pixels of ``text`` drawn by :func:`draw_text`."""
    return len(text) * (GLYPH_W + 1) * scale


def draw_text(img: np.ndarray, x: int, y: int, text: str, color: tuple[int, int, int], scale: int = 1,
              shadow: Optional[tuple[int, int, int]] = (0, 0, 0)) -> None:
    """Draw ``text`` (upper-cased; unknown characters become '?') into an RGB image, top-left at (x, y).

    ``shadow`` draws each glyph first one pixel down-right in that colour, so
    text stays legible on any background. Clipped at the image borders.
    """
    h, w = img.shape[:2]
    passes = ([(1, shadow)] if shadow is not None else []) + [(0, color)]
    for off, col in passes:
        cx = x
        for ch in text.upper():
            glyph = upscale(_FONT.get(ch, _FONT["?"]), scale)
            gy, gx = np.nonzero(glyph)
            yy, xx = gy + y + off * scale, gx + cx + off * scale
            ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            img[yy[ok], xx[ok]] = col
            cx += (GLYPH_W + 1) * scale
