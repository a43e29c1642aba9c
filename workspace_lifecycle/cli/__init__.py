"""The ``workspace-lifecycle`` command line (also ``python -m workspace_lifecycle``).

Commands: ``demo`` (a scripted chat, printing each state change live), ``diagram``, ``status``,
``list`` (one owner's chats), ``watch``, ``logs``, the requests ``create``, ``start``, ``stop``
and ``delete``, ``touch`` (push the idle deadline), ``provision --simulate``, ``mcp`` and
``completion bash|zsh``. Every command that uses a store takes ``--db URL`` (default: the environment variable
``WORKSPACE_LIFECYCLE_DB``, else the SQLite file ``./workspace-lifecycle.db``), so two terminals on
one file work together: ``provision --simulate`` in one, ``create`` and ``start`` in the other.

A missing SQLite file is created only by the commands that write on their own (``create``,
``demo``, ``provision``, ``mcp``); the others (``status``, ``watch``, ``logs``, ``start``, ``stop``,
``delete``) refuse it, since no chat can be there yet.

A user's mistake (a bad URL, an unreadable database, an unknown command) is one sentence on
stderr and a non-zero exit status, never a traceback: 2 for a usage error, 1 for anything else.

Layout: one module per command, its sub-parser (``add_parser``) beside its handler
(``handle``): :mod:`.demo`, :mod:`.diagram`, :mod:`.status`, :mod:`.watch`, :mod:`.logs`, :mod:`.requests`
(``create``, ``start``, ``stop``, ``delete``), :mod:`.listing` (``list``), :mod:`.touch`,
:mod:`.provision`, :mod:`.mcp`, :mod:`.completion`; what several
of them use (option types, opening a store, errors and exit statuses, output) is in
:mod:`._shared`. The commands decide nothing about workspaces: the requests are the tools' own
calls (:func:`~workspace_lifecycle.tools.run_tool_call`), and what they print is read off the
core (:func:`~workspace_lifecycle.steps.agent_status`,
:func:`~workspace_lifecycle.steps.request_transition`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import NoReturn

from .. import __version__
from ..adapters import open_store as open_store
from . import completion, demo, diagram, listing, logs, mcp, pool, provision, requests, status, touch, watch
from ._shared import DB_ENV as DB_ENV
from ._shared import PROG as PROG
from ._shared import CliError as CliError
from ._shared import Handler, is_tty, report, user_error
from .requests import PENDING_HINT_ENV as PENDING_HINT_ENV

__all__ = ["build_parser", "main"]

# The commands look up ``open_store`` and ``_is_tty`` here when they run (``_shared.patchable``), so a test that
# replaces one (a store factory, a terminal) replaces it for every command.
_is_tty = is_tty

#: The command modules, in the order ``--help`` lists their commands.
_COMMANDS = (demo, diagram, status, listing, watch, logs, requests, touch, provision, pool, mcp, completion)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (not the usage block plus a line)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; each parsed command carries its ``handler``."""
    parser = _Parser(
        prog=PROG,
        description=(
            "A chat's workspace as an explicit, event-driven state machine. Run 'demo' to watch a "
            "scripted chat; 'provision --simulate' in one terminal and 'create' and 'start' in "
            "another to drive one by hand."
        ),
        epilog=f"'{PROG} COMMAND --help' explains each command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _COMMANDS:
        module.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    if argv is None:
        completion.autocomplete(parser)  # the shell asking for completions: answered, then exit
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 1
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:  # known kinds are reported; the rest re-raised
        error = user_error(exc)
        if error is None:
            raise
        return report(error)
