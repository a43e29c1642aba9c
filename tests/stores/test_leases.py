"""Leases with fencing, the same on every store (memory, sqlite, postgres), and the reaper.

Each store runs on a :class:`~workspace_lifecycle.VirtualClock`, so lease times are exact and a
lease is stepped past its expiry without sleeping. "Refused, nothing changed" is checked as the
workspace's facts and the log's head before and after.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import attrs
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle import AgentLifecycle, EventKind, JobStatus, Transition

pytestmark = pytest.mark.anyio

T0 = 2_000_000_000.0
LEASE = 30.0


@pytest.fixture
def clock() -> wl.VirtualClock:
    return wl.VirtualClock(start=T0)


@pytest.fixture
async def store(store_url: str, clock: wl.VirtualClock) -> AsyncIterator[wl.Store]:
    async with wl.open_store(store_url, clock=clock) as s:
        yield s


async def claimed(store: wl.Store, chat: str = "c1", *, lease_seconds: float = LEASE) -> wl.Build:
    """A chat whose workspace's start build is claimed by worker ``w``."""
    await store.register_chat(chat, "alice")
    await store.create_workspace(chat, "dev", expected_workspace_id=None)
    build = await store.claim_build("w", lease_seconds=lease_seconds)
    assert build is not None
    return build


async def snapshot(store: wl.Store, workspace_id: str) -> tuple[wl.WorkspaceFacts, int]:
    return await store.workspace_facts(workspace_id), await store.head()


class TestClaim:
    async def test_a_claim_is_a_lease(self, store: wl.Store) -> None:
        build = await claimed(store)
        assert build.status is JobStatus.RUNNING and build.worker == "w"
        assert build.lease_token and build.lease_expires_at == T0 + LEASE
        assert await store.get_build(build.build_id) == build
        assert await store.next_lease_expiry() == wl.Lease(
            build.build_id, build.workspace_id, "w", build.lease_token, T0 + LEASE
        )

    async def test_tokens_differ_between_claims(self, store: wl.Store) -> None:
        a, b = await claimed(store, "c1"), await claimed(store, "c2")
        assert a.lease_token != b.lease_token

    @pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, True, "30"])
    async def test_a_bad_lease_duration_is_refused_and_claims_nothing(
        self, store: wl.Store, bad: object
    ) -> None:
        await store.register_chat("c1", "alice")
        ws = (await store.create_workspace("c1", "dev", expected_workspace_id=None)).facts.workspace_id
        before = await snapshot(store, ws)
        with pytest.raises(ValueError, match="lease_seconds"):
            await store.claim_build("w", lease_seconds=bad)  # type: ignore[arg-type]
        assert await snapshot(store, ws) == before


