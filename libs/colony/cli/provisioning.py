"""Provisioning commands: thin clients of the admin API (`--api URL`, bearer token).

Typer apps in this module (``register(app)`` adds them all to the ``colony`` CLI):

- ``domain_app``  -> ``colony domain add|list|show|update|branding|suspend|resume|delete|import``
- ``account_app`` -> ``colony account add|list|show|update|passwd|delete``
- ``alias_app``   -> ``colony alias add|list|delete``
- ``cos_app``     -> ``colony cos add|list|show|update|delete``
- ``token_app``   -> ``colony token create|list|revoke|whoami``
- ``usage_app``   -> ``colony usage report``
- ``audit_app``   -> ``colony audit list``

Where the API is: ``--api``, else ``COLONY_API``, else the first admin API of the cluster
``colony up`` started in ``--data-dir`` (its cluster.json), else http://127.0.0.1:8080.
Which token: ``--token`` / ``COLONY_TOKEN``, else ``--token-file``, else ``<data-dir>/admin.token``
(written by ``colony up`` on first start).
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

DEFAULT_API = "http://127.0.0.1:8080"

ApiOpt = Annotated[Optional[str], typer.Option("--api", help="Admin API base URL.", envvar="COLONY_API")]
TokenOpt = Annotated[Optional[str], typer.Option("--token", help="Bearer token.", envvar="COLONY_TOKEN", show_default=False)]
TokenFileOpt = Annotated[Optional[Path], typer.Option("--token-file", help="File holding the token (default <data-dir>/admin.token).")]
DataDirOpt = Annotated[Path, typer.Option("--data-dir", help="Where `colony up` keeps its files.", envvar="COLONY_DATA_DIR")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@dataclass
class Target:
    api: str
    token: str


def resolve(api: str | None, token: str | None, token_file: Path | None, data_dir: Path) -> Target:
    if not api:
        info = data_dir / "cluster.json"
        if info.exists():
            urls = json.loads(info.read_text()).get("admin_api") or []
            api = urls[0] if urls else None
    api = (api or DEFAULT_API).rstrip("/")
    if not token:
        path = token_file or data_dir / "admin.token"
        try:
            token = path.read_text().strip()
        except FileNotFoundError:
            _fail(f"no token: pass --token, set COLONY_TOKEN, or run `colony up` (it writes {path})", 2)
    return Target(api, token)


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


class Api:
    """A tiny client: JSON in, JSON out, RFC 7807 problems turned into one-line errors."""

    def __init__(self, target: Target, timeout: float = 30.0) -> None:
        self.http = httpx.Client(base_url=target.api, timeout=timeout,
                                 headers={"Authorization": f"Bearer {target.token}"})

    def call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            _fail(f"cannot reach the admin API at {self.http.base_url}: {exc}")
        if r.status_code >= 400:
            try:
                p = r.json()
                _fail(f"{p.get('status', r.status_code)} {p.get('title', '')}: {p.get('detail', '')}")
            except ValueError:
                _fail(f"{r.status_code}: {r.text[:200]}")
        if r.status_code == 204:
            return None
        return r.json() if "json" in r.headers.get("content-type", "") else r.text

    def poll(self, path: str) -> Any:
        """GET that treats a timeout or lost connection as "no news yet" instead of failing."""
        try:
            r = self.http.get(path)
        except httpx.TransportError as exc:
            err.print(f"[yellow]waiting for the admin API ({type(exc).__name__}); still polling[/yellow]")
            return None
        if r.status_code >= 400:
            return self.call("GET", path)  # report the problem the usual way
        return r.json()

    def pages(self, path: str, params: dict[str, Any] | None = None, limit: int | None = None):
        params = dict(params or {})
        cursor, seen = None, 0
        while True:
            page = self.call("GET", path, params=params | ({"cursor": cursor} if cursor else {}))
            for item in page["items"]:
                yield item
                seen += 1
                if limit is not None and seen >= limit:
                    return
            cursor = page["next_cursor"]
            if not cursor:
                return


def _api(api, token, token_file, data_dir) -> Api:
    return Api(resolve(api, token, token_file, data_dir))


def _show(obj: Any, as_json: bool) -> None:
    if as_json or not isinstance(obj, dict):
        console.print_json(json.dumps(obj, default=str))
        return
    table = Table(show_header=False)
    for k, v in obj.items():
        table.add_row(k, v if isinstance(v, str) else json.dumps(v))
    console.print(table)


def _rows(items: list[dict[str, Any]], columns: list[str], as_json: bool, title: str) -> None:
    if as_json:
        console.print_json(json.dumps(items, default=str))
        return
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col)
    for item in items:
        table.add_row(*[("" if item.get(c) is None else str(item.get(c))) for c in columns])
    console.print(table)


def _split(address: str) -> tuple[str, str]:
    local, sep, domain = address.rpartition("@")
    if not sep or not local or not domain:
        _fail(f"{address!r} is not an address (name@domain)", 2)
    return local, domain


def _services(value: str | None) -> list[str] | None:
    return None if value is None else [s for s in value.replace(",", " ").split() if s]


# --- domains ------------------------------------------------------------------------------------------

domain_app = typer.Typer(help="Domains (tenant companies).", no_args_is_help=True)


@domain_app.command("add")
def domain_add(name: str, cos: Annotated[Optional[str], typer.Option(help="Class of service")] = None,
               region: Annotated[str, typer.Option(help="Home region")] = "",
               display_name: Annotated[str, typer.Option(help="Branding: display name")] = "",
               api: ApiOpt = None, token: TokenOpt = None, token_file: TokenFileOpt = None,
               data_dir: DataDirOpt = Path("colony-data"), as_json: JsonOpt = False) -> None:
    """Create a domain."""
    body = {"name": name, "home_region": region, "cos": cos, "branding": {"display_name": display_name}}
    _show(_api(api, token, token_file, data_dir).call("POST", "/v1/domains", json=body), as_json)


@domain_app.command("list")
def domain_list(prefix: Annotated[Optional[str], typer.Option(help="Only names starting with this")] = None,
                limit: Annotated[int, typer.Option(help="At most this many")] = 100,
                api: ApiOpt = None, token: TokenOpt = None, token_file: TokenFileOpt = None,
                data_dir: DataDirOpt = Path("colony-data"), as_json: JsonOpt = False) -> None:
    """List domains (follows the cursor pages)."""
    params: dict[str, Any] = {"limit": min(limit, 1000)} | ({"prefix": prefix} if prefix else {})
    items = list(_api(api, token, token_file, data_dir).pages("/v1/domains", params, limit))
    _rows(items, ["name", "state", "cos", "home_region", "version"], as_json, f"{len(items)} domain(s)")


@domain_app.command("show")
def domain_show(name: str, api: ApiOpt = None, token: TokenOpt = None, token_file: TokenFileOpt = None,
                data_dir: DataDirOpt = Path("colony-data"), as_json: JsonOpt = False) -> None:
    """One domain."""
    _show(_api(api, token, token_file, data_dir).call("GET", f"/v1/domains/{name}"), as_json)


@domain_app.command("update")
def domain_update(name: str, cos: Annotated[Optional[str], typer.Option()] = None,
                  region: Annotated[Optional[str], typer.Option()] = None,
                  account_foldering: Annotated[Optional[str], typer.Option(help="none, 1, 1-1, 2-2")] = None,
                  domain_foldering: Annotated[Optional[bool], typer.Option()] = None,
                  fast_storage_index: Annotated[Optional[int], typer.Option()] = None,
                  api: ApiOpt = None, token: TokenOpt = None, token_file: TokenFileOpt = None,
                  data_dir: DataDirOpt = Path("colony-data"), as_json: JsonOpt = False) -> None:
    """Change a domain's class of service, region or storage layout (system admin)."""
    client = _api(api, token, token_file, data_dir)
    body: dict[str, Any] = {}
    if cos is not None:
        body["cos"] = cos
    if region is not None:
        body["home_region"] = region
    if account_foldering is not None or domain_foldering is not None or fast_storage_index is not None:
        storage = client.call("GET", f"/v1/domains/{name}")["storage"]
        storage.update({k: v for k, v in {"account_foldering": account_foldering, "domain_foldering": domain_foldering,
                                          "fast_storage_index": fast_storage_index}.items() if v is not None})
        body["storage"] = storage
    _show(client.call("PATCH", f"/v1/domains/{name}", json=body), as_json)


