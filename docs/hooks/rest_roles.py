"""A griffe extension for the API reference: reST roles in docstrings become code spans.

Our docstrings are reST (``:class:`RetryPolicy```, ``:meth:`map```); mkdocstrings renders them
as Markdown, where a role would show as written. ``:role:`~a.b.Name``` becomes ``Name`` in
a code span (the ``~`` form keeps the last part, as Sphinx does).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|data|exc|mod|obj|const):`(~?)([^`]+)`")


def _code(match: re.Match[str]) -> str:
    short, target = match[1], match[2]
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


def convert(text: str) -> str:
    """The docstring text with every role replaced by a code span."""
    return _ROLE.sub(_code, text)


class RestRoles(griffe.Extension):
    """Rewrite roles in every docstring griffe loads."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
