"""The package's environment switches: one reader for those that take one of a few values."""

import os


def env_choice(name: str, default: str, choices: tuple) -> str:
    """The value of environment variable `name` (`default` where unset), which must be one of `choices`;
    else ValueError naming the variable, its value and the choices ("expected a, b or c")."""
    value = os.environ.get(name, default)
    if value not in choices:
        expected = f"{', '.join(choices[:-1])} or {choices[-1]}" if len(choices) > 1 else choices[0]
        raise ValueError(f"blasst: {name} is {value!r}, expected {expected}")
    return value
