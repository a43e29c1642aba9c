"""Build logs (issue 26, item 2): what a build printed, bounded per build, escaped, fenced by
the lease, paged by the workspace_logs tool, pointed at by a failed build's answer, and
recorded by the ProcessProvisioner however much its child writes."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import anyio
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle import cli
from workspace_lifecycle.buildlogs import (
    MAX_LINE_CHARS,
    MAX_LOG_BYTES,
    MAX_LOG_LINES,
    BuildLog,
    appended,
    escape,
    page,
)
from workspace_lifecycle.tools import dispatch_tool

pytestmark = pytest.mark.anyio

OWNER = "alice"
BUILD = wl.Build("b1", "w1", 1, wl.Transition.START, wl.JobStatus.FAILED, error="boom")


class TestRules:
    def test_control_characters_are_escaped(self) -> None:
        """A log never moves a terminal's cursor: escapes, bells, NULs, CRs become visible text,
        and a backslash is doubled so an escape cannot be faked; tabs and Unicode stay."""
        assert escape("\x1b[2J\x07\x00a\rb\\x1b\tü") == "\\x1b[2J\\x07\\x00a\\rb\\\\x1b\tü"
        assert escape("\ud800") == "\\ud800"

    def test_bounded_in_lines_oldest_dropped_first_and_counted(self) -> None:
        log = appended(None, "b1", [f"line {n}" for n in range(MAX_LOG_LINES + 50)])
        assert len(log.lines) == MAX_LOG_LINES and log.dropped == 50
        assert log.lines[0] == "line 50" and log.total == MAX_LOG_LINES + 50
        again = appended(log, "b1", ["one more"], dropped=7)
        assert again.dropped == 58 and again.lines[-1] == "one more"

    def test_bounded_in_bytes_and_long_lines_cut(self) -> None:
        long = "y" * (MAX_LINE_CHARS * 3)
        log = appended(None, "b1", [long] * 200)
        assert log.bytes <= MAX_LOG_BYTES and sum(len(line.encode()) + 1 for line in log.lines) == log.bytes
        assert log.lines[0].endswith(f"... [{MAX_LINE_CHARS * 2} more characters]")
        assert log.dropped == 200 - len(log.lines) > 0

    def test_pages(self) -> None:
        """The last lines by default; after a line number, the ones after it; next_after pages on."""
        log = appended(None, "b1", [f"l{n}" for n in range(1, 11)])
        last = page(BUILD, log, limit=3).data
        assert last["lines"] == ["l8", "l9", "l10"] and last["first_line"] == 8 and last["more_before"]
        assert last["build_status"] == "failed" and last["build_error"] == "boom"
        first = page(BUILD, log, limit=4, after=0).data
        assert first["lines"] == ["l1", "l2", "l3", "l4"] and first["next_after"] == 4 and first["more_after"]
        rest = page(BUILD, log, limit=100, after=first["next_after"]).data
        assert rest["lines"][0] == "l5" and not rest["more_after"] and rest["next_after"] == 10
        empty = page(BUILD, None).data
        assert empty["lines"] == [] and empty["total_lines"] == 0

    def test_paging_past_dropped_lines(self) -> None:
        log = BuildLog("b1", ("l6", "l7"), 6, dropped=5)
        data = page(BUILD, log, after=2).data
        assert data["lines"] == ["l6", "l7"] and data["first_line"] == 6 and data["dropped_lines"] == 5


async def _claimed(store: wl.Store) -> wl.Build:
    await store.register_chat("c1", OWNER)
    await store.create_workspace("c1", "dev", expected_workspace_id=None)
    build = await store.claim_build("worker")
    assert build is not None and build.lease_token is not None
    return build


class TestStore:
    async def test_append_fenced_bounded_and_read(self, store: wl.Store) -> None:
        """Appended under the lease, bounded in the store, refused to a stale lease, read by number."""
        build = await _claimed(store)
        await store.append_log(build.build_id, ["hello", "\x1b[31mred"], lease=build.lease_token)
        await store.append_log(
            build.build_id, [f"n{i}" for i in range(MAX_LOG_LINES)], lease=build.lease_token
        )
        with pytest.raises(wl.LeaseLostError):
            await store.append_log(build.build_id, ["not mine"], lease="another-token")
        with pytest.raises(ValueError, match="list of strings"):
            await store.append_log(build.build_id, "a string", lease=build.lease_token)
        found = await store.read_log(build.workspace_id, 1)
        assert found is not None
        read, log = found
        assert read.build_id == build.build_id and log is not None
        assert (
            log.dropped == 2 and len(log.lines) == MAX_LOG_LINES and log.lines[-1] == f"n{MAX_LOG_LINES - 1}"
        )
        assert await store.read_log(build.workspace_id, 2) is None

    async def test_failed_build_points_at_its_logs(self, store: wl.Store) -> None:
        """A failed build's answer says that logs exist and how to read them; workspace_logs
        answers its last lines with its status and error."""
        async with wl.Lifecycle(store, build_timeout=10) as lc:
            await lc.register_chat("c1", owner=OWNER)
            answers: list[wl.ToolResult] = []

            async def create() -> None:
                answers.append(await lc.create_workspace("c1", owner=OWNER, name="dev"))

            async with anyio.create_task_group() as tg:
                tg.start_soon(create)
                with anyio.fail_after(5):
                    build = await store.claim_build("worker")
                    while build is None:
                        await anyio.sleep(0.01)
                        build = await store.claim_build("worker")
                lease = build.lease_token
                await store.append_log(build.build_id, ["step 1", "error: no such image"], lease=lease)
                await store.finish_build(build.build_id, "failed", error="image missing", lease=lease)
            r = answers[0]
            assert "image missing" in r.data["error"]
            assert r.data["logs"] == "the build logged 2 lines; call workspace_logs to read its last lines"
            assert "logs" in (await lc.status("c1", owner=OWNER)).data
            logs = await dispatch_tool(lc, "workspace_logs", {}, chat_id="c1", owner=OWNER)
            assert logs.data["lines"] == ["step 1", "error: no such image"]
            assert logs.data["build_status"] == "failed" and logs.data["build_error"] == "image missing"
            named = {"build": logs.data["build_id"]}
            by_id = await dispatch_tool(lc, "workspace_logs", named, chat_id="c1", owner=OWNER)
            by_number = await dispatch_tool(
                lc, "workspace_logs", {"build": "1", "limit": 1}, chat_id="c1", owner=OWNER
            )
            assert by_id.data == logs.data and by_number.data["lines"] == ["error: no such image"]
            other = await dispatch_tool(lc, "workspace_logs", {}, chat_id="c1", owner="mallory")
            assert other.is_error and other.text == "chat has no workspace; use create_workspace first"
            missing = await lc.logs("c1", owner=OWNER, build=7)
            assert missing.is_error and "build 7 not found" in missing.text


class TestProcessProvisioner:
    @pytest.fixture(
        params=[
            pytest.param(("memory", "asyncio"), id="memory-asyncio"),
            pytest.param(("sqlite", "asyncio"), id="sqlite-asyncio"),
        ]
    )
    def store_backend(self, request: pytest.FixtureRequest) -> tuple[str, str]:
        kind, backend = request.param
        return kind, backend

    async def test_a_flooding_child_leaves_bounded_logs_and_memory(
        self, store: wl.Store, tmp_path: Path
    ) -> None:
        """A child that writes 64 MiB and dies before it is ready: the build fails, its answer
        points at the logs, workspace_logs returns its last lines, the store keeps at most
        MAX_LOG_LINES lines of MAX_LOG_BYTES, and this process grew far less than the output."""
        flood = (
            "import sys\nw = sys.stdout.buffer.write\nline = b'x' * 1023 + b'\\n'\n"
            "for _ in range(64 * 1024): w(line)\nw(b'\\x1b[31mthe last line\\n')\nsys.stdout.flush()\nsys.exit(3)"
        )
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
        provisioner = wl.ProcessProvisioner(
            store, root=tmp_path / "ws", command=[sys.executable, "-c", flood], spawn_grace=5.0
        )
        async with provisioner, wl.Lifecycle(store, build_timeout=30) as lc:
            await lc.register_chat("c1", owner=OWNER)
            with anyio.fail_after(30):
                r = await lc.create_workspace("c1", owner=OWNER, name="dev")
            assert "exited with status 3" in r.data["error"] and "call workspace_logs" in r.data["logs"]
            logs = await lc.logs("c1", owner=OWNER, limit=2)
            assert logs.data["lines"][-1] == "\\x1b[31mthe last line"
            assert logs.data["build_status"] == "failed" and logs.data["dropped_lines"] > 0
            found = await store.read_log(await _ws(store), None)
            assert found is not None and found[1] is not None
            assert len(found[1].lines) <= MAX_LOG_LINES and found[1].bytes <= MAX_LOG_BYTES
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        assert grown < 24 * 1024, f"grew {grown} KiB for 64 MiB of output"


async def _ws(store: wl.Store) -> str:
    chat = await store.get_chat("c1")
    assert chat is not None and chat.workspace_id is not None
    return chat.workspace_id


class TestCli:
    def test_logs_command(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """logs CHAT prints the lines on stdout and the build on stderr; --json the page; an
        unknown chat is one sentence and exit 1."""
        url = f"sqlite:///{tmp_path / 'logs.db'}"

        async def seed() -> None:
            async with wl.open_store(url) as store:
                build = await _claimed(store)
                await store.append_log(build.build_id, ["one", "two"], lease=build.lease_token)
                await store.finish_build(build.build_id, "failed", error="bad", lease=build.lease_token)

        anyio.run(seed)
        assert cli.main(["logs", "c1", "--db", url]) == 0
        captured = capsys.readouterr()
        assert captured.out.splitlines() == ["one", "two"]
        assert captured.err.strip() == "build #1 (start) failed: bad; 2 lines logged"
        assert cli.main(["logs", "c1", "--db", url, "--json", "--limit", "1", "--build", "1"]) == 0
        assert json.loads(capsys.readouterr().out)["lines"] == ["two"]
        assert cli.main(["logs", "nobody", "--db", url]) == 1
        assert "chat has no workspace" in capsys.readouterr().err

    def test_follow(self, tmp_path: Path) -> None:
        """logs --follow prints lines as they are appended (from another process), until Ctrl-C."""
        from test_cli import _ctrl_c, _interruptible

        url = f"sqlite:///{tmp_path / 'follow.db'}"

        async def claim() -> wl.Build:
            async with wl.open_store(url) as store:
                build = await _claimed(store)
                await store.append_log(build.build_id, ["first"], lease=build.lease_token)
                return build

        build = anyio.run(claim)

        async def append(line: str) -> None:
            async with wl.open_store(url) as store:
                await store.append_log(build.build_id, [line], lease=build.lease_token)

        proc = _interruptible("logs", "c1", "--db", url, "--follow")
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "first\n"
            anyio.run(append, "second")
            assert proc.stdout.readline() == "second\n"
        finally:
            err = _ctrl_c(proc)
        assert "build #1 (start) running" in err
