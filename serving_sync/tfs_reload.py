"""Ask TF Serving to reload ``models.config`` now: gRPC ``ModelService/HandleReloadConfigRequest``.

The generated stubs in ``tensorflow_serving.apis`` import TensorFlow (seconds), so the two
tiny messages are encoded by hand around ``ModelServerConfig`` (from ``model_server_config_pb2``,
which does not import TensorFlow)::

    ReloadConfigRequest  { ModelServerConfig config = 1; }
    ReloadConfigResponse { StatusProto status = 1; }          // tensorflow_serving.apis.status_pb2
    StatusProto          { int32 error_code = 1; string error_message = 2; }  // error_codes.Code

Optional: without a gRPC address TF Serving picks the file up at its next poll.

One channel per address is kept for the process (a deploy reloads each host three times, and
opening a channel costs more client CPU than the call). A call that finds a kept channel
UNAVAILABLE is sent once more on a new channel, so a TF Serving that restarted meanwhile is
reached as a new channel would reach it.
"""
from __future__ import annotations

import atexit
import threading
from dataclasses import dataclass

from .errors import HostUnreachable, ServingError

METHOD = "/tensorflow.serving.ModelService/HandleReloadConfigRequest"
# tensorflow/core/protobuf/error_codes.proto
ERROR_CODES = {0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED",
               5: "NOT_FOUND", 6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED",
               9: "FAILED_PRECONDITION", 10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED",
               13: "INTERNAL", 14: "UNAVAILABLE", 15: "DATA_LOSS", 16: "UNAUTHENTICATED"}


@dataclass(frozen=True)
class ReloadStatus:
    error_code: int
    error_message: str

    @property
    def ok(self) -> bool:
        return self.error_code == 0

    @property
    def code_name(self) -> str:
        return ERROR_CODES.get(self.error_code, str(self.error_code))


def encode_varint(n: int) -> bytes:
    if n < 0:
        n &= (1 << 64) - 1   # protobuf encodes negative int32/int64 as 10-byte two's complement
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def decode_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes):
    """Iterate (field number, wire type, value) of a serialized message (value: int or bytes)."""
    pos = 0
    while pos < len(buf):
        key, pos = decode_varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = decode_varint(buf, pos)
        elif wt == 2:
            n, pos = decode_varint(buf, pos)
            if pos + n > len(buf):
                raise ValueError("truncated length-delimited field")
            val, pos = buf[pos:pos + n], pos + n
        elif wt == 1:
            val, pos = buf[pos:pos + 8], pos + 8
        elif wt == 5:
            val, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        yield num, wt, val


def encode_request(model_server_config_bytes: bytes) -> bytes:
    """ReloadConfigRequest{config(1)}: tag 0x0A, length, the ModelServerConfig bytes."""
    return b"\x0a" + encode_varint(len(model_server_config_bytes)) + model_server_config_bytes


def decode_response(data: bytes) -> ReloadStatus:
    """ReloadConfigResponse -> its StatusProto (absent status = OK, as in proto3)."""
    code, message = 0, ""
    for num, wt, val in _fields(data):
        if num == 1 and wt == 2:
            for n2, w2, v2 in _fields(val):
                if n2 == 1 and w2 == 0:
                    code = v2 - (1 << 64) if v2 >= 1 << 63 else v2
                elif n2 == 2 and w2 == 2:
                    message = v2.decode("utf-8", errors="replace")
    return ReloadStatus(code, message)


_channels: dict[str, object] = {}
_channels_lock = threading.Lock()


def _channel(address: str, *, stale=None):
    """(channel, kept): the kept channel to ``address``, or a new one (kept from now on) when
    there is none or the kept one is ``stale`` (closed here)."""
    import grpc

    with _channels_lock:
        kept = _channels.get(address)
        if kept is not None and kept is not stale:
            return kept, True
        if kept is not None:
            _close(kept)
        # Its own subchannel: channels to one address share gRPC's global subchannel pool by
        # default, so a new channel would inherit the stale one's reconnect backoff.
        _channels[address] = channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        return channel, False


