"""`colony up`'s port plan: one block per instance of a kind, no port planned twice."""

from collections import Counter

from colony.ports import PortPlan


def test_no_port_is_planned_twice_and_every_farm_member_has_its_inner_relay():
    plan = PortPlan(2500)
    planned = plan.all_ports(instances=12, admin_apis=2, edges=3, sipfarms=3, mailstores=3)
    assert [port for port, n in Counter(p for _, p in planned).items() if n > 1] == []
    inner = [(what, port) for what, port in planned if what.startswith("SIP inner relay")]
    assert inner == [("SIP inner relay farm member #1", 2564), ("SIP inner relay farm member #2", 3564),
                     ("SIP inner relay farm member #3", 4564)]
    assert plan.sip_inner(1) - plan.sip(1) == plan.sip_inner(0) - plan.sip(0)    # in the member's own block


def test_each_edge_has_its_autoconfig_http_port_in_its_own_block():
    plan = PortPlan(2500)
    assert [plan.autoconfig(i) for i in range(3)] == [2580, 3580, 4580]
    planned = dict((what, port) for what, port in plan.all_ports(instances=1, admin_apis=1, edges=2))
    assert planned["autoconfig edge #2"] == 3580