@domain_app.command("branding")
def domain_branding(name: str, display_name: Annotated[str, typer.Option()] = "",
                    logo_url: Annotated[str, typer.Option()] = "",
                    primary_colour: Annotated[Optional[str], typer.Option(help="#rrggbb")] = None,
                    secondary_colour: Annotated[Optional[str], typer.Option(help="#rrggbb")] = None,
                    login_text: Annotated[str, typer.Option()] = "",
                    api: ApiOpt = None, token: TokenOpt = None, token_file: TokenFileOpt = None,
                    data_dir: DataDirOpt = Path("colony-data"), as_json: JsonOpt = False) -> None:
    """Replace a domain's branding (domain admins may do this for their own domain)."""
    body = {"display_name": display_name, "logo_url": logo_url, "primary_colour": primary_colour,
            "secondary_colour": secondary_colour, "login_text": login_text}
    _show(_api(api, token, token_file, data_dir).call("PUT", f"/v1/domains/{name}/branding", json=body), as_json)


@domain_app.command("suspend")
def domain_suspend(name: str, reason: Annotated[str, typer.Option()] = "",
                   api: ApiOpt = None, token: TokenOpt = None, token_file: TokenFileOpt = None,
                   data_dir: DataDirOpt = Path("colony-data")) -> None:
    """Suspend a domain: its accounts can no longer log in."""
    _api(api, token, token_file, data_dir).call("POST", f"/v1/domains/{name}/suspend", json={"reason": reason})
    console.print(f"{name} suspended")


