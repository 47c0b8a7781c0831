"""Anti-aliased rasterisation of the few shapes the phantom is made of.

Every function returns a coverage patch in [0, 1] over an integer bounding box, so a caller adds
it into a full image with :func:`paste` (projection images add up: overlapping bones sum).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Patch:
    """Coverage values over rows y0:y1, columns x0:x1 of the full image."""

    y0: int
    x0: int
    data: np.ndarray  # float32 [h, w] in [0, 1]

    @property
    def y1(self) -> int:
        return self.y0 + self.data.shape[0]

    @property
    def x1(self) -> int:
        return self.x0 + self.data.shape[1]

    def centroid(self) -> tuple[float, float]:
        yy, xx = np.nonzero(self.data > 0.5)
        if len(yy) == 0:
            yy, xx = np.nonzero(self.data > 0)
        return float(yy.mean() + self.y0), float(xx.mean() + self.x0)


def _grid(y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[y0:y1, x0:x1]
    return yy.astype(np.float32) + 0.5, xx.astype(np.float32) + 0.5


def _bbox(points: np.ndarray, pad: float, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    y0 = max(int(np.floor(points[:, 0].min() - pad)), 0)
    y1 = min(int(np.ceil(points[:, 0].max() + pad)) + 1, shape[0])
    x0 = max(int(np.floor(points[:, 1].min() - pad)), 0)
    x1 = min(int(np.ceil(points[:, 1].max() + pad)) + 1, shape[1])
    if y1 <= y0 or x1 <= x0:
        return None
    return y0, y1, x0, x1


def polyline(points: np.ndarray, radius: float | np.ndarray, shape: tuple[int, int]) -> Patch | None:
    """A thick polyline (chain of capsules). points: [N, 2] (y, x); radius: scalar or [N]."""
    pts = np.asarray(points, dtype=np.float32)
    rad = np.broadcast_to(np.asarray(radius, dtype=np.float32), (len(pts),))
    box = _bbox(pts, float(rad.max()) + 1.5, shape)
    if box is None:
        return None
    y0, y1, x0, x1 = box
    yy, xx = _grid(y0, y1, x0, x1)
    best = np.full(yy.shape, -1e9, dtype=np.float32)
    if len(pts) == 1:
        d = np.hypot(yy - pts[0, 0], xx - pts[0, 1])
        best = rad[0] - d
    for i in range(len(pts) - 1):
        (ay, ax), (by, bx) = pts[i], pts[i + 1]
        dy, dx = by - ay, bx - ax
        L2 = dy * dy + dx * dx + 1e-9
        t = np.clip(((yy - ay) * dy + (xx - ax) * dx) / L2, 0.0, 1.0)
        d = np.hypot(yy - (ay + t * dy), xx - (ax + t * dx))
        r = rad[i] + t * (rad[i + 1] - rad[i])
        np.maximum(best, r - d, out=best)
    cov = np.clip(best + 0.5, 0.0, 1.0).astype(np.float32)
    return Patch(y0, x0, cov)


def ellipse(
    center: tuple[float, float],
    radii: tuple[float, float],
    angle: float,
    shape: tuple[int, int],
    wobble: np.ndarray | None = None,
) -> Patch | None:
    """A filled ellipse; radii = (along y, along x) before rotating by ``angle`` (radians).

    wobble: optional [K, 3] rows of (harmonic k, amplitude, phase) that make the outline
    irregular: r(theta) = 1 + sum amp * cos(k theta + phase).
    """
    cy, cx = center
    ry, rx = max(radii[0], 0.3), max(radii[1], 0.3)
    amp = 0.0 if wobble is None else float(np.abs(wobble[:, 1]).sum())
    R = max(ry, rx) * (1 + amp) + 1.5
    box = _bbox(np.array([[cy, cx]], dtype=np.float32), R, shape)
    if box is None:
        return None
    y0, y1, x0, x1 = box
    yy, xx = _grid(y0, y1, x0, x1)
    c, s = np.cos(angle), np.sin(angle)
    u = (yy - cy) * c + (xx - cx) * s  # along the rotated y axis
    v = -(yy - cy) * s + (xx - cx) * c
    rho = np.sqrt((u / ry) ** 2 + (v / rx) ** 2)
    limit = np.ones_like(rho)
    if wobble is not None:
        theta = np.arctan2(v / rx, u / ry)
        for k, a, ph in wobble:
            limit += a * np.cos(k * theta + ph)
    # distance to the outline in pixels, approximately (limit - rho) * the ellipse's radius
    # in this direction; +0.5 makes a one-pixel anti-aliased edge
    dir_radius = np.minimum(np.sqrt((u * u + v * v) / (rho * rho + 1e-9)), max(ry, rx))
    cov = np.clip((limit - rho) * dir_radius + 0.5, 0.0, 1.0)
    return Patch(y0, x0, cov.astype(np.float32))


def ring(
    center: tuple[float, float], radii: tuple[float, float], thickness: float, shape: tuple[int, int]
) -> Patch | None:
    """An elliptical ring (outline) of a given thickness, e.g. the calvarium."""
    outer = ellipse(center, radii, 0.0, shape)
    if outer is None:
        return None
    inner = ellipse(center, (radii[0] - thickness, radii[1] - thickness), 0.0, shape)
    if inner is not None:
        sub = outer.data[inner.y0 - outer.y0 : inner.y1 - outer.y0, inner.x0 - outer.x0 : inner.x1 - outer.x0]
        sub -= inner.data[: sub.shape[0], : sub.shape[1]]
        np.clip(outer.data, 0.0, 1.0, out=outer.data)
    return outer


def union(patches: Sequence[Patch | None]) -> Patch | None:
    """Pixel-wise max of several patches (the parts of one bone must not double up)."""
    ps = [p for p in patches if p is not None]
    if not ps:
        return None
    y0 = min(p.y0 for p in ps)
    x0 = min(p.x0 for p in ps)
    y1 = max(p.y1 for p in ps)
    x1 = max(p.x1 for p in ps)
    out = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
    for p in ps:
        sl = out[p.y0 - y0 : p.y1 - y0, p.x0 - x0 : p.x1 - x0]
        np.maximum(sl, p.data, out=sl)
    return Patch(y0, x0, out)


def paste(image: np.ndarray, patch: Patch | None, value: float) -> None:
    """image[patch box] += value * coverage."""
    if patch is None or value == 0:
        return
    image[patch.y0 : patch.y1, patch.x0 : patch.x1] += value * patch.data


def paste_max(image: np.ndarray, patch: Patch | None) -> None:
    """image[patch box] = max(image, coverage)."""
    if patch is None:
        return
    sl = image[patch.y0 : patch.y1, patch.x0 : patch.x1]
    np.maximum(sl, patch.data, out=sl)


def multiply(a: Patch, b: Patch) -> Patch:
    """Coverage of ``a`` restricted to ``b`` (product over a's box; 0 outside b)."""
    out = np.zeros_like(a.data)
    y0, y1 = max(a.y0, b.y0), min(a.y1, b.y1)
    x0, x1 = max(a.x0, b.x0), min(a.x1, b.x1)
    if y1 > y0 and x1 > x0:
        out[y0 - a.y0 : y1 - a.y0, x0 - a.x0 : x1 - a.x0] = (
            a.data[y0 - a.y0 : y1 - a.y0, x0 - a.x0 : x1 - a.x0]
            * b.data[y0 - b.y0 : y1 - b.y0, x0 - b.x0 : x1 - b.x0]
        )
    return Patch(a.y0, a.x0, out)
