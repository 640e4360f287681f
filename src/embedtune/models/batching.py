"""Pure batching functions: which texts run together in one forward call. No model, no torch.

Inference (`Embedder.encode`, evaluation, serving) uses `length_sorted_batches`: longest first, a text count
and a token budget per call. Training batches hold ~100-300 texts of very different lengths that all need a
graph: `padding_aware_chunks` splits them with the least padding plus per-call overhead, and `packed_rows`
groups them into packed rows (models/packing.py) whose attention runs per group of similar lengths.
"""
from __future__ import annotations

from collections.abc import Sequence


def length_sorted_batches(lengths: Sequence[int], max_batch: int, max_tokens: int) -> list[list[int]]:
    """Indices grouped longest first so that each batch pads little and stays under a token budget."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]
        if current and (len(current) >= max_batch or (len(current) + 1) * width > max_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def padding_aware_chunks(lengths: Sequence[int], max_tokens: int, overhead_tokens: int = 48,
                         max_batch: int = 256) -> list[list[int]]:
    """Split texts, sorted by length, into chunks that minimise padded tokens + a per-chunk overhead.

    A contrastive batch holds ~100-200 texts of very different lengths: one big chunk pads every text to the
    longest (2-3x the real tokens), many tiny ones pay per-call overhead. Exact dynamic programme over the
    sorted order; `overhead_tokens` is the cost of one more forward call, in token-equivalents.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    sizes = [lengths[i] for i in order]
    n = len(sizes)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of chunking the first j texts
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j - 1, -1, -1):  # chunk = sorted texts i..j-1, padded to sizes[i]
            if j - i > 1 and ((j - i) * sizes[i] > max_tokens or j - i > max_batch):
                break
            cost = best[i] + (j - i) * sizes[i] + overhead_tokens
            if cost < best[j]:
                best[j], cut[j] = cost, i
    chunks, j = [], n
    while j > 0:
        chunks.append(order[cut[j]:j])
        j = cut[j]
    return chunks[::-1]


def packed_rows(lengths: Sequence[int], max_tokens: int, group_tokens: int = 2048) -> list[list[list[int]]]:
    """Rows of attention groups: length-sorted texts grouped with little padding (attention pads within a
    group), groups gathered into rows of at most max_tokens real tokens (one forward call each)."""
    # A group costs ~15 small ops per layer and pass; padding inside attention is cheap. Measured at batch 32 on
    # Gemma-3-270M (paired steps): overhead 16 -> ~8 groups, 2.47 s/step; 256 -> 2-3 groups, 2.06 s/step.
    groups = padding_aware_chunks(lengths, min(group_tokens, max_tokens), overhead_tokens=256)
    rows: list[list[list[int]]] = []
    tokens = 0
    for group in groups:
        size = sum(lengths[i] for i in group)
        if not rows or tokens + size > max_tokens:
            rows.append([])
            tokens = 0
        rows[-1].append(group)
        tokens += size
    return rows


def restore_order(chunks: Sequence[Sequence[int]]) -> list[int]:
    """For rows computed chunk after chunk, the position of input i among them (argsort of the visit order)."""
    order = [i for chunk in chunks for i in chunk]
    inverse = [0] * len(order)
    for position, i in enumerate(order):
        inverse[i] = position
    return inverse
