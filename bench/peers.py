"""The peer systems the benchmarks run beside Colony: Debian's Postfix and Dovecot, each
configured by the benchmark in a private directory on loopback ports, started and stopped
by it.  Nothing of the machine's own mail configuration is used or touched.

* ``Dovecot``: LMTP (and IMAP/POP3) on 127.0.0.1, one static password for every user,
  Maildir under the private directory, ``mail_fsync = always`` (an acknowledged delivery is
  on disk, like Colony's).
* ``Postfix``: an MX on 127.0.0.1 that accepts mail for the benchmark's domain and hands it
  to Dovecot over LMTP, or (``relay_to``) relays everything to a sink, with its queue fsynced
  as Postfix always does; or, with neither, a private sending MTA routed by the caller's
  own main.cf lines (tests/e2e/test_mta_senders.py: Postfix sends to Colony's MX), with
  ``sendmail``, ``postqueue``, ``postconf`` and its log at hand.

Both run as root-started daemons that drop privileges to their own users, as they do in
production; ``cpu_seconds()`` sums the user+system CPU of every process of the instance, so
a benchmark can print CPU per message for both sides the same way.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def open_up(path: Path) -> None:
    """Daemons drop to their own users: every directory above their files must be searchable."""
    for p in [path, *path.parents]:
        if p == Path("/"):
            break
        mode = p.stat().st_mode & 0o777
        if mode & 0o011 != 0o011:
            p.chmod(mode | 0o011)


def have(*tools: str) -> list[str]:
    """The tools of ``tools`` that are missing."""
    return [t for t in tools if shutil.which(t) is None and not Path(t).exists()]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def process_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime, stime, cutime, cstime (fields 14-17 of stat; index 11.. after the command)
        total += sum(int(x) for x in fields[11:15]) / CLK_TCK
    return total


def pids_matching(predicate) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if predicate(int(entry.name), cmdline):
            pids.append(int(entry.name))
    return pids


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


class _ForegroundDaemon:
    """A peer server run in the foreground as our child (``self.process``), its workers its
    descendants: stopped with SIGTERM, and SIGKILL for the whole tree if it does not go
    within 10 s; its CPU is that of the tree."""

    process: subprocess.Popen | None = None

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                for pid in descendants(self.process.pid):
                    with _quiet():
                        os.kill(pid, signal.SIGKILL)

    def pids(self) -> list[int]:
        return descendants(self.process.pid) if self.process else []

    def cpu_seconds(self) -> float:
        return process_cpu(self.pids())


class Dovecot(_ForegroundDaemon):
    def __init__(self, workdir: Path, lmtp_port: int, imap_port: int = 0, pop3_port: int = 0,
                 password: str = "benchpass") -> None:
        self.dir = workdir / "dovecot"
        self.lmtp_port, self.imap_port, self.pop3_port = lmtp_port, imap_port, pop3_port
        self.password = password
        self.process: subprocess.Popen | None = None
        # Its unix sockets (base_dir/token-login/imap-urlauth...) must fit in sun_path's 108
        # octets: under pytest's tmp_path (/tmp/pytest-of-root/pytest-N/popen-gwK/<test>/...)
        # they did not, and Dovecot ended with "File name too long".  A short directory of its own.
        self.run_dir = Path(tempfile.mkdtemp(prefix="dovecot-"))

    @property
    def mail_dir(self) -> Path:
        return self.dir / "mail"

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def config(self) -> str:
        listeners = f"""
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.lmtp_port}
  }}
  process_min_avail = 2
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  process_min_avail = 1
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
"""
        return f"""# written by bench/peers.py
