"""Ids and workspace names checked as data in one place (``checks.identifier``,
``checks.workspace_name``): what is kept, what is refused, and the one sentence."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workspace_lifecycle import checks

SENTENCE = "must be valid UTF-8 text of 1 to 128 characters without control characters (such as a newline)"


class TestIdentifier:
    @pytest.mark.parametrize(
        "value",
        ["chat-1", "a", "x" * 128, "alice@example.com", "ü🚀", "x'); DROP TABLE chats; --", "a b\u202e"],
    )
    def test_kept(self, value: str) -> None:
        """Any text of 1 to 128 characters without control characters comes back unchanged."""
        assert checks.identifier("chat_id", value) == value

    @pytest.mark.parametrize(
        "value",
        [
            "",
            "x" * 129,
            "a\nb",
            "a\rb",
            "a\tb",
            "\x1b[31m",
            "a\x00b",
            "\x7f",
            "\x85",
            "a\u2028b",
            "a\ud800b",
            5,
            None,
        ],
    )
    def test_refused_in_one_sentence(self, value: object) -> None:
        """Empty, too long, a control character (C0, DEL, C1), a line separator, a lone
        surrogate, not a string: the same sentence, naming the kind, on one line."""
        with pytest.raises(ValueError) as caught:
            checks.identifier("owner", value)
        text = str(caught.value)
        assert text.startswith(f"owner {SENTENCE}, not ")
        assert "\n" not in text and "\r" not in text and "\x1b" not in text

    def test_a_huge_id_is_shown_short(self) -> None:
        with pytest.raises(ValueError) as caught:
            checks.identifier("chat_id", "y" * 100_000)
        assert len(str(caught.value)) < 220 and "(100000 characters)" in str(caught.value)


class TestWorkspaceName:
    @pytest.mark.parametrize("name", ["dev", "dev-2", "A1", "a" * 32, "my-dev-box"])
    def test_coders_rule_keeps(self, name: str) -> None:
        assert checks.workspace_name("name", name) == name and checks.workspace_name_valid(name)

    @pytest.mark.parametrize("name", ["", "bad name!!", "-dev", "dev-", "a--b", "a" * 33, "dév", "a_b", 7])
    def test_coders_rule_refuses_saying_it(self, name: object) -> None:
        with pytest.raises(ValueError, match=r"^--name must be 1 to 32 letters, digits and single hyphens"):
            checks.workspace_name("--name", name)
        assert not checks.workspace_name_valid(name)


@given(st.text(max_size=12) | st.text(st.characters(max_codepoint=0x7F), max_size=12))
def test_an_id_is_refused_exactly_for_its_characters_categories(value: str) -> None:
    """The rule, restated per character: 1 to 128 characters, none a control (Cc), a lone
    surrogate (Cs) or a line or paragraph separator (Zl, Zp); ASCII text takes a shortcut."""
    allowed = len(value) > 0 and not any(unicodedata.category(c) in {"Cc", "Cs", "Zl", "Zp"} for c in value)
    if allowed:
        assert checks.identifier("chat_id", value) == value
    else:
        with pytest.raises(ValueError, match="chat_id must be valid UTF-8 text"):
            checks.identifier("chat_id", value)


class TestAcceptedLately:
    """``identifier`` remembers the ids it accepted at its default bound (a lookup for a chat's
    ids that come back with every request): a remembered id answers the same, nothing else is
    remembered, and the memory is bounded."""

    def test_a_remembered_id_answers_the_same_and_a_bad_one_is_never_remembered(self) -> None:
        checks._ACCEPTED.clear()
        assert checks.identifier("chat_id", "chat-remembered") == "chat-remembered"
        assert "chat-remembered" in checks._ACCEPTED
        assert checks.identifier("chat_id", "chat-remembered") == "chat-remembered"
        for bad in ("", "a\nb", "x" * 129):
            with pytest.raises(ValueError, match="chat_id must be valid UTF-8 text"):
                checks.identifier("chat_id", bad)
            assert bad not in checks._ACCEPTED

    def test_a_tighter_bound_is_checked_whatever_was_remembered(self) -> None:
        checks.identifier("owner", "a-long-owner-name")
        with pytest.raises(ValueError, match="1 to 4 characters"):
            checks.identifier("owner", "a-long-owner-name", most=4)

    def test_the_memory_is_bounded(self) -> None:
        checks._ACCEPTED.clear()
        for i in range(checks._ACCEPTED_KEPT + 10):
            checks.identifier("chat_id", f"c{i}")
        assert len(checks._ACCEPTED) <= checks._ACCEPTED_KEPT