class TestRenew:
    async def test_renewal_extends_the_lease_and_appends_no_event(
        self, store: wl.Store, clock: wl.VirtualClock
    ) -> None:
        build = await claimed(store)
        assert build.lease_token is not None
        head = await store.head()
        clock.advance(20)
        assert (
            await store.renew_lease(build.build_id, build.lease_token, lease_seconds=LEASE) == T0 + 20 + LEASE
        )
        assert await store.head() == head
        stored = await store.get_build(build.build_id)
        assert stored.lease_expires_at == T0 + 20 + LEASE and stored.status is JobStatus.RUNNING
        lease = await store.next_lease_expiry()
        assert lease is not None and lease.expires_at == T0 + 20 + LEASE

    async def test_a_renewed_lease_is_not_expired_at_its_old_time(
        self, store: wl.Store, clock: wl.VirtualClock
    ) -> None:
        build = await claimed(store)
        assert build.lease_token is not None
        clock.advance(LEASE - 1)
        await store.renew_lease(build.build_id, build.lease_token)
        clock.advance(1)  # the first lease's end
        assert await store.expire_lease(build.build_id, build.lease_token) is None
        assert (await store.get_build(build.build_id)).status is JobStatus.RUNNING

    async def test_a_lapsed_lease_cannot_be_renewed(self, store: wl.Store, clock: wl.VirtualClock) -> None:
        build = await claimed(store)
        assert build.lease_token is not None
        clock.advance(LEASE)  # due, not yet reaped: already lost
        before = await snapshot(store, build.workspace_id)
        with pytest.raises(wl.LeaseLostError, match="expired"):
            await store.renew_lease(build.build_id, build.lease_token)
        assert await snapshot(store, build.workspace_id) == before

    async def test_another_token_cannot_renew(self, store: wl.Store) -> None:
        build = await claimed(store)
        before = await snapshot(store, build.workspace_id)
        with pytest.raises(wl.LeaseLostError):
            await store.renew_lease(build.build_id, "not-the-token")
        assert await snapshot(store, build.workspace_id) == before

    async def test_a_finished_build_has_no_lease_to_renew(self, store: wl.Store) -> None:
        build = await claimed(store)
        assert build.lease_token is not None
        done = await store.finish_build(build.build_id, JobStatus.SUCCEEDED, lease=build.lease_token)
        assert done.lease_expires_at is None and done.lease_token == build.lease_token
        assert await store.next_lease_expiry() is None
        with pytest.raises(wl.LeaseLostError, match="finished"):
            await store.renew_lease(build.build_id, build.lease_token)

    async def test_unknown_build(self, store: wl.Store) -> None:
        with pytest.raises(wl.NotFoundError):
            await store.renew_lease("no-such-build", "t")


class TestFencing:
    async def test_the_holder_finishes_and_reports(self, store: wl.Store) -> None:
        build = await claimed(store)
        token = build.lease_token
        assert token is not None
        await store.finish_build(build.build_id, JobStatus.SUCCEEDED, lease=token)
        await store.report_agent(build.workspace_id, AgentLifecycle.READY, lease=token)
        facts = await store.workspace_facts(build.workspace_id)
        assert facts.agent is not None and facts.agent.lifecycle is AgentLifecycle.READY
        assert wl.derive_state(facts) is wl.WorkspaceState.AGENT_READY

    async def test_a_lapsed_worker_cannot_finish_even_before_the_reaper(
        self, store: wl.Store, clock: wl.VirtualClock
    ) -> None:
        build = await claimed(store)
        clock.advance(LEASE + 5)
        before = await snapshot(store, build.workspace_id)
        with pytest.raises(wl.LeaseLostError, match="expired"):
            await store.finish_build(build.build_id, JobStatus.SUCCEEDED, lease=build.lease_token)
        assert await snapshot(store, build.workspace_id) == before

    async def test_an_expired_worker_cannot_finish_report_or_renew(
        self, store: wl.Store, clock: wl.VirtualClock
    ) -> None:
        build = await claimed(store)
        token = build.lease_token
        assert token is not None
        clock.advance(LEASE)
        failed = await store.expire_lease(build.build_id, token)
        assert failed is not None and failed.status is JobStatus.FAILED and failed.lease_token is None
        before = await snapshot(store, build.workspace_id)
        with pytest.raises(wl.LeaseLostError):
            await store.finish_build(build.build_id, JobStatus.SUCCEEDED, lease=token)
        with pytest.raises(wl.LeaseLostError):
            await store.renew_lease(build.build_id, token)
        assert await snapshot(store, build.workspace_id) == before
        # LeaseLostError is a BuildConflictError: provisioners that stop on those stop on this.
        assert issubclass(wl.LeaseLostError, wl.BuildConflictError)

    async def test_a_repeated_finish_by_the_holder_is_a_conflict_not_a_lost_lease(
        self, store: wl.Store
    ) -> None:
        """The retry of a finish whose first attempt committed: the build is done, by this worker."""
        build = await claimed(store)
        await store.finish_build(build.build_id, JobStatus.SUCCEEDED, lease=build.lease_token)
        with pytest.raises(wl.BuildConflictError) as caught:
            await store.finish_build(build.build_id, JobStatus.SUCCEEDED, lease=build.lease_token)
        assert not isinstance(caught.value, wl.LeaseLostError)

    async def test_a_wrong_token_cannot_finish(self, store: wl.Store) -> None:
        build = await claimed(store)
        before = await snapshot(store, build.workspace_id)
        with pytest.raises(wl.LeaseLostError):
            await store.finish_build(build.build_id, JobStatus.SUCCEEDED, lease="forged")
        assert await snapshot(store, build.workspace_id) == before

    async def test_an_old_build_cannot_report_on_a_newer_builds_agent(self, store: wl.Store) -> None:
        """A process of start build 1 reports late, after a stop and a new start by another
        worker: refused, the new agent unchanged."""
        first = await claimed(store)
        ws = first.workspace_id
        await store.finish_build(first.build_id, JobStatus.SUCCEEDED, lease=first.lease_token)
        await store.report_agent(ws, AgentLifecycle.READY, lease=first.lease_token)
        for transition, number in ((Transition.STOP, 1), (Transition.START, 2)):
            assert (await store.request_build(ws, transition, expected_build_number=number)).fired
            build = await store.claim_build("other")
            assert build is not None
            await store.finish_build(build.build_id, JobStatus.SUCCEEDED, lease=build.lease_token)
        await store.report_agent(ws, AgentLifecycle.READY, lease=build.lease_token)
        before = await snapshot(store, ws)
        with pytest.raises(wl.LeaseLostError, match="newer build"):
            await store.report_agent(ws, AgentLifecycle.OFF, lease=first.lease_token)
        assert await snapshot(store, ws) == before
        # Unfenced reports (no lease) keep working as before.
        await store.report_agent(ws, AgentLifecycle.OFF)


