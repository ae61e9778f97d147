"""Weight-free, exactly invertible "video encoder": space-to-depth on pixels.

Lets the whole stack (prep, training, sampling) run without downloading a VAE, and makes decode
errors impossible to confuse with model errors: decode(encode(x)) == x bit for bit.
"""

from typing import Any

import torch

from litegen.encoders.base import VideoEncoder

# Bump when the channel layout changes, so shards written with the old layout are refused.
_LAYOUT_VERSION = 1


class PixelSpaceToDepth(VideoEncoder):
    """Folds each temporal_factor x spatial_factor x spatial_factor pixel block into channels.

    Latent channel index = ((c * tf + dt) * sf + dh) * sf + dw, so C = 3 * tf * sf * sf.
    """

    causal = False

    def __init__(self, spatial_factor: int = 2, temporal_factor: int = 1):
        if spatial_factor < 1 or temporal_factor < 1:
            raise ValueError(f"factors must be >= 1, got spatial_factor={spatial_factor}, "
                             f"temporal_factor={temporal_factor}")
        self.spatial_factor = spatial_factor
        self.temporal_factor = temporal_factor
        self.latent_channels = 3 * temporal_factor * spatial_factor**2

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        self.check_pixels(pixels)
        b, c, t, h, w = pixels.shape
        tf, sf = self.temporal_factor, self.spatial_factor
        x = pixels.float().reshape(b, c, t // tf, tf, h // sf, sf, w // sf, sf)
        # -> [b, c, tf, sf, sf, t', h', w']: the block offsets sit next to c and merge into channels.
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)
        return x.reshape(b, self.latent_channels, t // tf, h // sf, w // sf).contiguous()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self.check_latents(latents)
        b, _, t, h, w = latents.shape
        tf, sf = self.temporal_factor, self.spatial_factor
        x = latents.float().reshape(b, 3, tf, sf, sf, t, h, w)
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)  # -> [b, c, t', tf, h', sf, w', sf]
        return x.reshape(b, 3, t * tf, h * sf, w * sf).clamp(-1.0, 1.0)

    def signature(self) -> dict[str, Any]:
        return {"kind": "pixel", "spatial_factor": self.spatial_factor,
                "temporal_factor": self.temporal_factor, "layout_version": _LAYOUT_VERSION}
