"""Draws docs/figures/synthetic_pairs.png: one pair of each built-in synthetic anatomy.

    python docs/figures/synthetic.py
"""

from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from jaxreg.data.synthetic import ANATOMIES, synthetic_pair  # noqa: E402

SIZE = 64
NEAR = 4  # keypoints within this many voxels of the slice are drawn


def main() -> None:
    fig, axes = plt.subplots(len(ANATOMIES), 4, figsize=(14.5, 3.6 * len(ANATOMIES)), layout="constrained")
    for row, anatomy in zip(axes, ANATOMIES):
        pair = {k: np.asarray(v) for k, v in synthetic_pair(jax.random.key(0), (SIZE,) * 3, anatomy=anatomy).items()}
        z = SIZE // 2  # the middle slice of axis 0; rows are axis 1, columns axis 2
        row[0].imshow(pair["fixed"][z], cmap="gray")
        row[0].set_title(f"{anatomy}: fixed")
        row[1].imshow(pair["moving"][z], cmap="gray")
        row[1].set_title(f"{anatomy}: moving")
        row[2].imshow(pair["fixed"][z], cmap="gray")
        row[2].contour(pair["fixed_labels"][z], levels=np.arange(0.5, pair["fixed_labels"].max() + 1), colors="lime",
                       linewidths=0.8)
        row[2].contour(pair["moving_labels"][z], levels=np.arange(0.5, pair["moving_labels"].max() + 1), colors="red",
                       linewidths=0.8)
        row[2].set_title("label contours over fixed")
        handles = [Line2D([], [], color="lime", label="fixed labels"), Line2D([], [], color="red", label="moving labels")]
        if "fixed_points" in pair:
            for ax, key, marker, colour, name in ((row[2], "fixed_points", "+", "yellow", "fixed keypoints"),
                                                  (row[1], "moving_points", "x", "cyan", "moving keypoints")):
                pts = pair[key]
                near = np.abs(pts[:, 0] - z) < NEAR
                ax.plot(pts[near, 2], pts[near, 1], linestyle="none", marker=marker, color=colour, ms=7, mew=1.5,
                        label=f"{name} (±{NEAR} slices)")
            row[1].legend(loc="lower center", fontsize=8, framealpha=0.8)
            handles.append(row[2].lines[-1])
        row[2].legend(handles=handles, loc="lower center", fontsize=8, framealpha=0.8, ncols=1)
        step = 4
        d = pair["ddf"][z]
        ii, jj = np.mgrid[0:SIZE:step, 0:SIZE:step]
        im = row[3].imshow(np.linalg.norm(pair["ddf"][z], axis=-1), cmap="magma")
        row[3].quiver(jj, ii, d[::step, ::step, 2], d[::step, ::step, 1], color="cyan",
                      angles="xy", scale_units="xy", scale=1, width=0.004)
        row[3].set_title("true ddf: |u| (colour),\nin-plane arrows (axes 1, 2)")
        fig.colorbar(im, ax=row[3], fraction=0.046, pad=0.03, label="|u| (voxels, all 3 components)")
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(f"slice {z} of axis 0\naxis 1")
        row[0].set_xlabel("axis 2")
    fig.suptitle(f"Synthetic pairs, {SIZE}³, key 0: middle slice of each anatomy")
    out = Path(__file__).with_name("synthetic_pairs.png")
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
