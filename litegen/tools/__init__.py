"""Command-line tools around training: dry-run planning (plan), weight conversion (convert)."""
