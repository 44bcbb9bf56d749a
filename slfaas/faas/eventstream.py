"""The AWS event-stream binary framing (``application/vnd.amazon.eventstream``), encode side.

botocore only decodes this format (``botocore.eventstream``); InvokeWithResponseStream answers
with it, so the server writes it. A message is::

    total length (u32) | headers length (u32) | CRC32 of those 8 bytes
    headers: name length (u8), name, type (u8, 7 = string), value length (u16), value
    payload
    CRC32 of everything before it

All integers big-endian; CRC32 is zlib's (ISO-HDLC), as in botocore's decoder.
"""
from __future__ import annotations

import json
import struct
import zlib
from typing import Mapping

CONTENT_TYPE = "application/vnd.amazon.eventstream"
_STRING = 7
_PRELUDE = struct.Struct(">II")
_MAX_PAYLOAD_BYTES = 16 * 1024 * 1024   # botocore refuses larger messages


def _headers(headers: Mapping[str, str]) -> bytes:
    out = bytearray()
    for name, value in headers.items():
        n, v = name.encode(), value.encode()
        if len(n) > 255 or len(v) > 65535:
            raise ValueError(f"event-stream header {name!r} too long")
        out += struct.pack(">B", len(n)) + n + struct.pack(">BH", _STRING, len(v)) + v
    return bytes(out)


def encode_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    if len(payload) > _MAX_PAYLOAD_BYTES:
        raise ValueError("event-stream payload larger than 16 MiB")
    hdr = _headers(headers)
    total = _PRELUDE.size + 4 + len(hdr) + len(payload) + 4
    prelude = _PRELUDE.pack(total, len(hdr))
    body = prelude + struct.pack(">I", zlib.crc32(prelude)) + hdr + payload
    return body + struct.pack(">I", zlib.crc32(body))


def event(event_type: str, payload: bytes, content_type: str = "application/octet-stream") -> bytes:
    return encode_message({":event-type": event_type, ":content-type": content_type, ":message-type": "event"},
                          payload)


def payload_chunk(data: bytes) -> bytes:
    """A ``PayloadChunk`` event: ``Payload`` is the event payload itself (``eventpayload``)."""
    return event("PayloadChunk", data)


def invoke_complete(error_code: str | None = None, error_details: str | None = None,
                    log_result: str | None = None) -> bytes:
    body: dict[str, str] = {}
    if error_code:
        body["ErrorCode"] = error_code
    if error_details:
        body["ErrorDetails"] = error_details
    if log_result:
        body["LogResult"] = log_result
    return event("InvokeComplete", json.dumps(body).encode(), "application/json")
