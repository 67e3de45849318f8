"""Bits where they matter: per-tensor schemes that minimise an estimated loss
within a bit budget.

Each tensor has candidate choices, each with a size in bits and an estimated
loss (``lowbit.eval.budget`` measures them). Starting from every tensor's
smallest candidate, the allocator repeatedly takes the upgrade with the best
loss saved per bit added, over each tensor's lower convex hull of (bits,
loss), while the budget allows; the greedy choice on convex hulls is the
optimum of the relaxed problem, and within one candidate of the optimum of
the integer one (the classic bit-allocation argument).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from lowbit.quant.recipes import Choice


@dataclass(frozen=True)
class Candidate:
    choice: Choice
    bits: float  # stored bits of the whole tensor
    loss: float  # estimated loss of the model's output from this tensor alone


def _hull(cands: list[Candidate]) -> list[Candidate]:
    """The candidates on the lower convex hull of (bits, loss), by bits:
    the only ones a loss-per-bit greedy should ever step to."""
    best: list[Candidate] = []
    for c in sorted(cands, key=lambda c: (c.bits, c.loss)):
        if best and c.loss >= best[-1].loss:
            continue  # more bits, no less loss: never worth it
        while len(best) >= 2:
            a, b = best[-2], best[-1]
            # b lies on or above the segment a-c: drop it.
            if (b.loss - a.loss) * (c.bits - a.bits) >= (c.loss - a.loss) * (b.bits - a.bits):
                best.pop()
            else:
                break
        best.append(c)
    return best


def allocate(candidates: dict[str, list[Candidate]], budget_bits: float) -> dict[str, Candidate]:
    """A candidate per tensor with total bits at most ``budget_bits`` (when the
    smallest candidates fit) and least total estimated loss by the greedy above.
    A budget below the smallest candidates' total gets those."""
    hulls = {name: _hull(c) for name, c in candidates.items()}
    pick = {name: 0 for name in hulls}
    used = sum(h[0].bits for h in hulls.values())
    heap: list[tuple[float, str]] = []

    def push(name: str) -> None:
        h, i = hulls[name], pick[name]
        if i + 1 < len(h):
            gain = (h[i].loss - h[i + 1].loss) / (h[i + 1].bits - h[i].bits)
            heapq.heappush(heap, (-gain, name))

    for name in hulls:
        push(name)
    while heap:
        _, name = heapq.heappop(heap)
        h, i = hulls[name], pick[name]
        extra = h[i + 1].bits - h[i].bits
        if used + extra > budget_bits:
            continue  # this step does not fit; a smaller one elsewhere may
        used += extra
        pick[name] = i + 1
        push(name)
    return {name: hulls[name][i] for name, i in pick.items()}


__all__ = ["Candidate", "allocate"]