@domain_app.command("resume")
def domain_resume(name: str, api: ApiOpt = None, token: TokenOpt = None, token_file: TokenFileOpt = None,
                  data_dir: DataDirOpt = Path("colony-data")) -> None:
    """Re-activate a suspended domain."""
    _api(api, token, token_file, data_dir).call("POST", f"/v1/domains/{name}/resume")
    console.print(f"{name} active")


@domain_app.command("delete")
def domain_delete(name: str, api: ApiOpt = None, token: TokenOpt = None, token_file: TokenFileOpt = None,
                  data_dir: DataDirOpt = Path("colony-data")) -> None:
    """Delete a domain that has no accounts or aliases left."""
    _api(api, token, token_file, data_dir).call("DELETE", f"/v1/domains/{name}")
    console.print(f"{name} deleted")


def move_line(progress: dict[str, Any]) -> str:
    """One line of a move's progress, as ``colony domain move`` prints it."""
    line = f"{progress['domain']}: {progress['source'] or '(no region)'} -> {progress['target']}: {progress['phase']}"
    if progress["accounts"]:
        line += f", pass {progress['copy_pass']}: {progress['accounts_verified']}/{progress['accounts']} accounts verified"
    if progress.get("stuck"):
        line += f" -- STUCK: {progress['stuck']}"
    return line


@domain_app.command("move")
def domain_move(name: str, region: Annotated[str, typer.Argument(help="The region to move the domain to")],
                wait: Annotated[bool, typer.Option(help="Follow the move until it is done")] = True,
                timeout: Annotated[float, typer.Option(help="Seconds to follow it")] = 3600.0,
                api: ApiOpt = None, token: TokenOpt = None, token_file: TokenFileOpt = None,
                data_dir: DataDirOpt = Path("colony-data"), as_json: JsonOpt = False) -> None:
    """Move a domain and its stored mail to another region (system admin; the primary
    region's controller carries it out, losing nothing; logins pause briefly before the
    switch).  Exits 0 once done, 1 if the move is stuck or still under way at --timeout."""
    client = _api(api, token, token_file, data_dir)
    progress = client.call("POST", f"/v1/domains/{name}/move", json={"region": region})
    last = move_line(progress)
    console.print(last)
    deadline = time.monotonic() + timeout
    while wait and progress["phase"] not in ("done", "cancelled"):
        if progress.get("stuck"):
            _fail(f"the move of {name} is stuck: {progress['stuck']}")
        if time.monotonic() > deadline:
            _fail(f"the move of {name} is still under way after {timeout:g}s "
                  f"(phase {progress['phase']}); `colony domain move-status {name}` follows it")
        time.sleep(0.5)
        progress = client.poll(f"/v1/domains/{name}/move") or progress
        if (line := move_line(progress)) != last:
            console.print(line)
            last = line
    if as_json:
        _show(progress, True)
    if progress["phase"] == "cancelled":
        _fail(f"the move of {name} was cancelled before it started")


@domain_app.command("move-cancel")
def domain_move_cancel(name: str, api: ApiOpt = None, token: TokenOpt = None, token_file: TokenFileOpt = None,
                       data_dir: DataDirOpt = Path("colony-data")) -> None:
    """Withdraw a move that has not started yet (phase requested)."""
    console.print(move_line(_api(api, token, token_file, data_dir).call("DELETE", f"/v1/domains/{name}/move")))


