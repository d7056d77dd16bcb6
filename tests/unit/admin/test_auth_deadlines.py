"""How long the auth service believes a requester waits (``Colony-Timeout``): a header that
does not parse, is not positive or not finite gets the contract's default, never an error or
a wait without end; a huge one is capped."""

from __future__ import annotations

import pytest

from colony.contracts.auth import DEFAULT_TIMEOUT, TIMEOUT_HEADER
from colony_admin.authservice import _MAX_TIMEOUT, deadline_of


@pytest.mark.parametrize("headers, wait", [
    (None, DEFAULT_TIMEOUT),
    ({}, DEFAULT_TIMEOUT),
    ({"traceparent": "00-abc"}, DEFAULT_TIMEOUT),
    ({TIMEOUT_HEADER: "2.5"}, 2.5),
    ({TIMEOUT_HEADER: "0.25"}, 0.25),
    ({TIMEOUT_HEADER: "soon"}, DEFAULT_TIMEOUT),
    ({TIMEOUT_HEADER: ""}, DEFAULT_TIMEOUT),
    ({TIMEOUT_HEADER: "0"}, DEFAULT_TIMEOUT),
    ({TIMEOUT_HEADER: "-3"}, DEFAULT_TIMEOUT),
    ({TIMEOUT_HEADER: "nan"}, DEFAULT_TIMEOUT),
    ({TIMEOUT_HEADER: "inf"}, DEFAULT_TIMEOUT),
    ({TIMEOUT_HEADER: "1e9"}, _MAX_TIMEOUT),
])
def test_deadline_of(headers, wait):
    assert deadline_of(headers, 1000.0) == 1000.0 + wait
