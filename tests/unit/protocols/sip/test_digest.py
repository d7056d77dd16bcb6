"""Digest authentication: RFC 2617/7616 computations, stale nonces, replay refusal, no
password anywhere (only HA1)."""

from __future__ import annotations

import time

import pytest

from colony.protocols.sip.digest import DigestAuthenticator, h, ha1, parse_credentials

SECRET = b"cluster-secret-for-tests"


def answer(challenge: str, method: str, uri: str, user: str, password: str, nc: int = 1, cnonce: str = "0a4f113b",
           qop: bool = True, algorithm: str | None = None) -> dict[str, str]:
    params = parse_credentials(challenge)
    alg = algorithm or params["algorithm"]
    key = ha1(alg, user, params["realm"], password)
    ha2 = h(alg, f"{method}:{uri}")
    nc_text = f"{nc:08x}"
    if qop:
        response = h(alg, f"{key}:{params['nonce']}:{nc_text}:{cnonce}:auth:{ha2}")
        return {"username": user, "realm": params["realm"], "nonce": params["nonce"], "uri": uri,
                "response": response, "algorithm": alg, "qop": "auth", "nc": nc_text, "cnonce": cnonce}
    response = h(alg, f"{key}:{params['nonce']}:{ha2}")
    return {"username": user, "realm": params["realm"], "nonce": params["nonce"], "uri": uri, "response": response,
            "algorithm": alg}


def test_rfc2617_example_response():
    # RFC 2617 §3.5: the well-known example (HTTP, but the computation is the same).
    key = ha1("MD5", "Mufasa", "testrealm@host.com", "Circle Of Life")
    ha2 = h("MD5", "GET:/dir/index.html")
    assert h("MD5", f"{key}:dcd98b7102dd2f0e8b11d0f600bfb0c093:00000001:0a4f113b:auth:{ha2}") == \
        "6629fae49393a05397450978507c4ef1"


def test_parse_credentials():
    value = ('Digest username="bob", realm="biloxi.com", nonce="dcd98b", uri="sip:bob@biloxi.com",\r\n '
             'response="245f23415f11432b3434341c022", algorithm=MD5, qop=auth, nc=00000001, cnonce="0a4f113b", '
             'opaque="5ccc\\"069c"')
    params = parse_credentials(value)
    assert params["username"] == "bob" and params["qop"] == "auth" and params["opaque"] == '5ccc"069c'
    assert parse_credentials('Basic Ym9iOnNlY3JldA==') is None
    assert parse_credentials('Digest username="unterminated') is None
    assert parse_credentials('Digest username="bob" junk, realm="x"') is None


def test_a_long_malformed_value_is_refused_in_linear_time():
    # A value that stops matching early must end the parse there: searching on for the next
    # parameter cost seconds per 16 KiB message (quadratic in its length).
    started = time.perf_counter()
    for filler in ("b" * 16_000, 'a="' * 5_000, "a=b " * 4_000):
        assert parse_credentials('Digest a="x" ' + filler) is None
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_right_password_passes_and_replay_is_refused(algorithm):
    auth = DigestAuthenticator(SECRET, nonce_ttl=300)
    challenges = auth.challenges("acme.example", now=1000.0)
    assert challenges[0].startswith('Digest realm="acme.example"') and "algorithm=SHA-256" in challenges[0]
    challenge = next(c for c in challenges if f"algorithm={algorithm}" in c)
    key = ha1(algorithm, "alice", "acme.example", "s3cret")
    creds = answer(challenge, "REGISTER", "sip:acme.example", "alice", "s3cret")
    assert auth.verify(creds, "REGISTER", "acme.example", key, now=1001.0).ok
    replay = auth.verify(creds, "REGISTER", "acme.example", key, now=1002.0)
    assert not replay.ok and replay.stale
    # The next nonce count with the same nonce is a legitimate refresh.
    assert auth.verify(answer(challenge, "REGISTER", "sip:acme.example", "alice", "s3cret", nc=2),
                       "REGISTER", "acme.example", key, now=1003.0).ok