@domain_app.command("move-status")
def domain_move_status(name: str, api: ApiOpt = None, token: TokenOpt = None, token_file: TokenFileOpt = None,
                       data_dir: DataDirOpt = Path("colony-data"), as_json: JsonOpt = False) -> None:
    """The progress of a domain's latest move to another region."""
    progress = _api(api, token, token_file, data_dir).call("GET", f"/v1/domains/{name}/move")
    if as_json:
        _show(progress, True)
    else:
        console.print(move_line(progress))


@domain_app.command("import")
def domain_import(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="CSV or JSON (see colony_admin.importer)")],
    fmt: Annotated[Optional[str], typer.Option("--format", help="csv or json; default from the file name")] = None,
    admin_tokens: Annotated[bool, typer.Option(help="Create a domain-admin token for every new domain")] = False,
    tokens_out: Annotated[Optional[Path], typer.Option(help="Write the new tokens here as CSV (mode 0600)")] = None,
    update: Annotated[bool, typer.Option("--update", help="Change existing accounts that differ from their rows "
                                                          "(without it they are row errors)")] = False,
    api: ApiOpt = None, token: TokenOpt = None, token_file: TokenFileOpt = None,
    data_dir: DataDirOpt = Path("colony-data"),
) -> None:
    """Bulk-create domains and accounts from a CSV (header row) or JSON (list of objects) file.

    One row per account, or a row with only a domain for an empty domain.  Only domain is
    required; an empty cell sets nothing.  Columns:

    \b
      domain          the domain (created if missing)
      domain_cos      its class of service (new domains; empty: the cluster's default_cos)
      display_name    its branding display name (new domains)
      account         local part, or a full address in domain
      real_name       the account holder's name
      password        plaintext (hashed to argon2id), or instead:
      password_hash   a hash from the old system, Dovecot notation: {SHA512-CRYPT},
                      {SHA256-CRYPT}, {BLF-CRYPT}, {ARGON2ID}, {ARGON2I}, {SSHA512},
                      {SSHA256}, {SSHA} (.b64/.hex), {CRYPT}, {MD5-CRYPT}, or a bare
                      $argon2id$/$2y$/$6$/$5$/$1$ string; re-hashed to argon2id at the
                      next login; weak schemes (SSHA*, DES/MD5 crypt) give a warning
      sip_ha1_md5     SIP digest HA1 = MD5(user:realm:password), 32 hex
      sip_ha1_sha256  the same with SHA-256, 64 hex (phones keep working without the
                      plaintext; otherwise HA1 comes from a plaintext password)
      sip_realm       the realm those HA1 were made for: must be the domain
      cos             the account's class of service
      quota_bytes     the account's quota (capped by its class)
      services        mail imap pop sip (space or ; separated in CSV, a list in JSON)
      forwarding      addresses (as services)
      forward_keep_copy  true: forwarded mail also stays in the account (default false)

    Running the same import again is safe: accounts that exist and equal their rows are
    reported unchanged; ones that differ are row errors unless --update changes them.
    """
    if admin_tokens and tokens_out is None:
        _fail("--admin-tokens needs --tokens-out FILE: the tokens are shown only once", 2)
    fmt = fmt or ("json" if file.suffix.lower() == ".json" else "csv")
    client = _api(api, token, token_file, data_dir)
    content_type = "text/csv" if fmt == "csv" else "application/json"
    job = client.call("POST", "/v1/imports", params={"format": fmt, "admin_tokens": str(admin_tokens).lower(),
                                                    "update": str(update).lower()},
                      content=file.read_bytes(), headers={"Content-Type": content_type})
    columns = (TextColumn("[bold]importing[/bold] {task.fields[name]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]:.0f} rows/s"), TimeRemainingColumn())
    started = time.monotonic()
    with Progress(*columns, console=err, transient=False) as progress:
        task = progress.add_task("import", total=job["total"], name=file.name, rate=0.0)
        while job["state"] == "running":
            time.sleep(0.25)
            # A busy API (e.g. hashing thousands of passwords) may answer slowly; keep asking:
            # the job and its one-time tokens are only reachable through this loop.
            job = client.poll(f"/v1/imports/{job['id']}") or job
            progress.update(task, completed=job["done"], rate=job["done"] / max(time.monotonic() - started, 1e-6))
        progress.update(task, completed=job["done"])
    if tokens_out is not None and job["tokens"]:
        fd = os.open(tokens_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["domain", "token_id", "token"])
            writer.writeheader()
            writer.writerows(job["tokens"])
    console.print(f"{job['state']}: {job['domains_created']} domain(s) and {job['accounts_created']} account(s) created, "
                  f"{job['failed']} row(s) failed, {job.get('updated', 0)} updated, {job.get('unchanged', 0)} unchanged"
                  + (f"; tokens in {tokens_out}" if job["tokens"] else ""))
    for line in job["errors"][:20]:
        err.print(f"  {line}")
    for line in job.get("warnings", [])[:20]:
        err.print(f"  warning: {line}")
    if job["state"] != "done":
        raise typer.Exit(1)


