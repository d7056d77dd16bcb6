"""/v1/queue: the outbound queue through the admin API (system admin only): list, status per
destination, retry now, delete."""

from __future__ import annotations

from colony.bus import names
from colony_admin.models import Role

from admin_stack import unique_domain


async def test_queue_endpoints_list_status_retry_delete(stack):
    from datetime import UTC, datetime, timedelta

    from colony.contracts.outbound import OutboundMail, OutboundRecipient

    c, h = stack.client, stack.as_(stack.sys_token)
    js = stack.nc.jetstream()
    destination = unique_domain("queue")
    for i in range(2):
        mail = OutboundMail.new(message_id=f"q{i}-{destination}", destination=destination, mail_from="a@example.com",
                                recipients=[OutboundRecipient(address=f"r{i}@{destination}")], size=3, edge_node="t",
                                body=b"x\r\n", not_before=datetime.now(UTC) + timedelta(hours=1))
        await js.publish(names.outbound_subject(destination), mail.encode(), headers={"Nats-Msg-Id": mail.msg_id()})
    r = await c.get("/v1/queue", params={"destination": destination}, headers=h)
    assert r.status_code == 200, r.text
    rows = r.json()
    assert [m["recipients"] for m in rows] == [[f"r0@{destination}"], [f"r1@{destination}"]]
    status = {d["destination"]: d for d in (await c.get("/v1/queue/destinations", headers=h)).json()}
    assert status[destination]["messages"] == 2
    r = await c.post(f"/v1/queue/{rows[0]['seq']}/retry", headers=h)
    assert r.status_code == 200 and r.json()["next_attempt"] is None and r.json()["generation"] == 1
    assert (await c.delete(f"/v1/queue/{rows[1]['seq']}", headers=h)).status_code == 204
    assert (await c.get(f"/v1/queue/{rows[1]['seq']}", headers=h)).status_code == 404
    left = (await c.get("/v1/queue", params={"destination": destination}, headers=h)).json()
    assert [m["message_id"] for m in left] == [f"q0-{destination}"]
    domain_admin = await stack.token(Role.DOMAIN_ADMIN, destination)
    assert (await c.get("/v1/queue", headers=stack.as_(domain_admin))).status_code == 403
