"""Command-line tools around training: `python -m litegen.tools.prep` (videos -> shards)."""
