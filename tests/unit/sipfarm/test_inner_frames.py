"""The inner relay's datagrams: what goes in comes out under the same key; anything else --
tampered, truncated, padded, garbage, another key -- raises the module's error only."""

import pytest
from hypothesis import given, strategies as st

from colony_sipfarm.farm import Outbound
from colony_sipfarm.entrusted_branches import FORGOTTEN_PER_FRAME
from colony_sipfarm.inner_frames import (MAC_SIZE, MAX_BRANCH, MAX_DATAGRAM, Entrusted, InnerFrameError, RelayKey,
                                         open_frame, seal_answers, seal_entrusted, seal_packet)
from colony_sipfarm.spread_frames import FrameError, SpreadPacket

KEY = RelayKey.from_secret(b"s" * 32)
fields = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40).filter(lambda f: f != "-")
ports = st.integers(0, 65535)
sources = st.tuples(fields, fields, ports)
packets = st.builds(SpreadPacket, st.binary(max_size=3000), sources, fields, st.tuples(fields, ports))
outbounds = st.builds(Outbound, st.binary(max_size=2000), sources, st.none() | fields)
traceparents = st.none() | st.just("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
PACKET = SpreadPacket(b"REGISTER sip:x SIP/2.0\r\n\r\n", ("UDP", "192.0.2.1", 5060), "sipfarm-1", ("127.0.0.1", 2560))


@given(packets, fields, fields, st.tuples(fields, ports), traceparents)
def test_a_packet_frame_opens_to_what_was_sealed(packet, to, sender, reply_to, traceparent):
    frame = open_frame(KEY, seal_packet(KEY, packet, to, sender, reply_to, traceparent))
    assert (frame.packet, frame.answers, frame.to, frame.sender, frame.reply_to, frame.traceparent) == (
        packet, None, to, sender, reply_to, traceparent)


@given(st.lists(outbounds, min_size=1, max_size=5), fields, fields, traceparents)
def test_answers_open_to_what_was_sealed(items, to, sender, traceparent):
    frames, left_out = seal_answers(KEY, items, to, sender, ("127.0.0.1", 2564), traceparent)
    assert left_out == 0 and len(frames) == 1
    frame = open_frame(KEY, frames[0])
    assert frame.answers == items and frame.packet is None and frame.traceparent == traceparent


def test_answers_larger_than_a_datagram_are_split_in_order_and_what_cannot_go_is_left_out():
    items = [Outbound(bytes([65 + i]) * 30_000, ("UDP", "192.0.2.1", 5060)) for i in range(5)]
    unframeable = Outbound(b"x", ("UDP", "b\u00e4d host", 5060))
    too_large = Outbound(b"y" * MAX_DATAGRAM, ("UDP", "192.0.2.1", 5060))
    frames, left_out = seal_answers(KEY, [items[0], unframeable, *items[1:], too_large], "a", "b", ("h", 1))
    assert left_out == 2 and all(len(f) <= MAX_DATAGRAM for f in frames) and len(frames) == 3
    assert [i for f in frames for i in open_frame(KEY, f).answers] == items
    assert seal_answers(KEY, [], "a", "b", ("h", 1)) == ([], 0)     # nothing to send: no datagram


def test_a_frame_under_another_key_is_refused():
    frame = seal_packet(KEY, PACKET, "sipfarm-2", "sipfarm-1", ("127.0.0.1", 2564))
    with pytest.raises(InnerFrameError) as refused:
        open_frame(RelayKey.from_secret(b"t" * 32), frame)
    assert refused.value.reason == "bad mac"


def test_the_key_is_not_the_secret():
    assert KEY.key != b"s" * 32 and len(KEY.key) == 32


@given(st.data())
def test_any_changed_byte_truncation_or_padding_is_refused(data):
    frame = seal_packet(KEY, PACKET, "sipfarm-2", "sipfarm-1", ("127.0.0.1", 2564))
    how = data.draw(st.sampled_from(["flip", "cut", "pad"]))
    if how == "flip":
        at = data.draw(st.integers(0, len(frame) - 1))
        bad = frame[:at] + bytes([frame[at] ^ data.draw(st.integers(1, 255))]) + frame[at + 1:]
    elif how == "cut":
        bad = frame[:data.draw(st.integers(0, len(frame) - 1))]
    else:
        bad = frame + data.draw(st.binary(min_size=1, max_size=40))
    with pytest.raises(InnerFrameError):
        open_frame(KEY, bad)


@given(st.binary(max_size=400))
def test_garbage_raises_the_modules_error_and_nothing_else(garbage):
    for frame in (garbage, b"CIR1 " + garbage):
        try:
            open_frame(KEY, frame)
        except InnerFrameError as exc:
            assert isinstance(exc, FrameError) and exc.reason
        # (a random MAC matching is 2**-128: never)


@pytest.mark.parametrize("head", [
    b"CIR1 X a b h 1 -\n",              # an unknown kind
    b"CIR1 P a b h 1\n",                # a field short
    b"CIR1 P a b h 99999 -\n",          # not a port
    b"CIR1 P a b h 1 - extra\n",
    b"CIR1 P a  h 1 -\n",               # an empty field
    b"CIR1 P a b h 1 -",                # no end of line
])
def test_a_well_signed_frame_that_does_not_decode_is_refused(head):
    # Signed, so made by a member: a bug or another version, still only the module's error.
    data = head + b"UDP 1.2.3.4 5060 m h 2560\nREGISTER"
    with pytest.raises(InnerFrameError) as refused:
        open_frame(KEY, data + KEY.mac(data))
    assert refused.value.reason == "undecodable"


def test_a_signed_packet_whose_body_is_not_a_packet_frame_is_refused():
    data = b"CIR1 P a b h 1 -\nUDP 1.2.3.4 notaport m h 2560\nREGISTER"
    with pytest.raises(InnerFrameError):
        open_frame(KEY, data + KEY.mac(data))
    answers = b"CIR1 A a b h 1 -\n99 UDP h 1 -\nshort"
    with pytest.raises(InnerFrameError):
        open_frame(KEY, answers + KEY.mac(answers))


def test_the_frame_is_the_spread_frame_behind_one_line_and_a_mac():
    frame = seal_packet(KEY, PACKET, "sipfarm-2", "sipfarm-1", ("127.0.0.1", 2564))
    assert frame[:-MAC_SIZE] == b"CIR1 P sipfarm-2 sipfarm-1 127.0.0.1 2564 -\n" + PACKET.to_frame()


branches = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=MAX_BRANCH).filter(lambda f: f != "-")
entrusted = st.builds(Entrusted, st.lists(branches, max_size=FORGOTTEN_PER_FRAME),
                      st.none() | sources, st.binary(max_size=2000))


@given(entrusted, fields, fields)
def test_an_entrusted_branch_opens_to_what_was_sealed(body, to, sender):
    if body.destination is None:
        body = Entrusted(body.forgotten)         # nothing after the line of branches to forget
    frame = open_frame(KEY, seal_entrusted(KEY, body, to, sender, ("127.0.0.1", 2564)))
    assert (frame.entrusted, frame.packet, frame.answers, frame.to, frame.sender) == (body, None, None, to, sender)


@given(st.binary(max_size=400))
def test_a_signed_entrusted_frame_with_any_body_opens_or_is_refused_as_undecodable(body):
    data = b"CIR1 E a b h 1 -\n" + body
    try:
        open_frame(KEY, data + KEY.mac(data))
    except InnerFrameError as exc:
        assert exc.reason == "undecodable"
