"""The edge's autoconfiguration application (``colony_edge.autoconfig``) driven in process:
which answers each kind of request gets, the status codes and error forms, the body bound,
no difference between an existing and a made-up local part, and the metrics."""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET

import httpx
import pytest
from prometheus_client import CollectorRegistry

from colony.bus import names
from colony.contracts.cache import DirectoryIndex
from colony.protocols.autoconfig import AUTODISCOVER_MAX_BODY, REQUEST_SCHEMA, RESPONSE_SCHEMA
from colony.settings import Settings
from colony_edge.autoconfig import AutoconfigApp, AutoconfigMetrics, advertised_settings

AD = "{http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006}"
LISTENERS = {"smtp": "h:1025", "imap": "h:1143", "imaps": "h:1993", "pop3": "h:1110", "pop3s": "h:1995",
             "submission": "h:1587", "submissions": "h:1465"}


class Directory(DirectoryIndex):
    __slots__ = ("loaded",)

    def __init__(self, loaded: bool = True) -> None:
        super().__init__()
        self.loaded = asyncio.Event()
        if loaded:
            self.loaded.set()
        self.apply(names.directory_key(names.AGG_DOMAIN, "acme.example"),
                   json.dumps({"kind": "domain", "name": "acme.example"}).encode())
        self.apply(names.directory_key(names.AGG_ADDRESS, "alice@acme.example"), json.dumps(
            {"kind": "account", "address": "alice@acme.example", "domain": "acme.example", "name": "alice"}).encode())
        self.apply(names.directory_key(names.AGG_DOMAIN_ALIAS, "acme-mail.example"), json.dumps(
            {"kind": "domain_alias", "name": "acme-mail.example", "domain": "acme.example"}).encode())


def client(loaded: bool = True, tls: bool = True, **settings) -> tuple[httpx.AsyncClient, CollectorRegistry]:
    registry = CollectorRegistry()
    app = AutoconfigApp(Directory(loaded), advertised_settings(Settings(**settings), LISTENERS, tls),
                        AutoconfigMetrics(registry))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app.app()), base_url="http://autoconfig.acme.example"), registry


def count(registry: CollectorRegistry, kind: str, result: str) -> float:
    return registry.get_sample_value("colony_edge_autoconfig_requests_total", {"kind": kind, "result": result}) or 0


def autodiscover_body(address: str) -> bytes:
    return (f'<Autodiscover xmlns="{REQUEST_SCHEMA}"><Request><EMailAddress>{address}</EMailAddress>'
            f"<AcceptableResponseSchema>{RESPONSE_SCHEMA}</AcceptableResponseSchema></Request></Autodiscover>").encode()


async def test_both_thunderbird_paths_answer_for_a_hosted_domain_and_its_alias():
    http, registry = client(autoconfig_host="mail.colony.example")
    by_query = await http.get("/mail/config-v1.1.xml", params={"emailaddress": "alice@acme-mail.example"})
    assert by_query.status_code == 200 and by_query.headers["content-type"].startswith("application/xml")
    config = ET.fromstring(by_query.content)
    assert config.find("emailProvider").get("id") == "acme.example"
    assert {s.findtext("hostname") for s in config.iter("incomingServer")} == {"mail.colony.example"}
    assert [s.findtext("port") for s in config.iter("incomingServer")] == ["993", "143", "995", "110"]  # standard
    by_host = await http.get("/.well-known/autoconfig/mail/config-v1.1.xml", headers={"Host": "acme.example"})
    assert by_host.status_code == 200 and ET.fromstring(by_host.content).find("emailProvider").get("id") == "acme.example"
    assert count(registry, "thunderbird", "served") == 2


async def test_listener_ports_are_named_when_the_edge_is_reached_directly():
    http, _ = client(autoconfig_ports="listeners", advertise_host="edge.test")
    config = ET.fromstring((await http.get("/mail/config-v1.1.xml", params={"emailaddress": "x@acme.example"})).content)
    assert [(s.findtext("hostname"), s.findtext("port")) for s in config.iter("outgoingServer")] == \
        [("edge.test", "1465"), ("edge.test", "1587")]


