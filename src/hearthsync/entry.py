"""The ``hearth`` command's entry point: the command line itself is `hearthsync.cli`.

It is imported here, not by the script pip writes, so that a Ctrl-C while it loads (more than
half a second on a small robot's CPU) stops the command quietly, with the status a shell gives
a command stopped by SIGINT (130), as typer stops a command once it runs, instead of a
traceback of the imports it interrupted.
"""

from __future__ import annotations

#: the exit status of a command stopped by Ctrl-C (128 + SIGINT)
INTERRUPTED = 130


def main() -> None:
    try:
        from hearthsync.cli import main as run_command

        run_command()
    except KeyboardInterrupt:
        # from the imports (typer takes it once the command runs; the long commands handle
        # their own: `hearth run` closes its store, `hearth chaos` prints what ran)
        raise SystemExit(INTERRUPTED) from None
