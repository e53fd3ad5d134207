"""The project's own exceptions.

Every problem with user input (a file, a name, an option) is raised as a :class:`DPNError`
whose message is one line naming the file and the problem, so that the command-line tools
can print it and exit 2 without a traceback.
"""
from __future__ import annotations

from typing import Sequence, Tuple


class DPNError(Exception):
    """Base class: a problem the user can fix, described in one line."""


class CheckpointError(DPNError, ValueError):
    """A file is not a checkpoint we can read, or its tensors are not what they should be."""


class KeyMismatch(CheckpointError):
    """Tensor names or shapes differ from what an architecture expects.

    Reports missing, unexpected and misshapen keys together (never pairs keys by order).
    """

    def __init__(self, source: str, what: str, missing: Sequence[str] = (),
                 unexpected: Sequence[str] = (),
                 misshapen: Sequence[Tuple[str, tuple, tuple]] = ()):
        self.source, self.what = source, what
        self.missing, self.unexpected = list(missing), list(unexpected)
        self.misshapen = list(misshapen)
        parts = []
        if self.missing:
            parts.append("missing %d: %s" % (len(self.missing), _brief(self.missing)))
        if self.unexpected:
            parts.append("unexpected %d: %s" % (len(self.unexpected), _brief(self.unexpected)))
        if self.misshapen:
            parts.append("misshapen %d: %s" % (len(self.misshapen), _brief(
                ["%s %s (expected %s)" % (k, tuple(got), tuple(want))
                 for k, got, want in self.misshapen])))
        super().__init__("%s does not match %s: %s" % (source, what, "; ".join(parts)))

    @property
    def size(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.misshapen)


def _brief(items: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return shown + (", ... (%d more)" % (len(items) - limit) if len(items) > limit else "")
