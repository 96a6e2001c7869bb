"""FastCGI 1.0 records: the wire format's constants, and encoding and decoding them.

The record header, the name-value pairs of PARAMS and GET_VALUES, and the records a
responder writes; no state, no I/O. daemonapp.listeners.fastcgi (the protocol on a
connection) re-exports these names.
"""

from __future__ import annotations

import struct

__all__ = [
    "BEGIN_BODY", "FCGI_ABORT_REQUEST", "FCGI_BEGIN_REQUEST", "FCGI_CANT_MPX_CONN",
    "FCGI_DATA", "FCGI_END_REQUEST", "FCGI_GET_VALUES", "FCGI_GET_VALUES_RESULT",
    "FCGI_KEEP_CONN", "FCGI_OVERLOADED", "FCGI_PARAMS", "FCGI_REQUEST_COMPLETE",
    "FCGI_RESPONDER", "FCGI_STDERR", "FCGI_STDIN", "FCGI_STDOUT", "FCGI_UNKNOWN_ROLE",
    "FCGI_UNKNOWN_TYPE", "FCGI_VERSION_1", "HEADER", "MAX_RECORD_CONTENT",
    "STDOUT_EMPTY_AND_END", "ProtocolError", "decode_pairs", "encode_pairs",
    "end_request", "pack_header", "record", "unpack_header",
]

FCGI_VERSION_1 = 1
FCGI_BEGIN_REQUEST = 1
FCGI_ABORT_REQUEST = 2
FCGI_END_REQUEST = 3
FCGI_PARAMS = 4
FCGI_STDIN = 5
FCGI_STDOUT = 6
FCGI_STDERR = 7
FCGI_DATA = 8
FCGI_GET_VALUES = 9
FCGI_GET_VALUES_RESULT = 10
FCGI_UNKNOWN_TYPE = 11

FCGI_RESPONDER = 1
FCGI_KEEP_CONN = 1

FCGI_REQUEST_COMPLETE = 0
FCGI_CANT_MPX_CONN = 1
FCGI_OVERLOADED = 2
FCGI_UNKNOWN_ROLE = 3

#: The most content one record carries.
MAX_RECORD_CONTENT = 65535

#: A record's header: version, type, request id, content length, padding length.
HEADER = struct.Struct("!BBHHBx")
#: FCGI_BEGIN_REQUEST's body: role, flags.
BEGIN_BODY = struct.Struct("!HB5x")
#: An empty STDOUT record and an END_REQUEST (request complete), in one pack.
STDOUT_EMPTY_AND_END = struct.Struct("!BBHHBxBBHHBxIB3x")
unpack_header = HEADER.unpack_from
pack_header = HEADER.pack
_END = struct.Struct("!BBHHBxIB3x")
_unpack_u32 = struct.Struct("!I").unpack_from


class ProtocolError(ValueError):
    """Unparsable bytes from the web server."""


def encode_pairs(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """FastCGI name-value pairs (1-byte lengths below 128, else 4-byte)."""
    out = bytearray()
    for name, value in pairs:
        for item in (name, value):
            size = len(item)
            if size < 128:
                out.append(size)
            else:
                out += struct.pack("!I", size | 0x80000000)
        out += name
        out += value
    return bytes(out)


def decode_pairs(data: bytes) -> dict[str, str]:
    """Decode name-value pairs into a dict of latin-1 strings (raises ProtocolError)."""
    text = data.decode("latin-1")  # one decode; str offsets equal byte offsets
    end = len(data)
    pos = 0
    out: dict[str, str] = {}
    try:
        while pos < end:
            name_len = data[pos]
            if name_len < 128:
                pos += 1
            else:
                name_len = _unpack_u32(data, pos)[0] & 0x7FFFFFFF
                pos += 4
            value_len = data[pos]
            if value_len < 128:
                pos += 1
            else:
                value_len = _unpack_u32(data, pos)[0] & 0x7FFFFFFF
                pos += 4
            name_end = pos + name_len
            value_end = name_end + value_len
            if value_end > end:
                raise ProtocolError("name-value pair longer than its record")
            out[text[pos:name_end]] = text[name_end:value_end]
            pos = value_end
    except (IndexError, struct.error):
        raise ProtocolError("truncated name-value pair length") from None
    return out

def record(rtype: int, request_id: int, content: bytes = b"") -> bytes:
    """One record (no padding); content must fit (≤ 65,535 bytes)."""
    return pack_header(FCGI_VERSION_1, rtype, request_id, len(content), 0) + content


def end_request(request_id: int, app_status: int = 0,
                protocol_status: int = FCGI_REQUEST_COMPLETE) -> bytes:
    """An FCGI_END_REQUEST record."""
    return _END.pack(FCGI_VERSION_1, FCGI_END_REQUEST, request_id, 8, 0,
                     app_status, protocol_status)