# --- accounts and aliases ---------------------------------------------------------------------------------

account_app = typer.Typer(help="Accounts (mailboxes and SIP users).", no_args_is_help=True)


def _password(password: str | None, prompt: bool) -> str | None:
    if prompt:
        return typer.prompt("password", hide_input=True, confirmation_prompt=True)
    return password


@account_app.command("add")
def account_add(address: str,
                password: Annotated[Optional[str], typer.Option(help="Prefer --ask-password: argv is visible to others")] = None,
                ask_password: Annotated[bool, typer.Option(help="Prompt for the password")] = False,
                real_name: Annotated[str, typer.Option()] = "",
                cos: Annotated[Optional[str], typer.Option()] = None,
                quota: Annotated[Optional[int], typer.Option(help="Bytes")] = None,
                services: Annotated[Optional[str], typer.Option(help="e.g. 'mail imap sip'")] = None,
                forward: Annotated[Optional[list[str]], typer.Option(help="Forward to (repeatable)")] = None,
                api: ApiOpt = None, token: TokenOpt = None, token_file: TokenFileOpt = None,
                data_dir: DataDirOpt = Path("colony-data"), as_json: JsonOpt = False) -> None:
    """Create an account: colony account add alice@acme.example --ask-password."""
    local, domain = _split(address)
    body = {"name": local, "real_name": real_name, "password": _password(password, ask_password), "cos": cos,
            "quota_bytes": quota, "services": _services(services), "forwarding": forward or []}
    _show(_api(api, token, token_file, data_dir).call("POST", f"/v1/domains/{domain}/accounts", json=body), as_json)


@account_app.command("list")
def account_list(domain: str, prefix: Annotated[Optional[str], typer.Option()] = None,
                 limit: Annotated[int, typer.Option()] = 100,
                 api: ApiOpt = None, token: TokenOpt = None, token_file: TokenFileOpt = None,
                 data_dir: DataDirOpt = Path("colony-data"), as_json: JsonOpt = False) -> None:
    """List a domain's accounts."""
    params: dict[str, Any] = {"limit": min(limit, 1000)} | ({"prefix": prefix} if prefix else {})
    items = list(_api(api, token, token_file, data_dir).pages(f"/v1/domains/{domain}/accounts", params, limit))
    _rows(items, ["address", "real_name", "state", "cos", "quota_bytes", "services"], as_json,
          f"{len(items)} account(s) in {domain}")


@account_app.command("show")
def account_show(address: str, api: ApiOpt = None, token: TokenOpt = None, token_file: TokenFileOpt = None,
                 data_dir: DataDirOpt = Path("colony-data"), as_json: JsonOpt = False) -> None:
    """One account."""
    local, domain = _split(address)
    _show(_api(api, token, token_file, data_dir).call("GET", f"/v1/domains/{domain}/accounts/{local}"), as_json)


@account_app.command("update")
def account_update(address: str, real_name: Annotated[Optional[str], typer.Option()] = None,
                   cos: Annotated[Optional[str], typer.Option()] = None,
                   quota: Annotated[Optional[int], typer.Option()] = None,
                   services: Annotated[Optional[str], typer.Option()] = None,
                   state: Annotated[Optional[str], typer.Option(help="active or disabled")] = None,
                   api: ApiOpt = None, token: TokenOpt = None, token_file: TokenFileOpt = None,
                   data_dir: DataDirOpt = Path("colony-data"), as_json: JsonOpt = False) -> None:
    """Change an account's settings."""
    local, domain = _split(address)
    body = {k: v for k, v in {"real_name": real_name, "cos": cos, "quota_bytes": quota,
                              "services": _services(services), "state": state}.items() if v is not None}
    _show(_api(api, token, token_file, data_dir).call("PATCH", f"/v1/domains/{domain}/accounts/{local}", json=body),
          as_json)


