"""Griffe extensions for the API reference (code, not a page: mkdocs.yml excludes it).

``SphinxRoles``: the docstrings use Sphinx's cross-reference roles (``:class:`~workspace_lifecycle.errors.StoreError```,
``:meth:`Tracker.decide```), which IDEs and ``help()`` read well. mkdocstrings does not read
them, so this extension rewrites each role, before the docstring is parsed, into a cross-reference
for mkdocs-autorefs: a link where its target is on the site, the name in code where it is not
(a private helper, the standard library). Names are resolved as Sphinx resolves them, in the
scope of the object whose docstring names them; ``~`` shows only the last component, and a
function or method is shown with ``()``.

``AttrsInit``: the value types are attrs classes, whose ``__init__`` attrs writes at import, so
griffe's static reading finds no signature for them. This extension writes it as attrs does
(griffe's own extension does the same for dataclasses): the fields in order, parents' first, a
leading underscore dropped, ``init=False`` left out, ``kw_only`` kept, and the default shown (a
``factory`` as the call it makes).

mkdocs.yml loads both: ``extensions: [docs/griffe_extensions.py:SphinxRoles, ...:AttrsInit]``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import Any

import griffe

#: ``:role:`target```, ``:role:`~target```, ``:role:`title <target>```, with ``py:`` or not.
ROLE = re.compile(r":(?:py:)?(class|meth|func|attr|exc|mod|data|obj|const):`([^`]+)`")
CALLABLE = {"meth", "func"}
#: reST's literal-block marker ending a line: ``text::`` (read as ``text:``), or ``::`` alone.
LITERAL = re.compile(r"(?:(?<=\S)(:):|[ \t]*::)[ \t]*$", re.M)


def _objects(obj: griffe.Object) -> Iterator[griffe.Object]:
    """``obj`` and every object defined in it (aliases are documented where they are defined)."""
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            assert isinstance(member, griffe.Object)
            yield from _objects(member)


def _resolve(scope: griffe.Object, target: str) -> str:
    """The full path of ``target`` as named in ``scope``'s docstring (unchanged if unknown)."""
    head, _, rest = target.partition(".")
    if head == scope.package.name:
        return target
    try:
        path = scope.resolve(head)
    except griffe.NameResolutionError:
        return target
    return f"{path}.{rest}" if rest else path


def _link(scope: griffe.Object, match: re.Match[str]) -> str:
    role, body = match.group(1), " ".join(match.group(2).split())
    explicit = re.fullmatch(r"(.+?)\s*<(.+)>", body)
    if explicit:
        title, target = explicit.groups()
    else:
        target = body.lstrip("~")
        title = target.rsplit(".", 1)[-1] if body.startswith("~") else target.lstrip(".")
    target = target.removesuffix("()").lstrip(".")
    title = title.removesuffix("()") + ("()" if role in CALLABLE else "")
    identifier = _resolve(scope, target)
    # The inline form that mkdocstrings' own signatures use: ``optional`` makes an unknown
    # target plain code instead of a warning (a strict build fails on warnings).
    return (
        f'<autoref identifier="{html.escape(identifier)}" optional>'
        f"<code>{html.escape(title)}</code></autoref>"
    )


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring of a loaded package into autorefs."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _objects(pkg):
            docstring = obj.docstring
            if docstring is None:
                continue
            text = ROLE.sub(lambda match, scope=obj: _link(scope, match), docstring.value)
            # reST's literal-block marker: "text::" reads "text:" and a lone "::" nothing; the
            # indented block after it is a code block in Markdown as it is.
            docstring.value = LITERAL.sub(lambda match: match.group(1) or "", text)


#: The decorators that make an attrs class (called or not), by their canonical path.
ATTRS_DECORATORS = {
    "attrs.define",
    "attrs.frozen",
    "attrs.mutable",
    "attr.s",
    "attr.attrs",
    "attr.define",
    "attr.frozen",
    "attr.mutable",
}
ATTRS_FIELDS = {"attrs.field", "attr.ib", "attr.attrib", "attr.field"}


def _call_arguments(expr: object) -> dict[str, Any]:
    if not isinstance(expr, griffe.ExprCall):
        return {}
    return {arg.name: arg.value for arg in expr.arguments if isinstance(arg, griffe.ExprKeyword)}


def _attrs_decorator(cls: griffe.Class) -> dict[str, Any] | None:
    """The attrs decorator's keyword arguments, or ``None`` if ``cls`` is no attrs class."""
    for decorator in cls.decorators:
        value = decorator.value
        function = value.function if isinstance(value, griffe.ExprCall) else value
        if isinstance(function, griffe.Expr) and function.canonical_path in ATTRS_DECORATORS:
            return _call_arguments(value)
    return None


def _attrs_parameters(cls: griffe.Class) -> list[griffe.Parameter]:
    class_kw_only = str(_attrs_decorator(cls).get("kw_only")) == "True"  # type: ignore[union-attr]
    parameters = []
    for member in cls.members.values():
        if member.is_alias or not isinstance(member, griffe.Attribute) or member.annotation is None:
            continue
        if "instance-attribute" not in member.labels:  # a property, or a ClassVar
            continue
        value = member.value
        field = (
            _call_arguments(value)
            if isinstance(value, griffe.ExprCall) and value.function.canonical_path in ATTRS_FIELDS
            else None
        )
        if field is not None and str(field.get("init")) == "False":
            continue
        if field is None:
            default = value
        elif "factory" in field:
            factory = field["factory"]
            default = factory.body if isinstance(factory, griffe.ExprLambda) else griffe.ExprCall(factory, [])
        else:
            default = field.get("default")
        kw_only = class_kw_only or (field is not None and str(field.get("kw_only")) == "True")
        name = str(field["alias"]).strip("\"'") if field and "alias" in field else member.name.lstrip("_")
        parameters.append(
            griffe.Parameter(
                name,
                annotation=member.annotation,
                kind=griffe.ParameterKind.keyword_only
                if kw_only
                else griffe.ParameterKind.positional_or_keyword,
                default=default,
                docstring=member.docstring,
            )
        )
    return parameters


class AttrsInit(griffe.Extension):
    """Give every attrs class of a loaded package the ``__init__`` signature attrs gives it."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _objects(pkg):
            if (
                not isinstance(obj, griffe.Class)
                or "__init__" in obj.members
                or _attrs_decorator(obj) is None
            ):
                continue
            parameters: dict[str, griffe.Parameter] = {}
            try:
                mro = obj.mro()
            except ValueError:
                mro = []
            for cls in [*reversed(mro), obj]:
                if isinstance(cls, griffe.Class) and _attrs_decorator(cls) is not None:
                    parameters.update((p.name, p) for p in _attrs_parameters(cls))
            ordered = sorted(parameters.values(), key=lambda p: p.kind is griffe.ParameterKind.keyword_only)
            init = griffe.Function(
                "__init__",
                lineno=0,
                endlineno=0,
                parent=obj,
                parameters=griffe.Parameters(
                    griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword), *ordered
                ),
                returns="None",
            )
            obj.set_member("__init__", init)
