"""The workspace tools as LLM tool definitions, and a dispatcher from a tool call to the runtime.

:func:`tool_definitions` gives each tool's ``name``, ``description`` and ``input_schema`` (JSON
Schema, the shape model APIs take). :func:`dispatch_tool` runs a tool call by name with its JSON
arguments. The MCP server uses the same definitions; there is no second copy.

Scope of a call: the host binds it to a chat (``chat_id=``), and the model's arguments cannot
name another one. Only a host that serves many chats passes ``allowed_chats``; then the tools
take a ``chat_id`` argument, limited to the chats the host allows (and, as always, to the
owner's). Any other chat is answered exactly as an unknown chat, so a model cannot tell another
owner's chat, or one it may not use, from a chat that does not exist.

Arguments are checked against the tool's own ``input_schema`` with ``jsonschema`` (the schema
is the check; they cannot drift). Whatever the model sends, the answer is a
:class:`~workspace_lifecycle.ToolResult`, never an exception, and a bad call writes nothing.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeAlias

import attrs
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from . import checks, steps
from .answers import NO_WORKSPACE
from .buildlogs import MAX_PAGE_LINES
from .errors import CallerError, CorruptStateError, StoreError
from .machine import Request
from .runtime import Lifecycle
from .steps import MAX_STATUS_WAIT_MS, Answer, first_step
from .values import MAX_PARAMETER_NAME, MAX_PARAMETER_VALUE, MAX_PARAMETERS, ToolResult, check_parameters

__all__ = [
    "LOGS_TOOL",
    "STATUS_TOOL",
    "TOOL_NAMES",
    "AllowedChats",
    "ToolCall",
    "dispatch_tool",
    "held_turn",
    "prepare_tool_call",
    "run_tool_call",
    "tool_definitions",
    "unknown_chat",
]

log = logging.getLogger("workspace_lifecycle.tools")

#: The chats a host that serves many chats lets the model name: a collection of chat ids, or a
#: predicate (plain or async) on a chat id. The owner's check still applies on top.
AllowedChats: TypeAlias = Collection[str] | Callable[[str], bool | Awaitable[bool]]

_WAIT = {
    "type": "boolean",
    "description": "Wait for the outcome (default true). With false, answer at once with the state.",
}

_PARAMETERS = {
    "type": "object",
    "description": (
        "Template parameters for the build (names to string values); omit to use the defaults. "
        "If the build is refused for its parameters, the answer lists the validations to fix."
    ),
    "maxProperties": MAX_PARAMETERS,
    "propertyNames": {"minLength": 1, "maxLength": MAX_PARAMETER_NAME},
    "additionalProperties": {"type": "string", "maxLength": MAX_PARAMETER_VALUE},
}

_DEFINITIONS: list[dict[str, Any]] = [
    {
        "name": "create_workspace",
        "description": (
            "Create the chat's workspace and wait for its build and agent. Idempotent: if the "
            "chat already has a workspace that is building or running, that workspace is "
            "returned; a stopped one is reported so you can use start_workspace. Once it runs, "
            "endpoints names where to reach it (names to URLs, e.g. http)."
        ),
        "input_schema": {
            "type": "object",
            "properties": {
                "name": {
                    "type": "string",
                    "description": (
                        "Workspace name: 1 to 32 letters, digits and single hyphens between them, "
                        "such as 'dev-2'; omit it for a generated one. An invalid name is refused "
                        "with a valid one to try."
                    ),
                },
                "parameters": _PARAMETERS,
                "wait": _WAIT,
            },
            "additionalProperties": False,
        },
    },
    {
        "name": "start_workspace",
        "description": (
            "Start the chat's workspace if it is currently stopped. This tool is idempotent — "
            "if the workspace is already running, it returns immediately; if a build is in "
            "progress it waits for it. Use create_workspace first if no workspace exists yet. "
            "Once it runs, endpoints names where to reach it (names to URLs, e.g. http)."
        ),
        "input_schema": {
            "type": "object",
            "properties": {"parameters": _PARAMETERS, "wait": _WAIT},
            "additionalProperties": False,
        },
    },
    {
        "name": "stop_workspace",
        "description": (
            "Stop the chat's workspace and wait for the stop build to complete. If another "
            "build is in progress, this waits for it first, then stops the workspace if needed. "
            "Idempotent when the workspace is already stopped. This does not delete it."
        ),
        "input_schema": {"type": "object", "properties": {"wait": _WAIT}, "additionalProperties": False},
    },
    {
        "name": "delete_workspace",
        "description": (
            "Delete the chat's workspace with a delete build and wait for it. Afterwards "
            "create_workspace makes a new one."
        ),
        "input_schema": {"type": "object", "properties": {"wait": _WAIT}, "additionalProperties": False},
    },
]

#: The read-only status tool (served over MCP; not one of the four model tools).
STATUS_TOOL: dict[str, Any] = {
    "name": "workspace_status",
    "description": (
        "Report the chat's workspace status: the state (no_workspace, stopped, building, running, "
        "agent_ready, failed), the reason it is in it, the latest build, and while it runs the "
        "endpoints where it is reached (names to URLs). With wait_ms, wait up "
        "to that long for the workspace to settle (no build in flight, agent not starting); "
        "wait_expired says the wait ran out. Read-only: it never starts or stops anything."
    ),
    "input_schema": {
        "type": "object",
        "properties": {
            "wait_ms": {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_STATUS_WAIT_MS,
                "description": f"Milliseconds to wait for a settled state (0 to {MAX_STATUS_WAIT_MS}; default 0).",
            }
        },
        "additionalProperties": False,
    },
}

#: The read-only logs tool (served with the status tool; not one of the four model tools).
LOGS_TOOL: dict[str, Any] = {
    "name": "workspace_logs",
    "description": (
        "Read what the chat's workspace build printed: the build's status, its error and up to "
        "limit lines of its log, the last ones, or with after those numbered after that line "
        "(page on next_after). Use it when a build failed to learn why. The latest build unless "
        "build names one (its number, or the build_id of an answer). Read-only."
    ),
    "input_schema": {
        "type": "object",
        "properties": {
            "build": {
                "type": "string",
                "minLength": 1,
                "maxLength": 200,
                "description": 'The build: the build_id of an answer, or its number ("3"); default: the latest.',
            },
            "limit": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_PAGE_LINES,
                "description": f"Lines to answer at most (1 to {MAX_PAGE_LINES}; default 100).",
            },
            "after": {
                "type": "integer",
                "minimum": 0,
                "description": "Answer the lines numbered after this one (default: the last lines).",
            },
        },
        "additionalProperties": False,
    },
}

TOOL_NAMES = tuple(d["name"] for d in _DEFINITIONS)

#: No NUL byte (no store can keep one in an id).
_NO_NUL = "^[^\\u0000]*$"

_CHAT_ID = {
    "type": "string",
    "minLength": 1,
    "pattern": _NO_NUL,
    "description": "The chat whose workspace to act on.",
}

_TYPE_WORDS = {
    "boolean": "a boolean",
    "string": "a string",
    "object": "a JSON object",
    "integer": "an integer",
}


def tool_definitions(*, chat_id_argument: bool = False, status: bool = False) -> list[dict[str, Any]]:
    """The tools' definitions (fresh copies; safe to modify).

    ``chat_id_argument`` adds an optional ``chat_id`` input, for hosts that serve many chats
    (and pass ``allowed_chats`` to :func:`dispatch_tool`); ``status`` appends the read-only
    tools, ``workspace_status`` and ``workspace_logs``.

    >>> [d["name"] for d in tool_definitions()]
    ['create_workspace', 'start_workspace', 'stop_workspace', 'delete_workspace']
    """
    defs = copy.deepcopy(_DEFINITIONS + ([STATUS_TOOL, LOGS_TOOL] if status else []))
    if chat_id_argument:
        for d in defs:
            d["input_schema"]["properties"]["chat_id"] = copy.deepcopy(_CHAT_ID)
    return defs


@functools.cache
def _validators(chat_id_argument: bool) -> dict[str, Any]:
    """One validator per tool, built from the very schemas :func:`tool_definitions` gives."""
    return {
        d["name"]: Draft202012Validator(d["input_schema"])
        for d in tool_definitions(chat_id_argument=chat_id_argument, status=True)
    }


def unknown_chat(name: str) -> ToolResult:
    """What tool ``name`` answers for a chat that does not exist (or is not the caller's): the
    request module's own first step for an unknown chat, so the two cannot drift."""
    if name == STATUS_TOOL["name"]:
        return steps.status(None)  # read-only: a named state, never an error
    if name == LOGS_TOOL["name"]:
        return ToolResult.error(NO_WORKSPACE)  # as Lifecycle.logs answers an unknown chat
    verb = name.removesuffix("_workspace")
    if verb not in {r.value for r in Request}:
        return ToolResult.error(NO_WORKSPACE)
    step = first_step(Request(verb), None, "")
    assert isinstance(step, Answer)
    return step.result


@attrs.frozen
class ToolCall:
    """A checked tool call: the tool, the chat it acts on, and its arguments (without ``chat_id``)."""

    name: str
    chat_id: str
    arguments: dict[str, Any]

    @property
    def waits(self) -> bool:
        """Whether the call may wait for builds (a changing tool without ``wait: false``)."""
        return self.name in TOOL_NAMES and self.arguments.get("wait", True) is not False


def _short(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "…")


def parse_arguments(raw: object) -> object:
    """The arguments as a Python value, or the reason they are not JSON (a ``str`` in a tuple):
    the one parser of every face (dispatch, MCP, the integrations' raw argument text).

    >>> parse_arguments("[" * 100000)
    ('not JSON (nested too deeply)',)
    """
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        return (f"not JSON ({exc.msg})",)
    except ValueError:  # an integer longer than Python's int/str conversion limit
        return ("not JSON (a number has too many digits)",)
    except RecursionError:
        return ("not JSON (nested too deeply)",)


def _explain(error: ValidationError) -> str:
    """One short reason for a schema violation, naming the argument (never the schema)."""
    where = str(error.path[0]) if error.path else None
    validator, value = error.validator, error.validator_value
    if validator == "additionalProperties" and isinstance(error.instance, Mapping):
        known = set(error.schema.get("properties", {}))
        unknown = [key for key in error.instance if key not in known]
        return f"unknown argument {_short(str(unknown[0]))}" if unknown else "unknown argument"
    if validator == "required" and isinstance(error.instance, Mapping):
        missing = [key for key in value if key not in error.instance]
        return f"missing argument {missing[0]!r}" if missing else "missing argument"
    if where is None:
        if validator == "type":
            return "arguments must be a JSON object"
        return f"the arguments are not valid ({validator})"
    if validator == "type" and isinstance(value, str):
        return f"{where} must be {_TYPE_WORDS.get(value, value)}"
    if validator == "minLength":
        return f"{where} must not be empty"
    if validator == "pattern":
        return f"{where} must not contain NUL bytes" if value == _NO_NUL else f"{where} has a bad format"
    return f"{where} is not valid ({validator})"


def _check(name: str, parsed: object, chat_id_argument: bool) -> dict[str, Any] | str:
    """The arguments checked against ``name``'s schema, or the reason they are refused."""
    if isinstance(parsed, tuple):
        return str(parsed[0])
    if isinstance(parsed, Mapping):
        if not all(isinstance(key, str) for key in parsed):
            return "argument names must be strings"
        parsed = dict(parsed)
    try:
        error = best_match(_validators(chat_id_argument)[name].iter_errors(parsed))
    except (ValueError, RecursionError):  # an int too long to show, a value nested too deeply
        return "a value is too large or too deeply nested"
    if error is not None:
        return _explain(error)
    assert isinstance(parsed, dict)
    for key, value in parsed.items():
        if (problem := _text_problem(value)) is not None:
            return f"{key} {problem}"
    if "parameters" in parsed:
        try:
            check_parameters(parsed["parameters"])
        except ValueError as exc:  # the runtime's own check of parameters, answered here
            return str(exc)
    if name == "create_workspace" and parsed.get("name"):
        try:  # kept or refused with a name to try, never renamed: the model can retry with it
            checks.workspace_name("name", parsed["name"])
        except ValueError as exc:
            return str(exc)
    return parsed


def _text_problem(value: object) -> str | None:
    """What makes a string in ``value`` (a key or a value, at any depth the schema allowed)
    unusable: a NUL, or a lone surrogate no store can keep."""
    if isinstance(value, str):
        if "\x00" in value:
            return "must not contain NUL characters"
        return None if _encodable(value) else "is not valid Unicode text (a lone surrogate)"
    if isinstance(value, Mapping):
        for key, item in value.items():
            if (problem := _text_problem(key) or _text_problem(item)) is not None:
                return problem
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no store can keep it
        return False
    return True


def _usable_id(value: object) -> bool:
    return isinstance(value, str) and bool(value) and "\x00" not in value and _encodable(value)


async def _allows(allowed: AllowedChats, chat: str) -> bool:
    if callable(allowed):
        verdict = allowed(chat)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        return bool(verdict)
    return chat in allowed


async def prepare_tool_call(
    name: str,
    arguments: str | Mapping[Any, Any] | None,
    *,
    chat_id: str | None,
    owner: str,
    allowed_chats: AllowedChats | None = None,
) -> ToolCall | ToolResult:
    """Check a tool call and decide its chat; a :class:`ToolResult` when it is answered already.

    Without ``allowed_chats`` the call is bound to ``chat_id``: a ``chat_id`` argument naming
    any other chat is answered as an unknown chat. With it, a ``chat_id`` argument may name a
    chat the host allows (``chat_id`` is then the default); any other is an unknown chat.
    """
    served = allowed_chats is not None
    if isinstance(allowed_chats, str):
        raise TypeError("allowed_chats must be a collection of chat ids or a predicate, not a str")
    known = _validators(served)
    if not isinstance(name, str) or name not in known:
        shown = _short(name) if isinstance(name, str) else f"(a {type(name).__name__}, not a name)"
        return ToolResult.error(f"unknown tool {shown}; known tools: {', '.join(known)}")
    if not _usable_id(owner):
        return ToolResult.error(f"{name}: the host gave no usable owner")
    if chat_id is not None and not _usable_id(chat_id):
        return ToolResult.error(f"{name}: the host gave no usable chat_id")
    parsed = parse_arguments(arguments)
    named: object = None
    if not served and isinstance(parsed, Mapping) and "chat_id" in parsed:
        # Not in the bound tools' schema; a model that names a chat anyway names either its
        # own chat (harmless) or one it may not act on, which is answered as unknown below.
        named = parsed["chat_id"]
        parsed = {key: value for key, value in parsed.items() if key != "chat_id"}
    args = _check(name, parsed, served)
    if isinstance(args, str):
        return ToolResult.error(f"invalid arguments for {name}: {args}")
    if served:
        named = args.pop("chat_id", None)
    if named is not None and named != chat_id:
        if allowed_chats is None or not isinstance(named, str) or not await _allows(allowed_chats, named):
            return unknown_chat(name)
        return ToolCall(name, named, args)
    if chat_id is None:
        return ToolResult.error(f"{name} needs a chat_id")
    return ToolCall(name, chat_id, args)


@asynccontextmanager
async def held_turn(lifecycle: Lifecycle, chat_id: str, owner: str) -> AsyncIterator[None]:
    """Hold the chat's turn (:meth:`~workspace_lifecycle.Lifecycle.turn`) while the block runs:
    what the faces put around a tool call (the MCP server) or an agent run (the integrations).

    Holding is a courtesy that never changes an answer: a chat that is not the owner's (the tool
    answers it as unknown) or a store that cannot take the hold now holds nothing, and the
    block runs all the same.
    """
    async with AsyncExitStack() as stack:
        try:
            await stack.enter_async_context(lifecycle.turn(chat_id, owner=owner))
        except (CallerError, ValueError, StoreError, CorruptStateError) as exc:
            log.debug("turn of %s not held: %s", chat_id, exc)
        yield


async def run_tool_call(lifecycle: Lifecycle, call: ToolCall, *, owner: str) -> ToolResult:
    """Run a call :func:`prepare_tool_call` accepted, for ``owner``."""
    chat, args = call.chat_id, call.arguments
    if call.name == STATUS_TOOL["name"]:
        return await lifecycle.status(chat, owner=owner, wait_ms=args.get("wait_ms", 0))
    if call.name == LOGS_TOOL["name"]:
        return await lifecycle.logs(
            chat, owner=owner, build=args.get("build"), limit=args.get("limit", 100), after=args.get("after")
        )
    wait = args.get("wait", True)
    parameters = args.get("parameters")
    if call.name == "create_workspace":
        return await lifecycle.create_workspace(
            chat, owner=owner, name=args.get("name"), wait=wait, parameters=parameters
        )
    if call.name == "start_workspace":
        return await lifecycle.start_workspace(chat, owner=owner, wait=wait, parameters=parameters)
    if call.name == "stop_workspace":
        return await lifecycle.stop_workspace(chat, owner=owner, wait=wait)
    return await lifecycle.delete_workspace(chat, owner=owner, wait=wait)


async def dispatch_tool(
    lifecycle: Lifecycle,
    name: str,
    arguments: str | Mapping[Any, Any] | None,
    *,
    chat_id: str | None,
    owner: str,
    allowed_chats: AllowedChats | None = None,
) -> ToolResult:
    """Run the tool call ``name`` with its JSON ``arguments`` on ``chat_id`` for ``owner``.

    A bad tool name or bad arguments is an error result naming the argument and why (what the
    model should see), never an exception, and nothing is written. The call acts on the chat it
    is bound to, ``chat_id``; only with ``allowed_chats`` (a host serving many chats, whose
    tools come from ``tool_definitions(chat_id_argument=True)``) may a ``chat_id`` argument name
    another chat, and only an allowed one. Every other chat, like another owner's, is answered
    exactly as an unknown chat.
    """
    call = await prepare_tool_call(name, arguments, chat_id=chat_id, owner=owner, allowed_chats=allowed_chats)
    if isinstance(call, ToolResult):
        return call
    return await run_tool_call(lifecycle, call, owner=owner)