def test_wrong_password_forged_nonce_wrong_realm_and_method():
    auth = DigestAuthenticator(SECRET)
    challenge = auth.challenges("acme.example", now=0.0)[0]
    key = ha1("SHA-256", "alice", "acme.example", "s3cret")
    assert auth.verify(answer(challenge, "REGISTER", "sip:acme.example", "alice", "guess"),
                       "REGISTER", "acme.example", key, now=1).reason == "wrong response"
    forged = DigestAuthenticator(b"another secret").challenges("acme.example", now=0.0)[0]
    assert auth.verify(answer(forged, "REGISTER", "sip:acme.example", "alice", "s3cret"),
                       "REGISTER", "acme.example", key, now=1).reason == "not our nonce"
    creds = answer(challenge, "REGISTER", "sip:acme.example", "alice", "s3cret")
    assert not auth.verify(creds, "INVITE", "acme.example", key, now=1).ok          # computed for REGISTER
    assert not auth.verify({**creds, "realm": "other.example"}, "REGISTER", "other.example", key, now=1).ok


def test_stale_nonce_with_the_right_password():
    auth = DigestAuthenticator(SECRET, nonce_ttl=300)
    challenge = auth.challenges("acme.example", now=0.0)[1]
    key = ha1("MD5", "alice", "acme.example", "s3cret")
    verdict = auth.verify(answer(challenge, "REGISTER", "sip:acme.example", "alice", "s3cret"),
                          "REGISTER", "acme.example", key, now=301.0)
    assert not verdict.ok and verdict.stale
    assert 'stale=true' in auth.challenges("acme.example", now=301.0, stale=True)[0]


def test_without_qop_a_nonce_serves_once():
    auth = DigestAuthenticator(SECRET)
    challenge = auth.challenges("acme.example", now=0.0)[1]
    key = ha1("MD5", "alice", "acme.example", "s3cret")
    creds = answer(challenge, "REGISTER", "sip:acme.example", "alice", "s3cret", qop=False)
    assert auth.verify(creds, "REGISTER", "acme.example", key, now=1).ok
    assert not auth.verify(creds, "REGISTER", "acme.example", key, now=2).ok


def test_forgotten_history_is_never_trusted():
    auth = DigestAuthenticator(SECRET, max_tracked=2)
    key = ha1("MD5", "alice", "acme.example", "s3cret")
    challenges = [auth.challenges("acme.example", now=float(t))[1] for t in range(4)]
    first = answer(challenges[0], "REGISTER", "sip:acme.example", "alice", "s3cret")
    assert auth.verify(first, "REGISTER", "acme.example", key, now=10).ok
    for c in challenges[1:3]:
        assert auth.verify(answer(c, "REGISTER", "sip:acme.example", "alice", "s3cret"),
                           "REGISTER", "acme.example", key, now=10).ok
    # The first nonce's history fell out of the bounded table: its replay is stale, not fresh.
    verdict = auth.verify(first, "REGISTER", "acme.example", key, now=11)
    assert not verdict.ok and verdict.stale


def test_nonce_history_keeps_only_nonces_still_acceptable():
    # A member that answers a steady stream of phones for hours must not keep max_tracked
    # nonces forever: an entry goes once its nonce is past nonce_ttl (its use is stale anyway).
    auth = DigestAuthenticator(SECRET, nonce_ttl=30.0, max_tracked=100_000)
    key = ha1("MD5", "alice", "acme.example", "s3cret")
    for t in range(2000):                          # one REGISTER a second, each with a new nonce
        creds = answer(auth.challenges("acme.example", now=float(t))[1], "REGISTER", "sip:acme.example",
                       "alice", "s3cret")
        assert auth.verify(creds, "REGISTER", "acme.example", key, now=t + 0.5).ok
    assert len(auth._counts) <= 31
    # A nonce still in its lifetime keeps refusing a replayed count.
    verdict = auth.verify(creds, "REGISTER", "acme.example", key, now=2000.0)
    assert not verdict.ok and verdict.reason == "replayed nonce count"
    # One whose entry went is stale, also if the clock stepped back into its lifetime.
    first = answer(auth.challenges("acme.example", now=100.0)[1], "REGISTER", "sip:acme.example", "alice", "s3cret")
    verdict = auth.verify(first, "REGISTER", "acme.example", key, now=100.5)
    assert not verdict.ok and verdict.stale