@account_app.command("vacation")
def account_vacation(address: str,
                     body: Annotated[Optional[str], typer.Option(help="The reply's text")] = None,
                     body_file: Annotated[Optional[Path], typer.Option(help="The reply's text from a UTF-8 file")] = None,
                     subject: Annotated[Optional[str], typer.Option(help='Default: "Auto: <original subject>"')] = None,
                     start: Annotated[Optional[str], typer.Option(help="UTC, e.g. 2026-12-24T00:00:00Z")] = None,
                     end: Annotated[Optional[str], typer.Option(help="UTC; from then on nothing is answered")] = None,
                     days: Annotated[int, typer.Option(help="Days before one sender is answered again")] = 7,
                     also: Annotated[Optional[list[str]], typer.Option(
                         help="Another address of the user's (an alias), repeatable")] = None,
                     off: Annotated[bool, typer.Option(help="Remove the automatic reply")] = False,
                     api: ApiOpt = None, token: TokenOpt = None, token_file: TokenFileOpt = None,
                     data_dir: DataDirOpt = Path("colony-data"), as_json: JsonOpt = False) -> None:
    """Set (or with --off remove) an account's automatic "out of office" reply:
    colony account vacation alice@acme.example --body-file away.txt --end 2027-01-04T08:00:00Z."""
    local, domain = _split(address)
    if off:
        vacation = None
    else:
        if (body is None) == (body_file is None):
            _fail("give the reply's text: --body or --body-file (or --off to remove it)", 2)
        text = body if body is not None else body_file.read_text(encoding="utf-8")
        vacation = {k: v for k, v in {"body": text, "subject": subject, "start": start, "end": end, "days": days,
                                      "addresses": also or []}.items() if v is not None}
    _show(_api(api, token, token_file, data_dir).call("PATCH", f"/v1/domains/{domain}/accounts/{local}",
                                                      json={"vacation": vacation}), as_json)


@account_app.command("passwd")
def account_passwd(address: str, password: Annotated[Optional[str], typer.Option()] = None,
                   api: ApiOpt = None, token: TokenOpt = None, token_file: TokenFileOpt = None,
                   data_dir: DataDirOpt = Path("colony-data")) -> None:
    """Set an account's password (prompts unless --password)."""
    local, domain = _split(address)
    pw = password or _password(None, True)
    _api(api, token, token_file, data_dir).call("PATCH", f"/v1/domains/{domain}/accounts/{local}", json={"password": pw})
    console.print(f"password of {address} changed")


@account_app.command("delete")
def account_delete(address: str, api: ApiOpt = None, token: TokenOpt = None, token_file: TokenFileOpt = None,
                   data_dir: DataDirOpt = Path("colony-data")) -> None:
    """Delete an account."""
    local, domain = _split(address)
    _api(api, token, token_file, data_dir).call("DELETE", f"/v1/domains/{domain}/accounts/{local}")
    console.print(f"{address} deleted")


alias_app = typer.Typer(help="Aliases (an address that forwards to others).", no_args_is_help=True)


@alias_app.command("add")
def alias_add(address: str, targets: list[str], api: ApiOpt = None, token: TokenOpt = None,
              token_file: TokenFileOpt = None, data_dir: DataDirOpt = Path("colony-data"), as_json: JsonOpt = False) -> None:
    """Create an alias: colony alias add sales@acme.example alice@acme.example bob@acme.example."""
    local, domain = _split(address)
    _show(_api(api, token, token_file, data_dir).call("POST", f"/v1/domains/{domain}/aliases",
                                                      json={"name": local, "targets": targets}), as_json)


@alias_app.command("list")
def alias_list(domain: str, api: ApiOpt = None, token: TokenOpt = None, token_file: TokenFileOpt = None,
               data_dir: DataDirOpt = Path("colony-data"), as_json: JsonOpt = False) -> None:
    """List a domain's aliases."""
    items = list(_api(api, token, token_file, data_dir).pages(f"/v1/domains/{domain}/aliases"))
    _rows(items, ["address", "targets"], as_json, f"{len(items)} alias(es) in {domain}")


@alias_app.command("delete")
def alias_delete(address: str, api: ApiOpt = None, token: TokenOpt = None, token_file: TokenFileOpt = None,
                 data_dir: DataDirOpt = Path("colony-data")) -> None:
    """Delete an alias."""
    local, domain = _split(address)
    _api(api, token, token_file, data_dir).call("DELETE", f"/v1/domains/{domain}/aliases/{local}")
    console.print(f"{address} deleted")


# --- classes of service ------------------------------------------------------------------------------------

cos_app = typer.Typer(help="Classes of service: limits and enabled services.", no_args_is_help=True)


