"""Pretrained causal video VAEs from diffusers (AutoencoderKLWan, AutoencoderKLCogVideoX) behind
the VideoEncoder interface, with each model's own latent normalisation applied inside.
"""

import json
import math
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

from litegen.encoders.base import VideoEncoder, dtype_name, folder_fingerprint, resolve_dtype

# Per class: config -> (spatial_factor, temporal_factor, latent_channels). Derived from the
# architecture fields rather than `scale_factor_*`, because those are free-standing defaults
# (Wan's 4/8) that a custom or older config.json does not keep in sync with dim_mult.


def _wan_factors(cfg: dict) -> tuple[int, int, int]:
    levels = len(cfg["dim_mult"]) - 1  # the last block never downsamples
    spatial = 2**levels * (cfg.get("patch_size") or 1)  # Wan 2.2 patchifies 2x2 before the encoder
    temporal = 2 ** sum(bool(flag) for flag in cfg["temperal_downsample"][:levels])
    return spatial, temporal, cfg["z_dim"]


def _cogvideox_factors(cfg: dict) -> tuple[int, int, int]:
    levels = len(cfg["block_out_channels"]) - 1
    temporal = 2 ** min(int(math.log2(cfg["temporal_compression_ratio"])), levels)
    return 2**levels, temporal, cfg["latent_channels"]


def _generic_factors(cfg: dict) -> tuple[int, int, int]:
    # HunyuanVideo / LTX style configs name the ratios directly; untested, guarded at encode time.
    try:
        return (int(cfg["spatial_compression_ratio"]), int(cfg["temporal_compression_ratio"]),
                int(cfg["latent_channels"]))
    except KeyError as err:
        raise ValueError(f"cannot read the compression of {cfg.get('_class_name')}: config has no {err}; "
                         f"supported: {sorted(_FACTORS)}") from None


_FACTORS: dict[str, Callable[[dict], tuple[int, int, int]]] = {
    "AutoencoderKLWan": _wan_factors,
    "AutoencoderKLCogVideoX": _cogvideox_factors,
}


def _import_diffusers():
    try:
        import diffusers
    except ImportError as err:
        raise ImportError("the diffusers video VAE needs the optional extra: pip install litegen[hf]") from err
    return diffusers


def _read_config(folder: Path) -> dict:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"no config.json in {folder} (encoders.video.path / subfolder must name a "
                                f"local diffusers VAE folder; hub ids are not downloaded)")
    cfg = json.loads(config_path.read_text())
    if "_class_name" not in cfg:
        raise ValueError(f"{config_path} has no _class_name; is it a diffusers model folder?")
    return cfg


def _normalisation(cfg: dict) -> tuple[str, list[float], list[float]]:
    """(mode, shift, scale) with normalised = (z - shift) * scale, as the diffusers pipelines do.

    Wan stores per-channel latents_mean/std (pipeline: (z - mean) * (1 / std)); CogVideoX and
    most image VAEs store one scaling_factor and an optional shift_factor.
    """
    mean, std = cfg.get("latents_mean"), cfg.get("latents_std")
    if mean is not None and std is not None:
        return "mean_std", list(mean), [1.0 / s for s in std]
    shift = cfg.get("shift_factor") or 0.0
    return "scale_shift", [shift], [cfg.get("scaling_factor", 1.0)]


class DiffusersVideoVAE(VideoEncoder):
    """A frozen diffusers AutoencoderKL* video VAE; latents come out normalised, decode undoes it."""

    causal = True  # Wan and CogVideoX encode the first frame alone: T' = 1 + (T - 1) / tf

    def __init__(self, path: str, subfolder: Optional[str] = None,
                 dtype: Union[str, torch.dtype] = "fp32", device: Union[str, torch.device] = "cpu"):
        self.folder = Path(path) / subfolder if subfolder else Path(path)
        file_cfg = _read_config(self.folder)
        self.class_name = file_cfg["_class_name"]
        self.dtype = resolve_dtype(dtype)
        self.device = torch.device(device)
        self.vae = self._load(path, subfolder)
        cfg = dict(self.vae.config)  # from the model: fields missing in the file get class defaults
        factors = _FACTORS.get(self.class_name, _generic_factors)(cfg)
        self.spatial_factor, self.temporal_factor, self.latent_channels = factors
        self.normalisation, shift, scale = _normalisation(cfg)
        self.shift = self._channel_tensor(shift)
        self.scale = self._channel_tensor(scale)

    def _load(self, path: str, subfolder: Optional[str]) -> torch.nn.Module:
        diffusers = _import_diffusers()
        cls = getattr(diffusers, self.class_name, None)
        if cls is None:
            raise ValueError(f"diffusers {diffusers.__version__} has no class {self.class_name!r} "
                             f"(named by {self.folder / 'config.json'})")
        vae = cls.from_pretrained(path, subfolder=subfolder, torch_dtype=self.dtype, local_files_only=True)
        return vae.to(self.device).eval().requires_grad_(False)

    def _channel_tensor(self, values: list[float]) -> torch.Tensor:
        # float32 even for a bf16 VAE: normalisation is cheap and bf16 would cost latent precision.
        return torch.tensor(values, dtype=torch.float32, device=self.device).view(1, -1, 1, 1, 1)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        self.check_pixels(pixels)
        raw = self.vae.encode(pixels.to(self.device, self.dtype)).latent_dist.mode().float()
        self._check_encoded(tuple(pixels.shape), tuple(raw.shape))
        return (raw - self.shift) * self.scale

    def _check_encoded(self, pixel_shape: tuple, latent_shape: tuple) -> None:
        # latent_shape() is derived from config; fail loudly if the model disagrees, since
        # buckets and the DiT's patch grid are planned from latent_shape() before encoding.
        expected = (pixel_shape[0],) + self.latent_shape(*pixel_shape[2:])
        if latent_shape != expected:
            raise RuntimeError(f"{self.class_name} encoded {pixel_shape} to {latent_shape}, but its config "
                               f"implies {expected}; this VAE class's compression rule is not supported")

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self.check_latents(latents)
        raw = latents.to(self.device, torch.float32) / self.scale + self.shift
        pixels = self.vae.decode(raw.to(self.dtype)).sample
        return pixels.float().clamp(-1.0, 1.0)

    def signature(self) -> dict[str, Any]:
        return {"kind": "diffusers", "class_name": self.class_name, "latent_channels": self.latent_channels,
                "spatial_factor": self.spatial_factor, "temporal_factor": self.temporal_factor,
                "normalisation": self.normalisation, "dtype": dtype_name(self.dtype),
                "fingerprint": folder_fingerprint(self.folder)}
