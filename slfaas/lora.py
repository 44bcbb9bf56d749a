"""The built-in handler of ``slfaas-lora`` functions: the event is a generation request.

A user ``handler.py`` in the code zip can wrap it: ``def handler(event, context)`` and call
``context.generate(prompt=..., max_tokens=...)`` itself.
"""
from __future__ import annotations

from typing import Any


def handler(event: Any, context: Any) -> dict:
    return context.generate_event(event)