class TestExpiry:
    async def test_not_due_changes_nothing(self, store: wl.Store, clock: wl.VirtualClock) -> None:
        build = await claimed(store)
        assert build.lease_token is not None
        clock.advance(LEASE - 0.001)
        before = await snapshot(store, build.workspace_id)
        assert await store.expire_lease(build.build_id, build.lease_token) is None
        assert await snapshot(store, build.workspace_id) == before

    async def test_due_fails_the_build_once_with_the_reason(
        self, store: wl.Store, clock: wl.VirtualClock
    ) -> None:
        build = await claimed(store)
        assert build.lease_token is not None
        head = await store.head()
        clock.advance(LEASE)
        failed = await store.expire_lease(build.build_id, build.lease_token)
        assert failed is not None and failed.error == (
            "provisioner worker w lost its lease on the build: it sent no heartbeat before the lease ran out"
        )
        assert await store.expire_lease(build.build_id, build.lease_token) is None
        assert await store.next_lease_expiry() is None
        finished = [e for e in await store.read_events(head) if e.kind is EventKind.BUILD_FINISHED]
        assert [(e.build_id, e.status) for e in finished] == [(build.build_id, JobStatus.FAILED)]
        assert wl.derive_state(await store.workspace_facts(build.workspace_id)) is wl.WorkspaceState.FAILED

    async def test_concurrent_expiries_fail_it_exactly_once(
        self, store: wl.Store, clock: wl.VirtualClock
    ) -> None:
        build = await claimed(store)
        assert build.lease_token is not None
        head = await store.head()
        clock.advance(LEASE)
        results: list[wl.Build | None] = []

        async def expire() -> None:
            results.append(await store.expire_lease(build.build_id, build.lease_token or ""))

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(expire)
        assert sum(r is not None for r in results) == 1
        finished = [e for e in await store.read_events(head) if e.kind is EventKind.BUILD_FINISHED]
        assert len(finished) == 1

    async def test_a_finished_build_is_not_expired(self, store: wl.Store, clock: wl.VirtualClock) -> None:
        build = await claimed(store)
        assert build.lease_token is not None
        await store.finish_build(build.build_id, JobStatus.SUCCEEDED, lease=build.lease_token)
        clock.advance(LEASE * 2)
        assert await store.expire_lease(build.build_id, build.lease_token) is None
        assert await store.expire_lease("no-such-build", "t") is None

    async def test_next_expiry_is_the_earliest_and_skips_what_is_set_aside(self, store: wl.Store) -> None:
        a = await claimed(store, "c1", lease_seconds=50)
        b = await claimed(store, "c2", lease_seconds=10)
        c = await claimed(store, "c3", lease_seconds=20)
        first = await store.next_lease_expiry()
        assert first is not None and first.build_id == b.build_id
        second = await store.next_lease_expiry(skip={b.build_id})
        assert second is not None and second.build_id == c.build_id
        assert (await store.next_lease_expiry(skip={b.build_id, c.build_id, a.build_id})) is None

    async def test_expiry_arms_no_deadline_and_a_retry_fires_one_build(
        self, store: wl.Store, clock: wl.VirtualClock
    ) -> None:
        await store.register_chat("c1", "alice", policy=wl.Policy(idle_stop_after=60))
        ws = (await store.create_workspace("c1", "dev", expected_workspace_id=None)).facts.workspace_id
        build = await store.claim_build("w")
        assert build is not None and build.lease_token is not None
        clock.advance(wl.DEFAULT_LEASE_SECONDS)
        assert await store.expire_lease(build.build_id, build.lease_token) is not None
        facts = await store.workspace_facts(ws)
        assert facts.workspace.deadline is None  # a failed workspace waits for someone
        assert (await store.request_build(ws, Transition.START, expected_build_number=1)).fired
        retry = await store.claim_build("rescuer")
        assert retry is not None and retry.number == 2 and retry.lease_token != build.lease_token


