"""IMAP4rev1/rev2 as a sans-IO core: ``reader`` (lines, literals, continuations, bounded
memory), ``syntax`` (the grammar's elements, sequence sets, modified UTF-7)."""
