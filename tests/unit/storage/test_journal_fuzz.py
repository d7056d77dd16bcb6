"""Whatever a crash or a bad disk leaves at the end of a segment, replay reads a valid prefix
and never raises."""

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from colony.storage import journal as j

RECORDS = [
    j.Claim(e=3, s=0),
    j.Seal(e=3, s=0),
    j.MailboxCreated(e=3, s=1, id=1, name="INBOX", uidvalidity=1),
    j.MessageAppended(e=3, s=2, box=1, uid=1, body="3-2-1", date=datetime(2026, 1, 1, tzinfo=UTC), size=5, key="k"),
    j.FlagsChanged(e=3, s=3, box=1, uids=[1], flags=["\\Seen"]),
    j.Expunged(e=3, s=4, box=1, uids=[1]),
]
SEGMENT = b"".join(j.encode(r) for r in RECORDS)


@settings(max_examples=300, deadline=None)
@given(cut=st.integers(0, len(SEGMENT)), garbage=st.binary(max_size=64))
def test_torn_tail_gives_a_prefix(cut, garbage):
    records, offsets, valid = j.decode_segment(SEGMENT[:cut] + garbage)
    assert records == RECORDS[: len(records)]
    assert valid <= cut + len(garbage)
    assert all(offsets[i] == len(b"".join(j.encode(r) for r in RECORDS[: i + 1])) for i in range(len(records)))


@settings(max_examples=300, deadline=None)
@given(pos=st.integers(0, len(SEGMENT) - 1), bit=st.integers(0, 7))
def test_a_flipped_bit_never_yields_a_changed_record(pos, bit):
    data = bytearray(SEGMENT)
    data[pos] ^= 1 << bit
    records, _, _ = j.decode_segment(bytes(data))
    assert records == RECORDS[: len(records)]
