"""User-facing errors: one clear line, non-zero exit, never a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class UserError(Exception):
    """A mistake the user can fix (bad recipe, key, value, data path, ...).

    The message is a single line that says what was wrong and how to fix it.
    """


def one_line(err: UserError) -> str:
    """The error's message. A UserError raised in a DataLoader worker is re-raised in the trainer
    wrapped in the worker's traceback (torch's ExceptionWrapper.reraise), which ends with the
    line ``module.Class: message``: that message is the one to show."""
    lines = str(err).strip().splitlines()
    if len(lines) <= 1:
        return str(err)
    return lines[-1].removeprefix(f"{type(err).__module__}.{type(err).__qualname__}: ")


def require(ok: bool, message: str) -> None:
    """Raise ``UserError(message)`` unless ``ok``: the range checks of recipes and protocols."""
    if not ok:
        raise UserError(message)


def cli_entry(main: Callable[[list[str]], T]) -> Callable[[list[str] | None], T]:
    """Wrap a command-line ``main(argv)`` so that a :class:`UserError` prints
    ``error: <message>`` on stderr and exits with status 2, and Ctrl-C exits 130."""

    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None) -> T:
        try:
            return main(sys.argv[1:] if argv is None else argv)
        except UserError as err:
            print(f"error: {one_line(err)}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapped
