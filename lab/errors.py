"""The errors the command line reports on one line, before anything is written (exit code 2).

A leaf module: the tasks, the config and the run machinery raise these without importing one another.
Each message starts with what it names: a config key (`task.n_digits: 0 is not in 1..18`), a command
option (`-o: ...`) or the run's directory key (`train.resume: ...`).
"""


class LabError(Exception):
    """A problem the user can fix, reported as `<kind>: <message>` on one line."""

    kind = "error"


class ConfigError(LabError, ValueError):
    """A bad configuration: an unknown key, a value of the wrong type, an impossible value."""

    kind = "config error"


class RunError(LabError):
    """A run or sweep directory, checkpoint, lock or output path that cannot be used as asked."""

    kind = "run error"


def check(ok: bool, key: str, msg: str) -> None:
    """Raise `ConfigError("key: msg")` unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}: {msg}")
