"""Per-owner limits through the runtime (issue 26, item 3): two replicas and 200 concurrent
starts over 20 owners with a limit of 2 running each never put an owner above 2, on memory,
SQLite and PostgreSQL, and every refused caller is answered as Coder's quota failure."""

from __future__ import annotations

from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle import JobStatus

pytestmark = pytest.mark.anyio

OWNERS = 20
PER_OWNER = 10  # 200 workspaces, 200 starts
LIMIT = 2


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _stores(kind: str, tmp_path: Path, stack: AsyncExitStack, pg_url: str | None) -> list[wl.Store]:
    """Two replicas' stores: one store object shared by two runtimes (memory: one process), or
    two store objects on one database (SQLite, PostgreSQL)."""
    if kind == "memory":
        store = await stack.enter_async_context(wl.open_store("memory://"))
        return [store, store]
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'limits.db'}"
    else:
        assert pg_url is not None
        url = pg_url  # a fresh schema, dropped afterwards
    first = await stack.enter_async_context(wl.open_store(url))
    second = await stack.enter_async_context(wl.open_store(url))
    return [first, second]


async def _idle_workspaces(store: wl.Store) -> dict[str, str]:
    """200 chats over 20 owners, each with a workspace whose first start failed (none runs);
    chat id -> owner."""
    chats = {f"o{o}-c{c}": f"o{o}" for o in range(OWNERS) for c in range(PER_OWNER)}
    for chat, owner in chats.items():
        await store.register_chat(chat, owner)
        await store.create_workspace(chat, "dev", expected_workspace_id=None)
        build = await store.claim_build("setup")
        assert build is not None
        await store.finish_build(build.build_id, JobStatus.FAILED, "setup")
    return chats


@pytest.mark.parametrize("kind", ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_two_replicas_never_pass_an_owners_last_slot(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """200 concurrent start_workspace calls (wait=False) over 20 owners, split over two
    runtimes with a default limit of 2 running: exactly 2 starts fire per owner, the other 180
    callers get the INSUFFICIENT_QUOTA answer (used 2, allowed 2, next steps), and the store's
    log holds no third start of any owner."""
    pg_url = request.getfixturevalue("pg_schema_url") if kind == "postgres" else None
    async with AsyncExitStack() as stack:
        stores = await _stores(kind, tmp_path, stack, pg_url)
        chats = await _idle_workspaces(stores[0])
        since = await stores[0].head()
        limits = wl.Limits(running=LIMIT)
        replicas = [
            await stack.enter_async_context(wl.Lifecycle(store, limits=limits, fire_deadlines=False))
            for store in stores
        ]
        answers: dict[str, wl.ToolResult] = {}

        async def start(i: int, chat: str) -> None:
            answers[chat] = await replicas[i % 2].start_workspace(chat, owner=chats[chat], wait=False)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i, chat in enumerate(chats):
                    tg.start_soon(start, i, chat)

        fired: Counter[str] = Counter()
        for chat, result in answers.items():
            assert not result.is_error, result.text
            if "build_id" in result.data:
                fired[chats[chat]] += 1
            else:
                assert result.data["error_code"] == "INSUFFICIENT_QUOTA", result.text
                assert result.data["quota"] == {"limit": "running", "used": LIMIT, "allowed": LIMIT}
                assert result.data["next_steps"] and result.data["no_build"] is True
        assert fired == {f"o{o}": LIMIT for o in range(OWNERS)}

        # What the store holds: no owner above the limit, in the rows and in the log.
        starts: Counter[str] = Counter()
        for event in await stores[1].read_events(since, limit=10_000):
            if event.kind is wl.EventKind.BUILD_QUEUED and event.payload().get("transition") == "start":
                starts[chats[event.chat_id]] += 1
        assert starts == fired
        for o in range(OWNERS):
            usage = await stores[1].usage(f"o{o}")
            assert (usage.running, usage.workspaces) == (LIMIT, PER_OWNER)


async def test_stored_limits_beat_the_default_and_stops_free_a_slot() -> None:
    """An owner's stored limits replace the runtime's default, and the tools answer a create over the workspaces limit as a quota failure too."""
    async with wl.open_store("memory://") as store, wl.Lifecycle(store, limits=wl.Limits(running=1)) as lc:
        for chat in ("a", "b", "c"):
            await lc.register_chat(chat, owner="al")
        assert "build_id" in (await lc.create_workspace("a", owner="al", wait=False)).data
        refused = await lc.create_workspace("b", owner="al", wait=False)
        assert (
            refused.data["error_code"] == "INSUFFICIENT_QUOTA" and refused.data["quota"]["limit"] == "running"
        )
        await lc.set_limits("al", wl.Limits(running=2, workspaces=2))
        assert "build_id" in (await lc.create_workspace("b", owner="al", wait=False)).data
        over = await lc.create_workspace("c", owner="al", wait=False)
        assert over.data["quota"] == {"limit": "workspaces", "used": 2, "allowed": 2}
        usage = await lc.usage("al")
        assert usage.as_dict(lc.limits) == {
            "owner": "al",
            "used": {"running": 2, "workspaces": 2},
            "allowed": {"running": 2, "workspaces": 2},
        }


async def test_limits_are_checked_values() -> None:
    """Limits refuse what is not a count, and Lifecycle refuses what is not a Limits."""
    with pytest.raises(ValueError, match=r"limits\.running must be a non-negative integer"):
        wl.Limits(running=True)
    async with wl.open_store("memory://") as store:
        with pytest.raises(ValueError, match=r"limits must be a workspace_lifecycle\.Limits"):
            wl.Lifecycle(store, limits={"running": 2})  # type: ignore[arg-type]
