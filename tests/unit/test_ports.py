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


def _ports_table(*args: str) -> dict[str, int]:
    from typer.testing import CliRunner

    from colony.cli.main import app

    out = CliRunner().invoke(app, ["ports", "--base-port", "26000", *args], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    rows = [line.split("│") for line in out.output.splitlines() if line.startswith("│")]
    return {cells[1].strip(): int(cells[2]) for cells in rows if cells[2].strip().isdigit()}


def test_colony_ports_lists_what_colony_up_opens_with_the_same_options():
    """`colony ports` printed a fixed plan (two edges, two farm members) whatever `colony up`
    would start, and never its Prometheus."""
    default = _ports_table()
    assert "SMTP edge #1" in default and "SMTP edge #2" not in default        # colony up: --edges 1
    assert "SIP farm member #1" in default and "SIP farm member #2" not in default
    assert "inner IMAP mail store #2" in default                                  # --mailstores 2
    assert sorted(p for what, p in default.items() if what.startswith("ops listener")) == list(range(26100, 26108))
    assert "Prometheus" not in default
    more = _ports_table("--edges", "2", "--sipfarms", "0", "--monitoring")
    assert more["SMTP edge #2"] == 27025 and more["Prometheus"] == 26090
    assert not any(what.startswith("SIP") for what in more)
    assert sorted(p for what, p in more.items() if what.startswith("ops listener")) == list(range(26100, 26108))