base_dir = {self.run_dir}
state_dir = {self.dir}/state
instance_name = colony-bench-dovecot
protocols = lmtp{' imap' if self.imap_port else ''}{' pop3' if self.pop3_port else ''}
listen = 127.0.0.1
log_path = {self.dir}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{self.mail_dir}/%d/%n
mail_uid = dovecot
mail_gid = dovecot
first_valid_uid = 1
mail_fsync = always
lmtp_save_to_detail_mailbox = no
passdb {{
  driver = static
  args = password={self.password}
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={self.mail_dir}/%d/%n
}}
default_login_user = dovenull
default_internal_user = dovecot
{listeners}"""

    def start(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)
        for sub in ("state", "mail"):
            (self.dir / sub).mkdir(parents=True)
        self.run_dir.mkdir(exist_ok=True)
        open_up(self.dir)
        self.run_dir.chmod(0o755)
        shutil.chown(self.mail_dir, "dovecot", "dovecot")
        shutil.chown(self.dir / "state", "dovecot", "dovecot")
        conf = self.dir / "dovecot.conf"
        conf.write_text(self.config())
        self.process = subprocess.Popen(["dovecot", "-F", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                        stderr=open(self.dir / "stderr.log", "wb"))
        wait_port(self.lmtp_port)
        if self.imap_port:
            wait_port(self.imap_port)

    def delivered(self) -> int:
        return sum(1 for p in self.mail_dir.glob("*/*/new/*")) + sum(1 for p in self.mail_dir.glob("*/*/cur/*"))


class Postfix:
    """A private Postfix instance: its own config_directory, queue and data directories and
    log file under ``workdir/postfix``, its SMTP server on 127.0.0.1:``smtp_port`` only.
    Routing: ``lmtp_port`` (mail for ``domain`` to Dovecot), ``relay_to`` (everything to
    host:port), or neither, when ``extra`` says where mail goes (its lines come last in
    main.cf and may set anything, ``myhostname`` included)."""

    def __init__(self, workdir: Path, smtp_port: int, domain: str, lmtp_port: int | None = None,
                 relay_to: str | None = None, extra: str = "") -> None:
        self.dir = workdir / "postfix"
        self.extra = extra  # more main.cf lines, e.g. a destination concurrency limit
        self.smtp_port = smtp_port
        self.domain = domain
        self.lmtp_port = lmtp_port
        self.relay_to = relay_to

    @property
    def config_dir(self) -> Path:
        return self.dir / "etc"

    @property
    def maillog(self) -> Path:
        return self.dir / "maillog"

    def main_cf(self) -> str:
        if self.lmtp_port:
            route = f"virtual_mailbox_domains = {self.domain}\nvirtual_transport = lmtp:inet:127.0.0.1:{self.lmtp_port}\n"
        elif self.relay_to:
            route = (f"relayhost = [{self.relay_to.split(':')[0]}]:{self.relay_to.split(':')[1]}\n"
                     "mynetworks = 127.0.0.0/8\nsmtp_tls_security_level = none\n")
        else:
            route = ""
        text = f"""# written by bench/peers.py
