"""Draws docs/figures/synthetic_pairs.png: one pair of each built-in synthetic anatomy.

    python docs/figures/synthetic.py
"""

from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxreg.data.synthetic import ANATOMIES, synthetic_pair  # noqa: E402


def main() -> None:
    fig, axes = plt.subplots(len(ANATOMIES), 4, figsize=(13, 3.3 * len(ANATOMIES)))
    for row, anatomy in zip(axes, ANATOMIES):
        pair = {k: np.asarray(v) for k, v in synthetic_pair(jax.random.key(0), (64, 64, 64), anatomy=anatomy).items()}
        z = 32  # the middle slice of axis 0; rows are axis 1, columns axis 2
        row[0].imshow(pair["fixed"][z], cmap="gray")
        row[0].set_title(f"{anatomy}: fixed")
        row[1].imshow(pair["moving"][z], cmap="gray")
        row[1].set_title("moving")
        row[2].imshow(pair["fixed"][z], cmap="gray")
        row[2].contour(pair["fixed_labels"][z], levels=np.arange(0.5, pair["fixed_labels"].max() + 1), colors="lime", linewidths=0.6)
        row[2].contour(pair["moving_labels"][z], levels=np.arange(0.5, pair["moving_labels"].max() + 1), colors="red", linewidths=0.6)
        row[2].set_title("labels: fixed (green), moving (red)")
        if "fixed_points" in pair:
            near = np.abs(pair["fixed_points"][:, 0] - z) < 4
            row[2].plot(pair["fixed_points"][near, 2], pair["fixed_points"][near, 1], "y+", ms=6)
        step = 4
        d = pair["ddf"][z]
        ii, jj = np.mgrid[0:64:step, 0:64:step]
        row[3].imshow(np.linalg.norm(pair["ddf"][z], axis=-1), cmap="magma")
        row[3].quiver(jj, ii, d[::step, ::step, 2], d[::step, ::step, 1], color="cyan",
                      angles="xy", scale_units="xy", scale=1, width=0.004)
        row[3].set_title("true ddf (|u| and in-plane arrows, voxels)")
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    out = Path(__file__).with_name("synthetic_pairs.png")
    fig.savefig(out, dpi=70)
    print(out)


if __name__ == "__main__":
    main()
