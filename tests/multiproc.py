"""Helpers for tests that run replicas as separate processes (tests/replica.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import workspace_lifecycle as wl
from workspace_lifecycle import JobStatus, Transition

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
        await store.register_chat(chat, owner)
        ws = (await store.create_workspace(chat, "dev", expected_workspace_id=None)).facts.workspace_id
        for number, transition in ((1, None), (2, Transition.STOP)):
            if transition is not None:
                assert (await store.request_build(ws, transition, expected_build_number=number - 1)).fired
            build = await store.claim_build("setup")
            assert build is not None
            await store.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=True)
        return ws
