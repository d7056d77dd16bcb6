"""Vacation auto-replies, the sans-IO rules (RFC 3834 §2-§3, RFC 5230 §4-§5): who is answered,
who is not and why, what the answer looks like, and hostile headers that must neither crash
the rules nor inject fields into the reply."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from colony.outbound.vacation import (
    REMEMBERED_SENDERS,
    RepliedSenders,
    Reply,
    Suppressed,
    VacationSettings,
    decide,
    handle_of,
    needs_smtputf8,
)

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
ALICE = "alice@acme.example"
AWAY = VacationSettings(body="Back on Monday.\nUrgent: bob@acme.example", days=7, addresses=("sales@acme.example",))


def message(*fields: str, body: str = "hello") -> bytes:
    head = fields or ("To: Alice <alice@acme.example>",)
    return ("\r\n".join(["From: Carol <carol@remote.test>", "Subject: lunch?", "Message-ID: <m1@remote.test>",
                         *head]) + f"\r\n\r\n{body}\r\n").encode()


def run(msg: bytes | None = None, *, sender="carol@remote.test", vacation=AWAY, now=T0, replied=None,
        special_use=None, display_name="Alice Liddell"):
    return decide(account=ALICE, settings=vacation, mail_from=sender, message=msg if msg is not None else message(),
                  now=now, replied=replied if replied is not None else RepliedSenders(), special_use=special_use,
                  display_name=display_name)


def reply_of(outcome) -> email.message.EmailMessage:
    assert isinstance(outcome, Reply), outcome
    return email.message_from_bytes(outcome.message, policy=email.policy.default)


def test_a_plain_message_to_the_user_is_answered_as_rfc_3834_says():
    outcome = run(message("To: Alice <alice@acme.example>", "References: <r0@x.test> <r1@x.test>"))
    reply = reply_of(outcome)
    assert outcome.recipient == "carol@remote.test" and reply["To"] == "carol@remote.test"
    assert reply["From"].addresses[0].addr_spec == ALICE and reply["From"].addresses[0].display_name == "Alice Liddell"
    assert reply["Subject"] == "Auto: lunch?"
    assert reply["In-Reply-To"] == "<m1@remote.test>"
    assert reply["References"] == "<r0@x.test> <r1@x.test> <m1@remote.test>"
    assert reply["Auto-Submitted"] == "auto-replied"
    assert reply["Message-ID"].endswith("@acme.example>") and reply["Message-ID"] != "<m1@remote.test>"
    assert reply["Date"].datetime == T0
    assert reply.get_content_type() == "text/plain" and reply.get_content_charset() == "utf-8"
    assert reply.get_content().replace("\r\n", "\n") == "Back on Monday.\nUrgent: bob@acme.example\n"
    assert b"\r\n" in outcome.message and b"\n" not in outcome.message.replace(b"\r\n", b"")


def test_the_configured_subject_and_a_non_ascii_original_subject_are_rfc_2047_encoded():
    raw = b"To: alice@acme.example\r\nSubject: =?utf-8?q?R=C3=A9union_=E2=80=94_demain?=\r\n\r\nx\r\n"
    reply = reply_of(run(raw))
    assert reply["Subject"] == "Auto: Réunion — demain"
    utf8 = "To: alice@acme.example\r\nSubject: Réunion demain\r\n\r\nx\r\n".encode()   # RFC 6532, as swaks sends it
    assert reply_of(run(utf8))["Subject"] == "Auto: Réunion demain"
    mixed = "To: alice@acme.example\r\nSubject: Re: 日本語 =?utf-8?b?5Lya6K2w?=\r\n\r\nx\r\n".encode()
    assert reply_of(run(mixed))["Subject"] == "Auto: Re: 日本語 会議"        # raw UTF-8 beside an encoded word
    raw = reply_of(run(vacation=VacationSettings(body="x", subject="Abwesend – zurück am 3.")))
    assert raw["Subject"] == "Abwesend – zurück am 3."
    head = run(vacation=VacationSettings(body="x", subject="Abwesend – zurück")).message.split(b"\r\n\r\n")[0]
    assert head.isascii() and b"=?utf-8?" in head


@pytest.mark.parametrize("sender", ["", "MAILER-DAEMON@remote.test", "owner-list@remote.test",
                                    "list-request@remote.test", "LISTSERV@remote.test", "news-bounces@remote.test",
                                    "alice@acme.example", "Sales@acme.example"])
def test_no_reply_to_the_null_sender_robots_or_the_users_own_addresses(sender):
    assert isinstance(run(sender=sender), Suppressed)
    assert run(sender=sender).reason in ("null_sender", "system_sender")


@pytest.mark.parametrize("field,reason", [
    ("Auto-Submitted: auto-replied", "auto_submitted"),
    ("Auto-Submitted: auto-generated; owner-email=x@y", "auto_submitted"),
    ("auto-submitted:   Auto-Notified", "auto_submitted"),
    ("Precedence: bulk", "precedence"),
    ("Precedence: LIST", "precedence"),
    ("Precedence: junk", "precedence"),
    ("List-Id: Team <team.remote.test>", "list"),
    ("List-Unsubscribe: <mailto:leave@remote.test>", "list"),
    ("List-Post: <mailto:team@remote.test>", "list"),
])
def test_no_reply_to_automatic_bulk_or_list_mail(field, reason):
    assert run(message("To: alice@acme.example", field)) == Suppressed(reason)


def test_auto_submitted_no_is_a_person_and_is_answered():
    assert isinstance(run(message("To: alice@acme.example", "Auto-Submitted: no")), Reply)
    assert isinstance(run(message("To: alice@acme.example", "Precedence: first-class")), Reply)


@pytest.mark.parametrize("fields,answered", [
    (("Auto-Submitted: no", "Auto-Submitted: auto-generated"), False),   # a robot appended its own
    (("Auto-Submitted: no (sent by a person)",), True),                 # RFC 3834 §5: CFWS after the keyword
    (("Auto-Submitted: (typed) no ; x=y",), True),
    (("Auto-Submitted: (nested (comment)) no",), True),
    (("Auto-Submitted: no (a; b) ; c=d",), True),
    (("Auto-Submitted: no (unclosed",), False),                          # not "no": not answered
    (("Auto-Submitted: " + "(" * 30000 + "no",), False),                 # read in one pass, however deep
    (("Precedence: bulk (newsletter)",), False),
])
def test_every_auto_submitted_field_counts_and_comments_are_not_its_value(fields, answered):
    outcome = run(message("To: alice@acme.example", *fields))
    assert isinstance(outcome, Reply) if answered else isinstance(outcome, Suppressed), outcome


@pytest.mark.parametrize("value,answered", [
    ("DR, RN, NRN, OOF, AutoReply", False),      # what Microsoft's and many robots' notifications send
    ("All", False),
    ("RN, NRN", True),                           # only read receipts are not wanted
])
def test_a_robot_that_asks_for_no_out_of_office_reply_gets_none(value, answered):
    outcome = run(message("To: alice@acme.example", f"X-Auto-Response-Suppress: {value}"))
    assert isinstance(outcome, Reply) if answered else outcome == Suppressed("auto_submitted"), outcome


def test_no_reply_to_mail_filed_as_junk():
    assert run(special_use="\\Junk") == Suppressed("junk")


@pytest.mark.parametrize("fields,answered", [
    (("To: team@remote.test",), False),                                   # a list, or a Bcc
    (("To: team@remote.test", "Cc: ALICE@Acme.Example"), True),
    (("To: team@remote.test", "Bcc: alice@acme.example"), True),
    (("To: =?utf-8?q?Sales?= <sales@acme.example>",), True),             # one of the extra addresses
    (("Resent-To: alice@acme.example",), True),
    (("To: \"alice@acme.example\" <someone@remote.test>",), False),        # a display name is not an address
    ((), False),
])
def test_only_mail_that_names_one_of_the_users_addresses_is_answered(fields, answered):
    msg = ("\r\n".join(["From: carol@remote.test", "Subject: hi", *fields]) + "\r\n\r\nx\r\n").encode()
    outcome = run(msg)
    assert isinstance(outcome, Reply) if answered else outcome == Suppressed("not_addressed")


def test_one_reply_per_sender_within_days_then_again():
    replied = RepliedSenders(handle=handle_of(AWAY))
    assert isinstance(run(replied=replied), Reply)
    replied.note("Carol@Remote.test", T0)
    assert run(replied=replied, now=T0 + timedelta(days=6, hours=23)) == Suppressed("already_replied")
    assert isinstance(run(replied=replied, sender="dave@remote.test", now=T0 + timedelta(hours=1)), Reply)
    assert isinstance(run(replied=replied, now=T0 + timedelta(days=7)), Reply)
    one_day = VacationSettings(body=AWAY.body, days=1, addresses=AWAY.addresses)
    assert run(replied=replied, vacation=one_day, now=T0 + timedelta(hours=23)) == Suppressed("already_replied")
    assert isinstance(run(replied=replied, vacation=one_day, now=T0 + timedelta(days=1)), Reply)


def test_a_changed_reply_reaches_the_senders_answered_with_the_old_one():
    # RFC 5230 §4.2's implicit handle (Pigeonhole's too): new dates in the text are news.
    replied = RepliedSenders(handle=handle_of(AWAY))
    replied.note("carol@remote.test", T0)
    assert run(replied=replied, now=T0 + timedelta(hours=1)) == Suppressed("already_replied")
    later = VacationSettings(body="Back on the 12th, not Monday.", days=7, addresses=AWAY.addresses)
    assert isinstance(run(replied=replied, vacation=later, now=T0 + timedelta(hours=1)), Reply)
    assert handle_of(VacationSettings(body=AWAY.body, subject="Away")) != handle_of(AWAY)
    assert handle_of(VacationSettings(body=AWAY.body, days=1, enabled=False)) == handle_of(AWAY)
    again = RepliedSenders.from_json(replied.to_json())
    assert again.handle == handle_of(AWAY) and again.last("carol@remote.test") == T0
    assert RepliedSenders.from_json({"senders": [["carol@remote.test", T0.isoformat()]]}).handle == ""


def test_outside_start_and_end_or_disabled_nothing_is_sent():
    window = VacationSettings(body="x", start=T0, end=T0 + timedelta(days=3))
    assert run(vacation=window, now=T0 - timedelta(seconds=1)) == Suppressed("period")
    assert isinstance(run(vacation=window, now=T0), Reply)
    assert run(vacation=window, now=T0 + timedelta(days=3)) == Suppressed("period")
    assert run(vacation=VacationSettings(body="x", enabled=False)) == Suppressed("period")


def test_remembered_senders_are_bounded_and_survive_their_wire_form():
    replied = RepliedSenders(limit=3)
    for n in range(5):
        replied.note(f"s{n}@remote.test", T0 + timedelta(minutes=n))
    replied.note("s2@remote.test", T0 + timedelta(hours=1))        # answered again: now the newest
    again = RepliedSenders.from_json(replied.to_json(), limit=3)
    assert len(again) == 3 and again.last("s1@remote.test") is None
    assert [s for s, _ in again.to_json()["senders"]] == ["s3@remote.test", "s4@remote.test", "s2@remote.test"]
    assert again.last("S2@remote.test") == T0 + timedelta(hours=1)
    assert RepliedSenders().limit == REMEMBERED_SENDERS


# --- hostile headers ----------------------------------------------------------------------------

header_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300)


@settings(max_examples=300, deadline=None)
@given(subject=header_text, message_id=header_text, references=header_text, to=header_text, extra=header_text)
def test_hostile_headers_never_crash_the_rules_or_add_fields_to_the_reply(subject, message_id, references, to, extra):
    raw = (f"From: carol@remote.test\r\nTo: {to}\r\nCc: alice@acme.example\r\nSubject: {subject}\r\n"
           f"Message-ID: {message_id}\r\nReferences: {references}\r\nX-Extra: {extra}\r\n\r\nbody\r\n"
           ).encode("utf-8", "surrogateescape")
    outcome = run(raw)
    if isinstance(outcome, Suppressed):      # a CR/LF in a value may have made a field of its own
        assert outcome.reason in ("auto_submitted", "precedence", "list", "not_addressed")
        return
    head = outcome.message.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    names = [line.split(b":", 1)[0].lower() for line in head.split(b"\r\n") if line[:1] not in (b" ", b"\t")]
    assert sorted(names) == sorted([b"from", b"to", b"subject", b"date", b"message-id", b"auto-submitted",
                                    b"content-type", b"content-transfer-encoding", b"mime-version",
                                    *([b"in-reply-to", b"references"] if b"in-reply-to" in names else [])])
    assert all(len(line) <= 998 for line in outcome.message.split(b"\r\n"))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4000))
def test_any_bytes_as_a_message_get_an_answer_or_a_reason(raw):
    outcome = run(b"Cc: alice@acme.example\r\n" + raw)
    assert isinstance(outcome, (Reply, Suppressed))


def test_a_header_section_past_its_limit_is_not_read_to_the_end_and_not_answered():
    raw = b"To: alice@acme.example\r\n" + b"X-Pad: " + b"a" * 10_000_000 + b"\r\nList-Id: <late.remote.test>\r\n\r\nx"
    assert run(raw) == Suppressed("unreadable")     # the List-Id lies past what is read
    assert isinstance(run(b"To: alice@acme.example\r\n\r\n" + b"a" * 10_000_000), Reply)  # a large body is fine


# A real Outlook (Exchange Online) Message-ID: longer than a 78-column line.
OUTLOOK_ID = "<DM6PR11MB43214F0E7A1B2C3D4E5F60718293A4B5C6D7E8F9@DM6PR11MB4321.namprd11.prod.outlook.com>"


def test_long_message_ids_are_threaded_as_written_never_rfc_2047_encoded():
    raw = message("To: alice@acme.example", f"References: <r0@x.test> {OUTLOOK_ID}").replace(
        b"<m1@remote.test>", b"<" + b"m" * 200 + b"@remote.test>")
    outcome = run(raw)
    head = outcome.message.split(b"\r\n\r\n")[0]
    # Clients match ids byte for byte: an encoded word is no id (the stdlib parser would decode it).
    assert b"=?" not in head.split(b"\r\nAuto-Submitted")[0].partition(b"In-Reply-To:")[2]
    assert b"In-Reply-To: <" + b"m" * 200 + b"@remote.test>\r\n" in head
    assert f"\r\n {OUTLOOK_ID}\r\n".encode() in head
    assert max(len(line) for line in outcome.message.split(b"\r\n")) <= 998
    reply = reply_of(outcome)
    assert reply["References"].split() == ["<r0@x.test>", OUTLOOK_ID, "<" + "m" * 200 + "@remote.test>"]


def test_an_8bit_message_id_is_not_carried_into_the_reply():
    raw = "To: alice@acme.example\r\nMessage-ID: <réunion@remote.test>\r\n\r\nx\r\n".encode()
    outcome = run(raw)
    assert outcome.message.isascii() and reply_of(outcome)["In-Reply-To"] is None


@pytest.mark.parametrize("name", ['Ünïcode "Name", with, commas', "Müller, Hans", 'Plain "Q", Name', "x" * 150])
def test_the_from_is_one_mailbox_whatever_the_real_name(name):
    reply = reply_of(run(display_name=name))
    (sender,) = reply["From"].addresses
    assert sender.addr_spec == ALICE and sender.display_name.replace(" ", "") == name[:100].replace(" ", "")


@pytest.mark.parametrize("sender", ["bounces+carol=remote.test@lists.example", "noreply+tag@remote.test",
                                    "donotreply@remote.test", "Do-Not-Reply@remote.test"])
def test_no_reply_to_verp_bounce_addresses_or_do_not_reply_senders(sender):
    assert run(sender=sender) == Suppressed("system_sender")


def test_no_reply_to_a_report_a_dsn_or_read_receipt_sent_with_a_sender():
    mdn = message("To: alice@acme.example",
                  'Content-Type: multipart/report; report-type=disposition-notification; boundary="b"')
    assert run(mdn) == Suppressed("report")
    dsn = message("To: alice@acme.example", "Content-Type: Multipart/Report;report-type=delivery-status")
    assert run(dsn) == Suppressed("report")
    assert isinstance(run(message("To: alice@acme.example", "Content-Type: multipart/mixed; boundary=x")), Reply)


def test_mail_to_the_user_through_a_domain_alias_is_answered_when_the_caller_names_it():
    via_alias = message("To: Alice <Alice@acme-mail.example>")
    assert run(via_alias) == Suppressed("not_addressed")
    outcome = decide(account=ALICE, settings=AWAY, mail_from="carol@remote.test", message=via_alias, now=T0,
                     replied=RepliedSenders(), also_own=("alice@acme-mail.example",))
    assert isinstance(outcome, Reply)
    assert decide(account=ALICE, settings=AWAY, mail_from="alice@acme-mail.example", message=via_alias, now=T0,
                  replied=RepliedSenders(), also_own=("alice@acme-mail.example",)) == Suppressed("system_sender")


def test_an_internationalised_sender_is_answered_in_utf8_not_with_an_encoded_address():
    outcome = run(sender="jörg@bücher.example")
    head = outcome.message.split(b"\r\n\r\n")[0]
    assert "\r\nTo: jörg@bücher.example\r\n".encode() in head and b"=?utf-8?q?j" not in head
    reply = email.message_from_string(outcome.message.decode("utf-8"), policy=email.policy.default)
    assert reply["To"].addresses[0].addr_spec == "jörg@bücher.example" and needs_smtputf8(outcome)
    assert not needs_smtputf8(run()) and run().message.isascii()


@pytest.mark.parametrize("sender", ['"' + "on leave " * 9 + '"@remote.test', '"a b"@remote.test',
                                    "carol." * 40 + "x@remote.test"])
def test_the_reply_is_addressed_to_the_envelope_sender_however_long_or_quoted(sender):
    outcome = run(sender=sender)
    assert reply_of(outcome)["To"].addresses[0].addr_spec == sender == outcome.recipient
    assert max(len(line) for line in outcome.message.split(b"\r\n")) <= 998


def _with_results(*results: str) -> bytes:
    return message(*results, "To: Alice <alice@acme.example>")


@pytest.mark.parametrize("results, answered", [
    # SPF says the sender is forged, nothing vouches for it: a reply would be backscatter.
    (["Authentication-Results: mx.acme.example; spf=fail smtp.mailfrom=carol@remote.test; dkim=none; dmarc=fail"
      " header.from=remote.test"], False),
    # ... unless DMARC passed, or a DKIM signature of the sender's domain (or a parent) did.
    (["Authentication-Results: mx.acme.example; spf=fail smtp.mailfrom=carol@remote.test; dmarc=pass"
      " header.from=remote.test"], True),
    (["Authentication-Results: mx.acme.example; spf=fail; dmarc=pass header.from=news.remote.test"], True),
    # DMARC vouches for the From domain: a forger's own, signed with his own key, says nothing
    # about the envelope sender he forged (whom the reply would go to).
    (["Authentication-Results: mx.acme.example; spf=fail smtp.mailfrom=carol@remote.test;"
      " dkim=pass header.d=attacker.test; dmarc=pass header.from=attacker.test"], False),
    (["Authentication-Results: mx.acme.example; spf=fail; dmarc=pass"], False),
    (["Authentication-Results: MX.acme.example (ours); spf=fail; dkim=pass header.d=remote.test header.b=abc"], True),
    # A signature of somebody else's domain vouches for nothing about the sender.
    (["Authentication-Results: mx.acme.example; spf=fail; dkim=pass header.d=attacker.test"], False),
    # Softfail, pass, none: answered (only a hard fail is taken as a forgery).
    (["Authentication-Results: mx.acme.example; spf=softfail; dkim=none"], True),
    # Only our own results count: another receiver's fail, or a fail below ours, is not ours.
    (["Authentication-Results: relay.example; spf=fail"], True),
    (["Authentication-Results: mx.acme.example; spf=pass", "Authentication-Results: mx.acme.example; spf=fail"], True),
    # The sender's own text in a property is no verdict: authres writes a forged signature's
    # i= unquoted, and a quoted local part may hold ";" -- neither vouches (as authres writes them).
    (["Authentication-Results: mx.acme.example; spf=fail smtp.helo=h smtp.mailfrom=carol@remote.test;"
      " dkim=fail header.d=remote.test header.i=@x dmarc=pass header.d=remote.test; dmarc=fail"
      " header.from=remote.test"], False),
    (["Authentication-Results: mx.acme.example;\r\n spf=fail smtp.mailfrom=\"x; dmarc=pass\"@remote.test;\r\n"
      " dkim=fail (x dkim=pass header.d=remote.test) header.d=remote.test"], False),
    # A field of ours that does not parse: its SPF fail stands, nothing in it vouches.
    (["Authentication-Results: mx.acme.example; spf=fail; dkim=fail header.i=\"@x dmarc=pass"], False),
    # ... also one whose comments nest deeper than authres's recursion goes.
    (["Authentication-Results: mx.acme.example; spf=fail (" + "(" * 2000 + ")" * 2000 + "); dmarc=pass"], False),
    # Folded as authres's users fold it, a DKIM pass of the sender's domain still vouches.
    (["Authentication-Results: mx.acme.example;\r\n spf=fail smtp.mailfrom=carol@remote.test;\r\n"
      " dkim=pass reason=\"good signature\" header.d=remote.test header.i=@remote.test"], True),
])
def test_a_sender_our_spf_check_failed_and_nothing_vouched_for_is_not_answered(results, answered):
    outcome = decide(account=ALICE, settings=AWAY, mail_from="carol@remote.test", message=_with_results(*results),
                     now=T0, replied=RepliedSenders(), authserv_id="mx.acme.example")
    assert isinstance(outcome, Reply) == answered, outcome
    if not answered:
        assert outcome == Suppressed("unverified_sender")


def test_without_an_authserv_id_our_results_are_not_looked_for():
    forged = _with_results("Authentication-Results: mx.acme.example; spf=fail")
    assert isinstance(run(forged), Reply)
