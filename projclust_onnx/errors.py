"""Errors that name what the user typed: a Python parameter in the API, a flag on the command line."""

from __future__ import annotations

# How each setting is spelled on the command line, where it differs from `--name-with-dashes`.
FLAGS = {
    "n_clusters": "--clusters",
    "layout": "--runtime",
    "seed": "--seed",
    "overwrite": "--overwrite",
}
# How a switch is spelled in Python when the message asks the user to turn it on.
PYTHON_SWITCHES = {"overwrite": "overwrite=True"}


def literal(text: str) -> str:
    """Text for a SettingError message, with its braces kept as they are."""
    return str(text).replace("{", "{{").replace("}", "}}")


def flag_of(param: str) -> str:
    return FLAGS.get(param, "--" + param.replace("_", "-"))


class SettingError(ValueError):
    """A bad setting. `message` holds one `{}` where the setting's name goes.

    str(err) names the Python parameter; err.for_cli() names the command-line flag.
    """

    def __init__(self, param: str, message: str) -> None:
        self.param = param
        self.message = message
        super().__init__(message.format(PYTHON_SWITCHES.get(param, param)))

    def for_cli(self) -> str:
        return self.message.format(flag_of(self.param))
