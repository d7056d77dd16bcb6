"""Metric labels and span names of SIP methods come from a fixed set: a method token a phone
makes up (or a piece of a known one) is "other", so it cannot grow /metrics."""

from colony_sipfarm.farm import ALLOW, method_label


def test_known_methods_are_their_own_label():
    for method in ("INVITE", "REGISTER", "ACK", "PRACK", "SUBSCRIBE"):
        assert method in ALLOW
        assert method_label(method) == method


def test_pieces_of_known_methods_and_made_up_ones_are_other():
    for method in ("VITE", "E", "INVITE, ACK", "REG", "FOO", "invite", ""):
        assert method_label(method) == "other", method
