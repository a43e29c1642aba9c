"""Helpers for tests that run replicas as separate processes (tests/helpers/replica.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from workspaces import stopped

import workspace_lifecycle as wl

WORKER = Path(__file__).with_name("replica.py")


def schema_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["schema"][0]


@contextmanager
def replicas(*argvs: list[str]) -> Iterator[list[subprocess.Popen[str]]]:
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for argv in argvs
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.close()
            proc.stdout.close()


def send(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def receive(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"replica exited early with code {proc.wait(timeout=10)}"
    return line.strip()


async def stopped_workspace(url: str, chat: str, owner: str) -> str:
    """A workspace whose latest build is a succeeded stop (build 2)."""
    async with wl.open_store(url) as store:
        return await stopped(store, chat, owner, has_agent=True)


def race(argvs: list[list[str]]) -> list[dict[str, Any]]:
    """Run ``replica.py race`` processes, start them together, and return every answer."""
    with replicas(*argvs) as procs:
        for proc in procs:
            assert receive(proc) == "ready"
        for proc in procs:
            send(proc, "go")
        answers = [json.loads(receive(proc)) for proc in procs]
        for proc in procs:
            send(proc, "exit")
        for proc in procs:
            assert proc.wait(timeout=30) == 0
    return [a for per_process in answers for a in per_process]
