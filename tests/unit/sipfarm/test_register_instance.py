"""A Contact with ``+sip.instance`` binds the address of record to that device (RFC 5626 §6,
RFC 5627), and with a ``reg-id`` to that flow of it: a REGISTER of the same instance (and
reg-id) replaces the binding whatever its Contact URI -- as Kamailio's registrar does.
linphone (tests/integration/sipfarm/test_linphone.py) puts its connection's port in its TCP
Contact and sends ``+sip.instance``: each time it connected again (its member died, its
network changed) it added a binding, the old one, naming a dead flow, lived on for its hour,
calls forked to it, and after ``sip_max_bindings`` reconnections it could not register."""

from __future__ import annotations

from test_farm import farm, registered  # noqa: F401 (farm: a fixture)

INSTANCE = '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'
OTHER = '+sip.instance="<urn:uuid:00000000-0000-1000-8000-00AA00BB00CC>"'


def contacts(farm, user: str = "alice") -> list[str]:
    return sorted(b.contact for b in farm.store.sets.get(f"{user}@acme.example", []))


async def test_a_new_contact_of_the_same_instance_replaces_the_old_one(farm):
    ok = await registered(farm, contact=f"<sip:alice@192.0.2.7:40001;transport=tcp>;{INSTANCE}", call_id="c1")
    assert ok.headers.get_all("Contact") == [
        f'<sip:alice@192.0.2.7:40001;transport=tcp>;expires=300;q=1;{INSTANCE}']
    # The phone connected again (new port), under a new Call-ID as after a restart.
    ok = await registered(farm, contact=f"<sip:alice@192.0.2.7:40002;transport=tcp>;{INSTANCE}", call_id="c2")
    assert ok.status == 200
    assert contacts(farm) == ["sip:alice@192.0.2.7:40002;transport=tcp"]
    assert ok.headers.get_all("Contact") == [
        f'<sip:alice@192.0.2.7:40002;transport=tcp>;expires=300;q=1;{INSTANCE}']
    # Another device of alice's (another instance), and one without any, are bindings of their own.
    await registered(farm, contact=f"<sip:alice@198.51.100.1:5060>;{OTHER}", call_id="c3")
    await registered(farm, contact="<sip:alice@198.51.100.2:5060>", call_id="c4")
    assert contacts(farm) == ["sip:alice@192.0.2.7:40002;transport=tcp", "sip:alice@198.51.100.1:5060",
                              "sip:alice@198.51.100.2:5060"]


async def test_reg_id_names_a_flow_of_the_instance(farm):
    await registered(farm, contact=f"<sip:alice@192.0.2.7:40001;transport=tcp;ob>;{INSTANCE};reg-id=1", call_id="c1")
    await registered(farm, contact=f"<sip:alice@192.0.2.7:40002;transport=tcp;ob>;{INSTANCE};reg-id=2", call_id="c2")
    assert len(contacts(farm)) == 2                         # two flows of one device
    ok = await registered(farm, contact=f"<sip:alice@192.0.2.7:40003;transport=tcp;ob>;{INSTANCE};reg-id=1",
                          call_id="c3")
    assert contacts(farm) == ["sip:alice@192.0.2.7:40002;transport=tcp;ob", "sip:alice@192.0.2.7:40003;transport=tcp;ob"]
    assert f"<sip:alice@192.0.2.7:40003;transport=tcp;ob>;expires=300;q=1;{INSTANCE};reg-id=1" in ok.headers.get_all("Contact")


async def test_an_unregister_of_the_instance_removes_its_binding_under_another_uri(farm):
    await registered(farm, contact=f"<sip:alice@192.0.2.7:40001;transport=tcp>;{INSTANCE}", call_id="c1")
    ok = await registered(farm, contact=f"<sip:alice@192.0.2.7:40002;transport=tcp>;{INSTANCE}", call_id="c2",
                          expires="0")
    assert ok.status == 200 and contacts(farm) == []


async def test_devices_reconnecting_never_fill_the_account(farm):
    """Twenty reconnections of one device: one binding, never 403 Too Many Registered Devices."""
    for n in range(20):
        ok = await registered(farm, contact=f"<sip:alice@192.0.2.7:{40000 + n};transport=tcp>;{INSTANCE}",
                              call_id=f"c{n}")
        assert ok.status == 200, (n, ok)
    assert contacts(farm) == ["sip:alice@192.0.2.7:40019;transport=tcp"]


async def test_an_older_register_of_the_same_call_id_does_not_replace_the_instances_binding(farm):
    await registered(farm, contact=f"<sip:alice@192.0.2.7:40002;transport=tcp>;{INSTANCE}", call_id="c1", cseq=10)
    ok = await registered(farm, contact=f"<sip:alice@192.0.2.7:40001;transport=tcp>;{INSTANCE}", call_id="c1", cseq=3)
    assert ok.status == 500                                  # §10.3 step 7: out of order, nothing changed
    assert contacts(farm) == ["sip:alice@192.0.2.7:40002;transport=tcp"]
