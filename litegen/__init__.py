"""LiteGen: pretraining framework for large video diffusion transformers."""

__version__ = "0.1.0"
