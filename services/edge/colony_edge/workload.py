"""The edge's workload: the SMTP MX listener, its policy chain and the directory cache;
submission (587/465, ``colony_edge.submission``), the outbound queue (``colony_edge.outbound``)
and mail clients' autoconfiguration over HTTP (``colony_edge.autoconfig``).

Drain (``set_accepting(False)``) refuses new connections with 421 4.3.2 while sessions in
progress finish; after ``drain_timeout`` the remaining ones get 421 and are closed.
"""

from __future__ import annotations

import logging

from colony.cluster.sessions import ConnectionWorkload
from colony.contracts.cache import DirectoryCache
from colony.contracts.recipients import Limits
from colony.counters import SharedCounters
from colony.dns import make_resolver
from colony.protocols.smtp import replies as R
from colony.proxy_listener import Balancers
from colony.settings import Settings
from colony.tlsfiles import configured, server_context
from colony_edge.access_proxy import open_access
from colony_edge.autoconfig import open_autoconfig
from colony.queue import QueueRunner
from colony_edge.acceptance import MailAcceptor, SmtpMetrics
from colony_edge.expansion_reports import ExpansionReports
from colony_edge.forwarding import ForwardingAcceptor, load_srs
from colony_edge.outbound import start_outbound
from colony_edge.recipients import RecipientPolicy
from colony_edge.security.authentication import use_configured_dns
from colony_edge.security.gate import EdgeGate
from colony_edge.security.policy import EdgeSecurityPolicy
from colony_edge.smtp_policy import PolicyChain, SmtpPolicy
from colony_edge.smtp_server import SmtpServer, SmtpServerConfig
from colony_edge.submission import open_submission

log = logging.getLogger("colony.edge")


class EdgeWorkload(ConnectionWorkload):
    role = "edge"

    def __init__(self, settings: Settings, extra_policies: list[SmtpPolicy] | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.extra_policies = list(extra_policies or [])  # edge security goes here, before recipients
        self.directory: DirectoryCache | None = None
        self.smtp: SmtpServer | None = None
        self.counters: SharedCounters | None = None
        self.outbound: QueueRunner | None = None   # the outbound queue (colony_edge.outbound)
        self.autoconfig = None                     # its HTTP server (colony_edge.autoconfig)
        # Every client-facing listener (SMTP, submission, IMAP, POP3) takes the balancers' header.
        self.balancers = Balancers.parse(settings.proxy_protocol_from)
        self.proxy_header_timeout = settings.proxy_protocol_timeout

    async def open_listeners(self, runtime) -> dict[str, str]:
        settings = self.settings
        js = runtime.nc.jetstream()
        self.directory = DirectoryCache(runtime.nc, Limits.from_settings(settings), runtime.task_owner)
        runtime.metrics.add_callback(self.directory.metrics)
        await self.directory.start()
        files = configured(settings)
        tls = server_context(files.cert, files.key) if files else None
        if tls is None:
            log.warning("no TLS certificate configured (COLONY_TLS_CERT_FILE/COLONY_TLS_KEY_FILE): STARTTLS is not offered")
        hostname = settings.smtp_hostname or settings.advertised_host
        metrics = SmtpMetrics(runtime.metrics.registry)
        acceptor = MailAcceptor(js, settings, runtime.node_id, hostname, metrics)
        self.counters = SharedCounters(js, runtime.node_id, flush_interval=settings.rate_counter_flush_interval)
        await self.counters.start(runtime.task_owner)
        use_configured_dns(settings)
        gate = EdgeGate(settings, self.counters, make_resolver(settings), runtime.metrics.registry)
        directory = self.directory

        def dmarc_choice(domain: str) -> str | None:
            info = directory.domain(domain)
            return info.dmarc if info is not None else None
        security = EdgeSecurityPolicy(gate, dmarc_choice)
        srs = load_srs(settings)   # forwarding outside the cluster, with SRS senders (off without a key)
        if srs is None:
            log.warning("no SRS key (COLONY_SRS_SECRET_FILE / COLONY_CLUSTER_SECRET_FILE): mail is not forwarded "
                        "to addresses outside the cluster")
        policy = PolicyChain([security, *self.extra_policies,
                              RecipientPolicy(self.directory, settings.postmaster_address, srs)])
        mx_acceptor = ForwardingAcceptor(acceptor, js, settings, runtime.node_id, srs) if srs else acceptor
        mx_acceptor = ExpansionReports(mx_acceptor, js, settings, runtime.node_id, self.directory)
        self.smtp = SmtpServer(SmtpServerConfig(
            hostname=hostname, spool_dir=settings.data_dir / "spool" / runtime.node_id,
            max_message_size=settings.smtp_max_message_size, max_recipients=settings.smtp_max_recipients,
            max_errors=settings.smtp_max_errors, timeout=settings.smtp_timeout,
            greeting_delay=settings.smtp_greeting_delay), policy, mx_acceptor, metrics, self.tracker, tls)
        address = await self.listen("smtp", settings.host, settings.smtp_port, self.smtp.handle,
                                    refuse=lambda writer: writer.write(R.SHUTTING_DOWN.to_bytes()))
        listeners = {"smtp": address, **await open_access(self, runtime, gate, self.counters, hostname)}
        listeners.update(await open_submission(self, runtime, acceptor, metrics, self.counters, tls, hostname, srs, gate))
        # Last: its answers name the listeners just opened (and only those).
        self.autoconfig, listeners["autoconfig"] = await open_autoconfig(settings, self.directory,
                                                                         runtime.metrics.registry, dict(listeners),
                                                                         tls is not None)
        self.outbound = await start_outbound(runtime, settings, hostname, srs)
        return listeners

    def set_accepting(self, accepting: bool) -> None:
        super().set_accepting(accepting)
        if self.outbound is not None:
            self.outbound.set_accepting(accepting)   # a drained edge delivers no more outbound mail

    def active_work(self) -> int:
        return super().active_work() + (self.outbound.active_work() if self.outbound is not None else 0)

    async def close_resources(self) -> None:
        if self.autoconfig is not None:
            await self.autoconfig.stop()
        if self.outbound is not None:
            await self.outbound.stop()
        if self.counters is not None:
            await self.counters.stop()
        if self.directory is not None:
            await self.directory.stop()
