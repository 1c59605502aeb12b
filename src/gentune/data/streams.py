"""Endless seeded streams of batches from a fixed pool of unlabeled examples: what a regularizer that reads its own
data (RadReg's downstream images or text) draws from beside the training batches.

:class:`PoolStream` is the cycling: the pool is visited in permutations drawn from the owner's generator (a fresh
one after every pass; a batch that crosses the end of a pass takes the rest from the next), and ``state_dict``
holds the position, so a resumed run draws exactly the batches an uninterrupted one would (the generator's state
is its owner's to save). Subclasses turn the chosen positions into a batch: :class:`gentune.data.images.ImageStream`
(normalised pixels), :class:`TextStream` (padded token ids).
"""

from __future__ import annotations

from typing import Any

import torch


class PoolStream:
    """``next(stream) -> (batch, idx)``: ``idx`` (n,) the positions in the pool, ``batch`` what :meth:`_batch`
    makes of them. Subclasses keep the pool in ``self.pool`` (anything indexable by a position tensor through
    :meth:`_take`, with a ``len``).

    Args:
        pool: the examples.
        batch_size: n.
        generator: draws the permutations.
    """

    def __init__(self, pool, batch_size: int, generator: torch.Generator):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(pool) == 0:
            raise ValueError("the pool is empty")
        self.pool, self.batch_size, self.generator = pool, batch_size, generator
        self.order: torch.Tensor | None = None  # the current pass over the pool
        self.pos = 0

    def __len__(self) -> int:
        return len(self.pool)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[Any, torch.Tensor]:
        picked, have = [], 0
        while have < self.batch_size:
            if self.order is None or self.pos >= len(self.order):
                self.order, self.pos = torch.randperm(len(self.pool), generator=self.generator), 0
            take = self.order[self.pos:self.pos + self.batch_size - have]
            picked.append(take)
            self.pos += len(take)
            have += len(take)
        idx = torch.cat(picked)
        return self._batch(idx), idx

    def _batch(self, idx: torch.Tensor):
        raise NotImplementedError

    def _take(self, keep: torch.Tensor):
        """The pool restricted to the positions ``keep``, in their order."""
        return self.pool[keep]

    def subset(self, keep: torch.Tensor) -> None:
        """Restrict the pool to the examples at positions ``keep`` (their order kept); the stream starts a new
        pass."""
        self.pool, self.order, self.pos = self._take(keep), None, 0

    def state_dict(self) -> dict:
        return {"order": self.order, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.order, self.pos = state.get("order"), state.get("pos", 0)


class TextStream(PoolStream):
    """Batches of tokenized text: ``{"input_ids", "attention_mask"[, "token_type_ids"]}`` (n, L) int64, right-padded
    with ``pad_id`` to the batch's longest example.

    Args:
        examples: one dict per example with ``input_ids`` (and ``token_type_ids``) lists, e.g. a tokenizer's output
            (:func:`gentune.tasks.text_pretraining.tokenize_text`).
        batch_size, generator: as :class:`PoolStream`.
        pad_id: the tokenizer's padding id.
    """

    KEYS = ("input_ids", "token_type_ids")

    def __init__(self, examples, batch_size: int, generator: torch.Generator, pad_id: int = 0):
        pool = [{k: list(e[k]) for k in self.KEYS if k in e} for e in examples]
        if any(not e.get("input_ids") for e in pool):
            raise ValueError("every example needs input_ids (and at least one token)")
        super().__init__(pool, batch_size, generator)
        self.pad_id = pad_id

    def _take(self, keep: torch.Tensor) -> list[dict]:
        return [self.pool[i] for i in keep.tolist()]

    def _batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        rows = [self.pool[i] for i in idx.tolist()]
        length = max(len(r["input_ids"]) for r in rows)
        out = {"input_ids": [], "attention_mask": []}
        types = all("token_type_ids" in r for r in rows)
        if types:
            out["token_type_ids"] = []
        for r in rows:
            extra = length - len(r["input_ids"])
            out["input_ids"].append(r["input_ids"] + [self.pad_id] * extra)
            out["attention_mask"].append([1] * len(r["input_ids"]) + [0] * extra)
            if types:
                out["token_type_ids"].append(r["token_type_ids"] + [0] * extra)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}


def rows(batch, start: int, stop: int):
    """Rows ``start:stop`` of a batch: a tensor, or a dict of tensors with the batch first."""
    if isinstance(batch, dict):
        return {k: v[start:stop] for k, v in batch.items()}
    return batch[start:stop]


def batch_to(batch, device):
    """A tensor or a dict of tensors on ``device``."""
    if isinstance(batch, dict):
        return {k: v.to(device) for k, v in batch.items()}
    return batch.to(device)


def batch_len(batch) -> int:
    """Rows of a tensor, or of a dict of tensors' first."""
    return len(next(iter(batch.values()))) if isinstance(batch, dict) else len(batch)


__all__ = ["PoolStream", "TextStream", "batch_len", "batch_to", "rows"]
