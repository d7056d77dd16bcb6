"""The SIP parser against RFC 3261's grammar and the spirit of RFC 4475's torture tests:
tolerant of what the RFC allows, refusing what would make us route wrongly."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from colony.protocols.sip.message import SipRequest, SipResponse, make_response
from colony.protocols.sip.parser import SipParseError, StreamFramer, parse_message
from colony.protocols.sip.transaction import response_destination
from colony.protocols.sip.uri import OtherURI, URIError, parse_address, parse_uri

CRLF = "\r\n"


def msg(*lines: str, body: str = "") -> bytes:
    return (CRLF.join(lines) + CRLF + CRLF + body).encode()


BASE = ["Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-1", "From: <sip:alice@example.com>;tag=a1",
        "To: <sip:bob@example.com>", "Call-ID: c1@192.0.2.1", "Max-Forwards: 70"]


def test_tortuous_invite_is_accepted():
    # Folding, odd spacing around colons, compact and mixed-case names, escaped quotes in a
    # display name, a folded CSeq, a folded Via with spaces around '/', unknown header fields.
    data = (
        "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\r\n"
        "TO :\r\n sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\r\n"
        'from   : "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8\r\n'
        "MaX-fOrWaRdS: 0068\r\n"
        "Call-ID: wsinv.ndaksdj@192.0.2.1\r\n"
        "Content-Length   : 4\r\n"
        "cseq: 0009\r\n  INVITE\r\n"
        "Via  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;rport;branch=390skdjuw\r\n"
        "s :\r\n"
        "NewFangledHeader:   newfangled value\r\n continued newfangled value\r\n"
        "UnknownHeaderWithUnusualValue: ;;,,;;,;\r\n"
        "Content-Type: application/sdp\r\n"
        "Route:\r\n <sip:services.example.com;lr;unknownwith=value;unknown-no-value>\r\n"
        "v:  SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8  ,\r\n"
        " SIP  /    2.0   / UDP  192.168.255.111   ; branch=\r\n z9hG4bK30239\r\n"
        "m:\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com> ; newparam =\r\n newvalue ;\r\n"
        "  secondparam ; q = 0.33\r\n"
        "\r\n"
        "v=0\r\n"
    ).encode()
    req = parse_message(data)
    assert isinstance(req, SipRequest) and req.method == "INVITE"
    assert req.uri.user == "vivekg" and "unknownparam" in req.uri.params
    assert req.address("To").tag == "1918181833n"
    frm = req.address("From")
    assert frm.display_name == 'J Rosenberg \\"' and frm.tag == "98asjd8"
    assert req.cseq().number == 9 and req.cseq().method == "INVITE"
    vias = req.vias()
    assert [v.transport for v in vias] == ["UDP", "TCP", "UDP"]
    assert vias[0].params == {"rport": None, "branch": "390skdjuw"}
    assert vias[1].host == "spindle.example.com" and vias[1].branch == "z9hG4bK9ikj8"
    assert vias[2].branch == "z9hG4bK30239"
    contact = req.address("Contact")
    assert contact.params["q"] == "0.33" and contact.params["newparam"] == "newvalue"
    assert req.headers.get("Subject") == "" and req.headers.get("NewFangledHeader").startswith("newfangled value")
    assert req.body == b"v=0\r"  # Content-Length 4: the rest of the datagram is ignored


def test_wide_range_of_valid_characters_and_escapes():
    data = msg("!interesting-Method0123456789_*+`.%indeed'~ "
               "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0",
               "Via: SIP/2.0/TCP host1.example.com;rport;branch=z9hG4bK-.!%66*_+`'~",
               'To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:1_unusual.URI~(to-be!sure)&isn\'t+it$/crazy?,/;;*@example.com>',
               "From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com> ;fromParam''~+*_!.-%=\"\u0440\u0430\u0431\u043e\u0442\u0430\u044e\u0449\u0438\u0439\";tag=_token~1'+`*%!-.",
               "Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{",
               "CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~", "Max-Forwards: 255")
    req = parse_message(data)
    assert req.method.startswith("!interesting")
    assert req.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert req.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert req.address("To").display_name.startswith("BEL:")
    assert req.address("From").tag == "_token~1'+`*%!-."


def test_escapes_and_escaped_nulls_in_uris():
    assert parse_uri("sip:sips%3Auser%40example.com@example.net").user == "sips:user@example.com"
    assert parse_uri("sip:null-%00-null@example.com").user == "null-\x00-null"
    assert parse_uri("sip:user;par=u%40example.net@example.com").user == "user;par=u@example.net"
    uri = parse_uri("SIP:Alice@[2001:DB8::10]:5070;Transport=TCP;lr")
    assert (uri.scheme, uri.host, uri.port, uri.transport) == ("sip", "2001:db8::10", 5070, "tcp")
    assert str(uri) == "sip:Alice@[2001:db8::10]:5070;transport=TCP;lr"
    assert parse_uri("sip:%61lice@example.com") == parse_uri("sip:alice@EXAMPLE.com")
    assert isinstance(parse_uri("tel:+1-201-555-0123"), OtherURI)
    for bad in ("sip:", "sip:alice@", "sip:alice@host:port", "sip:alice@[2001:db8::1", "sip:a b@example.com",
                "no-scheme", "sip:alice@example.com:70000"):
        with pytest.raises(URIError):
            parse_uri(bad)


def test_addresses():
    a = parse_address('"Alice \\"A\\" Liddell" <sip:alice@example.com>;tag=x;expires=60')
    assert a.display_name == 'Alice "A" Liddell' and a.tag == "x" and a.params["expires"] == "60"
    assert str(a) == '"Alice \\"A\\" Liddell" <sip:alice@example.com>;tag=x;expires=60'
    b = parse_address("sip:bob@example.com;tag=9")      # addr-spec: the parameter is the header's
    assert b.tag == "9" and b.uri.params == {}
    assert parse_address("*").wildcard
    assert parse_address("isbn:2983792873").uri.scheme == "isbn"
    for bad in ('"unterminated <sip:a@example.com>', "<sip:a@example.com", "Bell, Alexander <sip:a@example.com>",
                "sip:a@example.com?Route=%3Csip:x%3E"):
        with pytest.raises(URIError):
            parse_address(bad)


def test_response_and_round_trip():
    data = msg("SIP/2.0 180 Ringing \u0440\u0430\u0431\u043e\u0442\u0430\u0435\u0442", *BASE[:4], "CSeq: 1 INVITE")
    resp = parse_message(data)
    assert isinstance(resp, SipResponse) and resp.status == 180 and resp.reason.startswith("Ringing")
    again = parse_message(resp.encode())
    assert again.status == 180 and again.call_id == "c1@192.0.2.1" and again.headers.get("Content-Length") == "0"


@pytest.mark.parametrize("data,status", [
    (msg("INVITE <sip:bob@example.com> SIP/2.0", *BASE, "CSeq: 1 INVITE"), 400),                  # ltgtruri
    (msg("INVITE sip:bob@example.com; lr SIP/2.0", *BASE, "CSeq: 1 INVITE"), 400),                # lwsruri
    (msg("INVITE  sip:bob@example.com SIP/2.0", *BASE, "CSeq: 1 INVITE"), 400),                   # lwsstart
    (msg("OPTIONS sip:bob@example.com SIP/2.0  ", *BASE, "CSeq: 1 OPTIONS"), 400),                # trws
    (msg("INVITE sip:bob@example.com?Route=%3Csip:example.com%3E SIP/2.0", *BASE, "CSeq: 1 INVITE"), 400),  # escruri
    (msg("OPTIONS sip:bob@example.com SIP/7.0", *BASE, "CSeq: 1 OPTIONS"), 505),                  # badvers
    (msg("INVITE sip:bob@example.com SIP/2.0", *BASE, "CSeq: 1 OPTIONS"), 400),                   # mismatch01
    (msg("OPTIONS nobodyknows:this-scheme SIP/2.0", *BASE, "CSeq: 1 OPTIONS"), 416),              # unkscm
    (msg("OPTIONS soap.beep://192.0.2.103:3002 SIP/2.0", *BASE, "CSeq: 1 OPTIONS"), 416),         # novelsc
    (msg("INVITE sip:bob@example.com SIP/2.0", *BASE, "CSeq: 1 INVITE", "Content-Length: 9999", body="v=0\r\n"), 400),  # clerr
    (msg("INVITE sip:bob@example.com SIP/2.0", *BASE, "CSeq: 1 INVITE", "Content-Length: -999"), 400),  # ncl
    (msg("INVITE sip:bob@example.com SIP/2.0", *BASE[:4], "Max-Forwards: 300", "CSeq: 1 INVITE"), 400),  # scalar02
    (msg("INVITE sip:bob@example.com SIP/2.0", *BASE, "CSeq: 36893488147419103232 INVITE"), 400),
    (msg("INVITE sip:bob@example.com SIP/2.0", *BASE[1:], "CSeq: 1 INVITE"), 400),                # no Via
    (msg("INVITE sip:bob@example.com SIP/2.0", BASE[0], BASE[1], BASE[2], "CSeq: 1 INVITE"), 400),  # no Call-ID
    (msg("INVITE sip:bob@example.com SIP/2.0", BASE[0], 'From: "Bell <sip:a@example.com>;tag=1', *BASE[2:], "CSeq: 1 INVITE"), 400),  # quotbal
    (msg("INVITE sip:bob@example.com SIP/2.0", *BASE, "CSeq: 1 INVITE", "Bad Header Name: x"), 400),
])
def test_invalid_requests_get_the_right_status(data, status):
    with pytest.raises(SipParseError) as err:
        parse_message(data)
    assert err.value.status == status


def test_an_answerable_bad_request_carries_what_a_400_needs():
    with pytest.raises(SipParseError) as err:
        parse_message(msg("INVITE sip:bob@example.com SIP/2.0", *BASE, "CSeq: 1 OPTIONS"))
    response = make_response(err.value.request, err.value.status, err.value.reason, to_tag="s1")
    assert response.status == 400 and response.reason == "CSeq Method Does Not Match"
    assert response.address("To").tag == "s1" and response.headers.get("Call-ID") == "c1@192.0.2.1"
    with pytest.raises(SipParseError) as err:
        parse_message(b"\x00\xffgarbage")
    assert err.value.request is None      # nothing to answer: dropped


def test_bad_responses_are_errors():
    for start in ("SIP/2.0 4294967301 better not break the receiver", "SIP/2.0 99 Low", "SIP/2.0 OK"):
        with pytest.raises(SipParseError):
            parse_message(msg(start, *BASE[:4], "CSeq: 1 INVITE"))


def test_only_the_first_of_two_requests_in_a_datagram_counts():
    first = msg("REGISTER sip:example.com SIP/2.0", *BASE, "CSeq: 1 REGISTER", "Content-Length: 0")
    second = msg("INVITE sip:bob@example.com SIP/2.0", *BASE, "CSeq: 2 INVITE", "Content-Length: 0")
    req = parse_message(first + second)
    assert req.method == "REGISTER" and req.body == b""


def test_lf_only_line_ends_are_tolerated():
    data = msg("OPTIONS sip:bob@example.com SIP/2.0", *BASE, "CSeq: 1 OPTIONS").replace(b"\r\n", b"\n")
    assert parse_message(data).method == "OPTIONS"


def test_the_first_blank_line_ends_the_head_whatever_its_line_ends():
    # A bare-LF line then a CRLF: the head ends there, before a later CRLFCRLF in the body.
    head = CRLF.join(["OPTIONS sip:bob@example.com SIP/2.0", *BASE, "CSeq: 1 OPTIONS"])
    assert parse_message((head + "\n\r\nbody\r\n\r\n").encode()).body == b"body\r\n\r\n"
    assert parse_message((head + "\n\nbody\r\n\r\n").encode()).body == b"body\r\n\r\n"
    assert parse_message((head + "\r\n\r\nbody\n\n").encode()).body == b"body\n\n"


# RFC 5118, the IPv6 torture tests: the messages of its §4, each with the RFC's outcome.
# Headers as the RFC has them; the SDP bodies carry a Content-Length of their own bytes.
V6_FROM = ["To: sip:user@example.com", "From: sip:user@example.com;tag=81x2"]
V6_VIA = "Via: SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111"
V6_CALLER = 'Contact: "Caller" <sip:caller@[2001:db8::1]>'


def with_sdp(*lines: str, sdp: list[str]) -> bytes:
    body = CRLF.join(sdp) + CRLF
    return msg(*lines, "Content-Type: application/sdp", f"Content-Length: {len(body.encode())}", body=body)


def test_rfc5118_4_1_an_ipv6_reference_is_read_in_the_request_uri_via_and_contact():
    req = parse_message(msg("REGISTER sip:[2001:db8::10] SIP/2.0", *V6_FROM, V6_VIA,
                            "Call-ID: SSG9559905523997077@hlau_4100", "Max-Forwards: 70", V6_CALLER,
                            "CSeq: 98176 REGISTER", "Content-Length: 0"))
    assert (req.uri.host, req.uri.port) == ("2001:db8::10", None)
    assert (req.top_via().host, req.top_via().port) == ("2001:db8::9:1", None)
    assert req.address("Contact").uri.host == "2001:db8::1"
    assert str(req.uri) == "sip:[2001:db8::10]"


def test_rfc5118_4_2_an_ipv6_address_without_brackets_is_refused_with_400():
    with pytest.raises(SipParseError) as err:
        parse_message(msg("REGISTER sip:2001:db8::10 SIP/2.0", *V6_FROM, V6_VIA,
                          "Call-ID: SSG9559905523997077@hlau_4100", "Max-Forwards: 70", V6_CALLER,
                          "CSeq: 98176 REGISTER", "Content-Length: 0"))
    assert err.value.status == 400 and err.value.request is not None    # answerable: its Via is good


def test_rfc5118_4_3_and_4_4_a_port_is_only_ever_after_the_closing_bracket():
    head = [*V6_FROM, V6_VIA, "Call-ID: SSG9559905523997077@hlau_4100", V6_CALLER, "Max-Forwards: 70",
            "CSeq: 98176 REGISTER", "Content-Length: 0"]
    ambiguous = parse_message(msg("REGISTER sip:[2001:db8::10:5070] SIP/2.0", *head))
    assert (ambiguous.uri.host, ambiguous.uri.port) == ("2001:db8::10:5070", None)    # §4.3: no port
    unambiguous = parse_message(msg("REGISTER sip:[2001:db8::10]:5070 SIP/2.0", *head))
    assert (unambiguous.uri.host, unambiguous.uri.port) == ("2001:db8::10", 5070)     # §4.4


def test_rfc5118_4_5_received_with_and_without_brackets_both_name_where_answers_go():
    bracketed = parse_message(msg(
        "BYE sip:[2001:db8::10] SIP/2.0", "To: sip:user@example.com;tag=bd76ya", V6_FROM[1],
        "Via: SIP/2.0/UDP [2001:db8::9:1];received=[2001:db8::9:255];branch=z9hG4bKas3-111",
        "Call-ID: SSG9559905523997077@hlau_4100", "Max-Forwards: 70", "CSeq: 321 BYE", "Content-Length: 0"))
    bare = parse_message(msg(
        "OPTIONS sip:[2001:db8::10] SIP/2.0", *V6_FROM,
        "Via: SIP/2.0/UDP [2001:db8::9:1];received=2001:db8::9:255;branch=z9hG4bKas3",
        "Call-ID: SSG95523997077@hlau_4100", "Max-Forwards: 70", 'Contact: "Caller" <sip:caller@[2001:db8::9:1]>',
        "CSeq: 921 OPTIONS", "Content-Length: 0"))
    # The answer goes to the address, never to "[2001:db8::9:255]" taken for a host name.
    assert response_destination(bracketed.top_via(), None) == ("UDP", "2001:db8::9:255", 5060)
    assert response_destination(bare.top_via(), None) == ("UDP", "2001:db8::9:255", 5060)


def test_rfc5118_4_6_and_4_8_ipv6_and_ipv4_addresses_in_the_sdp_body():
    head = ["INVITE sip:user@[2001:db8::10] SIP/2.0", "To: sip:user@[2001:db8::10]", V6_FROM[1],
            "Via: SIP/2.0/UDP [2001:db8::20];branch=z9hG4bKas3-111", "Call-ID: SSG9559905523997077@hlau_4100",
            'Contact: "Caller" <sip:caller@[2001:db8::20]>', "CSeq: 8612 INVITE", "Max-Forwards: 70"]
    sdp = ["v=0", "o=assistant 971731711378798081 0 IN IP6 2001:db8::20", "s=Live video feed",
           "c=IN IP6 2001:db8::20", "t=0 0", "m=audio 6000 RTP/AVP 0", "a=rtpmap:0 PCMU/8000",
           "m=video 6024 RTP/AVP 107", "a=rtpmap:107 H263-1998/90000"]
    req = parse_message(with_sdp(*head, sdp=sdp))
    assert req.uri.host == "2001:db8::10" and b"c=IN IP6 2001:db8::20\r\n" in req.body
    mixed = ["v=0", "o=bob 280744730 28977631 IN IP4 host.example.com", "s=", "t=0 0",
             "m=audio 22334 RTP/AVP 0", "c=IN IP4 192.0.2.1", "m=video 6024 RTP/AVP 107",
             "c=IN IP6 2001:db8::1", "a=rtpmap:107 H263-1998/90000"]
    req = parse_message(with_sdp(*head[:3], V6_VIA, *head[4:], sdp=mixed))
    assert req.body.endswith(b"a=rtpmap:107 H263-1998/90000\r\n")


def test_rfc5118_4_7_ipv6_and_ipv4_vias_in_one_message():
    req = parse_message(msg(
        "BYE sip:user@host.example.net SIP/2.0",
        "Via: SIP/2.0/UDP [2001:db8::9:1]:6050;branch=z9hG4bKas3-111",
        "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKjhja8781hjuaij65144",
        "Via: SIP/2.0/TCP [2001:db8::9:255];branch=z9hG4bK451jj;received=192.0.2.200",
        "Call-ID: 997077@lau_4100", "Max-Forwards: 70", "CSeq: 89187 BYE",
        "To: sip:user@example.net;tag=9817--94", V6_FROM[1], "Content-Length: 0"))
    assert [(v.transport, v.host, v.port) for v in req.vias()] == [
        ("UDP", "2001:db8::9:1", 6050), ("UDP", "192.0.2.1", None), ("TCP", "2001:db8::9:255", None)]
    assert req.vias()[2].params["received"] == "192.0.2.200"


def test_rfc5118_4_9_ipv4_mapped_ipv6_addresses():
    req = parse_message(with_sdp(
        "INVITE sip:user@example.com SIP/2.0", "To: sip:user@example.com", "From: sip:user@east.example.com;tag=81x2",
        "Via: SIP/2.0/UDP [::ffff:192.0.2.10]:19823;branch=z9hG4bKbh19",
        "Via: SIP/2.0/UDP [::ffff:192.0.2.2];branch=z9hG4bKas3-111", "Call-ID: SSG9559905523997077@hlau_4100",
        'Contact: "T. desk phone" <sip:ted@[::ffff:192.0.2.2]>', "CSeq: 612 INVITE", "Max-Forwards: 70",
        sdp=["v=0", "o=assistant 971731711378798081 0 IN IP6 ::ffff:192.0.2.2", "s=Call me soon, please!",
             "c=IN IP6 ::ffff:192.0.2.2", "t=0 0", "m=audio 6000 RTP/AVP 0", "a=rtpmap:0 PCMU/8000"]))
    assert [(v.host, v.port) for v in req.vias()] == [("::ffff:192.0.2.10", 19823), ("::ffff:192.0.2.2", None)]
    assert req.address("Contact").uri.host == "::ffff:192.0.2.2"


@pytest.mark.parametrize("written,address", [
    ("2001:db8:::192.0.2.1", "2001:db8::192.0.2.1"),     # RFC 3261's ABNF allows it: tolerated
    ("2001:db8::192.0.2.1", "2001:db8::192.0.2.1"),      # the corrected grammar (RFC 5954)
])
def test_rfc5118_4_10_the_three_colon_reference_is_tolerated_as_the_address_it_means(written, address):
    req = parse_message(msg(f"OPTIONS sip:user@[{written}] SIP/2.0", f"To: sip:user@[{written}]",
                            "From: sip:user@example.com;tag=810x2", "Via: SIP/2.0/UDP lab1.east.example.com;branch=z9hG4bKas3-111",
                            "Call-ID: G9559905523997077@hlau_4100", "CSeq: 689 OPTIONS", "Max-Forwards: 70", "Content-Length: 0"))
    assert req.uri.host == address and req.address("To").uri.host == address


@pytest.mark.parametrize("reference", ["[::::]", "[1.2.3.4]", "[2001:db8:::1]", "[12345::1]", "[1:2:3:4:5:6:7:8:9]", "[]"])
def test_what_is_inside_brackets_must_be_an_ipv6_address(reference):
    # A host the farm may send to is an address or a name; "[::::]" was taken as a host.
    with pytest.raises(URIError):
        parse_uri(f"sip:user@{reference}")
    with pytest.raises(SipParseError) as err:
        parse_message(msg(f"OPTIONS sip:user@{reference} SIP/2.0", *BASE, "CSeq: 1 OPTIONS"))
    assert err.value.status == 400


def test_stream_framing_keepalives_and_limits():
    one = msg("OPTIONS sip:bob@example.com SIP/2.0", *BASE, "CSeq: 1 OPTIONS", "l: 3", body="abc")
    framer = StreamFramer()
    stream = b"\r\n\r\n" + one + b"\r\n" + one
    for i in range(0, len(stream), 7):     # arbitrary splits
        framer.feed(stream[i:i + 7])
    got = []
    while (m := framer.next_message()) is not None:
        got.append(m)
    assert got == [one, one] and framer.pings == 1
    assert parse_message(got[0]).body == b"abc"
    no_length = StreamFramer()
    no_length.feed(msg("OPTIONS sip:bob@example.com SIP/2.0", *BASE, "CSeq: 1 OPTIONS"))
    with pytest.raises(SipParseError, match="Content-Length"):
        no_length.next_message()
    with pytest.raises(SipParseError) as err:      # the head was read: the answer can be addressed
        no_length.next_message()
    assert err.value.status == 400 and err.value.request.call_id
    too_long = StreamFramer(max_size=1000)
    too_long.feed(msg("OPTIONS sip:bob@example.com SIP/2.0", *BASE, "CSeq: 1 OPTIONS", "Content-Length: 5000"))
    with pytest.raises(SipParseError) as err:
        too_long.next_message()
    assert err.value.status == 513 and err.value.request.method == "OPTIONS"
    big = StreamFramer(max_size=1000)
    big.feed(b"INVITE sip:x SIP/2.0\r\nX: " + b"a" * 2000)
    with pytest.raises(SipParseError) as err:
        big.next_message()
    assert err.value.status == 513


class _ReferenceFramer(StreamFramer):
    """The framer as it was before long keep-alive runs were dropped in bulk: one ping or CRLF
    per turn of the loop."""

    def next_message(self):
        from colony.protocols.sip import parser
        saved, parser._KEEPALIVES = parser._KEEPALIVES, re.compile(rb"(?!)")    # never matches
        try:
            return super().next_message()
        finally:
            parser._KEEPALIVES = saved


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"\r\n\r\n", b"\r\n", b"\n", b"\r\n\r\n" * 50, b"M"]), max_size=40),
       st.integers(min_value=1, max_value=300))
def test_a_keep_alive_flood_is_framed_as_one_ping_at_a_time_would_be(parts, step):
    """Runs of keep-alives are dropped at C speed (a ping flood cost one Python turn per ping);
    the messages framed are the same, and a pong is due whenever it was."""
    one = msg("OPTIONS sip:bob@example.com SIP/2.0", *BASE, "CSeq: 1 OPTIONS", "l: 3", body="abc")
    stream = b"".join(one if p == b"M" else p for p in parts) + one
    got = {}
    for framer in (StreamFramer(), _ReferenceFramer()):
        messages, pinged = [], False
        for i in range(0, len(stream), step):
            framer.feed(stream[i:i + step])
            while (m := framer.next_message()) is not None:
                messages.append(m)
            pinged |= framer.pings > 0
            framer.pings = 0
        got[type(framer)] = (messages, pinged)
    ours, reference = got[StreamFramer], got[_ReferenceFramer]
    assert ours[0] == reference[0] and ours[1] >= reference[1]


def test_oversized_datagram():
    with pytest.raises(SipParseError) as err:
        parse_message(b"x" * 70_000)
    assert err.value.status == 513


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_parse_or_fail_cleanly(data):
    try:
        parse_message(data)
    except SipParseError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["INVITE sip:a@b SIP/2.0", "SIP/2.0 200 OK", "Via: SIP/2.0/UDP h;branch=z9hG4bKx",
                                 "From: <sip:a@b>;tag=1", "To: sip:c@d", "Call-ID: x", "CSeq: 1 INVITE",
                                 "Content-Length: 5", "l: -1", " folded", "v: SIP/2.0/TCP [::1]:5",
                                 'f: "q <sip:x@y>', "m: *", "Max-Forwards: 999", "", "\x00", "Route: <sip:x;lr>,<sip:y>"]),
                max_size=14), st.binary(max_size=50))
def test_mutated_messages_parse_or_fail_cleanly(lines, tail):
    data = "\r\n".join(lines).encode() + b"\r\n\r\n" + tail
    try:
        parse_message(data)
    except SipParseError:
        pass
    framer = StreamFramer(max_size=4000)
    framer.feed(data * 2)
    try:
        while framer.next_message() is not None:
            pass
    except SipParseError:
        pass


# The Via fast path (the usual "SIP/2.0/UDP host:port;params") and the general regex must
# agree on every value: the same Via, or both refusing it.
_via_texts = st.builds(
    lambda prefix, transport, gap, hostport, params: f"{prefix}{transport}{gap}{hostport}{params}",
    # mostly the fast path's own shape, so that it is exercised, not only refused
    st.sampled_from(["SIP/2.0/"] * 6 + ["sip/2.0/", " SIP/2.0/", "SIP / 2.0 / ", "SIP/2.0", "SIP/2.1/", ""]),
    st.one_of(st.sampled_from(["UDP", "tcp", "Tls", "WSS", "", "U2", "ÚDP"]), st.text(max_size=4)),
    st.sampled_from([" "] * 6 + ["  ", "\t", "", " \x1c", "\n"]),
    st.one_of(st.sampled_from(["192.0.2.7:5062", "h", "[::1]:5", "[::1", "h :5", "h: 5", "h:x", "h:0", "Host.Example",
                               "", ";", "h:70000", "a b"]),
              st.text(alphabet="ab1:[]. \t;=\x1c\u00a0", max_size=12)),
    st.one_of(st.sampled_from(["", ";branch=z9hG4bKx;rport", ";rport;received=1.2.3.4", ";;x", "; branch = y ",
                               ";=v", ";BRANCH=Z", "\r\n", ";a\u2003b"]),
              st.text(alphabet="ab;= \t\n=\x1c", max_size=10)))

# ... and values of the fast path's shape without white space, most of which it takes
_via_texts |= st.builds(lambda transport, hostport, params: f"SIP/2.0/{transport} {hostport}{params}",
                        st.sampled_from(["UDP", "tcp", "Tls", "WSS", "", "U2", "ÚDP"]),
                        st.text(alphabet="ab1:[].;=", min_size=1, max_size=10),
                        st.text(alphabet="ab;=x1.:", max_size=12))


@settings(max_examples=1500, deadline=None)
@given(_via_texts)
def test_via_fast_path_agrees_with_the_general_parse(text):
    from colony.protocols.sip.message import _parse_via, _parse_via_general

    def outcome(parse):
        try:
            return parse(text)
        except URIError:
            return "refused"
    assert outcome(_parse_via) == outcome(_parse_via_general)


def test_a_known_header_name_without_a_colon_is_still_refused():
    # Names seen before skip their checks only when a colon follows them.
    good = (b"REGISTER sip:a.example SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:a@a.example>;tag=1\r\n"
            b"To: <sip:a@a.example>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\n")
    assert parse_message(good + b"\r\n").method == "REGISTER"
    with pytest.raises(SipParseError) as err:
        parse_message(good + b"Via\r\n\r\n")
    assert err.value.status == 400 and err.value.reason == "Malformed Header Line"
    assert parse_message(good + b" \t\r\n\r\n").method == "REGISTER"      # a blank (folded) line


def test_methods_and_versions_outside_the_fast_comparison_still_parse():
    base = ("{method} sip:a.example {version}\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:a@a.example>;tag=1\r\n"
            "To: <sip:a@a.example>\r\nCall-ID: c\r\nCSeq: 1 {method}\r\n\r\n")
    assert parse_message(base.format(method="FOO.BAR", version="sip/2.0").encode()).method == "FOO.BAR"
    with pytest.raises(SipParseError) as err:
        parse_message(base.format(method="REGISTER", version="SIP/2.1").encode())
    assert err.value.status == 505
    with pytest.raises(SipParseError) as err:
        parse_message(base.format(method="RE@GISTER", version="SIP/2.0").encode())
    assert err.value.status == 400


# An answer printed straight from the request must be the bytes make_response(...).encode() gives.
_REQUEST_FOR_ANSWERS = ("INVITE sip:b@b.example SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx, SIP/2.0/TCP g\r\n"
                        "v: SIP/2.0/UDP k;rport\r\nFrom: <sip:a@a.example>;tag=1\r\n{to}Call-ID: c\r\n"
                        "CSeq: 1 INVITE\r\n{timestamp}Content-Length: 0\r\n\r\n")


@settings(max_examples=300, deadline=None)
@given(to=st.sampled_from(["To: <sip:b@b.example>\r\n", "t: sip:b@b.example;tag=9\r\n", 'To: "B" <sip:b@b.example>\r\n',
                           "To: <sip:b@b.example>;tag=\r\n"]),
       timestamp=st.sampled_from(["", "Timestamp: 54 0.1\r\n"]),
       status=st.sampled_from([100, 180, 200, 401, 486, 503, 599]),
       reason=st.one_of(st.none(), st.sampled_from(["", "Fine", "Ünïcode"])),
       to_tag=st.one_of(st.none(), st.just(""), st.text(alphabet="abc123-", min_size=1, max_size=6)),
       extra=st.lists(st.tuples(st.sampled_from(["Contact", "contact", "m", "l", "Content-Length", "x-thing", "Date",
                                                 "WWW-Authenticate", "i", "server"]),
                                st.text(max_size=12).filter(lambda v: "\r" not in v and "\n" not in v)), max_size=5),
       body=st.binary(max_size=8))
def test_encode_response_prints_what_make_response_encodes(to, timestamp, status, reason, to_tag, extra, body):
    from colony.protocols.sip.message import encode_response
    request = parse_message(_REQUEST_FOR_ANSWERS.format(to=to, timestamp=timestamp).encode())
    expected = make_response(request, status, reason, to_tag=to_tag, extra=extra, body=body).encode()
    assert encode_response(request, status, reason, to_tag=to_tag, extra=extra, body=body) == expected


# The fast path of parse_message (CRLF throughout, nothing folded) and the general one must
# give the same message, or the same refusal, for any bytes.
def _outcome(data):
    try:
        m = parse_message(data)
    except SipParseError as exc:
        partial = exc.request
        return ("refused", exc.status, exc.reason, partial and (partial.method, list(partial.headers)))
    return (type(m).__name__, getattr(m, "method", None), str(getattr(m, "uri", None)), getattr(m, "status", None),
            getattr(m, "reason", None), list(m.headers), m.body)


_LINES = ["REGISTER sip:a.example SIP/2.0", "SIP/2.0 200 OK", "INVITE sip:b@b.example SIP/2.0", " REGISTER x SIP/2.0",
          "Via: SIP/2.0/UDP h;branch=z9hG4bKx", "v: SIP/2.0/UDP g, SIP/2.0/TCP k", "From: <sip:a@a.example>;tag=1",
          "To: <sip:a@a.example>", "Call-ID: c", "CSeq: 1 REGISTER", "CSeq: 1 INVITE", "Content-Length: 2", "l: 0",
          " folded", "\tfolded: too", " ", "", "\r", "\x0c", "Bad Line", "Via", "x-y :z", "Contact: *", "m: <sip:q>, <sip:r>",
          "Max-Forwards: 70", "ÿ: x", "Subject: \u00e9", "Route: <sip:x;lr>"]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_LINES), st.sampled_from(["\r\n"] * 8 + ["\n", "\r\r\n", "\n\r\n"])),
                min_size=1, max_size=10),
       st.sampled_from(["\r\n\r\n"] * 4 + ["\n\n", "\r\r\n\r\n", "\n\r\n", ""]),
       st.binary(max_size=4), st.sampled_from([b"", b"\r\n", b"\xff"]))
def test_the_fast_path_and_the_general_path_agree(lines, end, body, prefix):
    from unittest import mock
    from colony.protocols.sip import parser
    data = prefix + "".join(text + sep for text, sep in lines[:-1]).encode() + lines[-1][0].encode() + end.encode() + body
    general_fields = parser._fields
    with mock.patch.object(parser, "_fields", lambda lines, fast: None if fast else general_fields(lines, False)):
        general = _outcome(data)
    assert _outcome(data) == general


# RFC 4475 itself (tests/rfc4475_messages.py holds its messages as the RFC writes them): what
# the parser makes of those whose outcome is the parser's to decide.  The farm's answers to all
# of them are tests/integration/sipfarm/test_rfc4475.py.
def rfc4475(name: str) -> bytes:
    from rfc4475_messages import BY_NAME

    return BY_NAME[name].data


def test_rfc4475_3_1_2_4_an_overlarge_cseq_gets_its_400_not_silence():
    with pytest.raises(SipParseError) as err:
        parse_message(rfc4475("scalar02"))
    assert err.value.status == 400 and err.value.request is not None      # "due to the CSeq error"
    answer = make_response(err.value.request, 400, err.value.reason).encode()
    assert b"\r\nCSeq: 36893488147419103232 REGISTER\r\n" in answer       # copied as it came


def test_rfc4475_3_1_2_16_another_version_gets_505_with_its_via_as_sent():
    with pytest.raises(SipParseError) as err:
        parse_message(rfc4475("badvers"))
    assert err.value.status == 505 and err.value.request is not None
    via = err.value.request.top_via()
    assert (via.version, via.transport, via.host) == ("7.0", "UDP", "c.example.com")
    assert str(via) == "SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw"


def test_rfc4475_3_3_8_single_value_fields_given_twice_get_400():
    with pytest.raises(SipParseError) as err:
        parse_message(rfc4475("multi01"))
    assert err.value.status == 400 and err.value.request is not None
    answer = parse_message(make_response(err.value.request, 400, err.value.reason, to_tag="x").encode())
    assert len(answer.headers.get_all("From")) == len(answer.headers.get_all("To")) == 1     # a valid answer
    base = "\r\n".join(["OPTIONS sip:bob@example.com SIP/2.0", *BASE, "CSeq: 1 OPTIONS"])
    for repeated in ("Call-ID: c2@192.0.2.1", "CSeq: 2 OPTIONS", "To: <sip:carol@example.com>", "Max-Forwards: 69"):
        with pytest.raises(SipParseError) as err:
            parse_message(f"{base}\r\n{repeated}\r\n\r\n".encode())
        assert err.value.status == 400, repeated


def test_rfc4475_3_3_9_conflicting_content_lengths_end_a_stream_after_the_400():
    framer = StreamFramer()
    framer.feed(rfc4475("mcl01"))
    with pytest.raises(SipParseError) as err:      # never cut at the first length, the rest
        framer.next_message()                      # taken for the next message
    assert err.value.status == 400 and err.value.reason == "Conflicting Content-Length"
    assert err.value.request is not None and err.value.request.call_id.startswith("mcl01.")
    # Twice the same length frames as one.
    same = msg("OPTIONS sip:bob@example.com SIP/2.0", *BASE, "CSeq: 1 OPTIONS", "Content-Length: 2",
               "Content-Length: 2", body="ab")
    framer = StreamFramer()
    framer.feed(same)
    assert framer.next_message() == same
