"""Typed edge contracts: what edges, mail stores and the SIP farm may ask the rest of the cluster.

``directory``     the values of the ``directory`` KV bucket (domain, address, domain alias,
                  class of service) and the directory lookup request/reply;
``recipients``    the pure recipient resolver (aliases, domain aliases, forwarding) and its
                  request/reply;
``auth``          the PLAIN check and SIP digest credentials request/replies;
``entitlements``  what an account may use (class of service capped by the account);
``cache``         ``DirectoryCache``: a watch-fed local copy of the ``directory`` bucket;
``clients``       small async clients for the request/reply subjects.
``mail``, ``handoff``, ``imap_handoff``: the inbound MAIL message and the edge-to-store
                  session hand-off (see each module).

Services import these; the admin API serves them.  Nothing here imports a service.
"""
