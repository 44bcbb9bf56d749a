"""The built-in handler of ``slfaas-lora`` functions: the event is a generation request.

A user ``handler.py`` in the code zip can wrap it: ``def handler(event, context)`` and call
``context.generate(prompt=..., max_tokens=...)`` itself, or, when ``context.response_stream``
is true, return ``context.stream(prompt=...)`` (or any iterator of str/bytes) to stream.
"""
from __future__ import annotations

from typing import Any


def handler(event: Any, context: Any) -> Any:
    """A buffered invoke gets the result object; a streaming one (InvokeWithResponseStream)
    gets the generated text in pieces as the tokens are produced."""
    if getattr(context, "response_stream", False):
        return context.stream_event(event)
    return context.generate_event(event)
