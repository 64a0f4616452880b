"""The faults a user fixes, and how every binary reports them.

Every error whose message says what to change (a config value, a path, a missing file, a weights
name) derives from `UserError`. A binary run through `run_main` prints such an error as one line,
`error: ...`, on stderr and exits with EXIT_USER; any other exception is a bug and keeps its
traceback. A run stopped by SIGTERM / SIGINT after saving its checkpoint exits with EXIT_STOPPED
(EX_TEMPFAIL from sysexits.h), so a scheduler can tell "stopped, requeue me" from "finished" (0)
and from "failed" (1).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

EXIT_OK = 0
EXIT_USER = 1
EXIT_STOPPED = 75


class UserError(Exception):
  """A fault with a message that says the fix; printed as one line, no traceback."""


def one_line(err: BaseException) -> str:
  """The error's message on one line (multi-line messages joined with '; ')."""
  text = str(err)
  if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
    text = err.args[0]  # KeyError's str() adds quotes
  parts = [p.strip() for p in text.splitlines() if p.strip()]
  return "; ".join(parts) or type(err).__name__


def report(err: BaseException, stream=None) -> int:
  """Prints `error: <one line>` to stderr; returns EXIT_USER."""
  print(f"error: {one_line(err)}", file=stream or sys.stderr, flush=True)
  return EXIT_USER


def quiet_libraries() -> None:
  """orbax, grain and jax log routine steps at INFO; the binaries print their own progress. An
  explicit -v / --verbosity wins."""
  from absl import flags, logging  # pylint: disable=import-outside-toplevel

  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def run_main(main: Callable[[Sequence[str]], int | None], argv: Sequence[str] | None = None) -> None:
  """absl's app.run(main) with the project's conventions: library logging quiet unless -v asks for
  it; a UserError becomes one line on stderr and EXIT_USER; main's return value (None -> 0) is the
  exit status."""
  from absl import app  # pylint: disable=import-outside-toplevel

  def wrapped(args):
    quiet_libraries()
    try:
      return main(args) or EXIT_OK
    except (UserError, app.UsageError) as err:  # a wrong combination of flags is the user's fault too
      return report(err)

  app.run(wrapped, argv=list(argv) if argv is not None else None)