class TestFinishedWithoutTheLease:
    """A build finished by another party, without its lease (an operator, a tool): its worker
    lost the lease (``LeaseLostError``, as :class:`~workspace_lifecycle.errors.LeaseLostError`
    and ``Held.lost`` say), and :func:`~workspace_lifecycle.holding` stops its work."""

    async def test_its_holder_can_no_longer_finish_or_report(self, store: wl.Store) -> None:
        build = await claimed(store)
        token = build.lease_token
        assert token is not None
        await store.finish_build(build.build_id, JobStatus.SUCCEEDED)  # not by its worker
        before = await snapshot(store, build.workspace_id)
        with pytest.raises(wl.LeaseLostError):
            await store.finish_build(build.build_id, JobStatus.SUCCEEDED, lease=token)
        with pytest.raises(wl.LeaseLostError):
            await store.report_agent(build.workspace_id, AgentLifecycle.READY, lease=token)
        with pytest.raises(wl.LeaseLostError):
            await store.renew_lease(build.build_id, token)
        assert await snapshot(store, build.workspace_id) == before

    async def test_holding_stops_the_work(self, store: wl.Store, clock: wl.VirtualClock) -> None:
        build = await claimed(store)
        with anyio.fail_after(5):
            async with wl.holding(store, build, lease_seconds=LEASE, clock=clock) as held:
                await anyio.sleep(0.01)  # its heartbeat sleeps until the first renewal
                await store.finish_build(build.build_id, JobStatus.FAILED, "canceled by an operator")
                clock.advance(LEASE / 3)  # the next renewal is refused
                await anyio.sleep_forever()
        assert held.lost

    async def test_holding_keeps_the_work_whose_own_finish_landed(
        self, store: wl.Store, clock: wl.VirtualClock
    ) -> None:
        build = await claimed(store)
        with anyio.fail_after(5):
            async with wl.holding(store, build, lease_seconds=LEASE, clock=clock) as held:
                await anyio.sleep(0.01)  # its heartbeat sleeps until the first renewal
                await store.finish_build(build.build_id, JobStatus.SUCCEEDED, lease=held.token)
                clock.advance(LEASE / 3)  # the next renewal is refused: the build is done
                for _ in range(20):
                    await anyio.sleep(0.005)
        assert not held.lost


async def test_holding_raises_the_works_own_error_as_itself(store: wl.Store) -> None:
    """Not inside an exception group: ``except StoreError`` around it still catches it."""
    build = await claimed(store)
    with pytest.raises(wl.StoreUnavailableError, match="the work's own"):
        async with wl.holding(store, build):
            raise wl.StoreUnavailableError("the work's own error")


