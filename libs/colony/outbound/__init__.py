"""Outbound mail: the pure rules of remote delivery (``rules``), delivery status
notifications (``dsn``, RFC 3464) and DKIM signing (``signing``).  The asyncio shell that
looks up MX records and talks SMTP to them lives in the edge (``colony_edge.outbound``)."""