def _limits(services, quota, max_message_size, max_recipients, sending_rate) -> dict[str, Any]:
    limits = {"services": _services(services), "quota_bytes": quota, "max_message_bytes": max_message_size,
              "max_recipients_per_message": max_recipients, "sending_rate_per_hour": sending_rate}
    return {k: v for k, v in limits.items() if v is not None}


ServicesOpt = Annotated[Optional[str], typer.Option(help="Enabled services, e.g. 'mail imap pop sip'")]
QuotaOpt = Annotated[Optional[int], typer.Option(help="Mailbox quota, bytes")]
SizeOpt = Annotated[Optional[int], typer.Option(help="Max message size, bytes")]
RcptOpt = Annotated[Optional[int], typer.Option(help="Max recipients per message")]
RateOpt = Annotated[Optional[int], typer.Option(help="Max messages sent per hour")]


@cos_app.command("add")
def cos_add(name: str, description: Annotated[str, typer.Option()] = "", services: ServicesOpt = None,
            quota: QuotaOpt = None, max_message_size: SizeOpt = None, max_recipients: RcptOpt = None,
            sending_rate: RateOpt = None, api: ApiOpt = None, token: TokenOpt = None, token_file: TokenFileOpt = None,
            data_dir: DataDirOpt = Path("colony-data"), as_json: JsonOpt = False) -> None:
    """Create a class of service."""
    body = {"name": name, "description": description,
            "limits": _limits(services, quota, max_message_size, max_recipients, sending_rate)}
    _show(_api(api, token, token_file, data_dir).call("POST", "/v1/cos", json=body), as_json)


@cos_app.command("list")
def cos_list(api: ApiOpt = None, token: TokenOpt = None, token_file: TokenFileOpt = None,
             data_dir: DataDirOpt = Path("colony-data"), as_json: JsonOpt = False) -> None:
    """List classes of service."""
    items = list(_api(api, token, token_file, data_dir).pages("/v1/cos"))
    _rows(items, ["name", "description", "limits"], as_json, f"{len(items)} class(es) of service")


@cos_app.command("show")
def cos_show(name: str, api: ApiOpt = None, token: TokenOpt = None, token_file: TokenFileOpt = None,
             data_dir: DataDirOpt = Path("colony-data"), as_json: JsonOpt = False) -> None:
    """One class of service."""
    _show(_api(api, token, token_file, data_dir).call("GET", f"/v1/cos/{name}"), as_json)


@cos_app.command("update")
def cos_update(name: str, description: Annotated[Optional[str], typer.Option()] = None, services: ServicesOpt = None,
               quota: QuotaOpt = None, max_message_size: SizeOpt = None, max_recipients: RcptOpt = None,
               sending_rate: RateOpt = None, api: ApiOpt = None, token: TokenOpt = None,
               token_file: TokenFileOpt = None, data_dir: DataDirOpt = Path("colony-data"), as_json: JsonOpt = False) -> None:
    """Change limits (the given ones; others keep their value)."""
    client = _api(api, token, token_file, data_dir)
    current = client.call("GET", f"/v1/cos/{name}")
    body: dict[str, Any] = {"limits": current["limits"] | _limits(services, quota, max_message_size, max_recipients,
                                                                   sending_rate)}
    if description is not None:
        body["description"] = description
    _show(client.call("PATCH", f"/v1/cos/{name}", json=body, headers={"If-Match": str(current["version"])}), as_json)


@cos_app.command("delete")
def cos_delete(name: str, api: ApiOpt = None, token: TokenOpt = None, token_file: TokenFileOpt = None,
               data_dir: DataDirOpt = Path("colony-data")) -> None:
    """Delete an unused class of service."""
    _api(api, token, token_file, data_dir).call("DELETE", f"/v1/cos/{name}")
    console.print(f"{name} deleted")


# --- tokens ----------------------------------------------------------------------------------------------------

token_app = typer.Typer(help="Admin API tokens and roles.", no_args_is_help=True)


@token_app.command("create")
def token_create(role: Annotated[str, typer.Option(help="system-admin, domain-admin or billing-reader")],
                 domain: Annotated[Optional[str], typer.Option(help="For domain-admin")] = None,
                 name: Annotated[Optional[str], typer.Option(help="Who holds it")] = None,
                 api: ApiOpt = None, token: TokenOpt = None, token_file: TokenFileOpt = None,
                 data_dir: DataDirOpt = Path("colony-data"), as_json: JsonOpt = False) -> None:
    """Create a token; prints it once (only its hash is stored)."""
    body = {"role": role, "domain": domain, "name": name or (f"admin@{domain}" if domain else role)}
    created = _api(api, token, token_file, data_dir).call("POST", "/v1/tokens", json=body)
    if as_json:
        _show(created, True)
    else:
        console.print(created["token"])
        err.print(f"token {created['id']} ({created['role']}{' for ' + created['domain'] if created['domain'] else ''}); "
                  "store it now, it is not shown again")


