"""The SMTP server core (sans-IO): see ``connection`` for the theory of operation."""

from colony.protocols.smtp import events, replies
from colony.protocols.smtp.connection import ServerConfig, ServerConnection
from colony.protocols.smtp.events import NEED_DATA, PAUSED
from colony.protocols.smtp.replies import Reply

__all__ = ["NEED_DATA", "PAUSED", "Reply", "ServerConfig", "ServerConnection", "events", "replies"]
