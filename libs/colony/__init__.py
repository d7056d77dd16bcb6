"""Colony: a horizontally scaled, multi-tenant mail and VoIP cluster on NATS."""

__version__ = "0.1.0"
