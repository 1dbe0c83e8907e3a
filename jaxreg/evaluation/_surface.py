"""Surface distances of the Learn2Reg HD95: surfels on the voxel-corner grid, weighted by area.

Our own derivation of the definitions in DeepMind's ``surface-distance`` package (which the
official Learn2Reg evaluation calls): a marching-cubes surface-area table for the 256
2x2x2 neighbourhood codes, surfel extraction, and the area-weighted robust distance.
Private to ``jaxreg.evaluation.l2r``.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
from scipy import ndimage


def _triangulations(idx: tuple[int, ...]) -> list[list[tuple[int, int, int]]]:
    """All triangulations of the polygon with vertices ``idx`` (in cyclic order)."""
    if len(idx) < 3:
        return [[]]
    first, last = idx[0], idx[-1]
    return [
        left + right + [(first, idx[k], last)]
        for k in range(1, len(idx) - 1)
        for left in _triangulations(idx[: k + 1])
        for right in _triangulations(idx[k:])
    ]


def _cube_neighbours(c):
    for ax in range(3):
        yield tuple(v ^ 1 if j == ax else v for j, v in enumerate(c))


def _surfel_polygons(corners: set) -> list[np.ndarray]:
    """Marching-cubes polygons (edge-midpoint vertices, cyclic order) around ``corners``."""
    polys, todo = [], set(corners)
    while todo:  # one polygon per edge-connected component of the corner set
        comp, stack = set(), [todo.pop()]
        while stack:
            c = stack.pop()
            comp.add(c)
            for d in _cube_neighbours(c):
                if d in todo:
                    todo.discard(d)
                    stack.append(d)
        cuts = [(c, d) for c in sorted(comp) for d in _cube_neighbours(c) if d not in comp]

        def faces(edge):
            c, axis = edge[0], [j for j in range(3) if edge[0][j] != edge[1][j]][0]
            return {(j, c[j]) for j in range(3) if j != axis}

        cycle, came_by = [cuts.pop(0)], None
        while cuts:  # walk: the next cut edge shares the cube face we did not come by
            nxt = next(e for e in cuts if (faces(e) & faces(cycle[-1])) - {came_by})
            came_by = (faces(nxt) & faces(cycle[-1])).pop()
            cuts.remove(nxt)
            cycle.append(nxt)
        polys.append(np.array([np.add(c, d) / 2.0 for c, d in cycle]))
    return polys


@functools.lru_cache(maxsize=1)
def surfel_area_table() -> np.ndarray:
    """Surface area of the surfel of each 2x2x2 neighbourhood code, unit spacing.

    Code bit ``1 << (7 - (4*o0 + 2*o1 + o2))`` is voxel offset ``(o0, o1, o2)`` of the
    neighbourhood (the DeepMind ``ENCODE_NEIGHBOURHOOD_3D_KERNEL``). The area is the
    marching-cubes surface with vertices at edge midpoints around the minority corners
    (the inside ones when there are 4), each edge-connected group of corners separated,
    each polygon triangulated for maximal area, triangle areas summed largest first.
    This derivation equals DeepMind's ``create_table_neighbour_code_to_surface_area(
    np.ones(3))`` bit for bit for all 256 codes.

    Returns:
      ``(256,)`` float64 areas in voxel-face units (0 for codes 0 and 255).
    """
    corners = list(itertools.product((0, 1), repeat=3))
    table = np.zeros(256)
    for code in range(1, 255):
        inside = {c for c in corners if code & (1 << (7 - (4 * c[0] + 2 * c[1] + c[2])))}
        minority = inside if len(inside) <= 4 else set(corners) - inside
        areas = []
        for poly in _surfel_polygons(minority):
            best, best_total = None, -1.0
            for tri in _triangulations(tuple(range(len(poly)))):
                a = [0.5 * np.linalg.norm(np.cross(poly[j] - poly[i], poly[k] - poly[i])) for i, j, k in tri]
                if round(sum(a), 9) > round(best_total, 9):
                    best, best_total = a, sum(a)
            areas += best
        total = 0.0
        for a in sorted(areas, reverse=True):
            total += a
        table[code] = total
    table.setflags(write=False)
    return table


def _surfels(mask: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Neighbourhood codes on the voxel-corner grid of the box ``[lo, hi]`` and the border."""
    sub = np.pad(mask[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1], 1).astype(np.int32)
    n = np.array(sub.shape) - 1  # corners per axis
    code = np.zeros(tuple(n), np.int32)
    for o in itertools.product((0, 1), repeat=3):
        code += sub[o[0] : o[0] + n[0], o[1] : o[1] + n[1], o[2] : o[2] + n[2]] << (7 - (4 * o[0] + 2 * o[1] + o[2]))
    return code, (code != 0) & (code != 255)


def _robust_distance(distances: np.ndarray, areas: np.ndarray, percent: float) -> float:
    if distances.size == 0:
        return np.inf
    # sort by (distance, area) and keep the two as columns of one array, like the reference
    table = np.stack([distances, areas], axis=1)[np.lexsort((areas, distances))]
    dist, area = table[:, 0], table[:, 1]
    cumulative = np.cumsum(area) / np.sum(area)
    idx = np.searchsorted(cumulative, percent / 100.0)
    return dist[min(idx, len(dist) - 1)]


def directed_percentile_hd(mask_a: np.ndarray, mask_b: np.ndarray, percent: float) -> float:
    """Larger of the two area-weighted directed ``percent`` distances between two 3-D masks (voxels)."""
    union = mask_a | mask_b
    if not union.any():
        return np.inf
    nz = [np.flatnonzero(union.any(axis=tuple(j for j in range(3) if j != ax))) for ax in range(3)]
    lo, hi = np.array([v[0] for v in nz]), np.array([v[-1] for v in nz])
    area = surfel_area_table()
    (code_a, border_a), (code_b, border_b) = _surfels(mask_a, lo, hi), _surfels(mask_b, lo, hi)

    def to_border(border):
        if not border.any():
            return np.full(border.shape, np.inf)
        return ndimage.distance_transform_edt(~border, sampling=(1.0, 1.0, 1.0))

    dist_to_a, dist_to_b = to_border(border_a), to_border(border_b)
    a_to_b = _robust_distance(dist_to_b[border_a], area[code_a[border_a]], percent)
    b_to_a = _robust_distance(dist_to_a[border_b], area[code_b[border_b]], percent)
    return max(a_to_b, b_to_a)
