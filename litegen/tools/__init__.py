"""Command-line tools around training: dry-run planning, ..."""
