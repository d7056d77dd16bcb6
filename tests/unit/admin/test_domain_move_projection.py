"""A domain move's events folded into the domain aggregate, its directory entry and the
edges' directory index: every reader sees the phase, and the flip re-homes the domain."""

from __future__ import annotations

import orjson

from colony import events as ev
from colony.bus import names
from colony.contracts import directory
from colony.contracts.cache import DirectoryIndex
from colony_admin import aggregates
from colony_admin.projections.directory import directory_entry

IDS = {"domain": "acme.example", "move_id": "mv1"}
CREATED = ev.DomainCreated(domain="acme.example", home_region="eu")


def _phases(state):
    return aggregates.moving_phase(state), (state.get("move") or {}).get("phase"), state["home_region"]


def test_the_domain_folds_a_move_through_its_phases_and_the_flip_rehomes_it():
    state = aggregates.fold([CREATED, ev.DomainMoveRequested(**IDS, source="eu", target="us")])
    assert _phases(state) == ("requested", "requested", "eu")
    assert state["move"]["source"] == "eu" and state["move"]["target"] == "us"
    for event, phase in [(ev.DomainMoveRouting(**IDS, epoch=1), "routing"),
                         (ev.DomainMoveCopying(**IDS, accounts=["a@acme.example"], epoch=1), "copying"),
                         (ev.DomainMoveSealing(**IDS, epoch=1), "sealing")]:
        state = aggregates.apply(state, event)
        assert _phases(state) == (phase, phase, "eu")
    state = aggregates.apply(state, ev.DomainMoveFlipped(**IDS, target="us", epoch=1))
    assert _phases(state) == ("flipped", "flipped", "us")
    state = aggregates.apply(state, ev.DomainMoveDone(**IDS, epoch=1))
    assert _phases(state) == (None, "done", "us")  # kept: where it came from


def test_repeated_out_of_order_or_foreign_move_events_change_nothing():
    state = aggregates.fold([CREATED, ev.DomainMoveRequested(**IDS, source="eu", target="us"),
                             ev.DomainMoveRouting(**IDS, epoch=1)])
    for stray in [ev.DomainMoveRouting(**IDS, epoch=1),                                  # a duplicate append
                  ev.DomainMoveFlipped(**IDS, target="us", epoch=1),                     # skips phases
                  ev.DomainMoveCopying(domain="acme.example", move_id="other", accounts=[], epoch=2),
                  ev.DomainMoveRequested(domain="acme.example", move_id="mv2", source="eu", target="ap")]:
        assert aggregates.apply(state, stray) == state, stray.type
    # once done, a new move may start
    state = aggregates.fold([CREATED, ev.DomainMoveRequested(**IDS, source="eu", target="us"),
                             ev.DomainMoveRouting(**IDS, epoch=1), ev.DomainMoveCopying(**IDS, accounts=[], epoch=1),
                             ev.DomainMoveSealing(**IDS, epoch=1), ev.DomainMoveFlipped(**IDS, target="us", epoch=1),
                             ev.DomainMoveDone(**IDS, epoch=1),
                             ev.DomainMoveRequested(domain="acme.example", move_id="mv2", source="us", target="eu")])
    assert state["move"]["move_id"] == "mv2" and aggregates.moving_phase(state) == "requested"


def test_edges_read_the_phase_from_the_directory_and_progress_stays_out_of_it():
    state = aggregates.fold([CREATED, ev.DomainMoveRequested(**IDS, source="eu", target="us"),
                             ev.DomainMoveRouting(**IDS, epoch=1)])
    key, value = directory_entry(names.AGG_DOMAIN, "acme.example", state, 12)
    parsed = directory.parse_entry(orjson.dumps(value))
    assert isinstance(parsed, directory.DomainEntry) and parsed.move.phase == "routing"
    info = parsed.info()
    assert (info.home_region, info.move_phase, info.move_target) == ("eu", "routing", "us")
    index = DirectoryIndex()
    index.apply(key, orjson.dumps(value))
    assert index.domain("acme.example") == info
    # after the move, the index and the entry say "not moving", homed in the target
    state = aggregates.fold([CREATED, ev.DomainMoveRequested(**IDS, source="eu", target="us"),
                             ev.DomainMoveRouting(**IDS, epoch=1), ev.DomainMoveCopying(**IDS, accounts=[], epoch=1),
                             ev.DomainMoveSealing(**IDS, epoch=1), ev.DomainMoveFlipped(**IDS, target="us", epoch=1),
                             ev.DomainMoveDone(**IDS, epoch=1)])
    key, value = directory_entry(names.AGG_DOMAIN, "acme.example", state, 20)
    index.apply(key, orjson.dumps(value))
    assert index.domain("acme.example") == directory.parse_entry(orjson.dumps(value)).info() \
        == directory.DomainInfo("acme.example", "active", "us", None, None, None, "")
    # the per-account progress subject folds (the directory projection may read it) but is not published
    copied = ev.DomainMoveAccountCopied(**IDS, address="a@acme.example", copy_pass=1, source_messages=1,
                                        target_messages=1, source_digest="d", target_digest="d", epoch=1)
    assert directory_entry(names.AGG_DOMAIN_MOVE, "acme.example", aggregates.fold([copied]), 21) is None


def test_a_domain_entry_of_an_older_writer_reads_as_not_moving():
    parsed = directory.parse_entry(b'{"kind":"domain","name":"a.example","home_region":"eu","seq":3}')
    assert parsed.move is None and parsed.info().move_phase is None


def test_a_cancelled_move_ends_it_only_while_requested():
    requested = [CREATED, ev.DomainMoveRequested(**IDS, source="eu", target="us")]
    state = aggregates.fold([*requested, ev.DomainMoveCancelled(**IDS)])
    assert _phases(state) == (None, "cancelled", "eu")
    routing = aggregates.fold([*requested, ev.DomainMoveRouting(**IDS, epoch=1)])
    assert aggregates.apply(routing, ev.DomainMoveCancelled(**IDS)) == routing
    key, value = directory_entry(names.AGG_DOMAIN, "acme.example", state, 5)
    assert directory.parse_entry(orjson.dumps(value)).info().move_phase is None
    # the rules agree: nothing left to drive, and a new move may be asked for
    from colony import domain_move as dm
    from datetime import timedelta
    move = dm.fold([*requested[1:], ev.DomainMoveCancelled(**IDS)])
    assert move.phase == dm.Phase.CANCELLED and not move.active
    assert isinstance(dm.next_step(move, dm.Observations(), now=move.since, epoch=1, settle=timedelta(0)), dm.Finished)
    assert dm.cancel_move(dm.fold(requested[1:]), "acme.example")[0].move_id == "mv1"
    for moving in (dm.fold([*requested[1:], ev.DomainMoveRouting(**IDS, epoch=1)]), move, None):
        try:
            dm.cancel_move(moving, "acme.example")
            raise AssertionError("cancelled a move that was not requested")
        except dm.MoveRefused as refused:
            assert refused.reason in ("domain-move-in-progress", "no-move-in-progress")
