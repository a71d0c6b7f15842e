"""Errors a user can cause, reported at the edge as one line and a non-zero exit."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable, Iterable


class UserError(Exception):
    """A problem with the configuration or the data that the user can fix."""


def unknown_choice(kind: str, name: str, valid: Iterable[str]) -> UserError:
    return UserError(f"unknown {kind} '{name}'; valid choices: {', '.join(sorted(valid))}")


def run_main(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run an entry point, turning a UserError into one line on stderr and exit code 2.

    A UserError raised inside a DataLoader worker is re-raised by torch with the worker's
    traceback folded into its message; only the last line carries what the user needs.
    """
    try:
        main(argv)
    except UserError as err:
        lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
        message = lines[-1] if lines else "error"
        message = message.removeprefix(f"{UserError.__module__}.{UserError.__name__}: ")
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted; rerun with --resume true to continue", file=sys.stderr)
        sys.exit(130)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # Checkpoints and summaries are written beside their place and renamed, so what was
        # there before this write is whole.
        path = err.filename2 or err.filename
        print(f"error: no space left on the device writing {path}; the files written before "
              "are whole: free space, then rerun with --resume true", file=sys.stderr)  # fmt: skip
        sys.exit(1)