compatibility_level = 3.6
queue_directory = {self.dir}/queue
data_directory = {self.dir}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = bench-postfix.localdomain
mydestination =
local_recipient_maps =
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
mynetworks = 127.0.0.0/8
maillog_file = {self.dir}/maillog
maillog_file_prefixes = {self.dir}
smtputf8_enable = yes
default_process_limit = 100
lmtp_connection_cache_on_demand = yes
smtpd_tls_security_level = none
{route}"""
        # A setting of ``extra`` replaces the one above (Postfix would warn of each twice).
        extra = [line for line in self.extra.splitlines() if "=" in line and not line.lstrip().startswith("#")]
        overridden = {line.split("=", 1)[0].strip() for line in extra}
        kept = [line for line in text.splitlines() if line.split("=", 1)[0].strip() not in overridden]
        return "\n".join(kept) + "\n" + self.extra

    def master_cf(self) -> str:
        base = Path("/etc/postfix/master.cf").read_text()
        lines = [line for line in base.splitlines() if not line.startswith("smtp      inet")]
        lines.insert(0, f"127.0.0.1:{self.smtp_port} inet n - n - - smtpd")
        # tlsproxy: what smtp_tls_connection_reuse hands a cached TLS session to (Debian ships it commented out).
        lines = [line[1:] if line.startswith("#tlsproxy  unix") else line for line in lines]
        if not any(line.startswith("postlog ") for line in lines):
            lines.append("postlog   unix-dgram n  -       n       -       1       postlogd")
        return "\n".join(lines) + "\n"

    def _postfix(self, *args: str) -> None:
        subprocess.run(["postfix", "-c", str(self.dir / "etc"), *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _tool(self, argv: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess:
        # MAIL_CONFIG: which instance sendmail, postqueue and postsuper talk to.
        return subprocess.run(argv, input=stdin, capture_output=True, timeout=120,
                              env={**os.environ, "MAIL_CONFIG": str(self.config_dir)})

    def sendmail(self, *args: str, message: bytes) -> subprocess.CompletedProcess:
        """Postfix's sendmail(1) of this instance: ``args`` as on its command line, the
        message on its standard input."""
        return self._tool(["sendmail", *args], stdin=message)

    def postqueue(self, *args: str) -> subprocess.CompletedProcess:
        return self._tool(["postqueue", "-c", str(self.config_dir), *args])

    def postconf(self, *settings: str) -> None:
        """Change main.cf (``name = value`` each) and have the running instance reload it."""
        subprocess.run(["postconf", "-c", str(self.config_dir), "-e", *settings], check=True, capture_output=True)
        self._postfix("reload")

    def log(self) -> str:
        """The instance's log so far (``maillog_file``: every delivery's status and the reply it got)."""
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)
        (self.dir / "etc").mkdir(parents=True)
        open_up(self.dir)
        (self.dir / "etc" / "main.cf").write_text(self.main_cf())
        (self.dir / "etc" / "master.cf").write_text(self.master_cf())
        for name in ("dynamicmaps.cf",):
            src = Path("/etc/postfix") / name
            if src.exists():
                shutil.copy(src, self.dir / "etc" / name)
        (self.dir / "etc" / "dynamicmaps.cf.d").mkdir(exist_ok=True)
        (self.dir / "queue").mkdir()
        (self.dir / "data").mkdir()
        shutil.chown(self.dir / "data", "postfix", "postfix")
        self._postfix("post-install", "create-missing")
        subprocess.run(["postfix", "-c", str(self.dir / "etc"), "check"], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._postfix("start")
        wait_port(self.smtp_port)

    def stop(self) -> None:
        with _quiet():
            self._postfix("stop")

    def pids(self) -> list[int]:
        pid_file = self.dir / "queue" / "pid" / "master.pid"
        try:
            master = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        return descendants(master)

    def cpu_seconds(self) -> float:
        return process_cpu(self.pids())

    def queued(self) -> int:
        return sum(1 for _ in (self.dir / "queue").glob("*/**/*") if _.is_file() and _.parent.name not in ("pid",))


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return True


class OpenDKIM(_ForegroundDaemon):
    """Debian's OpenDKIM as Postfix's signing milter on a unix socket (as Debian sets it up;
    over loopback TCP, delayed ACKs added ~75 ms to every message): a 2048-bit RSA key (as
    Colony's), relaxed/relaxed, rsa-sha256, signing mail from 127.0.0.1 for ``domain``.
    Postfix then signs what it relays, as a provider's Postfix would with DKIM."""

    def __init__(self, workdir: Path, domain: str, selector: str = "bench") -> None:
        self.dir = workdir / "opendkim"
        self.domain, self.selector = domain, selector
        self.process: subprocess.Popen | None = None

    @property
    def socket(self) -> Path:
        return self.dir / "opendkim.sock"

    @property
    def milter(self) -> str:
        return f"unix:{self.socket}"

    def config(self) -> str:
        return f"""# written by bench/peers.py
Syslog no
Background no
Mode s
Domain {self.domain}
Selector {self.selector}
KeyFile {self.dir}/{self.selector}.private
RequireSafeKeys false
Socket local:{self.socket}
UMask 000
Canonicalization relaxed/relaxed
SignatureAlgorithm rsa-sha256
InternalHosts 127.0.0.1
UserID opendkim
PidFile {self.dir}/opendkim.pid
"""

    def start(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        open_up(self.dir)
        subprocess.run(["opendkim-genkey", "-b", "2048", "-D", str(self.dir), "-d", self.domain,
                        "-s", self.selector], check=True)
        shutil.chown(self.dir / f"{self.selector}.private", "opendkim")
        shutil.chown(self.dir, "opendkim")
        conf = self.dir / "opendkim.conf"
        conf.write_text(self.config())
        self.process = subprocess.Popen(["opendkim", "-f", "-x", str(conf)], stdout=subprocess.DEVNULL,
                                        stderr=open(self.dir.parent / "opendkim-stderr.log", "wb"))
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"opendkim did not open {self.socket}; see {self.dir.parent}/opendkim-stderr.log")
            time.sleep(0.05)


class Kamailio(_ForegroundDaemon):
    """Debian's Kamailio as an authenticating registrar and stateful proxy on loopback UDP:
    REGISTER needs digest auth (www), INVITE needs proxy auth, bindings in memory (usrloc
    db_mode 0), Record-Route, every user's password ``password`` (the benchmark's users all
    share one).  ``children`` UDP workers per listener (Kamailio's own scaling knob)."""

    MODULES = ("tm", "sl", "rr", "pv", "maxfwd", "usrloc", "registrar", "textops", "siputils", "xlog",
               "sanity", "auth", "corex")

    def __init__(self, workdir: Path, port: int, password: str = "benchpass", children: int = 2) -> None:
        self.dir = workdir / "kamailio"
        self.port, self.password, self.children = port, password, children
        self.process: subprocess.Popen | None = None

    def config(self) -> str:
        loads = "\n".join(f'loadmodule "{m}.so"' for m in self.MODULES)
        return f"""#!KAMAILIO
# written by bench/peers.py
debug=1
log_stderror=yes
fork=yes
children={self.children}
disable_tcp=yes
listen=udp:127.0.0.1:{self.port}
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
{loads}
modparam("usrloc", "db_mode", 0)
modparam("auth", "nonce_expire", 300)
modparam("rr", "enable_full_lr", 1)

request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (!sanity_check("1511", "7")) {{ exit; }}
    if (has_totag()) {{
        if (loose_route()) {{ t_relay(); exit; }}
        if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    t_check_trans();
    $avp(pass) = "{self.password}";
    if (is_method("REGISTER")) {{
        if (!pv_www_authenticate("$td", "$avp(pass)", "0")) {{ www_challenge("$td", "0"); exit; }}
        consume_credentials();
        if (!save("location")) {{ sl_reply_error(); }}
        exit;
    }}
    if (is_method("OPTIONS") && uri == myself) {{ sl_send_reply("200", "OK"); exit; }}
    if (is_method("INVITE")) {{
        if (!pv_proxy_authenticate("$fd", "$avp(pass)", "0")) {{ proxy_challenge("$fd", "0"); exit; }}
        consume_credentials();
        record_route();
    }}
    if (!lookup("location")) {{ sl_send_reply("404", "Not Found"); exit; }}
    t_relay();
}}
"""

    def start(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        open_up(self.dir)
        conf = self.dir / "kamailio.cfg"
        conf.write_text(self.config())
        check = subprocess.run(["kamailio", "-c", "-f", str(conf)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"kamailio refused its config: {check.stderr[-800:]}")
        self.process = subprocess.Popen(["kamailio", "-DD", "-E", "-f", str(conf), "-P", str(self.dir / "pid"),
                                         "-Y", str(self.dir)],
                                        stdout=subprocess.DEVNULL, stderr=open(self.dir / "kamailio.log", "wb"))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"kamailio exited: {(self.dir / 'kamailio.log').read_text()[-800:]}")
            if any(f":{self.port:04X} " in line for line in Path("/proc/net/udp").read_text().splitlines()):
                return
            time.sleep(0.05)
        raise RuntimeError("kamailio did not open its UDP port")

