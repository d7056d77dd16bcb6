"""TLS material: the server context every TLS listener uses, and a local CA for `colony up`.

Production configures ``tls_cert_file``/``tls_key_file`` (a certificate from a real CA).
A development cluster has none, so ``ensure_local_ca`` makes, once, a private CA and a
server certificate for localhost/127.0.0.1/::1 and the advertised host, in
``<data_dir>/tls/`` (``ca.pem``, ``server.pem``, ``server.key``, key files 0600); clients
that should verify the server trust ``ca.pem``.  Every context is TLS 1.2 or newer, and its
TLS 1.2 suites are ECDHE with AEAD only (``TLS12_CIPHERS``).

Memory per TLS session: every TLS listener is served by asyncio's SSL protocol
(``asyncio.sslproto.SSLProtocol``), which allocates a read buffer of its class attribute
``max_size`` -- 256 KiB in CPython 3.11 -- for each connection when it is made, and
keeps it for the connection's life.  For an edge holding tens of thousands of idle IMAPS or
SIP TLS sessions that buffer is nearly all their memory (measured: ~280 KB per idle TLS
session against ~5 KB per plain one), so ``server_context`` bounds it for the process to
``TLS_READ_BUFFER`` (``bound_tls_read_buffer``).  A TLS record carries at most 16 KiB of
plaintext (RFC 8446 §5.1), so reading 16 KiB of ciphertext at a time costs a bulk transfer
a few more ``recv`` calls and nothing else; OpenSSL already frees its own record buffers
of an idle connection (CPython sets ``SSL_MODE_RELEASE_BUFFERS``).
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from colony.pki import CertificateFiles, make_ca_and_certificate
from colony.settings import ConfigError, Settings


log = logging.getLogger("colony.tls")

TLS_READ_BUFFER = 16 * 1024   # bytes asyncio reads from a TLS socket at a time, per connection

# TLS 1.2 cipher suites every listener offers: ephemeral ECDH key exchange (forward secrecy)
# with an AEAD cipher only, as RFC 9325 (BCP 195) §4.2 recommends.  Python's default list
# also has the CBC suites with HMAC-SHA256/384 (ECDHE-*-AES128-SHA256, -AES256-SHA384):
# MAC-then-encrypt, the construction of the Lucky 13 and POODLE-style padding oracles, which
# audit scanners (sslscan, testssl.sh, SSL Labs) report as weak.  Every client that speaks
# TLS 1.2 has AES-GCM.  TLS 1.3 suites are all AEAD and are not governed by this string.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"


def bound_tls_read_buffer(size: int = TLS_READ_BUFFER) -> None:
    """Make asyncio's SSL protocol allocate ``size`` bytes of read buffer per connection
    instead of its 256 KiB (see the module's docstring).  Process-wide and idempotent: it
    also applies to TLS client connections (the bus, outbound SMTP), which only read in
    smaller steps.  ``max_size`` is a class attribute of a module asyncio does not export;
    tests/integration/edge/test_tls_session_memory.py measures a connection's memory, so a Python whose
    SSL protocol no longer reads it fails there instead of silently costing 256 KiB."""
    from asyncio import sslproto

    if not isinstance(getattr(sslproto.SSLProtocol, "max_size", None), int):
        log.warning("asyncio's SSL protocol has no max_size: TLS sessions keep its default read buffer")
        return
    sslproto.SSLProtocol.max_size = size


def send_fatal_alerts() -> None:
    """Make asyncio's SSL protocol send the fatal alert OpenSSL wrote before it closes a
    connection on a TLS error.  RFC 5246 §7.2.2: a party that meets a fatal condition "MUST
    send the appropriate alert prior to closing the connection" (RFC 8446 §6.2: SHOULD).
    CPython's ``SSLProtocol`` (3.11 here; until the fix of python/cpython#98078) force-closes
    the transport without flushing its outgoing memory BIO, so a client offering only TLS 1.0, or no
    cipher we take, saw a bare end of stream: no ``protocol_version`` or
    ``handshake_failure`` to tell its user why, and scanners (nmap -sV, whose TLS probes are
    old ClientHellos) could not even tell the implicit-TLS ports speak TLS.  Here the
    outgoing bytes (the alert) go to the socket first; the transport then closes as before.
    A Python that already flushes them leaves nothing to flush, so this is harmless there.
    Process-wide and idempotent, like ``bound_tls_read_buffer``;
    tests/integration/edge/test_tls_alerts.py fails if the private names it relies on go."""
    from asyncio import sslproto

    protocol = sslproto.SSLProtocol
    original = getattr(protocol, "_fatal_error", None)
    if original is None or getattr(original, "flushes_alerts", False):
        if original is None:
            log.warning("asyncio's SSL protocol has no _fatal_error: TLS errors close without their alert")
        return

    def _fatal_error(self, exc, message="Fatal error on transport"):
        transport, outgoing = getattr(self, "_transport", None), getattr(self, "_outgoing", None)
        if isinstance(exc, ssl.SSLError) and transport is not None and outgoing is not None \
                and not transport.is_closing():
            alert = outgoing.read()
            if alert:
                transport.write(alert)   # an empty send buffer: it goes out now, before the close
        return original(self, exc, message)

    _fatal_error.flushes_alerts = True
    protocol._fatal_error = _fatal_error


class _EofOverTlsRace(logging.Filter):
    """Drops asyncio's "returning true from eof_received() has no effect when using ssl".

    A listener that begins TLS itself (``StreamWriter.start_tls``: the implicit-TLS ports
    after the edge gate, STARTTLS, the SIP farm) has a stream protocol that learns it is
    over TLS only when ``start_tls`` returns.  A client whose last handshake flight carries
    its close_notify too -- a TLS probe: monitoring's ``openssl s_client``, testssl.sh,
    nmap's ssl scripts -- is closed before that, and the protocol, still thinking itself on
    plain TCP, asks to stay half open: asyncio ignores the request and logs this warning,
    once per probe.  Nothing is wrong (the connection closes as it should), and no protocol
    of ours wants a half-open TLS connection, so the line goes."""

    MESSAGE = "returning true from eof_received() has no effect when using ssl"

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != self.MESSAGE


_eof_over_tls_race = _EofOverTlsRace()


def quiet_eof_over_tls_race() -> None:
    """Install ``_EofOverTlsRace`` on asyncio's logger; process-wide and idempotent."""
    asyncio_log = logging.getLogger("asyncio")
    if _eof_over_tls_race not in asyncio_log.filters:
        asyncio_log.addFilter(_eof_over_tls_race)


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path | None = None   # set when Colony made the CA itself


def server_context(cert: Path, key: Path, keys: str = "COLONY_TLS_CERT_FILE/COLONY_TLS_KEY_FILE",
                   fix: str = "point them at a PEM certificate chain and its private key") -> ssl.SSLContext:
    """``keys`` and ``fix`` are what an error says: the settings that named the files."""
    bound_tls_read_buffer()  # every TLS listener is built from this context
    send_fatal_alerts()
    quiet_eof_over_tls_race()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    # No session tickets (TLS 1.3's NewSessionTicket after the handshake, TLS 1.2's ticket
    # extension).  Python's ssl can neither set nor rotate the key that encrypts them, so
    # every ticket an edge ever issued would be sealed with one key for the process's life,
    # and no other edge (nor this one after a restart) could resume from it.  And the
    # tickets broke a real client: imaplib2 (offlineimap, getmail's IMAP) reads them in its
    # reader thread while its writer thread sends the first command after STARTTLS; one
    # session in six hung there or crashed the client (tests/e2e/test_sync_clients.py).
    # A resumption would save one ECDHE handshake per reconnect; that is all it costs.
    context.num_tickets = 0
    context.options |= ssl.OP_NO_TICKET
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{keys}: cannot load {cert} / {key} ({exc}); {fix}") from exc
    return context


def sni_context(cert: Path, key: Path, sni_dir: Path | None) -> ssl.SSLContext:
    """``server_context`` that picks a per-domain certificate by SNI from ``sni_dir``:
    ``<name>.pem`` (chain and key in one file, or the key beside it in ``<name>.key``).  A name
    without a file of its own, or no SNI at all, gets ``cert``.  The directory is read once,
    here: a new domain's certificate takes effect on the next start of the edge."""
    default = server_context(cert, key)
    if sni_dir is None:
        return default
    if not sni_dir.is_dir():
        raise ConfigError(f"COLONY_TLS_SNI_DIR: {sni_dir} is not a directory; create it or unset the key")
    by_name: dict[str, ssl.SSLContext] = {}
    for pem in sorted(sni_dir.glob("*.pem")):
        key_file = pem.with_suffix(".key")
        by_name[pem.stem.lower()] = server_context(
            pem, key_file if key_file.exists() else pem, "COLONY_TLS_SNI_DIR",
            f"each <domain>.pem there holds a certificate chain and its key, or the key is in <domain>.key; "
            f"fix or remove {pem.name}")

    def choose(sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        if name:
            name = name.lower().rstrip(".")
            # an exact name first, then the parent domain (imap.acme.example -> acme.example)
            context = by_name.get(name) or by_name.get(name.partition(".")[2])
            if context is not None:
                sock.context = context
        return None

    default.sni_callback = choose
    return default


def configured(settings: Settings) -> TlsFiles | None:
    """The files the settings name, None when none are configured."""
    if settings.tls_cert_file is None and settings.tls_key_file is None:
        return None
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        raise ConfigError("COLONY_TLS_CERT_FILE and COLONY_TLS_KEY_FILE go together; set both or neither")
    return TlsFiles(settings.tls_cert_file, settings.tls_key_file)


def ensure_local_ca(directory: Path, hostnames: list[str]) -> TlsFiles:
    """Create (if missing) a local CA and a server certificate signed by it in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "server.pem", directory / "server.key", directory / "ca.pem")
    if not (files.cert.exists() and files.key.exists() and files.ca.exists()):
        make_ca_and_certificate(CertificateFiles(files.ca, files.cert, files.key, directory / "ca.key"),
                                ca_name="Colony local CA", hosts=[*hostnames, "localhost", "127.0.0.1", "::1"])
    return files
