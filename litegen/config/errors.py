"""Exception types for user mistakes, so entry points can print them cleanly (no traceback).

A UserError's message names what is wrong (a config field's dotted path, or a shard and sample
key) and the fix; `python -m litegen.train` prints `error: <message>` and exits with code 2.
"""


class UserError(Exception):
    """A mistake in what the user gave LiteGen (config, data, paths), not a bug."""


class ConfigError(UserError, ValueError):
    """A config value is wrong. The message names the field (dotted path) and the fix."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        lines = [f"  {path}: {msg}" for path, msg in problems]
        super().__init__("invalid config:\n" + "\n".join(lines))


class DataError(UserError):
    """The data cannot be used as configured; the message names the shard spec or shard + key."""


class DataValueError(DataError, ValueError):
    """Data or a saved data-loader state that does not fit the run (a ValueError as before)."""


class DataFileNotFound(DataError, FileNotFoundError):
    """No shard where data.shards points."""


class NoUsableData(DataError, RuntimeError):
    """Shards read without one usable sample (e.g. a stage whose buckets match nothing)."""


def user_message(exc: BaseException) -> str:
    """The one-line(ish) message of a user error, also when a DataLoader worker re-raised it with
    the worker's traceback folded into the text."""
    text = str(exc)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    hint = getattr(type(exc), "hint", "")
    return f"{text}\n  fix: {hint}" if hint else text
