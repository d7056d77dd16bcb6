"""SIP (RFC 3261) as a sans-IO core: URIs, messages, the parser and stream framing,
transactions with their timers, and digest authentication.  The SIP farm wraps it."""
