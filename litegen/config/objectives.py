"""Typed schemas of the objectives beyond rectified flow: v-prediction, EDM, masked tokens."""

from dataclasses import dataclass

from litegen.config.schema import ObjectiveConfig, Problems, _one_of, _positive


@dataclass
class VPredictionConfig(ObjectiveConfig):
    """Discrete DDPM schedule, v target, CogVideoX's SNR shift and zero-terminal-SNR rescale."""

    name: str = "v_prediction"
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"  # scaled_linear (sqrt-linear betas) | linear
    beta_start: float = 0.00085
    beta_end: float = 0.012
    snr_shift_scale: float = 3.0  # divides the SNR everywhere; CogVideoX-2B 3.0, 5B 1.0
    zero_terminal_snr: bool = True  # rescale so the last timestep is pure noise
    # explicit_uniform: micro-batch i of a step's N (over all data-parallel ranks and accumulation
    # steps) draws stratified within [i/N, (i+1)/N), so every step covers all noise levels
    # (CogVideoX); uniform: i.i.d. per sample.
    timestep_sampling: str = "explicit_uniform"

    def problems(self) -> Problems:
        yield from _one_of(self, "beta_schedule", ("scaled_linear", "linear"))
        yield from _one_of(self, "timestep_sampling", ("explicit_uniform", "uniform"))
        yield from _positive(self, "num_train_timesteps", "beta_start", "beta_end", "snr_shift_scale")
        if self.beta_end <= self.beta_start or self.beta_end >= 1:
            yield "beta_end", f"must be in (beta_start, 1), got {self.beta_end}"


@dataclass
class EDMConfig(ObjectiveConfig):
    """Karras et al. (2022) preconditioning, log-normal sigma, loss weighting, Heun/Euler sampler.

    `input_scale` is Snap Video's extension to redundant video: the data are divided by it before
    noise is added (the preconditioning sees sigma_data / input_scale), so at a given sigma less of
    a highly redundant clip survives; samples are multiplied back.
    """

    name: str = "edm"
    sigma_data: float = 0.5
    p_mean: float = -1.2  # ln(sigma) ~ N(p_mean, p_std^2) in training
    p_std: float = 1.2
    input_scale: float = 1.0
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0  # sampler time-step exponent
    sampler: str = "heun"  # heun (2nd order) | euler

    def problems(self) -> Problems:
        yield from _one_of(self, "sampler", ("heun", "euler"))
        yield from _positive(self, "sigma_data", "p_std", "input_scale", "sigma_min", "sigma_max", "rho")
        if self.sigma_max <= self.sigma_min:
            yield "sigma_max", f"must exceed sigma_min={self.sigma_min}, got {self.sigma_max}"


@dataclass
class MaskedTokensConfig(ObjectiveConfig):
    """Masked visual-token prediction (MaskGIT / WorldDreamer) over a VQ tokenizer's codes."""

    name: str = "masked_tokens"
    tokenizer: str = "palette"  # palette: the built-in weight-free tokenizer (litegen/encoders/vq.py)
    palette_levels: int = 4  # levels per RGB channel: vocab = levels^3
    palette_patch: int = 2  # latent positions per token side (the tokenizer's downsampling)
    latent_channels: int = 12  # channels of the latents the tokenizer reads (= model.in_channels)
    mask_schedule: str = "cosine"  # ratio of masked tokens as a function of u ~ U(0, 1) / step
    sample_temperature: float = 1.0  # token sampling temperature in decoding
    choice_temperature: float = 4.5  # MaskGIT's annealed noise on which tokens to keep

    @property
    def vocab_size(self) -> int:
        return self.palette_levels ** 3

    def problems(self) -> Problems:
        yield from _one_of(self, "tokenizer", ("palette",))
        yield from _one_of(self, "mask_schedule", ("cosine", "linear"))
        yield from _positive(self, "latent_channels", "sample_temperature", "palette_patch")
        if self.palette_levels < 2:
            yield "palette_levels", f"must be >= 2, got {self.palette_levels}"
        if self.latent_channels % 3:
            yield "latent_channels", ("the palette tokenizer reads RGB groups: must be a multiple of 3, "
                                      f"got {self.latent_channels}")
        if self.choice_temperature < 0:
            yield "choice_temperature", f"must be >= 0, got {self.choice_temperature}"