@atexit.register
def close_channels() -> None:
    with _channels_lock:
        for channel in _channels.values():
            _close(channel)
        _channels.clear()


def _close(channel, *, wait: float = 1.0) -> None:
    """Close ``channel`` once gRPC's connectivity poller (started by ``subscribe`` in ``_settle``) has
    stopped: it runs up to 0.4 s past the last unsubscribe, and a second ``_settle`` while it ran
    (a watch pass observes the hosts, then its deploy observes them again) left it a connect request
    to make; closed under it, the poller died with "ValueError: Cannot invoke RPC: Channel closed!",
    a traceback per host printed after a command's one error line."""
    import time

    state = getattr(channel, "_connectivity_state", None)     # grpc's own; absent: close at once
    deadline = time.monotonic() + wait
    while getattr(state, "polling", False) and time.monotonic() < deadline:
        time.sleep(0.01)
    channel.close()


def check_reachable(address: str, *, timeout: float = 5.0) -> None:
    """Connect the kept channel to ``address`` now, changing nothing: a wrong ``grpc`` address in
    the hosts file is one line before a deploy touches any host (found at the first config reload
    it failed the deploy mid-way and tagged a good version failed), and the later reloads use this
    connection. A refused connection ends the wait at once, a silent address after ``timeout``; a
    kept channel that failed before (TF Serving restarted) is replaced once, as a reload does."""
    import grpc

    channel, kept = _channel(address)
    state = _settle(channel, timeout)
    if state is not grpc.ChannelConnectivity.READY and kept:
        state = _settle(_channel(address, stale=channel)[0], timeout)
    if state is not grpc.ChannelConnectivity.READY:
        why = "connection refused or failed" if state is not None else f"no answer within {timeout:g}s"
        raise HostUnreachable(f"TF Serving gRPC at {address} unreachable ({why}); check the host's `grpc` "
                              f"address (TF Serving's --port) or remove it to rely on the config file poll")


def _settle(channel, timeout: float):
    """Ask ``channel`` to connect; its state once READY or failed (None: neither within ``timeout``)."""
    import threading

    import grpc

    final = (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE,
             grpc.ChannelConnectivity.SHUTDOWN)
    seen: list = []
    settled = threading.Event()

    def watch(state) -> None:
        if state in final:
            seen.append(state)
            settled.set()

    channel.subscribe(watch, try_to_connect=True)
    try:
        settled.wait(timeout)
    finally:
        channel.unsubscribe(watch)
    return seen[0] if seen else None


def reload_config(address: str, config_text: str, *, timeout: float = 30.0) -> ReloadStatus:
    """Send ``config_text`` (models.config) to TF Serving at ``address`` (host:port) and raise
    ``ServingError`` with TF Serving's message unless it answers OK."""
    import grpc
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    msg = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(config_text, msg)
    request = encode_request(msg.SerializeToString())
    channel, kept = _channel(address)
    try:
        try:
            raw = _call(channel, request, timeout)
        except grpc.RpcError as exc:
            if not (kept and exc.code() == grpc.StatusCode.UNAVAILABLE):
                raise
            raw = _call(_channel(address, stale=channel)[0], request, timeout)   # it may predate a restart
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise HostUnreachable(f"TF Serving gRPC at {address} unreachable ({code.name}: {details}); "
                                  f"check the host's `grpc` address or remove it to rely on the "
                                  f"config file poll") from None
        name = code.name if code else "ERROR"
        raise ServingError(f"TF Serving at {address} rejected the config reload ({name}: {details})") from None
    status = decode_response(raw)
    if not status.ok:
        raise ServingError(f"TF Serving at {address} rejected models.config ({status.code_name}: "
                           f"{status.error_message})")
    return status


def _call(channel, request: bytes, timeout: float) -> bytes:
    call = channel.unary_unary(METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    return call(request, timeout=timeout)
