"""Draws docs/figures/pull_convention.png: the pull convention of jaxreg.warp.

    python docs/figures/conventions.py
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

import jaxreg  # noqa: E402


def main() -> None:
    n = 64
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    # Moving image: a bright square near the top-left (rows 12..27, cols 12..27).
    moving = ((i >= 12) & (i < 28) & (j >= 12) & (j < 28)).astype(np.float32)
    # A constant field of (-10, -6) voxels: every fixed voxel x reads moving at x + ddf,
    # i.e. 10 rows up and 6 columns left, so the square appears 10 down and 6 right.
    ddf = np.zeros((n, n, 2), np.float32)
    ddf[..., 0], ddf[..., 1] = -10.0, -6.0
    warped = np.asarray(jaxreg.warp(moving, ddf))

    fig, axes = plt.subplots(1, 3, figsize=(12, 4.6), layout="constrained")
    for ax, img, title in zip(axes, [moving, warped], ["moving", "warp(moving, ddf)"]):
        ax.imshow(img, cmap="gray", origin="upper")
        ax.set_title(title)
        ax.set_xlabel("axis 1 (j)")
        ax.set_ylabel("axis 0 (i)")
    ax = axes[2]
    ax.imshow(warped, cmap="gray", origin="upper", alpha=0.35)
    ax.imshow(np.ma.masked_equal(moving, 0), cmap="autumn", origin="upper", alpha=0.5)
    step = 8
    ii, jj = i[::step, ::step], j[::step, ::step]
    # quiver draws (x, y) = (axis 1, axis 0); with origin="upper" axis 0 points down.
    ax.quiver(jj, ii, ddf[::step, ::step, 1], ddf[::step, ::step, 0], angles="xy",
              scale_units="xy", scale=1, color="tab:blue", width=0.005)
    ax.set_title("ddf on the fixed grid points into moving\nwarped(x) = moving(x + ddf(x))")
    ax.set_xlabel("axis 1 (j)")
    ax.set_ylabel("axis 0 (i)")
    fig.legend(handles=[Patch(facecolor=(0.82, 0.33, 0.33), label="the square in moving"),
                       Patch(facecolor="white", edgecolor="0.4", label="the square in warp(moving, ddf)"),
                       Line2D([], [], color="tab:blue", marker=">", markersize=5,
                              label="ddf(x) from fixed voxel x to where it reads moving")],
               loc="outside lower center", ncols=3, fontsize=10, frameon=False)
    out = Path(__file__).with_name("pull_convention.png")
    fig.savefig(out, dpi=90)
    print(out)


if __name__ == "__main__":
    main()
