from colony.hashing import choose, rank


def test_same_inputs_same_winner_whatever_the_order():
    nodes = ["mailstore-1", "mailstore-2", "mailstore-3"]
    for key in ("alice@acme.example", "bob@x.example"):
        assert choose(key, nodes) == choose(key, list(reversed(nodes)))


def test_removing_a_node_moves_only_its_keys():
    nodes = [f"m{i}" for i in range(5)]
    keys = [f"user{i}@d.example" for i in range(2000)]
    before = {k: choose(k, nodes) for k in keys}
    after = {k: choose(k, nodes[:-1]) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert moved and all(before[k] == "m4" for k in moved)
    # and the load is spread: every node wins a fair share
    shares = {n: list(before.values()).count(n) for n in nodes}
    assert min(shares.values()) > 2000 / 5 * 0.8


def test_adding_a_node_moves_keys_only_to_it():
    nodes = [f"m{i}" for i in range(4)]
    keys = [f"k{i}" for i in range(1000)]
    grown = nodes + ["m-new"]
    for k in keys:
        if choose(k, nodes) != choose(k, grown):
            assert choose(k, grown) == "m-new"


def test_rank_is_a_total_order_and_empty_has_no_winner():
    assert sorted(rank("k", ["a", "b", "c"])) == ["a", "b", "c"]
    assert choose("k", []) is None
