"""Edge security (the seed's Edge-Gate): what an edge checks before it lets mail in.

* ``networks`` -- CIDR allow/deny lists (IPv4 and IPv6) and the unit a client is counted by;
* ``dnsbl`` -- DNS block lists with weights and a score threshold (RFC 5782);
* ``authentication`` -- SPF, DKIM and DMARC verification into ``Authentication-Results``
  (RFC 8601), with dkimpy/pyspf/authheaders;
* ``gate`` -- the policy the SMTP server calls at each step, with the shared flow-control
  counters (``colony.counters``); every refusal is counted on ``/metrics`` and logged with
  its reason.
"""
