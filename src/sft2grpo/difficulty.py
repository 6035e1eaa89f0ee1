"""An online difficulty filter: which training problems a step draws, from how the model does on them.

A group of answers whose rewards are all equal has advantage 0 and teaches nothing. On a task whose
problems range from easy to hard, the easy ones become all-right and the hard ones stay all-wrong as
the model learns, so the share of such groups rises and the signal runs out (docs/learning.md).
With `task.difficulty.mode=adaptive` the training problems come in buckets (reasoning-gym kwargs,
e.g. chain_sum's terms x digits, `task.difficulty.buckets`) and each step's prompts are drawn from
them with weights that favour the buckets the model solves about half the time:

    p_b   <- (1 - ema) * p_b + ema * acc_b     after each step, for the buckets it drew
    w_b    = (1 - floor) * p_b (1 - p_b) / sum_c p_c (1 - p_c)  +  floor / K

acc_b is the step's training accuracy on bucket b's completions (the verifier's `correct`, over
every rollout round), p_b starts at `prior`, and K is the number of buckets. p(1-p) is the variance
of a right/wrong reward, which a group's advantage needs to be non-zero; `floor` keeps every bucket
drawn now and then, so that a bucket whose estimate went stale can come back. This is the bucket
form of the filters in AdaRFT and LILO (which keep prompts of success rate near 1/2); it keeps no
per-problem statistics. Held-out and validation problems are never touched (tasks.py).

`DifficultySampler` holds the estimates, its own generator and each bucket's place in its problem
order; `state_dict()` is all of it, so a resumed run draws what the uninterrupted one would.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def bucket_weights(p: np.ndarray, floor: float) -> np.ndarray:
    """Draw probabilities of K buckets from their success estimates: [K] -> [K], summing to 1.

    p(1-p) normalised, mixed with the uniform distribution at share `floor`; when every bucket is
    solved always or never (all p(1-p) = 0) the draw is uniform.

        bucket_weights(np.array([0.5, 0.1, 1.0]), 0.0)  # [0.735, 0.265, 0.0]: 0.25 and 0.09 of 0.34
    """
    k = len(p)
    var = p * (1 - p)  # [K]
    total = var.sum()
    fit = var / total if total > 0 else np.full(k, 1 / k)  # [K]
    return (1 - floor) * fit + floor / k


def ema_update(p: np.ndarray, correct: np.ndarray, rows: np.ndarray, ema: float) -> np.ndarray:
    """New success estimates after a step: [K] estimates, [K] right answers, [K] answers -> [K].

    Each bucket with answers this step moves `ema` of the way to its accuracy correct / rows; a
    bucket with none keeps its estimate.

        ema_update(np.array([0.5, 0.5]), np.array([8, 0]), np.array([16, 0]), 0.5)  # [0.5, 0.5]
        ema_update(np.array([0.2, 0.5]), np.array([8, 0]), np.array([8, 0]), 0.5)  # [0.6, 0.5]
    """
    seen = rows > 0  # [K]
    acc = np.divide(correct, rows, out=np.zeros_like(p), where=seen)  # [K]
    return np.where(seen, (1 - ema) * p + ema * acc, p)


class DifficultySampler:
    """Draws training examples from K buckets with `bucket_weights`, and learns from `update`.

    Within a bucket the examples come in a fresh random order each pass (as the plain training
    split does), so a bucket's problems are all used before any repeats."""

    def __init__(self, sizes: list[int], seed: int, ema: float, prior: float, floor: float):
        self.sizes, self.ema, self.floor = list(sizes), ema, floor
        self.p = np.full(len(sizes), float(prior))  # [K] success estimates
        # a stream of its own: the plain data order's generator is seeded with train.seed alone
        self.rng = np.random.default_rng([seed, 1])
        self.orders: list[list[int]] = [[] for _ in sizes]  # each bucket's current pass
        self.pos = [0] * len(sizes)  # the next index into each bucket's pass

    def weights(self) -> np.ndarray:
        """[K] the probabilities the next draw uses."""
        return bucket_weights(self.p, self.floor)

    def draw(self, n: int) -> list[tuple[int, int]]:
        """n (bucket, index into that bucket's examples) pairs: a bucket for each by `weights()`,
        then that bucket's next example."""
        out = []
        for b in self.rng.choice(len(self.sizes), size=n, p=self.weights()).tolist():
            if self.pos[b] >= len(self.orders[b]):
                self.orders[b], self.pos[b] = self.rng.permutation(self.sizes[b]).tolist(), 0
            out.append((b, self.orders[b][self.pos[b]]))
            self.pos[b] += 1
        return out

    def update(self, correct: np.ndarray, rows: np.ndarray) -> None:
        """One step's [K] right answers and [K] answers per bucket (every process's together)."""
        self.p = ema_update(self.p, np.asarray(correct, float), np.asarray(rows, float), self.ema)

    def state_dict(self) -> dict[str, Any]:
        return {
            "p": self.p.tolist(),
            "rng": self.rng.bit_generator.state,
            "orders": [list(o) for o in self.orders],
            "pos": list(self.pos),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["p"]) != len(self.sizes):
            raise ValueError(
                f"the checkpoint has {len(state['p'])} difficulty buckets, the config {len(self.sizes)}"
            )
        self.p = np.array(state["p"], dtype=float)
        self.rng.bit_generator.state = state["rng"]
        self.orders, self.pos = [list(o) for o in state["orders"]], list(state["pos"])
