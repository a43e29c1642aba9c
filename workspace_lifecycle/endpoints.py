"""Where a workspace's agent can be reached: its named endpoints, checked as data. Pure.

A provisioner reports them with the agent (``store.report_agent(ws, "ready", lease=token,
endpoints={"http": "http://127.0.0.1:41237"})``); every answer about a live workspace carries
them, so a model (or the program around it) learns where the workspace listens from the tool
answer itself, as E2B's ``get_host``, Daytona's preview URLs or Coder's agent apps tell it.

An endpoint is a short name and a URL. The URL's scheme is one of :data:`SCHEMES` and it names a
host; nothing else is checked (no DNS, no connection): the store keeps what the provisioner
said, bounded in number and size, and refuses the rest with a ``ValueError`` naming it.

Rules for this module: no I/O, no awaits, no clocks, no anyio.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping

__all__ = ["MAX_ENDPOINTS", "MAX_URL_LENGTH", "SCHEMES", "check_endpoints"]

#: The URL schemes an endpoint may have.
SCHEMES = frozenset({"http", "https", "tcp", "udp", "ws", "wss", "ssh", "grpc", "grpcs"})
#: At most this many endpoints per agent.
MAX_ENDPOINTS = 16
#: The longest URL an endpoint may have, in characters.
MAX_URL_LENGTH = 2048
#: A name: a letter, then up to 31 letters, digits, ``_`` or ``-`` (``http``, ``vscode-web``).
#: Whitespace, as ``str.isspace`` says (both use Unicode's White_Space), found in one C loop.
_SPACE = re.compile(r"\s")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")


def check_endpoints(endpoints: object) -> dict[str, str]:
    """``endpoints`` as data: a mapping of short names to URLs (see the module docstring).

    >>> check_endpoints({"http": "http://127.0.0.1:41237"})
    {'http': 'http://127.0.0.1:41237'}
    >>> check_endpoints(None)
    {}
    >>> check_endpoints({"http": "file:///etc/passwd"})
    Traceback (most recent call last):
    ...
    ValueError: endpoint 'http' has scheme 'file'; use one of: grpc, grpcs, http, https, ssh, tcp, udp, ws, wss
    """
    if endpoints is None:
        return {}
    if not isinstance(endpoints, Mapping):
        raise ValueError(f"endpoints must be an object of names to URLs, not {type(endpoints).__name__}")
    if len(endpoints) > MAX_ENDPOINTS:
        raise ValueError(f"at most {MAX_ENDPOINTS} endpoints, not {len(endpoints)}")
    out: dict[str, str] = {}
    for name, url in endpoints.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(
                f"an endpoint name is a letter then up to 31 letters, digits, '_' or '-', not {name!r:.80}"
            )
        out[name] = _check_url(name, url)
    return out


def _check_url(name: str, url: object) -> str:
    if not isinstance(url, str):
        raise ValueError(f"endpoint {name!r} must be a URL string, not {type(url).__name__}")
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"endpoint {name!r} is longer than {MAX_URL_LENGTH} characters")
    if not url.isprintable() or _SPACE.search(url):
        raise ValueError(f"endpoint {name!r} holds whitespace or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # checks the port's range too
    except ValueError as exc:
        raise ValueError(f"endpoint {name!r} is not a URL: {exc}") from None
    if parts.scheme not in SCHEMES:
        raise ValueError(
            f"endpoint {name!r} has scheme {parts.scheme!r}; use one of: {', '.join(sorted(SCHEMES))}"
        )
    if not parts.hostname:
        raise ValueError(f"endpoint {name!r} names no host: {url!r:.120}")
    if parts.scheme in ("tcp", "udp") and port is None:
        raise ValueError(f"endpoint {name!r} ({parts.scheme}) names no port: {url!r:.120}")
    return url
