"""Training: the loop, checkpoints, EMA, metrics and the `python -m litegen.train` entry point."""