async def test_holding_keeps_a_lease_through_two_failed_renewals(
    store: wl.Store, clock: wl.VirtualClock
) -> None:
    """docs/provisioners.md: "two renewals in a row may fail (a database restart) before a live
    one loses its lease"."""
    from workspace_lifecycle._provisioner_kit import _Observed

    build = await claimed(store)
    observed = _Observed(store)  # its renewals can be cut off, as a partition would
    observed.cut_off.add(build.build_id)
    with anyio.fail_after(5):
        async with wl.holding(observed, build, lease_seconds=LEASE, clock=clock) as held:
            for _ in range(12):  # two leases, a sixth at a time
                await anyio.sleep(0.02)
                if sum(c.outcome == "cut off" for c in observed.log) >= 2:
                    observed.cut_off.discard(build.build_id)  # the database is back
                clock.advance(LEASE / 6)
            await anyio.sleep(0.02)
    assert not held.lost and held.renewals >= 1
    assert (await store.get_build(build.build_id)).status is JobStatus.RUNNING


async def test_holding_stops_a_worker_cut_off_past_its_lease(store: wl.Store, clock: wl.VirtualClock) -> None:
    """Every renewal fails (the store cannot be reached): once the lease has run out by the
    worker's clock, the work is cancelled without waiting to hear it from the store, since a
    reaper may already have failed the build and another worker be retrying it."""
    from workspace_lifecycle._provisioner_kit import _Observed

    build = await claimed(store)
    observed = _Observed(store)
    observed.cut_off.add(build.build_id)
    reached = []
    with anyio.fail_after(5):
        async with wl.holding(observed, build, lease_seconds=LEASE, clock=clock) as held:
            for _ in range(5):  # to just before the lease runs out: the work goes on
                await anyio.sleep(0.02)
                clock.advance(LEASE / 6)
            await anyio.sleep(0.02)
            reached.append(clock())
            clock.advance(LEASE / 6)  # the lease's end, with no renewal landed
            await anyio.sleep_forever()
    assert held.lost and reached == [T0 + 5 * LEASE / 6]
    assert sum(c.outcome == "cut off" for c in observed.log) >= 2


