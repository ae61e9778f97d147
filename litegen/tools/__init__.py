"""Command-line tools around training: prep (videos -> shards), plan (dry run), convert
(diffusers weights)."""
