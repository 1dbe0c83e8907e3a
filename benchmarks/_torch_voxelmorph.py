"""The PyTorch peer of the benchmarks: VoxelMorph's U-Net with jaxreg's widths, its warp and losses.

Imported by ``train_step.py`` and ``conv_inference.py`` only when PyTorch is installed
(``torch`` is not a dependency of jaxreg). Channels first, PyTorch's native layout.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from jaxreg.models import unet


class UNet(nn.Module):
    """VoxelMorph's vxm U-Net, the widths of ``jaxreg.models.unet`` (``ENCODER``, ``DECODER``): 3×3×3
    convolutions, leaky ReLU 0.2, max pooling, nearest 2× up-sampling, skip concatenations, a
    3-channel flow layer initialised near zero."""

    def __init__(self, enc=unet.ENCODER, dec=unet.DECODER):
        super().__init__()
        self.enc, width = nn.ModuleList(), 2
        for f in enc:
            self.enc.append(nn.Conv3d(width, f, 3, padding=1))
            width = f
        self.up, skips = nn.ModuleList(), list(enc)
        for f in dec[:len(enc)]:
            self.up.append(nn.Conv3d(width, f, 3, padding=1))
            width = f + skips.pop()
        self.rest = nn.ModuleList()
        for f in dec[len(enc):]:
            self.rest.append(nn.Conv3d(width, f, 3, padding=1))
            width = f
        self.flow = nn.Conv3d(width, 3, 3, padding=1)
        nn.init.normal_(self.flow.weight, std=1e-5)
        nn.init.zeros_(self.flow.bias)

    def forward(self, x):
        act = lambda y: F.leaky_relu(y, 0.2)  # noqa: E731
        skips = []
        for conv in self.enc:
            x = act(conv(x))
            skips.append(x)
            x = F.max_pool3d(x, 2)
        for conv in self.up:
            x = F.interpolate(act(conv(x)), scale_factor=2, mode="nearest")
            x = torch.cat([x, skips.pop()], dim=1)
        for conv in self.rest:
            x = act(conv(x))
        return self.flow(x)


def warp(moving, ddf):
    """``(B, C, *S)`` image pulled through a ``(B, 3, *S)`` voxel displacement: linear, edges clamped
    (jaxreg's ``warp`` defaults), with ``grid_sample``."""
    sizes = torch.tensor(moving.shape[2:], dtype=ddf.dtype)
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=ddf.dtype) for s in moving.shape[2:]], indexing="ij"))
    coords = (grid[None] + ddf) / (sizes - 1).view(1, 3, 1, 1, 1) * 2 - 1
    return F.grid_sample(moving, coords.permute(0, 2, 3, 4, 1).flip(-1), align_corners=True, padding_mode="border")


def lncc(f, w, win=9):
    """VoxelMorph's LNCC loss (box window ``win``, zero padding), lower is better."""
    box = torch.ones(1, 1, win, win, win)
    s = lambda x: F.conv3d(x, box, padding=win // 2)  # noqa: E731
    n = float(win**3)
    sf, sw, sff, sww, sfw = s(f), s(w), s(f * f), s(w * w), s(f * w)
    cross, vf, vw = sfw - sf * sw / n, sff - sf * sf / n, sww - sw * sw / n
    return 1 - torch.mean(cross * cross / (vf * vw + 1e-5))


def diffusion(u):
    """Mean squared forward differences of a ``(B, 3, *S)`` field over the three axes."""
    return sum(torch.mean(torch.diff(u, dim=a) ** 2) for a in (2, 3, 4)) / 3
