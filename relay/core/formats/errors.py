"""Errors of the payload formats.

Kept here until ``relay/core/errors.py`` exists on this branch (issue 9's restructure); then
these two classes move there unchanged and this module re-exports them.
"""

from __future__ import annotations

from relay.errors import RelayError


class RenderError(RelayError):
    """A body could not be rendered for a subscriber (a template failed, its output is not
    JSON or is over the size cap). Not retryable: the same inputs fail the same way, so the
    delivery is dead-lettered with this message, which never quotes a secret."""


class TemplateCompileError(RenderError, ValueError):
    """A ``template`` in the configuration does not compile or fails on the sample record.
    The message is one line and starts with the configuration key."""
