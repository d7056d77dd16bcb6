"""The MAIL stream message round-trips through the event codec, with binary bodies."""

import pytest
from pydantic import ValidationError

from colony import events
from colony.bus import names
from colony.contracts.mail import InboundMail, MailBodyRef, MailRecipient


def _mail(**kw):
    base = dict(message_id="m1", domain="example.com", mail_from="a@remote.test",
                recipients=[MailRecipient(mailbox="bob@example.com", original="Bob@Example.com",
                                          notify=["FAILURE"], orcpt="rfc822;Bob@Example.com")],
                size=5, edge_node="edge-1")
    base.update(kw)
    return InboundMail(**base)


def test_inline_binary_body_round_trips():
    mail = _mail(body=b"\x00\xff\r\n.\r\n")
    back = events.decode(mail.encode())
    assert back == mail
    assert b'"type":"mail.inbound","v":1' in mail.encode()


def test_body_ref_round_trips_and_exactly_one_body():
    ref = MailBodyRef(bucket=names.OBJECT_MAIL_BODIES, name="m1", size=10, sha256="00")
    assert events.decode(_mail(body_ref=ref).encode()).body_ref == ref
    with pytest.raises(ValidationError):
        _mail()
    with pytest.raises(ValidationError):
        _mail(body=b"x", body_ref=ref)


def test_a_body_ref_names_its_region_only_when_sent_on_from_another():
    own = MailBodyRef(bucket=names.OBJECT_MAIL_BODIES, name="m1", size=10, sha256="00")
    # absent, not null: a store of an older release (extra="forbid") reads an edge's job as before
    assert b"region" not in _mail(body_ref=own).encode()
    elsewhere = own.model_copy(update={"region": "eu"})
    encoded = _mail(body_ref=elsewhere).encode()
    assert b'"region":"eu"' in encoded
    assert events.decode(encoded).body_ref == elsewhere


def test_subject_and_msg_id_use_tokens():

    assert names.mail_subject("local", "example.com") == "colony.mail.local.example_2ecom"
    assert _mail(body=b"x").msg_id() == "m1/example_2ecom"
