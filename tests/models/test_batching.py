"""Pure batching functions: every text once, budgets respected, rows back in input order."""
from __future__ import annotations

from embedtune.models.batching import length_sorted_batches, packed_rows, padding_aware_chunks, restore_order


def test_length_sorted_batches_respect_budgets():
    lengths = [5, 50, 7, 12, 50, 3, 9]
    batches = length_sorted_batches(lengths, max_batch=3, max_tokens=100)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3 and len(batch) * max(lengths[i] for i in batch) <= 100


def test_packed_rows_keep_every_text_once_under_the_token_budget():
    lengths = [30, 5, 12, 12, 40, 3, 7, 25]
    rows = packed_rows(lengths, max_tokens=50)
    flat = sorted(i for row in rows for group in row for i in group)
    assert flat == list(range(len(lengths)))
    for row in rows:
        assert sum(lengths[i] for group in row for i in group) <= 50 or sum(len(g) for g in row) == 1


def test_padding_aware_chunks_split_long_from_short_and_respect_the_budget():
    lengths = [60, 58, 5, 4, 4, 3, 59, 5]
    chunks = padding_aware_chunks(lengths, max_tokens=200, overhead_tokens=8)
    assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))
    assert all(len(c) * max(lengths[i] for i in c) <= 200 for c in chunks)
    # One chunk would pad the five short texts to 60 tokens: the long ones are kept apart from them.
    assert {frozenset(c) for c in chunks} == {frozenset({0, 1, 6}), frozenset({2, 3, 4, 5, 7})}


def test_restore_order_inverts_the_visit_order():
    chunks = [[2, 0], [3], [1]]
    computed = [i for c in chunks for i in c]  # row r of the results belongs to input computed[r]
    assert [computed[p] for p in restore_order(chunks)] == [0, 1, 2, 3]
