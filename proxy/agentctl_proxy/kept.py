"""A bounded dict of answers the proxy keeps between requests.

The same client asks the same things request after request (who it is, whether its
upstream address is denied, which grant allows its endpoint), and each answer is
fixed for the config it came from. Clients choose the keys, so the dict is bounded:
once full it starts over, which costs a recomputation, never a wrong answer.
"""
from __future__ import annotations


class KeptAnswers(dict):
    """Ask through answer(), or read it as a dict; add through keep()."""

    def __init__(self, limit: int = 4096) -> None:
        super().__init__()
        self.limit = limit

    def keep(self, key, value):
        """Store `value` for `key` (emptying the dict first when it is full); returns value."""
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value

    def answer(self, key, compute, *args):
        """The answer kept for `key`, else compute(*args), kept (None is an answer too)."""
        try:
            return self[key]
        except KeyError:
            return self.keep(key, compute(*args))
