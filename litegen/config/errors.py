"""The one exception type for user configuration mistakes, so entry points can print it cleanly."""


class ConfigError(ValueError):
    """A config value is wrong. The message names the field (dotted path) and the fix."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        lines = [f"  {path}: {msg}" for path, msg in problems]
        super().__init__("invalid config:\n" + "\n".join(lines))
