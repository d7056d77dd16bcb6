import pytest
from hypothesis import given
from hypothesis import strategies as st

from colony.bus.tokens import TokenError, from_token, normalise_domain, to_token


@given(st.text(min_size=1))
def test_any_name_round_trips_and_is_subject_safe(name):
    token = to_token(name)
    assert from_token(token) == name
    assert not set(token) & set(". *>\t\r\n")
    assert token == token.lower()


def test_readable_for_ordinary_names():
    assert to_token("acme.example") == "acme_2eexample"
    assert to_token("j.smith+tag") == "j_2esmith_2btag"
    assert to_token("A") == "_41", "case is escaped, never folded"


def test_distinct_names_give_distinct_tokens():
    assert to_token("a_2e") != to_token("a.")


@pytest.mark.parametrize("bad", ["", "a.b", "_4", "_zz", "A", "_ff"])
def test_malformed_tokens_are_refused(bad):
    with pytest.raises(TokenError):
        from_token(bad)


def test_domains_normalise_case_dot_and_idn():
    assert normalise_domain(" Acme.Example. ") == "acme.example"
    assert normalise_domain("bücher.example") == "xn--bcher-kva.example"


@given(st.text(min_size=1))
def test_ascii_and_general_paths_escape_alike(name):
    # An ASCII name takes the translate table, any other the regex: the same character must
    # get the same escape in both, or a name's token would depend on its neighbours.
    for char in name:
        expected = char if char in "abcdefghijklmnopqrstuvwxyz0123456789-" else "".join(
            f"_{byte:02x}" for byte in char.encode("utf-8"))
        assert to_token(char) == expected
        assert to_token(char + "é").startswith(expected)
    assert to_token(name) == "".join(to_token(char) for char in name)


@given(st.text(alphabet="abcxyz019-_.@+AZ %", min_size=1))
def test_addresses_and_domains_escape_as_every_other_name(name):
    # Lower-case addresses and domains take a shortcut (three replaces); names that look like
    # them but carry one more unsafe character must come out as the character-by-character rule says.
    assert to_token(name) == "".join(to_token(char) for char in name)
    assert from_token(to_token(name)) == name
