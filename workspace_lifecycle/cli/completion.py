"""``completion bash|zsh``: the shell script that completes this command line (argcomplete's,
the optional ``completion`` extra). Load it with ``eval "$(workspace-lifecycle completion
bash)"`` in ``~/.bashrc`` (``zsh`` likewise, after ``compinit``)."""

from __future__ import annotations

import argparse

from ._shared import PROG, CliError, Commands, command, out

SHELLS = ("bash", "zsh")


def add_parser(commands: Commands) -> None:
    sub = command(
        commands,
        "completion",
        "print the shell completion script (bash or zsh)",
        f"Print the script that completes {PROG}'s commands and options in SHELL; load it with "
        f"'eval \"$({PROG} completion bash)\"' in ~/.bashrc (zsh: in ~/.zshrc, after compinit). "
        "Needs argcomplete: pip install 'workspace-lifecycle[completion]'.",
        handle,
    )
    sub.add_argument("shell", choices=SHELLS, metavar="SHELL", help="bash or zsh")


def handle(args: argparse.Namespace) -> int:
    try:
        from argcomplete.shell_integration import shellcode
    except ModuleNotFoundError:
        raise CliError(
            "shell completion needs argcomplete, which is not installed: "
            "pip install 'workspace-lifecycle[completion]'"
        ) from None
    out(shellcode([PROG], shell=args.shell).rstrip())
    return 0


def autocomplete(parser: argparse.ArgumentParser) -> None:
    """Answer the shell's completion request and exit, when the shell asks (argcomplete sets
    ``_ARGCOMPLETE``); otherwise, or without argcomplete, nothing."""
    try:
        import argcomplete
    except ModuleNotFoundError:
        return
    argcomplete.autocomplete(parser)