@token_app.command("list")
def token_list(domain: Annotated[Optional[str], typer.Option()] = None, api: ApiOpt = None, token: TokenOpt = None,
               token_file: TokenFileOpt = None, data_dir: DataDirOpt = Path("colony-data"), as_json: JsonOpt = False) -> None:
    """List tokens (never their secrets)."""
    items = list(_api(api, token, token_file, data_dir).pages("/v1/tokens", {"domain": domain} if domain else {}))
    _rows(items, ["id", "name", "role", "domain", "revoked", "created_at"], as_json, f"{len(items)} token(s)")


@token_app.command("revoke")
def token_revoke(token_id: str, api: ApiOpt = None, token: TokenOpt = None, token_file: TokenFileOpt = None,
                 data_dir: DataDirOpt = Path("colony-data")) -> None:
    """Revoke a token by id."""
    _api(api, token, token_file, data_dir).call("DELETE", f"/v1/tokens/{token_id}")
    console.print(f"token {token_id} revoked")


@token_app.command("whoami")
def token_whoami(api: ApiOpt = None, token: TokenOpt = None, token_file: TokenFileOpt = None,
                 data_dir: DataDirOpt = Path("colony-data"), as_json: JsonOpt = False) -> None:
    """Which token am I using, with which role."""
    _show(_api(api, token, token_file, data_dir).call("GET", "/v1/whoami"), as_json)


# --- usage and audit -------------------------------------------------------------------------------------------

usage_app = typer.Typer(help="Usage and billing reports.", no_args_is_help=True)


@usage_app.command("report")
def usage_report(start: Annotated[str, typer.Option("--from", help="ISO 8601, inclusive")],
                 end: Annotated[str, typer.Option("--to", help="ISO 8601, exclusive")],
                 domain: Annotated[Optional[str], typer.Option()] = None,
                 per_account: Annotated[bool, typer.Option()] = False,
                 fmt: Annotated[str, typer.Option("--format", help="table, json or csv")] = "table",
                 out: Annotated[Optional[Path], typer.Option(help="Write to this file")] = None,
                 api: ApiOpt = None, token: TokenOpt = None, token_file: TokenFileOpt = None,
                 data_dir: DataDirOpt = Path("colony-data")) -> None:
    """Usage per domain (and account) for a billing period."""
    params: dict[str, Any] = {"from": start, "to": end, "per_account": str(per_account).lower(),
                              "format": "csv" if fmt == "csv" else "json"}
    if domain:
        params["domain"] = domain
    result = _api(api, token, token_file, data_dir).call("GET", "/v1/usage", params=params)
    text = result if fmt == "csv" else json.dumps(result, indent=2)
    if out:
        out.write_text(text)
        console.print(f"written to {out}")
    elif fmt == "table":
        _rows(result["rows"], ["domain", "account", "storage_bytes", "messages_in", "messages_out",
                               "sip_call_seconds", "sip_registrations"], False, f"usage {start} .. {end}")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


audit_app = typer.Typer(help="The audit trail of the admin API.", no_args_is_help=True)


@audit_app.command("list")
def audit_list(domain: Annotated[Optional[str], typer.Option()] = None,
               limit: Annotated[int, typer.Option()] = 50,
               api: ApiOpt = None, token: TokenOpt = None, token_file: TokenFileOpt = None,
               data_dir: DataDirOpt = Path("colony-data"), as_json: JsonOpt = False) -> None:
    """Newest changes first: who, what, when, from where."""
    params: dict[str, Any] = {"limit": min(limit, 1000)} | ({"domain": domain} if domain else {})
    items = list(_api(api, token, token_file, data_dir).pages("/v1/audit", params, limit))
    _rows(items, ["at", "actor", "action", "target", "remote_addr", "outcome"], as_json, "audit trail")


def register(app: typer.Typer) -> None:
    """Add every provisioning sub-command to the ``colony`` CLI."""
    app.add_typer(domain_app, name="domain")
    app.add_typer(account_app, name="account")
    app.add_typer(alias_app, name="alias")
    app.add_typer(cos_app, name="cos")
    app.add_typer(token_app, name="token")
    app.add_typer(usage_app, name="usage")
    app.add_typer(audit_app, name="audit")
