"""Scalable mode's core (spec §5.1): per-class pick sequences merged by a heap.

F1: every reference pick is the lexicographic maximum of (u_i, i) over unselected rows.
F2: a class's scores change only at its own refreshes, which depend on its own picks only.
So each class's pick sequence (with the key u at pick time) can be simulated alone, and the
global order is the greedy k-way merge of those sequences: repeatedly take the largest head.
Between refreshes a class gives up at most B picks, so each step needs only its top-B unselected
rows, an O(n_c) selection instead of a global re-sort.
"""

from __future__ import annotations

import heapq

import numpy as np


def top_unselected(u: np.ndarray, selected: np.ndarray, m: int) -> np.ndarray:
    """Local indices of the m largest unselected rows by (u, index), in descending order."""
    cand = np.flatnonzero(~selected)
    if m < len(cand):
        vals = u[cand]
        cut = len(cand) - m
        pivot = np.partition(vals, cut)[cut]
        above = cand[vals > pivot]
        ties = cand[vals == pivot]
        cand = np.concatenate([above, ties[len(ties) - (m - len(above)) :]])
    order = np.lexsort((cand, u[cand]))[::-1]
    return cand[order]


class ClassSequence:
    """One class's §4 simulation, extended on demand; its state can be saved and resumed."""

    def __init__(self, problem, B: int, state: dict | None = None):
        self.p, self.B = problem, int(B)
        if state is None:
            self.u = problem.u0.astype(np.float64).copy()
            self.selected = np.zeros(problem.n, dtype=bool)
            self.cnt, self.rho = 0, 0.0
            self.pending: list[int] = []
            self.queue = np.empty(0, dtype=np.int64)
            self.refresh_counts: list[int] = []
        else:
            self.u = np.array(state["u"], dtype=np.float64)
            self.selected = np.array(state["selected"], dtype=bool)
            self.cnt, self.rho = int(state["cnt"]), float(state["rho"])
            self.pending = [int(v) for v in state["pending"]]
            self.queue = np.array(state["queue"], dtype=np.int64)
            self.refresh_counts = [int(v) for v in state["refresh_counts"]]

    @property
    def exhausted(self) -> bool:
        return self.cnt >= self.p.n

    def state(self) -> dict:
        return {
            "u": self.u,
            "selected": self.selected,
            "cnt": self.cnt,
            "rho": self.rho,
            "pending": np.asarray(self.pending, dtype=np.int64),
            "queue": self.queue,
            "refresh_counts": np.asarray(self.refresh_counts, dtype=np.int64),
        }

    def _until_refresh(self) -> int:
        s = (self.B - (self.cnt + 1) % self.B) % self.B
        return s if s else self.B

    def _refresh(self) -> None:
        p, nc = self.p, self.p.n
        self.u -= p.kernel.pair_sums(self.pending) / nc
        self.u -= self.rho / nc
        self.u -= (float(np.sum(p.lsim[self.pending])) / 2.0) / nc
        self.pending = []
        self.refresh_counts.append(self.cnt)

    def extend(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to m further picks: (keys = u at pick time, local indices), in pick order."""
        keys, picks, got = [], [], 0
        r = self.p.r
        while got < m and not self.exhausted:
            if not len(self.queue):
                self.queue = top_unselected(self.u, self.selected, min(self._until_refresh(), self.p.n - self.cnt))
            take = self.queue[: m - got]
            self.queue = self.queue[len(take) :]
            got += len(take)
            keys.append(self.u[take])
            picks.append(take)
            self.selected[take] = True
            for li in take.tolist():
                self.cnt += 1
                self.rho += float(r[li])
                self.pending.append(li)
                if (self.cnt + 1) % self.B == 0:
                    self._refresh()
        if not picks:
            return np.empty(0, np.float64), np.empty(0, np.int64)
        return np.concatenate(keys), np.concatenate(picks)


def prefix_length(n_c: int, fraction: float, B: int) -> int:
    """L_c = min(n_c, ⌈2·f·n_c⌉ + B): enough for almost every class, resumed when not."""
    return int(min(n_c, int(np.ceil(2.0 * fraction * n_c)) + B))


def merge(heads, k: int, resume) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy k-way merge of per-class sequences (spec P4).

    ``heads[c] = (keys, gidx, exhausted)`` are the precomputed prefixes; ``resume(c, m)`` returns
    (keys, gidx, exhausted) for m more picks of class c. Returns picks (global indices), their
    keys and each pick's class.
    """
    pos = [0] * len(heads)
    keys = [h[0] for h in heads]
    gid = [h[1] for h in heads]
    done = [bool(h[2]) for h in heads]
    heap = [(-float(keys[c][0]), -int(gid[c][0]), c) for c in range(len(heads)) if len(keys[c])]
    heapq.heapify(heap)
    out_g = np.empty(k, dtype=np.int64)
    out_k = np.empty(k, dtype=np.float64)
    out_c = np.empty(k, dtype=np.int64)
    for t in range(k):
        if not heap:
            raise RuntimeError(f"clipcov merge ran out of rows after {t} of {k} picks")
        nk, ng, c = heapq.heappop(heap)
        out_g[t], out_k[t], out_c[t] = -ng, -nk, c
        pos[c] += 1
        if pos[c] == len(keys[c]) and not done[c]:
            more_k, more_g, done[c] = resume(c, max(len(keys[c]), 1))
            keys[c] = np.concatenate([keys[c], more_k])
            gid[c] = np.concatenate([gid[c], more_g])
        if pos[c] < len(keys[c]):
            heapq.heappush(heap, (-float(keys[c][pos[c]]), -int(gid[c][pos[c]]), c))
    return out_g, out_k, out_c
