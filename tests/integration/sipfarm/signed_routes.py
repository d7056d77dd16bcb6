"""A Route as the farm signs it (route_signature.py), made from the farm secret on the bus:
for tests that need an in-dialog request a real dialog's party could send without setting
up the call first."""

from __future__ import annotations

import base64

from colony.bus import names

from colony_sipfarm.route_signature import RouteSigner


async def signed_route(cluster, at: tuple[str, int], call_id: str, from_tag: str, member: str = "sipfarm-1") -> str:
    """The Record-Route ``member`` (listening ``at``) puts on an INVITE over UDP with
    ``call_id`` and From-tag ``from_tag``."""
    kv = await (await cluster.client()).jetstream().key_value(names.BUCKET_SIP_BINDINGS)
    secret = base64.b64decode((await kv.get(names.SIP_NONCE_SECRET_KEY)).value)
    cf = names.node_key(member)
    return f"<sip:{at[0]}:{at[1]};lr;cf={cf};dm={RouteSigner(secret).sign(call_id, from_tag, {'cf': cf})}>"
