"""The PostgreSQL statement compiler, without a server: a decided write in, SQL text out.

What runs on a server (that the statement persists the write, and refuses under a lost guard)
is tested in ``test_postgres_store.py`` and ``test_postgres_races.py``; these tests pin what
the compiler emits for each part of a write: the guard, the row changes, the log append with
its advisory lock, the NOTIFY.
"""

from __future__ import annotations

import pytest

from workspace_lifecycle import writes
from workspace_lifecycle.adapters.postgres.channels import Channels
from workspace_lifecycle.adapters.postgres.compiler import compile_write
from workspace_lifecycle.adapters.postgres.guards import Seen
from workspace_lifecycle.values import Chat, Policy

LOCK = (11, 22)


def created() -> writes.Write:
    """A chat bound to a new workspace with its first build: two events."""
    write = writes.create_workspace(
        Chat("c1", "alice"), expected_workspace_id=None, workspace_id="w1", build_id="b1", name="dev", at=5.0
    )
    assert write is not None
    return write


def claimed() -> writes.Write:
    """The first build claimed: one event, a build update."""
    write = created()
    assert write.build is not None and write.workspace is not None
    return writes.claim_build(write.build, write.workspace, worker="wk", at=6.0, token="t", lease_seconds=30)


class TestGuard:
    def test_no_guard_is_one_row_always(self) -> None:
        """Without a guard (the caller holds the row locks) the gate is a constant row."""
        query, _ = compile_write(created(), None, log_lock=LOCK)
        assert query.startswith("WITH ok AS MATERIALIZED (SELECT 1), ")
        assert "FOR UPDATE" not in query

    def test_workspace_guard_locks_the_row_at_its_version(self) -> None:
        query, params = compile_write(claimed(), Seen("w1", 7), log_lock=LOCK)
        assert "WHERE workspace_id = %(g_w)s AND version = %(g_wv)s FOR UPDATE)" in query
        assert (params["g_w"], params["g_wv"]) == ("w1", 7)
        assert "chats WHERE chat_id = %(g_c)s" not in query

    def test_chat_guard_follows_the_workspace_guard(self) -> None:
        """The chat's version is checked too, locked after the workspace (the lock order)."""
        query, params = compile_write(claimed(), Seen("w1", 7, "c1", 3), log_lock=LOCK)
        assert query.index("g_w AS") < query.index("g_c AS") < query.index("ok AS")
        assert "AND version = %(g_cv)s AND EXISTS (SELECT FROM g_w) FOR SHARE)" in query
        assert (params["g_c"], params["g_cv"]) == ("c1", 3)

    def test_skip_locked_in_a_batch(self) -> None:
        query, _ = compile_write(claimed(), Seen("w1", 7, "c1", 3), log_lock=LOCK, skip_locked=True)
        assert "FOR UPDATE SKIP LOCKED)" in query and "FOR SHARE SKIP LOCKED)" in query


class TestRows:
    def test_a_new_workspace_is_inserted_with_its_first_build(self) -> None:
        query, params = compile_write(created(), None, log_lock=LOCK)
        assert "INSERT INTO workspaces" in query and "INSERT INTO builds" in query
        assert "UPDATE chats SET workspace_id = %(c_ws)s" in query
        assert (params["w_id"], params["w_latest"], params["c_ws"], params["b_n"]) == ("w1", 1, "w1", 1)

    def test_a_guarded_write_bumps_the_workspace_version(self) -> None:
        """Every guarded write changes the workspace row (its version), gated on the guard."""
        query, params = compile_write(claimed(), Seen("w1", 7), log_lock=LOCK)
        assert "UPDATE workspaces SET version = version + 1 WHERE workspace_id = %(w_target)s" in query
        assert "UPDATE builds SET status = %(b_status)s" in query
        assert (params["w_target"], params["b_status"], params["b_lease"]) == ("w1", "running", "t")
        assert "INSERT INTO workspaces" not in query

    def test_a_new_chat_is_inserted_and_required(self) -> None:
        """A chat row inserted by another writer first leaves the statement without a row."""
        write = writes.Write(events=(), chat=Chat("c1", "alice", policy=Policy(idle_stop_after=60)))
        query, params = compile_write(write, None, log_lock=LOCK, new_chat=True)
        assert "INSERT INTO chats" in query and "ON CONFLICT (chat_id) DO NOTHING" in query
        assert query.endswith("SELECT 0 FROM ok, done WHERE EXISTS (SELECT FROM p1)")
        assert (params["c_id"], params["c_owner"], params["c_idle"]) == ("c1", "alice", 60)

    def test_an_existing_chat_is_updated(self) -> None:
        write = writes.Write(events=(), chat=Chat("c1", "alice", policy=Policy(idle_stop_after=60)))
        query, _ = compile_write(write, None, log_lock=LOCK)
        assert "UPDATE chats SET" in query and "INSERT INTO chats" not in query
        assert query.endswith("SELECT 0 FROM ok, done")


class TestLog:
    def test_a_write_without_events_takes_no_log_lock(self) -> None:
        """A lease renewal: rows only, head 0, no NOTIFY."""
        build = claimed().build
        assert build is not None
        renewal = writes.Write(events=(), build=build)
        query, _ = compile_write(renewal, Seen("w1", 8), log_lock=LOCK, channels=["ch"])
        assert "pg_advisory_xact_lock" not in query and "pg_notify" not in query
        assert "INSERT INTO events" not in query

    def test_events_are_appended_under_the_log_lock_after_the_rows(self) -> None:
        query, params = compile_write(created(), None, log_lock=LOCK)
        assert query.index("done AS") < query.index("lock AS") < query.index("ins AS")
        assert "pg_advisory_xact_lock(%(l1)s, %(l2)s) FROM ok, done)" in query
        assert (params["l1"], params["l2"]) == LOCK
        assert [params["e0k"], params["e1k"]] == ["chat_bound", "build_queued"]
        assert query.endswith("SELECT m FROM (SELECT max(seq) AS m FROM ins) s WHERE m IS NOT NULL")

    @pytest.mark.parametrize("shards", [0, 4])
    def test_notify_goes_to_each_channel_of_the_write(self, shards: int) -> None:
        channels = Channels.of("app", shards)
        write = created()
        names = channels.of_write(write)
        query, params = compile_write(write, None, log_lock=LOCK, channels=names)
        assert [params[f"chan{i}"] for i in range(len(names))] == names
        assert query.count("pg_notify(") == len(names)
        if shards:  # the workspace's shard, the chat's shard, the builds channel
            assert channels.builds in names and channels.shard("w1") in names
        else:
            assert names == ["workspace_lifecycle_app"]
