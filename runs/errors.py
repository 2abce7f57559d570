"""Errors of the entry points as one clear message: ours first, no traceback (``HYDRA_FULL_ERROR=1``
shows it, as Hydra does). Interrupts (:mod:`runs.stop_signals`) and exit statuses pass through."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["FULL_ERROR_ENV", "one_line_errors", "prefixed"]

FULL_ERROR_ENV = "HYDRA_FULL_ERROR"
F = TypeVar("F", bound=Callable[..., Any])


def prefixed(error: BaseException, key: str, hint: str = "") -> BaseException:
    """``error`` again, of its own type, its message prefixed by the config key it came from,
    ``"<key>: <message>"`` (and ``" (<hint>)"``), to raise ``from None``; ``error`` itself when its type
    takes no single message. The one way the project names the key of a value that failed."""
    message = f"{key}: {error}" + (f" ({hint})" if hint else "")
    try:
        return type(error)(message)
    except Exception:  # an exception type with another signature
        return error


def refuse_cleanly(refusal: type[Exception], check: Callable[..., None], *args: Any) -> None:
    """Run ``check(*args)`` inside a Hydra callback: a ``refusal`` it raises ends the process with
    ``Error: <message>`` and exit status 1 (Hydra would print a traceback for an exception raised in a
    callback); with ``HYDRA_FULL_ERROR=1`` it propagates."""
    try:
        check(*args)
    except refusal as e:
        if os.environ.get(FULL_ERROR_ENV) == "1":
            raise
        print(f"Error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def one_line_errors(main: F) -> F:
    """Decorate a Hydra main function: an exception it raises is printed as ``Error: <type>: <message>``
    on stderr and the process exits with status 1; with ``HYDRA_FULL_ERROR=1`` it propagates (traceback)."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except Exception as e:
            if os.environ.get(FULL_ERROR_ENV) == "1":
                raise
            sys.stdout.flush()
            print(f"Error: {type(e).__name__}: {e}\n(the traceback: set {FULL_ERROR_ENV}=1)",
                  file=sys.stderr, flush=True)
            raise SystemExit(1) from None

    return wrapper  # type: ignore[return-value]
