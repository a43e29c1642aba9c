"""Model-chosen tool arguments never raise (issue 29, item 7): whatever a model sends, through
every face (``dispatch_tool``, the MCP server's check, the pydantic-ai toolset, the OpenAI
Agents tools), the answer is a ``ToolResult`` (an error result for anything unusable), never an
exception. Hypothesis draws arbitrary JSON values, names and raw argument text."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import workspace_lifecycle as wl
from workspace_lifecycle.tools import prepare_tool_call

pytestmark = pytest.mark.anyio

NAMES = ["create_workspace", "start_workspace", "stop_workspace", "delete_workspace", "workspace_status"]
#: Strings a model can send that stores cannot keep, mixed into every drawn text.
NASTY = st.sampled_from(["\x00", "\ud800", "a\x00b", "\udfff\ud800", "", " ", "9" * 5000, "[" * 300])
TEXT = st.one_of(st.text(), NASTY)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**4999, max_value=10**5000),
    st.floats(),
    TEXT,
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
KNOWN_KEYS = st.sampled_from(["name", "wait", "parameters", "wait_ms", "chat_id", "template"])
ARGUMENTS = st.one_of(
    JSON_VALUES,
    st.dictionaries(st.one_of(KNOWN_KEYS, TEXT), JSON_VALUES, max_size=4),
    st.fixed_dictionaries({"parameters": st.dictionaries(TEXT, JSON_VALUES, max_size=3)}),
)
TOOL_NAMES = st.one_of(st.sampled_from(NAMES), st.none(), st.integers(), TEXT)
RAW_TEXT = st.one_of(
    st.text(),
    NASTY,
    st.just("[" * 100000),
    st.just('{"wait": ' + "1" * 5000 + "}"),
    ARGUMENTS.map(lambda v: json.dumps(v, allow_nan=True) if _dumpable(v) else "{}"),
)


def _dumpable(value: object) -> bool:
    try:
        json.dumps(value)
    except (ValueError, TypeError, RecursionError):
        return False
    return True


@asynccontextmanager
async def lifecycle() -> AsyncIterator[wl.Lifecycle]:
    async with (
        wl.open_store("memory://") as store,
        wl.SimulatedProvisioner(store),
        wl.Lifecycle(store, build_timeout=5, agent_timeout=5) as lc,
    ):
        await lc.register_chat("c1", owner="alice")
        yield lc


class TestDispatchTool:
    @given(name=TOOL_NAMES, arguments=st.one_of(ARGUMENTS, RAW_TEXT))
    async def test_never_raises(self, name: Any, arguments: Any) -> None:
        """Any name and any arguments (a JSON value or raw text): a ToolResult."""
        async with lifecycle() as lc:
            result = await wl.dispatch_tool(lc, name, arguments, chat_id="c1", owner="alice")
        assert isinstance(result, wl.ToolResult) and isinstance(result.text, str)
        if result.is_error:
            assert result.data == {"error": result.text} and result.text

    @given(name=TOOL_NAMES, arguments=ARGUMENTS)
    async def test_the_mcp_check_never_raises(self, name: Any, arguments: Any) -> None:
        """The MCP server checks a call with prepare_tool_call: a call or an answer."""
        call = await prepare_tool_call(name, arguments, chat_id="c1", owner="alice")
        assert isinstance(call, wl.ToolResult) or call.name in NAMES


class TestIntegrations:
    @given(name=st.sampled_from(NAMES), arguments=RAW_TEXT)
    async def test_openai_agents_raw_text_never_raises(self, name: str, arguments: str) -> None:
        """The OpenAI Agents tools take the model's raw JSON text: any string is answered as text."""
        pytest.importorskip("agents")
        from agents import FunctionTool
        from agents.tool_context import ToolContext

        from workspace_lifecycle.integrations.openai_agents import workspace_tools

        async with lifecycle() as lc:
            tools = {t.name: t for t in workspace_tools(lc, chat_id="c1", owner="alice", status=True)}
            tool = tools[name]
            assert isinstance(tool, FunctionTool)
            ctx = ToolContext(context=None, tool_name=name, tool_call_id="call-1", tool_arguments=arguments)
            answer = await tool.on_invoke_tool(ctx, arguments)
        assert isinstance(answer, str) and answer

    @given(name=st.sampled_from(NAMES), arguments=st.dictionaries(st.one_of(KNOWN_KEYS, TEXT), JSON_VALUES))
    async def test_pydantic_ai_tool_never_raises_but_tool_failed(self, name: str, arguments: Any) -> None:
        """The pydantic-ai tool functions: a str, or ToolFailed (the model sees it as a failed
        tool result); never any other exception."""
        pytest.importorskip("pydantic_ai")
        from pydantic_ai import ToolFailed

        from workspace_lifecycle.integrations.pydantic_ai import _bound_tool

        async with lifecycle() as lc:
            call = _bound_tool(lc, name, chat_id="c1", owner="alice")
            try:
                answer = await call(**{str(k): v for k, v in arguments.items()})
            except ToolFailed as failed:
                assert str(failed)
            else:
                assert isinstance(answer, str)


@pytest.mark.parametrize(
    ("arguments", "sentence"),
    [
        ({"name": "dev", "parameters": {"a": "x\x00"}}, "must not contain NUL characters"),
        ({"name": "dev", "parameters": {"a": "x\ud800"}}, "lone surrogate"),
        ({"name": "dev", "parameters": {"a\x00": "x"}}, "must not contain NUL characters"),
        ("[" * 100000, "nested too deeply"),
        ('{"wait": ' + "1" * 5000 + "}", "too many digits"),
    ],
)
async def test_the_attacks_of_the_review_are_answered(arguments: Any, sentence: str) -> None:
    """The inputs of issue 29, item 7: each one clear sentence, nothing written."""
    async with lifecycle() as lc:
        result = await wl.dispatch_tool(lc, "create_workspace", arguments, chat_id="c1", owner="alice")
        assert result.is_error and sentence in result.text, result.text
        assert await lc.state("c1") is wl.WorkspaceState.NO_WORKSPACE
        named = await wl.dispatch_tool(lc, None, {}, chat_id="c1", owner="alice")  # type: ignore[arg-type]
        assert named.is_error and named.text.startswith("unknown tool")
