"""Errors that name what the user typed: a Python parameter in the API, a flag on the command line."""

from __future__ import annotations

from string import Formatter

# How each setting is spelled on the command line, where it differs from `--name-with-dashes`.
FLAGS = {
    "n_clusters": "--clusters",
    "layout": "--runtime",
    "seed": "--seed",
    "overwrite": "--overwrite",
    "model_name_or_path": "--model",
    "save_dir": "--output",
}
# How a switch is spelled in Python when the message asks the user to turn it on.
PYTHON_SWITCHES = {"overwrite": "overwrite=True"}


def literal(text: str) -> str:
    """Text for a SettingError message, with its braces kept as they are."""
    return str(text).replace("{", "{{").replace("}", "}}")


def flag_of(param: str) -> str:
    return FLAGS.get(param, "--" + param.replace("_", "-"))


class SettingError(ValueError):
    """A bad setting. `message` holds one `{}` where the setting's name goes, and `{other}` for
    each other setting it names (e.g. `{n_clusters}`).

    str(err) names the Python parameters; err.for_cli() names the command-line flags.
    """

    def __init__(self, param: str, message: str) -> None:
        self.param = param
        self.message = message
        super().__init__(self._named(lambda p: PYTHON_SWITCHES.get(p, p)))

    def for_cli(self) -> str:
        return self._named(flag_of)

    def _named(self, name_of) -> str:
        fields = [field for _, field, _, _ in Formatter().parse(self.message) if field is not None]
        return self.message.format(*[name_of(self.param)] * fields.count(""),
                                   **{p: name_of(p) for p in fields if p})


class SettingTypeError(SettingError, TypeError):
    """A setting of the wrong type (a str where a number belongs, None for a path); also a ValueError, so
    callers that catch bad settings as ValueError catch it too."""