async def test_an_unknown_domain_is_404_problem_json_and_any_local_part_gets_the_same_answer():
    http, registry = client()
    unknown = await http.get("/mail/config-v1.1.xml", params={"emailaddress": "alice@elsewhere.example"})
    assert unknown.status_code == 404 and unknown.headers["content-type"] == "application/problem+json"
    assert unknown.json()["status"] == 404
    bad = await http.get("/mail/config-v1.1.xml", params={"emailaddress": "not an address"})
    assert bad.status_code == 400 and bad.headers["content-type"] == "application/problem+json"
    existing = await http.get("/mail/config-v1.1.xml", params={"emailaddress": "alice@acme.example"})
    made_up = await http.get("/mail/config-v1.1.xml", params={"emailaddress": "nobody-at-all@acme.example"})
    assert existing.status_code == made_up.status_code == 200 and existing.content == made_up.content
    outlook = [await http.post("/autodiscover/autodiscover.xml", content=autodiscover_body(a))
               for a in ("alice@acme.example", "nobody@acme.example")]
    assert [r.status_code for r in outlook] == [200, 200]
    assert outlook[0].content == outlook[1].content.replace(b"nobody@", b"alice@")
    assert count(registry, "thunderbird", "unknown_domain") == 1 and count(registry, "thunderbird", "bad_request") == 1


async def test_autodiscover_answers_on_any_case_of_its_path_and_refuses_in_its_own_words():
    http, registry = client()
    served = await http.post("/AutoDiscover/AutoDiscover.xml", content=autodiscover_body("bob@acme-mail.example"))
    assert served.status_code == 200 and served.headers["content-type"].startswith("text/xml")
    unknown = await http.post("/autodiscover/autodiscover.xml", content=autodiscover_body("bob@elsewhere.example"))
    assert unknown.status_code == 404
    assert ET.fromstring(unknown.content).findtext(f"{AD}Response/{AD}Error/{AD}ErrorCode") == "500"
    malformed = await http.post("/autodiscover/autodiscover.xml", content=b"<Autodiscover><Request>")  # not even closed
    assert malformed.status_code == 400
    assert ET.fromstring(malformed.content).findtext(f"{AD}Response/{AD}Error/{AD}ErrorCode") == "600"
    get = await http.get("/autodiscover/autodiscover.xml")
    assert get.status_code == 405 and get.headers["allow"] == "POST"
    assert count(registry, "autodiscover", "served") == 1 and count(registry, "autodiscover", "unknown_domain") == 1
    assert count(registry, "autodiscover", "bad_request") == 1 and count(registry, "autodiscover", "method") == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "streamed"])
async def test_a_body_over_the_bound_is_refused_413(chunked):
    http, registry = client()
    body = b"<" * (AUTODISCOVER_MAX_BODY + 1)
    async def streamed():
        yield body[:1000]
        yield body[1000:]
    content = streamed() if chunked else body
    refused = await http.post("/autodiscover/autodiscover.xml", content=content)
    assert refused.status_code == 413
    assert ET.fromstring(refused.content).findtext(f"{AD}Response/{AD}Error/{AD}ErrorCode") == "600"
    assert count(registry, "autodiscover", "too_large") == 1


async def test_before_the_directory_loaded_an_unknown_domain_is_503_not_404():
    http, registry = client(loaded=False)
    waiting = await http.get("/mail/config-v1.1.xml", params={"emailaddress": "a@new.example"})
    assert waiting.status_code == 503 and waiting.headers["retry-after"]
    assert (await http.get("/mail/config-v1.1.xml", params={"emailaddress": "a@acme.example"})).status_code == 200
    assert count(registry, "thunderbird", "not_loaded") == 1


async def test_other_paths_are_404_problem_json():
    http, registry = client()
    other = await http.get("/etc/passwd")
    assert other.status_code == 404 and other.headers["content-type"] == "application/problem+json"
    assert count(registry, "other", "not_found") == 1