class TestMigration:
    """A database of the schema before leases, with a build in flight (its worker claimed it
    under the old code): after the migration that build has a lease too, so a reaper fails it
    if no worker finishes it. Without one it would stay ``running`` for ever (the scan that
    used to fail it is gone), its workspace ``building``, no new build possible."""

    async def _in_flight(self, url: str, chat: str = "c1") -> wl.Build:
        async with wl.open_store(url) as store:
            return await claimed(store, chat)

    async def _expired_by_a_reaper_later(self, url: str, build: wl.Build) -> None:
        later = wl.VirtualClock(start=T0)  # long after the migration's wall-clock time
        async with wl.open_store(url, clock=later) as store:
            lease = await store.next_lease_expiry()
            assert lease is not None and lease.build_id == build.build_id
            async with wl.LeaseReaper(store, clock=later) as reaper:
                await until(store, lambda: reaper.expired == 1)
            stored = await store.get_build(build.build_id)
            assert stored.status is JobStatus.FAILED and "lost its lease" in (stored.error or "")

    async def _finished_by_old_code_then_others_expire(self, url: str) -> None:
        """The old code's worker finished its build (its UPDATE leaves the lease columns): that
        row's lease is no one's to expire, and must not hold up the next one's expiry."""
        later = wl.VirtualClock(start=T0)
        async with wl.open_store(url, clock=later) as store:
            other = await claimed(store, "c4")
            async with wl.LeaseReaper(store, clock=later) as reaper:
                later.advance(LEASE)
                await until(store, lambda: reaper.expired == 1)
            assert (await store.get_build(other.build_id)).status is JobStatus.FAILED
            assert await store.next_lease_expiry() is None

    async def test_sqlite(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path}/old.db"
        build = await self._in_flight(url)
        self._sqlite_downgrade(tmp_path / "old.db")
        await self._expired_by_a_reaper_later(url, build)

    async def test_sqlite_finished_by_old_code(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path}/old.db"
        build = await self._in_flight(url)
        self._sqlite_downgrade(tmp_path / "old.db")
        async with wl.open_store(url):  # migrates
            pass
        with contextlib.closing(sqlite3.connect(tmp_path / "old.db", isolation_level=None)) as conn:
            conn.execute("UPDATE builds SET status = 'succeeded' WHERE build_id = ?", (build.build_id,))
        await self._finished_by_old_code_then_others_expire(url)

    @staticmethod
    def _sqlite_downgrade(path: Path) -> None:
        """Back to the schema before leases (user_version 4): the later migrations undone too."""
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute("ALTER TABLE workspaces DROP COLUMN deferred")
            conn.execute("ALTER TABLE chats DROP COLUMN warn_before")  # 8: expiry warnings
            conn.execute("ALTER TABLE workspaces DROP COLUMN deadline_warn_at")
            conn.execute("ALTER TABLE workspaces DROP COLUMN deadline_warned")
            conn.execute("DROP INDEX workspaces_by_owner")  # 7: per-owner limits
            conn.execute("DROP TABLE owners")
            conn.execute("DROP INDEX IF EXISTS workspaces_by_chat")  # 10: warm pools
            conn.execute("ALTER TABLE workspaces DROP COLUMN holds")  # 11: turn holds
            conn.execute("DROP TABLE build_logs")
            conn.execute("ALTER TABLE agents DROP COLUMN endpoints")
            conn.execute("DROP INDEX builds_by_lease")
            conn.execute("ALTER TABLE builds DROP COLUMN lease_token")
            conn.execute("ALTER TABLE builds DROP COLUMN lease_expires_at")
            conn.execute("PRAGMA user_version = 4")

    @pytest.mark.postgres
    async def test_postgres(self, pg_schema_url: str) -> None:
        import psycopg

        build = await self._in_flight(pg_schema_url)
        base, _, query = pg_schema_url.partition("?")
        schema = query.removeprefix("schema=")
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute("SELECT set_config('search_path', %s, false)", (f'"{schema}"',))
            # Back to the schema before leases (version 4): the later migrations undone too.
            conn.execute("ALTER TABLE workspaces DROP COLUMN deferred")
            conn.execute("ALTER TABLE chats DROP COLUMN warn_before")  # 8: expiry warnings
            conn.execute("ALTER TABLE workspaces DROP COLUMN deadline_warn_at, DROP COLUMN deadline_warned")
            conn.execute("DROP INDEX workspaces_owner")  # 7: per-owner limits
            conn.execute("DROP TABLE owners")
            conn.execute("DROP INDEX IF EXISTS workspaces_by_chat")  # 10: warm pools
            conn.execute("ALTER TABLE workspaces DROP COLUMN holds")  # 11: turn holds
            conn.execute("DROP TABLE build_logs")
            conn.execute("ALTER TABLE agents DROP COLUMN endpoints")
            conn.execute("DROP INDEX builds_lease")
            conn.execute("ALTER TABLE builds DROP COLUMN lease_token, DROP COLUMN lease_expires_at")
            conn.execute("DELETE FROM schema_migrations WHERE version > 4")
        await self._expired_by_a_reaper_later(pg_schema_url, build)
        build = await self._in_flight(pg_schema_url, "c3")  # another, finished as the old code does
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute("SELECT set_config('search_path', %s, false)", (f'"{schema}"',))
            conn.execute("UPDATE builds SET status = 'succeeded' WHERE build_id = %s", (build.build_id,))
        await self._finished_by_old_code_then_others_expire(pg_schema_url)


