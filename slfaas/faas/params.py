"""Request parameters that are strings with AWS's length limits. The registry's columns are as
wide, and PostgreSQL enforces them: a longer value is refused here, as AWS refuses it, rather
than failing in the database."""
from __future__ import annotations

from slfaas.errors import InvalidParameter

# AWS's limits of these strings (the registry's columns are as wide; PostgreSQL enforces them)
MAX_ROLE_CHARS, MAX_HANDLER_CHARS, MAX_DESCRIPTION_CHARS = 2048, 128, 256


def text_param(params: dict, key: str, default: str, max_chars: int) -> str:
    """``params[key]``, ``default`` when absent or empty; InvalidParameter beyond ``max_chars``."""
    value = params.get(key)
    if value is None or value == "":
        return default
    if not isinstance(value, str) or len(value) > max_chars:
        raise InvalidParameter(f"1 validation error detected: Value at '{key[0].lower() + key[1:]}' failed to "
                               f"satisfy constraint: Member must be a string of length less than or equal to "
                               f"{max_chars}")
    return value
