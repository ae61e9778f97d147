"""Command-line tools around training: weight conversion (convert), ..."""