async def test_an_edge_without_tls_offers_nothing_rather_than_passwords_in_the_clear():
    http, registry = client(tls=False)
    thunderbird = await http.get("/mail/config-v1.1.xml", params={"emailaddress": "a@acme.example"})
    assert thunderbird.status_code == 503 and thunderbird.headers["content-type"] == "application/problem+json"
    outlook = await http.post("/autodiscover/autodiscover.xml", content=autodiscover_body("a@acme.example"))
    assert outlook.status_code == 503 and b"<ErrorCode>600</ErrorCode>" in outlook.content
    assert count(registry, "thunderbird", "no_tls") == 1 and count(registry, "autodiscover", "no_tls") == 1


async def test_outlooks_http_redirect_method_is_sent_to_the_https_name_for_hosted_domains_only():
    # Outlook's last try (MS-OXDISCO 3.1.5.3): an unauthenticated GET over plain HTTP at
    # autodiscover.<domain>, whose HTTPS no certificate of ours names; a 302 to an https URL.
    http, registry = client(autoconfig_host="mail.colony.example")
    for host in ("autodiscover.acme.example", "AutoDiscover.Acme-Mail.Example.:80"):
        moved = await http.get("/Autodiscover/Autodiscover.xml", headers={"Host": host})
        assert moved.status_code == 302, host
        assert moved.headers["location"] == "https://mail.colony.example/autodiscover/autodiscover.xml"
    for host in ("autodiscover.evil.example", "autodiscover.mail.colony.example", "acme.example"):
        refused = await http.get("/autodiscover/autodiscover.xml", headers={"Host": host})
        assert refused.status_code == 405 and "location" not in refused.headers, host
    assert count(registry, "autodiscover", "redirect") == 2
    no_tls, _ = client(tls=False, autoconfig_host="mail.colony.example")
    assert (await no_tls.get("/autodiscover/autodiscover.xml",
                             headers={"Host": "autodiscover.acme.example"})).status_code == 405


async def test_no_answer_is_kept_by_a_cache():
    # A 404 is heuristically cacheable (RFC 9110 §15.1): kept by a proxy on port 80, it would
    # outlive the domain's creation; Autodiscover's answer names the user's address.
    http, _ = client()
    answers = [await http.get("/mail/config-v1.1.xml", params={"emailaddress": "a@acme.example"}),
               await http.get("/mail/config-v1.1.xml", params={"emailaddress": "a@elsewhere.example"}),
               await http.get("/mail/config-v1.1.xml", headers={"Host": "[::1]"}),
               await http.post("/autodiscover/autodiscover.xml", content=autodiscover_body("a@acme.example")),
               await http.post("/autodiscover/autodiscover.xml", content=autodiscover_body("a@elsewhere.example")),
               await http.post("/autodiscover/autodiscover.xml", content=b"<" * (AUTODISCOVER_MAX_BODY + 1)),
               await http.get("/autodiscover/autodiscover.xml", headers={"Host": "autodiscover.acme.example"}),
               await http.get("/favicon.ico")]
    assert [a.status_code for a in answers] == [200, 404, 400, 200, 404, 413, 302, 404]
    assert [a.headers.get("cache-control") for a in answers] == ["no-store"] * len(answers)
    loading, _ = client(loaded=False)
    waiting = await loading.get("/mail/config-v1.1.xml", params={"emailaddress": "a@new.example"})
    assert waiting.status_code == 503 and waiting.headers.get("cache-control") == "no-store"


async def test_an_idn_typed_in_unicode_is_found_as_its_a_labels():
    idn = "xn--bcher-kva.example"      # the directory keys A-labels; a wizard sends what was typed
    directory = Directory()
    directory.apply(names.directory_key(names.AGG_DOMAIN, idn), json.dumps({"kind": "domain", "name": idn}).encode())
    app = AutoconfigApp(directory, advertised_settings(Settings(), LISTENERS), AutoconfigMetrics(CollectorRegistry()))
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app.app()), base_url=f"http://autoconfig.{idn}")
    config = await http.get("/mail/config-v1.1.xml", params={"emailaddress": "jörg@Bücher.example"})
    assert config.status_code == 200 and ET.fromstring(config.content).find("emailProvider").get("id") == idn
    outlook = await http.post("/autodiscover/autodiscover.xml", content=autodiscover_body("jörg@bücher.example"))
    assert outlook.status_code == 200
    assert {e.text for e in ET.fromstring(outlook.content).iter() if e.tag.endswith("LoginName")} == {f"jörg@{idn}"}
