"""The networks: the VoxelMorph U-Net and one-shot network, the Swin encoder and DiffuseReg's denoiser.

Which network a config's ``model.name`` builds, with its loss and predict function, is
``jaxreg.methods`` (the registry sits above the networks and the methods that use them).
"""

from __future__ import annotations

from jaxreg.models import denoiser, swin, unet, voxelmorph
from jaxreg.models.denoiser import Denoiser
from jaxreg.models.unet import UNet
from jaxreg.models.voxelmorph import VoxelMorph

__all__ = ["Denoiser", "UNet", "VoxelMorph", "denoiser", "swin", "unet", "voxelmorph"]
