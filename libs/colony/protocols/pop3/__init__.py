"""POP3 as a sans-IO server core (see ``rules``)."""

from colony.protocols.pop3.rules import (
    Authenticate, Close, Commit, MessageInfo, Pop3Server, Retrieve, StartTLS, State, dot_stuff,
)

__all__ = ["Authenticate", "Close", "Commit", "MessageInfo", "Pop3Server", "Retrieve", "StartTLS", "State", "dot_stuff"]
