"""The executor's native gRPC front: HTTP/2 (libnghttp2) and gRPC message framing as an
asyncio Protocol (``Connection``), one per client connection.

Bytes in -> ``nghttp2_session_mem_recv`` -> callbacks (here, in C) that collect each
stream's headers and its length-prefixed gRPC messages -> after the whole chunk of
bytes is read, one call into Python (``server.dispatch(connection, events)``) with every
request message that chunk completed. Python answers through the stream's ``Call``
(``respond`` / ``send`` / ``finish``); answers are serialized by nghttp2 once per loop
iteration per connection (``_flush``: one ``transport.write``).

Errors this layer answers itself (no Python entered): a request that is not POST
(HTTP 405), not ``application/grpc`` (HTTP 415), an unknown method (UNIMPLEMENTED), a
compressed message or an unsupported ``grpc-encoding`` (UNIMPLEMENTED / INTERNAL), a
message over the size limit (RESOURCE_EXHAUSTED), a truncated message or a unary call
with no or several messages (INTERNAL). Malformed HTTP/2 is nghttp2's: it answers with
RST_STREAM or GOAWAY (PROTOCOL_ERROR ...) and the connection is closed once that is
sent. docs/DESIGN.md ("The native gRPC front") has the state machine.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int32_t, uint8_t, uint32_t
from libc.string cimport memcmp, memcpy

cdef extern from "Python.h":
    const Py_ssize_t PY_SSIZE_T_MAX

import logging
from urllib.parse import quote

from aios_fast.oip import InvalidTensor as _InvalidTensor

log = logging.getLogger("aios_fast.executor.front")

cdef extern from "<sys/types.h>":
    ctypedef long ssize_t

cdef extern from "nghttp2/nghttp2.h":
    ctypedef struct nghttp2_session_callbacks:
        pass
    ctypedef struct nghttp2_option:
        pass
    ctypedef struct nghttp2_frame_hd:
        size_t length
        int32_t stream_id
        uint8_t type
        uint8_t flags
    ctypedef enum nghttp2_headers_category:
        NGHTTP2_HCAT_REQUEST
    ctypedef struct nghttp2_headers:
        nghttp2_frame_hd hd
        nghttp2_headers_category cat
    ctypedef union nghttp2_frame:
        nghttp2_frame_hd hd
        nghttp2_headers headers
    ctypedef struct nghttp2_nv:
        uint8_t* name
        uint8_t* value
        size_t namelen
        size_t valuelen
        uint8_t flags
    ctypedef union nghttp2_data_source:
        int fd
        void* ptr
    ctypedef ssize_t (*nghttp2_data_source_read_callback)(
        nghttp2_session*, int32_t, uint8_t*, size_t, uint32_t*, nghttp2_data_source*, void*)
    ctypedef struct nghttp2_data_provider:
        nghttp2_data_source source
        nghttp2_data_source_read_callback read_callback
    ctypedef struct nghttp2_settings_entry:
        int32_t settings_id
        uint32_t value

    ctypedef int (*on_begin_headers_cb)(nghttp2_session*, const nghttp2_frame*, void*)
    ctypedef int (*on_header_cb)(nghttp2_session*, const nghttp2_frame*, const uint8_t*,
                                 size_t, const uint8_t*, size_t, uint8_t, void*)
    ctypedef int (*on_data_chunk_cb)(nghttp2_session*, uint8_t, int32_t, const uint8_t*,
                                     size_t, void*)
    ctypedef int (*on_frame_cb)(nghttp2_session*, const nghttp2_frame*, void*)
    ctypedef int (*on_stream_close_cb)(nghttp2_session*, int32_t, uint32_t, void*)

    enum:
        NGHTTP2_DATA
        NGHTTP2_HEADERS
        NGHTTP2_SETTINGS
        NGHTTP2_FLAG_ACK
        NGHTTP2_ENHANCE_YOUR_CALM
        NGHTTP2_FLAG_NONE
        NGHTTP2_FLAG_END_STREAM
        NGHTTP2_DATA_FLAG_EOF
        NGHTTP2_DATA_FLAG_NO_END_STREAM
        NGHTTP2_ERR_DEFERRED
        NGHTTP2_ERR_CALLBACK_FAILURE
        NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
        NGHTTP2_NV_FLAG_NONE
        NGHTTP2_NO_ERROR
        NGHTTP2_INTERNAL_ERROR
        NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS
        NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
        NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE

    int nghttp2_session_callbacks_new(nghttp2_session_callbacks**)
    void nghttp2_session_callbacks_set_on_begin_headers_callback(
        nghttp2_session_callbacks*, on_begin_headers_cb)
    void nghttp2_session_callbacks_set_on_header_callback(nghttp2_session_callbacks*,
                                                          on_header_cb)
    void nghttp2_session_callbacks_set_on_data_chunk_recv_callback(nghttp2_session_callbacks*,
                                                                   on_data_chunk_cb)
    void nghttp2_session_callbacks_set_on_frame_recv_callback(nghttp2_session_callbacks*,
                                                              on_frame_cb)
    void nghttp2_session_callbacks_set_on_frame_send_callback(nghttp2_session_callbacks*,
                                                              on_frame_cb)
    void nghttp2_session_callbacks_set_on_stream_close_callback(nghttp2_session_callbacks*,
                                                                on_stream_close_cb)
    int nghttp2_option_new(nghttp2_option**)
    void nghttp2_option_del(nghttp2_option*)
    void nghttp2_option_set_max_settings(nghttp2_option*, size_t)
    int nghttp2_session_server_new2(nghttp2_session**, const nghttp2_session_callbacks*,
                                    void*, const nghttp2_option*)
    void nghttp2_session_del(nghttp2_session*)
    ssize_t nghttp2_session_mem_recv(nghttp2_session*, const uint8_t*, size_t)
    ssize_t nghttp2_session_mem_send(nghttp2_session*, const uint8_t**)
    int nghttp2_session_want_read(nghttp2_session*)
    int nghttp2_session_want_write(nghttp2_session*)
    int nghttp2_session_resume_data(nghttp2_session*, int32_t)
    int nghttp2_session_set_stream_user_data(nghttp2_session*, int32_t, void*)
    void* nghttp2_session_get_stream_user_data(nghttp2_session*, int32_t)
    int nghttp2_session_get_stream_remote_close(nghttp2_session*, int32_t)
    int32_t nghttp2_session_get_last_proc_stream_id(nghttp2_session*)
    int nghttp2_session_consume_connection(nghttp2_session*, size_t)
    int nghttp2_session_consume_stream(nghttp2_session*, int32_t, size_t)
    void nghttp2_option_set_no_auto_window_update(nghttp2_option*, int)
    int nghttp2_session_set_local_window_size(nghttp2_session*, uint8_t, int32_t, int32_t)
    int nghttp2_submit_settings(nghttp2_session*, uint8_t, const nghttp2_settings_entry*,
                                size_t)
    int nghttp2_submit_response(nghttp2_session*, int32_t, const nghttp2_nv*, size_t,
                                const nghttp2_data_provider*)
    int nghttp2_submit_trailer(nghttp2_session*, int32_t, const nghttp2_nv*, size_t)
    int nghttp2_submit_rst_stream(nghttp2_session*, uint8_t, int32_t, uint32_t)
    int nghttp2_submit_goaway(nghttp2_session*, uint8_t, int32_t, uint32_t, const uint8_t*,
                              size_t)
    int nghttp2_submit_shutdown_notice(nghttp2_session*)
    int nghttp2_submit_ping(nghttp2_session*, uint8_t, const uint8_t*)
    const char* nghttp2_strerror(int)


cdef extern from *:
    """
    #include <stdint.h>
    /* CVE-2023-44487 (rapid reset): libnghttp2 1.57 (and distributions' backports)
       rate-limit the RST_STREAMs a client sends, 1000 then 33 a second by default,
       and end the connection with GOAWAY past that. Declared weak: a libnghttp2
       without the function (and without the limit) leaves it NULL. */
    extern void nghttp2_option_set_stream_reset_rate_limit(
        nghttp2_option *option, uint64_t burst, uint64_t rate) __attribute__((weak));
    static int aiosf_set_reset_limit(nghttp2_option *opt, uint64_t burst, uint64_t rate) {
        if (nghttp2_option_set_stream_reset_rate_limit == NULL) return 0;
        nghttp2_option_set_stream_reset_rate_limit(opt, burst, rate);
        return 1;
    }
    """
    int aiosf_set_reset_limit(nghttp2_option*, unsigned long long, unsigned long long)


# gRPC status codes used here
DEF OK = 0
DEF INTERNAL = 13
DEF UNIMPLEMENTED = 12
DEF RESOURCE_EXHAUSTED = 8

cdef enum:
    C_QUEUED_HIGH = 16 * 1024 * 1024
    C_MAX_HEADER_LIST = 16384

# methods (Call.method): the Method enum's values, for Python
INFER, INFER_RESULT, INFER_STREAM = METHOD_INFER, METHOD_INFER_RESULT, METHOD_INFER_STREAM
# the Open Inference Protocol's methods (aios_fast.wire.OIP_METHODS, in that order):
# Call.method - OIP_FIRST is the position of the call's method in OIP_METHODS
OIP_FIRST, OIP_STREAM = METHOD_OIP_FIRST, METHOD_OIP_STREAM
OIP_METHODS = _OIP = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
                      "ModelInfer", "ModelStreamInfer", "ModelConfig")  # (Triton's extension)
assert METHOD_OIP_FIRST + _OIP.index("ModelStreamInfer") == METHOD_OIP_STREAM
_PATHS = {b"/InferenceProxy/infer": METHOD_INFER,
          b"/InferenceProxy/infer_result": METHOD_INFER_RESULT,
          b"/InferenceProxy/infer_stream": METHOD_INFER_STREAM,
          **{f"/inference.GRPCInferenceService/{name}".encode(): METHOD_OIP_FIRST + i
             for i, name in enumerate(_OIP)}}
_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
# grpc-message: percent-encode everything outside printable ASCII, and '%' itself
_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if c != 0x25)

STREAM_WINDOW = 4096  # concurrent streams a connection may open (SETTINGS)
# Client RST_STREAMs a connection may send (a burst, then a rate a second) before it is
# cut: a client whose deadlines and cancellations race answers resets legitimately, at
# the rate it calls (nghttp2's default, 1000 then 33 a second, cut such clients every
# ~1000 cancellations); a rapid-reset flood is still bounded.
RESET_BURST = 10_000
RESET_RATE = 5_000
WINDOW = 4 * 1024 * 1024  # each stream's receive window (bytes); the connection's: 4x
QUEUED_HIGH = C_QUEUED_HIGH  # unsent answer bytes on a stream that hold its window
# SETTINGS_MAX_HEADER_LIST_SIZE, advertised and enforced: a request whose header list
# (RFC 7541: name + value + 32 bytes a field) is larger gets RESOURCE_EXHAUSTED
MAX_HEADER_LIST = C_MAX_HEADER_LIST


cdef inline Py_ssize_t _varint(const uint8_t* p, Py_ssize_t pos, Py_ssize_t end,
                               unsigned long long* out) noexcept:
    """Read a varint at ``pos``: the position after it, or -1 if malformed."""
    cdef unsigned long long value = 0
    cdef int shift = 0
    while pos < end and shift <= 63:
        value |= <unsigned long long>(p[pos] & 0x7F) << shift
        pos += 1
        if p[pos - 1] < 0x80:
            out[0] = value
            return pos
        shift += 7
    return -1


def oip_route(bytes frame):
    """(model_name, model_version, id) of a ModelInferRequest, its other fields skipped
    by their lengths: ``aios_fast.oip.route_fields`` (its twin and oracle) in C.
    InvalidTensor if the bytes are not a protobuf message."""
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(frame)
    cdef Py_ssize_t pos = 0, end = PyBytes_GET_SIZE(frame), stop
    cdef unsigned long long key, size
    cdef int wire
    found = ["", "", ""]
    while pos < end:
        pos = _varint(p, pos, end, &key)
        if pos < 0:
            raise _InvalidTensor("malformed ModelInferRequest: bad varint")
        wire = key & 7
        if wire == 2:
            pos = _varint(p, pos, end, &size)
            if pos < 0:
                raise _InvalidTensor("malformed ModelInferRequest: bad varint")
            if size > <unsigned long long>(end - pos):
                raise _InvalidTensor("malformed ModelInferRequest: a field runs past its end")
            stop = pos + <Py_ssize_t>size
            if 1 <= (key >> 3) <= 3:
                try:
                    found[(key >> 3) - 1] = (<const char*>p)[pos:stop].decode()
                except UnicodeDecodeError:
                    raise _InvalidTensor("malformed ModelInferRequest: a name is not "
                                         "UTF-8") from None
            pos = stop
        elif wire == 0:
            pos = _varint(p, pos, end, &size)
            if pos < 0:
                raise _InvalidTensor("malformed ModelInferRequest: bad varint")
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise _InvalidTensor(f"malformed ModelInferRequest: wire type {wire}")
    if pos != end:
        raise _InvalidTensor("malformed ModelInferRequest: a field runs past its end")
    return found[0], found[1], found[2]


def parse_timeout(value):
    """``grpc-timeout`` (1-8 digits and a unit H M S m u n) in seconds; None if malformed."""
    cdef Py_ssize_t n = len(value)
    if not 2 <= n <= 9 or not value[:n - 1].isdigit() or not value[:n - 1].isascii():
        return None
    unit = _UNITS.get(value[n - 1])
    return None if unit is None else int(value[:n - 1]) * unit


def grpc_message(message):
    """A status message as the ``grpc-message`` trailer carries it (percent-encoded)."""
    return quote(message, safe=_SAFE).encode("ascii")


cdef inline nghttp2_nv _nv(bytes name, bytes value):
    cdef nghttp2_nv nv
    nv.name = <uint8_t*>PyBytes_AS_STRING(name)
    nv.namelen = PyBytes_GET_SIZE(name)
    nv.value = <uint8_t*>PyBytes_AS_STRING(value)
    nv.valuelen = PyBytes_GET_SIZE(value)
    nv.flags = NGHTTP2_NV_FLAG_NONE
    return nv


# ---------------------------------------------------------------------- budgets
# Request bytes a call holds (an incomplete message, a unary call's message until its
# end of input) and answer bytes not yet sent are counted per connection and process-wide
# (Server.buffered / .unsent). Over Server.connection_budget or Server.budget, a
# connection is "stalled": its HTTP/2 connection window is not given back (the client
# stops sending), its new calls are refused (RESOURCE_EXHAUSTED), its streams start no
# more tasks (Call.blocked); once under again, all of that resumes.

cdef inline void _account(Call call, Py_ssize_t buffered, Py_ssize_t unsent) noexcept:
    cdef Connection conn = call.conn
    call.buffered += buffered
    if conn is not None:
        conn.buffered += buffered
        conn.unsent += unsent
        conn.server.buffered += buffered
        conn.server.unsent += unsent


cdef inline bint _conn_over(Connection conn) noexcept:
    return conn.buffered + conn.unsent > conn.server.connection_budget


cdef inline bint _process_over(Server server) noexcept:
    return server.buffered + server.unsent > server.budget


cdef class Call:
    """One gRPC call (an HTTP/2 stream). Python reads ``method``, ``timeout`` (seconds,
    or -1: none), ``token`` (the ``authorization`` header, or None); keeps what it
    likes in ``task`` (its ``cancel()`` is called if the client resets the stream or the
    connection drops before the call is finished); answers with ``respond`` (a unary
    call's one message, then OK), ``send`` (one more message) and ``finish`` (status)."""

    def __cinit__(self):
        self.timeout = -1.0
        self.method = METHOD_UNKNOWN
        self.out = []

    @property
    def stream_id(self):
        return self.sid

    @property
    def queued(self):
        """Answer bytes not yet sent to the client (its flow control window is full)."""
        return self.queued

    @property
    def finished(self):
        """The status is set (or the stream is gone): nothing more may be sent."""
        return self.state >= CALL_FINISHED

    @property
    def closed(self):
        """The stream is gone (reset, finished and sent, connection lost)."""
        return self.state == CALL_CLOSED

    @property
    def blocked(self):
        """No more of this call's work should start now: its unsent answers are over
        QUEUED_HIGH, or its connection or the process is over its buffer budget. If the
        server holds the call (``hold``), ``server.writable(call)`` comes when it ends."""
        cdef Connection conn = self.conn
        if self.queued > C_QUEUED_HIGH:
            return True
        if conn is not None and (_conn_over(conn) or _process_over(conn.server)):
            conn._stall()
            return True
        return False

    def respond(self, bytes message):
        """A unary call's answer: one message, then status OK."""
        cdef CallState was = self.state
        if was >= CALL_FINISHED:
            return
        self._queue(message)
        self.status = OK
        self.state = CALL_FINISHED
        self._kick(was)

    def send(self, bytes message):
        """One more message on a streaming call."""
        cdef CallState was = self.state
        if was >= CALL_FINISHED:
            return
        self._queue(message)
        self.state = CALL_ANSWERING
        self._kick(was)

    def finish(self, int code, str message=""):
        """End the call with a status (after any messages sent)."""
        cdef CallState was = self.state
        if was >= CALL_FINISHED:
            return
        self.state = CALL_FINISHED
        self.status = code
        self.status_message = grpc_message(message) if message else b""
        self._kick(was)

    def hold(self):
        """Back-pressure: stop opening this stream's HTTP/2 receive window (its client
        soon stops sending) until ``release``."""
        self.holds |= HOLD_TASK

    def release(self):
        if self.holds & HOLD_TASK:
            self._unhold(HOLD_TASK)

    cdef _unhold(self, int reason):
        self.holds &= ~reason
        if self.holds == 0 and self.unconsumed and self.conn is not None:
            if self.conn.session != NULL:
                nghttp2_session_consume_stream(self.conn.session, self.sid, self.unconsumed)
                self.conn._schedule_flush()
            self.unconsumed = 0

    cdef _queue(self, bytes message):
        cdef Py_ssize_t n = PyBytes_GET_SIZE(message)
        cdef bytes prefix = PyBytes_FromStringAndSize(NULL, 5)
        cdef unsigned char* p = <unsigned char*>PyBytes_AS_STRING(prefix)
        p[0] = 0
        p[1] = (n >> 24) & 0xFF
        p[2] = (n >> 16) & 0xFF
        p[3] = (n >> 8) & 0xFF
        p[4] = n & 0xFF
        self.out.append(prefix)
        if n:
            self.out.append(message)
        self.queued += n + 5
        _account(self, 0, n + 5)
        if self.queued > C_QUEUED_HIGH:
            self.holds |= HOLD_QUEUE

    cdef _kick(self, CallState was):
        """Tell nghttp2 there is something to send (``was``: the state before), and
        flush soon."""
        cdef Connection conn = self.conn
        if conn is None or conn.session == NULL:
            return
        if was == CALL_OPEN:
            if self.state == CALL_FINISHED and not self.out:  # trailers only: one HEADERS
                conn._trailers_only(self, 200)
            else:
                conn._submit_response(self)
        else:
            nghttp2_session_resume_data(conn.session, self.sid)
        conn._schedule_flush()

    cdef Py_ssize_t _fill(self, uint8_t* buf, size_t length) except -1:
        cdef Py_ssize_t done = 0, n, size
        cdef bytes chunk
        while done < <Py_ssize_t>length and self.out_head < len(self.out):
            chunk = <bytes>self.out[self.out_head]
            size = PyBytes_GET_SIZE(chunk) - self.out_off
            n = min(size, <Py_ssize_t>length - done)
            memcpy(buf + done, PyBytes_AS_STRING(chunk) + self.out_off, n)
            done += n
            if n == size:
                self.out[self.out_head] = None
                self.out_head += 1
                self.out_off = 0
            else:
                self.out_off += n
        if self.out_head == len(self.out):
            self.out.clear()
            self.out_head = 0
        self.queued -= done
        _account(self, 0, -done)
        if self.holds & HOLD_QUEUE and self.queued < C_QUEUED_HIGH // 2:
            self._unhold(HOLD_QUEUE)
            if self.server is not None and self.conn is not None:
                # the server may start more of this call's work (not from inside
                # nghttp2's send: on the next loop turn)
                self.conn.loop.call_soon(self.server.writable, self)
        return done

    cdef _close(self):
        """The stream is gone: nothing more is sent; what it held is let go; Python's
        task is told."""
        cdef CallState was = self.state
        if was == CALL_CLOSED:
            return
        task = self.task
        _account(self, -self.buffered, -self.queued)
        self.state = CALL_CLOSED
        self.input = IN_REFUSED
        self.queued = 0
        self.inbuf = self.frame = None
        if was < CALL_FINISHED and task is not None:
            try:
                task.cancel()
            except Exception:
                log.exception("cancelling a call's task failed")
        self.out = []
        self.conn = None
        self.task = None  # (a stream's state points back at its call: no cycle left)


cdef nghttp2_session_callbacks* _callbacks = NULL


cdef class Server:
    """The base class of the Python server (``NativeServer``). The compiled layer reads
    its settings as C fields and calls back ``dispatch(conn, events)`` once per chunk of
    bytes read (events: (Call, message bytes, or None: a stream's end of input)),
    ``admit(call)`` at a call's headers when ``check_headers`` is set (False: the server
    answered it; its body is never buffered), and ``writable(call)`` when a held call may
    start more work (its client took its answers; a budget is no longer exceeded)."""

    def __cinit__(self, *args, **kwargs):
        self.connections = set()
        self.max_message = 4 * 1024 * 1024
        self.connection_budget = PY_SSIZE_T_MAX
        self.budget = PY_SSIZE_T_MAX
        self.max_connections = PY_SSIZE_T_MAX
        self.handshake_timeout = 0.0

    cpdef dispatch(self, Connection conn, list events):
        raise NotImplementedError

    cpdef bint admit(self, Call call) except -1:
        return True

    cpdef writable(self, Call call):
        pass

    def front_stats(self):
        """The compiled layer's books: connections, bytes held, refusals."""
        return {
            "connections": len(self.connections),
            "buffered_bytes": self.buffered,
            "unsent_bytes": self.unsent,
            "stalled_connections": self.stalled,
            "stalls": self.stalls,
            "refused_streams": self.refused_streams,
            "refused_connections": self.refused_connections,
            "handshake_timeouts": self.handshake_timeouts,
            "oversized_headers": self.oversized_headers,
            "connections_closed": self.connections_closed,
        }

    cdef _relieve_all(self):
        """The process-wide budget is no longer exceeded: every connection it stalled
        that is under its own budget is read again."""
        if not self.process_over or _process_over(self):
            return
        self.process_over = False
        for conn in list(self.connections):
            if (<Connection>conn).stalled:
                (<Connection>conn)._relieve()


cdef class Connection:
    """One client connection (an asyncio Protocol), serving ``server`` (a ``Server``)."""

    def __cinit__(self, Server server):
        cdef nghttp2_option* opt
        self.server = server
        self.loop = server.loop
        self.max_message = server.max_message
        self.calls = {}
        self.events = []
        self._flush_cb = self._flush_soon
        nghttp2_option_new(&opt)
        nghttp2_option_set_max_settings(opt, 64)
        nghttp2_option_set_no_auto_window_update(opt, 1)  # Call.hold: per-stream windows
        aiosf_set_reset_limit(opt, RESET_BURST, RESET_RATE)
        rv = nghttp2_session_server_new2(&self.session, _callbacks, <void*>self, opt)
        nghttp2_option_del(opt)
        if rv != 0:
            self.session = NULL
            raise MemoryError("nghttp2_session_server_new2 failed")

    def __dealloc__(self):
        if self.session != NULL:
            nghttp2_session_del(self.session)
            self.session = NULL

    # ------------------------------------------------------------------ Protocol

    def connection_made(self, transport):
        cdef nghttp2_settings_entry iv[3]
        self.transport = transport
        self.last_recv = self.opened = self.loop.time()
        iv[0].settings_id = NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS
        iv[0].value = STREAM_WINDOW
        iv[1].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
        iv[1].value = WINDOW
        iv[2].settings_id = NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE
        iv[2].value = C_MAX_HEADER_LIST
        nghttp2_submit_settings(self.session, NGHTTP2_FLAG_NONE, iv, 3)
        if len(self.server.connections) >= self.server.max_connections:
            self._refuse()
            return
        self.server.connections.add(self)
        nghttp2_session_set_local_window_size(self.session, NGHTTP2_FLAG_NONE, 0, 4 * WINDOW)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                import socket
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self._flush()

    cdef _refuse(self):
        """Past max_connections: GOAWAY (ENHANCE_YOUR_CALM, "too many connections"), then
        close. The server logs the count (NativeServer's sweep)."""
        cdef bytes why = b"too many connections"
        self.server.refused_connections += 1
        nghttp2_submit_goaway(self.session, NGHTTP2_FLAG_NONE, 0, NGHTTP2_ENHANCE_YOUR_CALM,
                              <const uint8_t*>PyBytes_AS_STRING(why), PyBytes_GET_SIZE(why))
        self.closing = True
        self._flush()

    def data_received(self, bytes data):
        if self.session == NULL or self.closing:
            return
        self.last_recv = self.loop.time()
        cdef ssize_t rv = nghttp2_session_mem_recv(
            self.session, <const uint8_t*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        if rv < 0:
            log.debug("HTTP/2 error from a client: %s", nghttp2_strerror(<int>rv).decode())
        if self.events:
            events, self.events = self.events, []
            try:
                self.server.dispatch(self, events)
            except Exception:
                log.exception("dispatching calls failed")
        self._flush()
        if rv < 0 and self.transport is not None:
            self.closing = True
            self.transport.close()

    def eof_received(self):
        return False  # close the transport

    def connection_lost(self, exc):
        cdef Server server = self.server
        if self in server.connections:
            server.connections.discard(self)
            server.connections_closed += 1
        calls, self.calls = self.calls, {}
        for call in calls.values():
            (<Call>call)._close()
        self.tag = None
        if self.stalled:
            self.stalled = False
            server.stalled -= 1
        self.transport = None
        if self.session != NULL:
            nghttp2_session_del(self.session)
            self.session = NULL
        server._relieve_all()

    def pause_writing(self):
        self.write_paused = True
        self._hold(1)

    def resume_writing(self):
        self.write_paused = False
        self._hold(-1)
        self._flush()

    # ------------------------------------------------------------------ control

    def shutdown_notice(self):
        """Drain, step one: GOAWAY (last stream 2^31-1): the client opens no new calls."""
        if self.session != NULL:
            nghttp2_submit_shutdown_notice(self.session)
            self._flush()

    def goaway(self):
        """Drain, step two: GOAWAY with the last stream read; the connection closes once
        every stream below it is done."""
        if self.session != NULL:
            nghttp2_submit_goaway(self.session, NGHTTP2_FLAG_NONE,
                                  nghttp2_session_get_last_proc_stream_id(self.session),
                                  NGHTTP2_NO_ERROR, NULL, 0)
            self._flush()

    def abort(self):
        if self.transport is not None:
            self.transport.abort()

    def sweep(self, double now, double idle, double timeout):
        """Timeouts, checked a few times a second by the server. Handshake: a client
        that has not sent the HTTP/2 preface and its SETTINGS ``server.handshake_timeout``
        seconds after connecting (silent, or dribbling bytes) is cut. Keepalive (as
        grpc's keepalive_time / keepalive_timeout; ``idle`` 0: off): a client silent for
        ``idle`` seconds gets a PING; if it still says nothing ``timeout`` seconds later
        (any bytes count: the PING's ACK, or more), the connection is cut and its calls
        are cancelled. Returns 0, or why it was cut: 1 keepalive, 2 handshake."""
        if self.session == NULL or self.transport is None or self.closing:
            return 0
        if (not self.handshaken and self.server.handshake_timeout > 0
                and now - self.opened >= self.server.handshake_timeout):
            self.server.handshake_timeouts += 1
            self.closing = True
            self.transport.abort()
            return 2
        if idle <= 0:
            return 0
        if self.ping_sent:
            if self.last_recv >= self.ping_sent:
                self.ping_sent = 0.0
            elif now - self.ping_sent >= timeout:
                self.closing = True
                self.transport.abort()
                return 1
        if not self.ping_sent and now - self.last_recv >= idle:
            nghttp2_submit_ping(self.session, NGHTTP2_FLAG_NONE, NULL)
            self.ping_sent = now
            self._flush()
        return 0

    @property
    def open_calls(self):
        return len(self.calls)

    @property
    def buffered(self):
        """Request bytes this connection's calls hold."""
        return self.buffered

    @property
    def unsent(self):
        """Answer bytes this connection's calls hold, not yet sent."""
        return self.unsent

    cdef _hold(self, int delta):
        self.holds += delta
        if self.transport is None:
            return
        if self.holds > 0 and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        elif self.holds <= 0 and self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()

    cdef _stall(self):
        """Over a budget: stop giving the connection window back (``_relieve`` ends it)."""
        if not self.stalled:
            self.stalled = True
            self.server.stalled += 1
            self.server.stalls += 1
        if _process_over(self.server):
            self.server.process_over = True

    cdef _relieve(self):
        """If no budget is exceeded any more: the window held back is given back, and
        the held calls may start more work."""
        cdef Server server = self.server
        if not self.stalled or _conn_over(self) or _process_over(server):
            return
        self.stalled = False
        server.stalled -= 1
        if self.unconsumed and self.session != NULL:
            nghttp2_session_consume_connection(self.session, self.unconsumed)
            self._schedule_flush()
        self.unconsumed = 0
        for call in self.calls.values():
            if (<Call>call).holds & HOLD_TASK:
                self.loop.call_soon(server.writable, call)

    cdef _schedule_flush(self):
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush_cb)

    def _flush_soon(self):
        self.flush_scheduled = False
        self._flush()

    cdef _flush(self):
        """Everything nghttp2 has to send, in one write."""
        cdef const uint8_t* data
        cdef ssize_t n
        if self.session == NULL or self.transport is None:
            return
        parts = []
        while not self.write_paused:
            n = nghttp2_session_mem_send(self.session, &data)
            if n < 0:
                log.debug("HTTP/2 send error: %s", nghttp2_strerror(<int>n).decode())
                self.closing = True
                break
            if n == 0:
                break
            parts.append(PyBytes_FromStringAndSize(<const char*>data, n))
        if parts:
            self.transport.write(parts[0] if len(parts) == 1 else b"".join(parts))
        if self.closing or (not nghttp2_session_want_read(self.session)
                            and not nghttp2_session_want_write(self.session)):
            self.closing = True
            self.transport.close()
        else:
            if self.stalled:
                self._relieve()
            if self.server.process_over:
                self.server._relieve_all()

    cdef _submit_response(self, Call call):
        cdef nghttp2_nv nva[2]
        cdef nghttp2_data_provider prd
        nva[0] = _nv(b":status", b"200")
        nva[1] = _nv(b"content-type", b"application/grpc")
        prd.source.ptr = <void*>call
        prd.read_callback = _read_cb
        nghttp2_submit_response(self.session, call.sid, nva, 2, &prd)

    cdef _trailers_only(self, Call call, int http_status):
        cdef nghttp2_nv nva[4]
        cdef bytes status = str(http_status).encode()
        cdef bytes code = str(call.status).encode()
        cdef size_t n = 3
        nva[0] = _nv(b":status", status)
        nva[1] = _nv(b"content-type", b"application/grpc")
        nva[2] = _nv(b"grpc-status", code)
        if call.status_message:
            nva[3] = _nv(b"grpc-message", call.status_message)
            n = 4
        nghttp2_submit_response(self.session, call.sid, nva, n, NULL)

    cdef _reject(self, Call call, int code, str message):
        """A call this layer answers itself (before or instead of Python): what it
        holds is let go, and its further bytes are dropped."""
        cdef CallState was = call.state
        call.input = IN_REFUSED
        _account(call, -call.buffered, 0)
        call.inbuf = call.frame = None
        if was >= CALL_FINISHED:
            return
        call.state = CALL_FINISHED
        call.status = code
        call.status_message = grpc_message(message)
        if call.task is not None:  # Python was running it: it is over
            try:
                call.task.cancel()
            except Exception:
                log.exception("cancelling a call's task failed")
        if was == CALL_OPEN:
            _account(call, 0, -call.queued)
            call.out = []
            call.queued = 0
            self._trailers_only(call, 200)
        else:
            nghttp2_session_resume_data(self.session, call.sid)

    # ------------------------------------------------------------------ requests

    cdef _headers_done(self, Call call, bint end):
        cdef Server server = self.server
        call.input = IN_BODY
        if call.faults:
            if call.faults & HDR_TOO_LARGE:
                server.oversized_headers += 1
                self._reject(call, RESOURCE_EXHAUSTED,
                             f"header list of {call.header_bytes} bytes is over the "
                             f"limit of {C_MAX_HEADER_LIST} (SETTINGS_MAX_HEADER_LIST_SIZE)")
                return
            if call.faults & (HDR_METHOD | HDR_TYPE):
                call.state = CALL_FINISHED
                call.input = IN_REFUSED
                self._plain_status(call, b"405" if call.faults & HDR_METHOD else b"415")
                return
        if call.method == METHOD_UNKNOWN:
            self._reject(call, UNIMPLEMENTED, "unknown method")
            return
        if call.faults & HDR_ENCODING:
            self._reject(call, UNIMPLEMENTED, "compression is not supported (grpc-encoding)")
            return
        if _conn_over(self) or _process_over(server):
            self._stall()
            server.refused_streams += 1
            self._reject(call, RESOURCE_EXHAUSTED, "the executor's buffers for this "
                         "connection are full (its answers are not being read)"
                         if _conn_over(self) else "the executor's buffers are full")
            return
        if server.check_headers and not server.admit(call):
            call.input = IN_REFUSED  # (admit answered it): nothing of it is buffered
            return
        if end:
            self._end_of_input(call)

    cdef _plain_status(self, Call call, bytes status):
        cdef nghttp2_nv nva[1]
        nva[0] = _nv(b":status", status)
        nghttp2_submit_response(self.session, call.sid, nva, 1, NULL)

    cdef _end_of_input(self, Call call):
        cdef InputState was = call.input
        if was == IN_REFUSED or was == IN_DONE:
            return
        call.input = IN_DONE
        if call.inbuf is not None and len(call.inbuf):
            self._reject(call, INTERNAL, "the request ended inside a message")
        elif call.method == METHOD_INFER_STREAM or call.method == METHOD_OIP_STREAM:
            self.events.append((call, None))
        elif call.messages != 1:
            self._reject(call, INTERNAL, "a unary call takes exactly one request message, "
                                         f"not {call.messages}")
        else:
            self.events.append((call, call.frame))
            _account(call, -call.buffered, 0)
            call.frame = None

    cdef _message(self, Call call, bytes frame):
        call.messages += 1
        if call.method == METHOD_INFER_STREAM or call.method == METHOD_OIP_STREAM:
            self.events.append((call, frame))
        elif call.messages == 1:
            call.frame = frame
            _account(call, PyBytes_GET_SIZE(frame), 0)
        else:
            self._reject(call, INTERNAL, "a unary call takes exactly one request message")

    cdef bint _prefix_ok(self, Call call, int flag, Py_ssize_t size) except -1:
        if flag != 0:
            if flag == 1:
                self._reject(call, UNIMPLEMENTED, "compressed messages are not supported")
            else:
                self._reject(call, INTERNAL, f"bad message flags {flag:#x}")
            return False
        if size > self.max_message:
            self._reject(call, RESOURCE_EXHAUSTED, "Received message larger than max "
                         f"({size} vs. {self.max_message})")
            return False
        return True

    cdef int _data(self, Call call, const uint8_t* data, size_t length) except -1:
        """A chunk of a stream's DATA: split it into gRPC messages. Whole messages in
        the chunk are sliced out of it; a message split across chunks is gathered in
        ``inbuf`` (its size known from its prefix; counted in the budgets)."""
        cdef Py_ssize_t pos = 0, size, take, total = length
        cdef const uint8_t* p
        cdef bytearray buf
        while pos < total and call.input == IN_BODY:
            if call.inbuf is not None:
                buf = call.inbuf
                if len(buf) < 5:
                    take = min(5 - len(buf), total - pos)
                    buf += PyBytes_FromStringAndSize(<const char*>data + pos, take)
                    _account(call, take, 0)
                    pos += take
                    if len(buf) < 5:
                        return 0
                    size = (<Py_ssize_t>buf[1] << 24) | (buf[2] << 16) | (buf[3] << 8) | buf[4]
                    if not self._prefix_ok(call, buf[0], size):
                        return 0
                    call.need = 5 + size
                take = min(call.need - len(buf), total - pos)
                if take > 0:
                    buf += PyBytes_FromStringAndSize(<const char*>data + pos, take)
                    _account(call, take, 0)
                    pos += take
                if len(buf) < call.need:
                    return 0
                call.inbuf = None
                _account(call, -len(buf), 0)
                self._message(call, bytes(memoryview(buf)[5:]))
                continue
            p = data + pos
            if total - pos < 5:
                call.inbuf = bytearray(PyBytes_FromStringAndSize(<const char*>p, total - pos))
                _account(call, total - pos, 0)
                return 0
            size = (<Py_ssize_t>p[1] << 24) | (p[2] << 16) | (p[3] << 8) | p[4]
            if not self._prefix_ok(call, p[0], size):
                return 0
            if total - pos < 5 + size:
                call.inbuf = bytearray(PyBytes_FromStringAndSize(<const char*>p, total - pos))
                _account(call, total - pos, 0)
                call.need = 5 + size
                return 0
            self._message(call, PyBytes_FromStringAndSize(<const char*>p + 5, size))
            pos += 5 + size
        return 0


cdef inline Call _call_of(nghttp2_session* session, int32_t sid):
    cdef void* p = nghttp2_session_get_stream_user_data(session, sid)
    return None if p == NULL else <Call>p


cdef int _on_begin_headers(nghttp2_session* session, const nghttp2_frame* frame,
                           void* user_data) noexcept:
    cdef Connection conn = <Connection>user_data
    cdef Call call
    if frame.hd.type != NGHTTP2_HEADERS:
        return 0
    if frame.headers.cat != NGHTTP2_HCAT_REQUEST:  # a client's trailers: a block of its own
        call = _call_of(session, frame.hd.stream_id)
        if call is not None:
            call.header_bytes = 0
        return 0
    try:
        call = Call()
        call.conn = conn
        call.server = conn.server
        call.sid = frame.hd.stream_id
        conn.calls[call.sid] = call
        nghttp2_session_set_stream_user_data(session, call.sid, <void*>call)
    except Exception:
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef inline bint _is(const uint8_t* name, size_t namelen, bytes want) noexcept:
    return namelen == <size_t>PyBytes_GET_SIZE(want) and memcmp(
        name, PyBytes_AS_STRING(want), namelen) == 0


cdef int _on_header(nghttp2_session* session, const nghttp2_frame* frame,
                    const uint8_t* name, size_t namelen, const uint8_t* value,
                    size_t valuelen, uint8_t flags, void* user_data) noexcept:
    cdef Call call
    if frame.hd.type != NGHTTP2_HEADERS:
        return 0
    call = _call_of(session, frame.hd.stream_id)
    if call is None:
        return 0
    # the header list's size as SETTINGS_MAX_HEADER_LIST_SIZE counts it (RFC 9113 6.5.2)
    call.header_bytes += namelen + valuelen + 32
    if call.header_bytes > C_MAX_HEADER_LIST:
        if frame.headers.cat != NGHTTP2_HCAT_REQUEST:
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE  # trailers: the stream is reset
        call.faults |= HDR_TOO_LARGE  # answered at the block's end; nothing more is kept
        return 0
    if frame.headers.cat != NGHTTP2_HCAT_REQUEST:
        return 0  # a client's trailers: nothing the executor reads
    try:
        if namelen and name[0] == b":"[0]:
            if _is(name, namelen, b":path"):
                call.method = _PATHS.get(PyBytes_FromStringAndSize(<const char*>value,
                                                                   valuelen), -1)
            elif _is(name, namelen, b":method"):
                if not (valuelen == 4 and memcmp(value, b"POST", 4) == 0):
                    call.faults |= HDR_METHOD
                else:
                    call.faults &= ~HDR_METHOD
        elif _is(name, namelen, b"content-type"):
            if not (valuelen >= 16 and memcmp(value, b"application/grpc", 16) == 0
                    and (valuelen == 16 or value[16] in (b"+"[0], b";"[0]))):
                call.faults |= HDR_TYPE
            else:
                call.faults &= ~HDR_TYPE
        elif _is(name, namelen, b"grpc-timeout"):
            t = parse_timeout(PyBytes_FromStringAndSize(<const char*>value,
                                                        valuelen).decode("latin-1"))
            if t is not None:
                call.timeout = t
        elif _is(name, namelen, b"authorization"):
            call.token = PyBytes_FromStringAndSize(<const char*>value,
                                                   valuelen).decode("latin-1")
        elif _is(name, namelen, b"grpc-encoding"):
            if not (valuelen == 8 and memcmp(value, b"identity", 8) == 0):
                call.faults |= HDR_ENCODING
            else:
                call.faults &= ~HDR_ENCODING
    except Exception:
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE  # resets this stream only
    return 0


cdef int _on_data_chunk(nghttp2_session* session, uint8_t flags, int32_t sid,
                        const uint8_t* data, size_t length, void* user_data) noexcept:
    cdef Connection conn = <Connection>user_data
    cdef Call call = _call_of(session, sid)
    if call is None or call.input != IN_BODY:  # dropped unread: both windows given back
        nghttp2_session_consume_connection(session, length)
        nghttp2_session_consume_stream(session, sid, length)
        return 0
    # Windows: the connection's is given back at once (other streams go on) unless the
    # connection is over a budget (then when it is under again: Connection._relieve); a
    # stream's unless it is held (then when it is released).
    if conn.stalled or _conn_over(conn) or _process_over(conn.server):
        conn._stall()
        conn.unconsumed += length
    else:
        nghttp2_session_consume_connection(session, length)
    if call.holds == 0:
        nghttp2_session_consume_stream(session, sid, length)
    else:
        call.unconsumed += length
    try:
        conn._data(call, data, length)
    except Exception:
        log.exception("reading a gRPC message failed")
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
    return 0


cdef int _on_frame_recv(nghttp2_session* session, const nghttp2_frame* frame,
                        void* user_data) noexcept:
    cdef Connection conn = <Connection>user_data
    cdef Call call
    cdef bint end = frame.hd.flags & NGHTTP2_FLAG_END_STREAM
    if frame.hd.type == NGHTTP2_SETTINGS:
        conn.handshaken = True  # the client's preface and first SETTINGS are in
        return 0
    if frame.hd.type != NGHTTP2_HEADERS and frame.hd.type != NGHTTP2_DATA:
        return 0
    call = _call_of(session, frame.hd.stream_id)
    if call is None:
        return 0
    try:
        if frame.hd.type == NGHTTP2_HEADERS and frame.headers.cat == NGHTTP2_HCAT_REQUEST:
            conn._headers_done(call, end)
        elif end:
            conn._end_of_input(call)
    except Exception:
        log.exception("handling a frame failed")
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
    return 0


cdef int _on_frame_send(nghttp2_session* session, const nghttp2_frame* frame,
                        void* user_data) noexcept:
    # The call's status is out; a client still sending is told to stop (as grpc does).
    if ((frame.hd.type == NGHTTP2_HEADERS or frame.hd.type == NGHTTP2_DATA)
            and frame.hd.flags & NGHTTP2_FLAG_END_STREAM
            and not nghttp2_session_get_stream_remote_close(session, frame.hd.stream_id)):
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame.hd.stream_id,
                                  NGHTTP2_NO_ERROR)
    return 0


