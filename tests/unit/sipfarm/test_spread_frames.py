"""The binary frames of a packet spread to its Call-ID's owner, and of the owner's answer."""

import pytest
from hypothesis import given, strategies as st

from colony_sipfarm.farm import Outbound
from colony_sipfarm.spread_frames import FrameError, SpreadAnswers, SpreadPacket

REGISTER = (b"REGISTER sip:bench.test SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\n"
            b"Call-ID: a b\nc\r\nContent-Length: 0\r\n\r\n")

# What a frame field may be: transports, addresses and host names, node ids and their tokens.
fields = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40).filter(lambda f: f != "-")
ports = st.integers(0, 65535)
sources = st.tuples(fields, fields, ports)


@given(st.binary(max_size=3000), sources, fields, st.tuples(fields, ports))
def test_a_packet_comes_out_as_it_went_in(data, source, member, address):
    packet = SpreadPacket(data, source, member, address)
    assert SpreadPacket.from_frame(packet.to_frame()) == packet


@given(st.lists(st.builds(Outbound, st.binary(max_size=2000), sources, st.none() | fields), max_size=5))
def test_answers_come_out_as_they_went_in(items):
    assert SpreadAnswers.from_frame(SpreadAnswers.to_frame(items)) == items


def test_the_frames_carry_the_sip_bytes_as_they_are():
    frame = SpreadPacket(REGISTER, ("UDP", "::1", 5060), "sipfarm-2", ("127.0.0.1", 2560)).to_frame()
    assert frame == b"UDP ::1 5060 sipfarm-2 127.0.0.1 2560\n" + REGISTER
    answers = SpreadAnswers.to_frame([Outbound(b"SIP/2.0 401 x\r\n\r\n", ("UDP", "10.0.0.1", 5060)),
                                      Outbound(b"", ("TCP", "10.0.0.2", 5061), "c2lwZmFybS0x")])
    assert answers == b"17 UDP 10.0.0.1 5060 -\nSIP/2.0 401 x\r\n\r\n0 TCP 10.0.0.2 5061 c2lwZmFybS0x\n"
    assert SpreadAnswers.from_frame(b"") == []     # nothing to send


@pytest.mark.parametrize("frame", [
    b"", b"no line at all", b"UDP 1.2.3.4 5060 m h\n", b"UDP 1.2.3.4 5060 m h 2560 extra\n",
    b"UDP 1.2.3.4 -1 m h 2560\n", b"UDP 1.2.3.4 65536 m h 2560\n", b"UDP 1.2.3.4 5060 m h 0x10\n",
    b"UDP  5060 m h 2560\n", b"UDP 1.2.3.4 \xd9\xa3 m h 2560\n", b"UDP 1.2.\xff.4 5060 m h 2560\n",
    b"x" * 5000 + b"\n",
])
def test_a_request_frame_that_is_not_ours_is_refused(frame):
    with pytest.raises(FrameError):
        SpreadPacket.from_frame(frame)


@pytest.mark.parametrize("frame", [
    b"5 UDP h 1 -\nabc", b"3 UDP h 1 -\nabc4 UDP h 1 -\nab", b"x UDP h 1 -\n", b"-1 UDP h 1 -\n",
    b"3 UDP h 1\nabc", b"3 UDP h 99999 -\nabc", b"3 UDP h 1 - -\nabc", b"\n", b"abc",
    b"1" * 20 + b" UDP h 1 -\n",
])
def test_an_answer_frame_that_is_not_ours_is_refused(frame):
    with pytest.raises(FrameError):
        SpreadAnswers.from_frame(frame)


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_are_refused_never_anything_else(frame):
    for decode in (SpreadPacket.from_frame, SpreadAnswers.from_frame):
        try:
            decode(frame)
        except FrameError:
            pass


@pytest.mark.parametrize("bad", ["a b", "a\nb", "", "-", "é"])
def test_a_field_the_frame_cannot_carry_is_refused_when_encoding(bad):
    with pytest.raises(ValueError):
        SpreadPacket(b"x", ("UDP", bad, 5060), "m", ("h", 1)).to_frame()
    with pytest.raises(ValueError):
        SpreadAnswers.to_frame([Outbound(b"x", ("UDP", "h", 1), bad)])


@given(st.lists(st.text(max_size=6) | st.integers(0, 99), min_size=1, max_size=6))
def test_a_line_of_fields_is_checked_as_each_field_alone(values):
    # _fields checks the joined line in one pass; it must refuse exactly what _field refuses.
    from colony_sipfarm.spread_frames import _field, _fields

    try:
        expected = b" ".join(_field(v) for v in values)
    except ValueError:
        with pytest.raises(ValueError):
            _fields(*values)
    else:
        assert _fields(*values) == expected
