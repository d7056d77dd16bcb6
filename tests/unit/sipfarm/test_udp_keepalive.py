"""A UDP datagram of nothing but CRLFs is a phone's keep-alive (linphone's, every
``keepalive_period``; tests/integration/sipfarm/test_linphone.py): ignored, not answered and
not counted as a dropped unparsable packet, which real garbage still is."""

from __future__ import annotations

from test_farm import PHONE, farm  # noqa: F401 (farm: a fixture)


async def test_a_crlf_keep_alive_datagram_is_ignored_and_not_counted_as_garbage(farm):
    unparsable = farm.metrics.dropped.labels(reason="unparsable")
    for keepalive in (b"\r\n\r\n", b"\r\n", b"\n"):
        assert await farm.handle(keepalive, PHONE) == []
    assert unparsable._value.get() == 0
    assert await farm.handle(b"\x16\x03\x01 not SIP at all", PHONE) == []
    assert unparsable._value.get() == 1