cdef int _on_stream_close(nghttp2_session* session, int32_t sid, uint32_t error_code,
                          void* user_data) noexcept:
    cdef Connection conn = <Connection>user_data
    cdef Call call = _call_of(session, sid)
    if call is None:
        return 0
    try:
        conn.calls.pop(sid, None)
        call._close()
    except Exception:
        log.exception("closing a call failed")
    return 0


cdef ssize_t _read_cb(nghttp2_session* session, int32_t sid, uint8_t* buf, size_t length,
                      uint32_t* data_flags, nghttp2_data_source* source,
                      void* user_data) noexcept:
    cdef Call call = <Call>source.ptr
    cdef Py_ssize_t n
    cdef nghttp2_nv nva[2]
    cdef size_t count = 1
    cdef bytes code
    try:
        n = call._fill(buf, length)
        if call.out_head == 0 and not call.out:
            if call.state >= CALL_FINISHED:
                data_flags[0] |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM
                code = str(call.status).encode()
                nva[0] = _nv(b"grpc-status", code)
                if call.status_message:
                    nva[1] = _nv(b"grpc-message", call.status_message)
                    count = 2
                if nghttp2_submit_trailer(session, sid, nva, count) != 0:
                    return NGHTTP2_ERR_CALLBACK_FAILURE
            elif n == 0:
                return NGHTTP2_ERR_DEFERRED
        return n
    except Exception:
        log.exception("sending a gRPC message failed")
        return NGHTTP2_ERR_CALLBACK_FAILURE


cdef _init():
    global _callbacks
    nghttp2_session_callbacks_new(&_callbacks)
    nghttp2_session_callbacks_set_on_begin_headers_callback(_callbacks, _on_begin_headers)
    nghttp2_session_callbacks_set_on_header_callback(_callbacks, _on_header)
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(_callbacks, _on_data_chunk)
    nghttp2_session_callbacks_set_on_frame_recv_callback(_callbacks, _on_frame_recv)
    nghttp2_session_callbacks_set_on_frame_send_callback(_callbacks, _on_frame_send)
    nghttp2_session_callbacks_set_on_stream_close_callback(_callbacks, _on_stream_close)


_init()