class TestReaper:
    async def test_it_sleeps_until_the_expiry_and_fails_the_build_once(
        self, store: wl.Store, clock: wl.VirtualClock
    ) -> None:
        build = await claimed(store)
        async with wl.LeaseReaper(store, clock=clock) as reaper:
            await settle(reaper)
            woke = reaper.wakeups
            clock.advance(LEASE - 0.001)
            await settle(reaper)
            assert reaper.expired == 0
            clock.advance(0.001)
            await until(store, lambda: reaper.expired == 1)
            assert reaper.wakeups - woke <= 3  # woken by its clock and its own write, not a scan
        stored = await store.get_build(build.build_id)
        assert stored.status is JobStatus.FAILED

    async def test_a_new_claim_wakes_it_and_renewals_keep_a_build(
        self, store: wl.Store, clock: wl.VirtualClock
    ) -> None:
        async with wl.LeaseReaper(store, clock=clock) as reaper:
            await settle(reaper)  # nothing leased: it sleeps until the log moves
            kept = await claimed(store, "c1", lease_seconds=10)
            lapsed = await claimed(store, "c2", lease_seconds=10)
            assert kept.lease_token is not None
            for _ in range(6):  # a minute of renewals every 5 s on one build only
                clock.advance(5)
                await store.renew_lease(kept.build_id, kept.lease_token, lease_seconds=10)
                await settle(reaper)
            await until(store, lambda: reaper.expired == 1)
            assert (await store.get_build(lapsed.build_id)).status is JobStatus.FAILED
            assert (await store.get_build(kept.build_id)).status is JobStatus.RUNNING

    async def test_two_reapers_fail_a_build_once(self, store: wl.Store, clock: wl.VirtualClock) -> None:
        build = await claimed(store)
        head = await store.head()
        async with wl.LeaseReaper(store, clock=clock) as one, wl.LeaseReaper(store, clock=clock) as two:
            await settle(one)
            clock.advance(LEASE)
            await until(store, lambda: one.expired + two.expired == 1)
            await settle(one)
            assert one.expired + two.expired == 1
        finished = [e for e in await store.read_events(head) if e.kind is EventKind.BUILD_FINISHED]
        assert [e.build_id for e in finished] == [build.build_id]


async def settle(reaper: wl.LeaseReaper) -> None:
    """Let the reaper run until it sleeps (a few scheduler turns and store round trips)."""
    for _ in range(20):
        await anyio.sleep(0.005)


async def until(store: wl.Store, condition: Callable[[], bool]) -> None:
    """Until ``condition`` holds, re-checked whenever the store's log moves (a reaper's expiry
    is a write), and at least every 50 ms: a reaper counts its expiry after its write commits,
    so the wake-up of that write can come before the count (seen under load on PostgreSQL)."""
    with anyio.fail_after(5):
        while True:
            head = await store.head()
            if condition():
                return
            with anyio.move_on_after(0.05):
                await store.wait_for_change(head)


class TestValues:
    def test_corrupt_lease_columns_name_the_row(self) -> None:
        with pytest.raises(wl.CorruptStateError, match="lease_expires_at"):
            wl.values.parse_lease("t", "soon", key="b1")
        with pytest.raises(wl.CorruptStateError, match="lease_expires_at"):
            wl.values.parse_lease(None, 5.0, key="b1")  # an expiry with no token
        with pytest.raises(wl.CorruptStateError, match="lease_token"):
            wl.values.parse_lease(7, None, key="b1")
        assert wl.values.parse_lease("t", 5, key="b1") == ("t", 5.0)

    def test_expire_is_pure_and_decides_on_the_token_and_the_time(self) -> None:
        ws = wl.Workspace("w1", "c1", "alice", "dev")
        build = wl.Build(
            "b1",
            "w1",
            1,
            Transition.START,
            JobStatus.RUNNING,
            worker="x",
            lease_token="t",
            lease_expires_at=10.0,
        )
        assert wl.writes.expire_lease(build, ws, "t", at=9.999) is None
        assert wl.writes.expire_lease(build, ws, "other", at=11) is None
        assert wl.writes.expire_lease(attrs.evolve(build, status=JobStatus.SUCCEEDED), ws, "t", at=11) is None
        write = wl.writes.expire_lease(build, ws, "t", at=10.0)
        assert write is not None and write.build is not None and write.build.status is JobStatus.FAILED
