"""The event-stream encoder, read back by botocore's own decoder and Lambda's response model."""
from __future__ import annotations

import json
import struct
import zlib

import botocore.session
import pytest
from botocore.eventstream import EventStream, EventStreamBuffer
from botocore.parsers import EventStreamJSONParser

from slfaas.faas import eventstream


class _Raw:
    def __init__(self, data: bytes, piece: int):
        self._data, self._piece = data, piece

    def stream(self):  # type: ignore[no-untyped-def]
        for i in range(0, len(self._data), self._piece):
            yield self._data[i:i + self._piece]


def _boto_events(data: bytes, piece: int = 7) -> list[dict]:
    model = botocore.session.get_session().get_service_model("lambda")
    shape = model.operation_model("InvokeWithResponseStream").output_shape.members["EventStream"]
    return list(EventStream(_Raw(data, piece), shape, EventStreamJSONParser(), "InvokeWithResponseStream"))


def test_messages_decode_with_botocore() -> None:
    msg = eventstream.payload_chunk(b"hello")
    buf = EventStreamBuffer()
    buf.add_data(msg)
    (decoded,) = list(buf)
    assert decoded.payload == b"hello"
    assert decoded.headers == {":event-type": "PayloadChunk", ":content-type": "application/octet-stream",
                               ":message-type": "event"}
    total, headers_len = struct.unpack(">II", msg[:8])
    assert total == len(msg)
    assert struct.unpack(">I", msg[8:12])[0] == zlib.crc32(msg[:8])
    assert struct.unpack(">I", msg[-4:])[0] == zlib.crc32(msg[:-4])


@pytest.mark.parametrize("piece", [1, 5, 4096])  # however the bytes arrive, the events are the same
def test_lambda_model_parses_chunks_then_complete(piece: int) -> None:
    data = b"".join([eventstream.payload_chunk("ahoy ".encode()), eventstream.payload_chunk("mätey".encode()),
                     eventstream.payload_chunk(b""), eventstream.invoke_complete()])
    events = _boto_events(data, piece)
    assert events[0] == {"PayloadChunk": {"Payload": b"ahoy "}}
    assert events[1] == {"PayloadChunk": {"Payload": "mätey".encode()}}
    assert events[-1] == {"InvokeComplete": {}}


def test_invoke_complete_carries_the_error() -> None:
    (event,) = _boto_events(eventstream.invoke_complete("Runtime.ExitError", "signal: killed", "bG9n"))
    assert event == {"InvokeComplete": {"ErrorCode": "Runtime.ExitError", "ErrorDetails": "signal: killed",
                                        "LogResult": "bG9n"}}
    body = json.loads(eventstream.invoke_complete("X")[-4 - len(b'{"ErrorCode": "X"}'):-4])
    assert body == {"ErrorCode": "X"}


def test_oversized_header_or_payload_is_refused() -> None:
    with pytest.raises(ValueError):
        eventstream.encode_message({"x" * 256: "v"}, b"")
    with pytest.raises(ValueError):
        eventstream.encode_message({"k": "v"}, b"\0" * (16 * 1024 * 1024 + 1))
