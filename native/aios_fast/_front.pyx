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

import logging
from urllib.parse import quote

log = logging.getLogger("aios_fast.executor.front")

cdef extern from "<sys/types.h>":
    ctypedef long ssize_t

cdef extern from "nghttp2/nghttp2.h":
    ctypedef struct nghttp2_session:
        pass
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

# methods (Call.method)
INFER, INFER_RESULT, INFER_STREAM = 0, 1, 2
_PATHS = {b"/InferenceProxy/infer": 0, b"/InferenceProxy/infer_result": 1,
          b"/InferenceProxy/infer_stream": 2}
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
QUEUED_HIGH = 16 * 1024 * 1024  # unsent answer bytes on a stream that hold its window


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


cdef class Call:
    """One gRPC call (an HTTP/2 stream). Python reads ``method``, ``timeout`` (seconds,
    or -1: none), ``token`` (the ``authorization`` header, or None); keeps what it
    likes in ``task`` (its ``cancel()`` is called if the client resets the stream or the
    connection drops before the call is finished); answers with ``respond`` (a unary
    call's one message, then OK), ``send`` (one more message) and ``finish`` (status)."""

    cdef readonly int method
    cdef readonly double timeout
    cdef readonly object token
    cdef public object task
    cdef readonly bint closed  # the stream is gone (reset, finished, connection lost)
    cdef readonly bint finished  # the status is set: nothing more may be sent
    cdef Connection conn
    cdef object server
    cdef int32_t sid
    cdef bint bad_method, bad_type, bad_encoding, got_path, discard, answered, remote_done
    cdef bint task_held, queue_held
    cdef int holds  # reasons not to open this stream's receive window (0: open it)
    cdef Py_ssize_t unconsumed  # bytes received while held, not yet given back
    cdef object inbuf  # bytearray: an incomplete message's bytes
    cdef Py_ssize_t need  # its size with the prefix, once known
    cdef object frame  # a unary call's message
    cdef int messages
    cdef list out  # bytes chunks not yet handed to nghttp2
    cdef Py_ssize_t out_head, out_off, queued
    cdef int status
    cdef bytes status_message

    def __cinit__(self):
        self.timeout = -1.0
        self.method = -1
        self.out = []

    @property
    def stream_id(self):
        return self.sid

    @property
    def queued(self):
        """Answer bytes not yet sent to the client (its flow control window is full)."""
        return self.queued

    def respond(self, bytes message):
        """A unary call's answer: one message, then status OK."""
        if self.finished:
            return
        self._queue(message)
        self.status = OK
        self.finished = True
        self._kick()

    def send(self, bytes message):
        """One more message on a streaming call."""
        if self.finished:
            return
        self._queue(message)
        self._kick()

    def finish(self, int code, str message=""):
        """End the call with a status (after any messages sent)."""
        if self.finished:
            return
        self.finished = True
        self.status = code
        self.status_message = grpc_message(message) if message else b""
        self._kick()

    def hold(self):
        """Back-pressure: stop opening this stream's HTTP/2 receive window (its client
        soon stops sending) until ``release``."""
        if not self.task_held:
            self.task_held = True
            self.holds += 1

    def release(self):
        if self.task_held:
            self.task_held = False
            self._unhold()

    cdef _unhold(self):
        self.holds -= 1
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
        if self.queued > QUEUED_HIGH and not self.queue_held:
            self.queue_held = True
            self.holds += 1

    cdef _kick(self):
        """Tell nghttp2 there is something to send, and flush soon."""
        if self.closed or self.conn is None or self.conn.session == NULL:
            return
        cdef Connection conn = self.conn
        if not self.answered:
            self.answered = True
            if self.finished and not self.out:  # trailers only: one HEADERS frame
                conn._trailers_only(self, 200)
            else:
                conn._submit_response(self)
        else:
            nghttp2_session_resume_data(conn.session, self.sid)
        conn._schedule_flush()

    cdef Py_ssize_t _fill(self, uint8_t* buf, size_t length):
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
        if self.queue_held and self.queued < QUEUED_HIGH // 2:
            self.queue_held = False
            self._unhold()
            if self.server is not None and self.conn is not None:
                # the server may start more of this call's work (not from inside
                # nghttp2's send: on the next loop turn)
                self.conn.loop.call_soon(self.server.writable, self)
        return done

    cdef _close(self):
        """The stream is gone: nothing more is sent; Python's task is told."""
        self.closed = True
        task = self.task
        if not self.finished:
            self.finished = True
            if task is not None:
                try:
                    task.cancel()
                except Exception:
                    log.exception("cancelling a call's task failed")
        self.out = []
        self.conn = None
        self.task = None  # (a stream's state points back at its call: no cycle left)


cdef nghttp2_session_callbacks* _callbacks = NULL


cdef class Connection:
    """One client connection (an asyncio Protocol). ``server`` provides ``dispatch(conn,
    events)`` (events: a list of (Call, message bytes or None: a stream's end of input)),
    ``max_message``, ``loop`` and ``connections`` (a set this connection joins)."""

    cdef nghttp2_session* session
    cdef object server
    cdef public object transport
    cdef object loop
    cdef dict calls
    cdef list events
    cdef Py_ssize_t max_message
    cdef bint flush_scheduled, write_paused, reading_paused, closing
    cdef int holds
    cdef object _flush_cb
    cdef double last_recv  # loop time of the last bytes read (keepalive)
    cdef double ping_sent  # loop time of the keepalive PING not yet answered (0: none)

    def __cinit__(self, server):
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
        self.last_recv = self.loop.time()
        self.server.connections.add(self)
        iv[0].settings_id = NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS
        iv[0].value = STREAM_WINDOW
        iv[1].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
        iv[1].value = WINDOW
        iv[2].settings_id = NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE
        iv[2].value = 16384
        nghttp2_submit_settings(self.session, NGHTTP2_FLAG_NONE, iv, 3)
        nghttp2_session_set_local_window_size(self.session, NGHTTP2_FLAG_NONE, 0, 4 * WINDOW)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                import socket
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
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
        self.server.connections.discard(self)
        calls, self.calls = self.calls, {}
        for call in calls.values():
            (<Call>call)._close()
        self.transport = None
        if self.session != NULL:
            nghttp2_session_del(self.session)
            self.session = NULL

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

    def keepalive(self, double now, double idle, double timeout):
        """Server keepalive (as grpc's keepalive_time / keepalive_timeout): a client
        silent for ``idle`` seconds gets a PING; if it still says nothing ``timeout``
        seconds later (any bytes count: the PING's ACK, or more), the connection is cut
        and its calls are cancelled. Returns True if it was cut."""
        if self.session == NULL or self.transport is None or self.closing:
            return False
        if self.ping_sent:
            if self.last_recv >= self.ping_sent:
                self.ping_sent = 0.0
            elif now - self.ping_sent >= timeout:
                self.closing = True
                self.transport.abort()
                return True
        if not self.ping_sent and now - self.last_recv >= idle:
            nghttp2_submit_ping(self.session, NGHTTP2_FLAG_NONE, NULL)
            self.ping_sent = now
            self._flush()
        return False

    @property
    def open_calls(self):
        return len(self.calls)

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
        """A call this layer answers itself (before or instead of Python)."""
        call.discard = True
        if call.finished:
            return
        call.finished = True
        call.status = code
        call.status_message = grpc_message(message)
        if call.task is not None:  # Python was running it: it is over
            try:
                call.task.cancel()
            except Exception:
                log.exception("cancelling a call's task failed")
        if not call.answered:
            call.answered = True
            call.out = []
            call.queued = 0
            self._trailers_only(call, 200)
        else:
            nghttp2_session_resume_data(self.session, call.sid)

    # ------------------------------------------------------------------ requests

    cdef _headers_done(self, Call call, bint end):
        if call.bad_method:
            call.answered = call.finished = call.discard = True
            self._plain_status(call, b"405")
            return
        if call.bad_type:
            call.answered = call.finished = call.discard = True
            self._plain_status(call, b"415")
            return
        if call.method < 0:
            self._reject(call, UNIMPLEMENTED, "unknown method")
            return
        if call.bad_encoding:
            self._reject(call, UNIMPLEMENTED, "compression is not supported (grpc-encoding)")
            return
        if end:
            self._end_of_input(call)

    cdef _plain_status(self, Call call, bytes status):
        cdef nghttp2_nv nva[1]
        nva[0] = _nv(b":status", status)
        nghttp2_submit_response(self.session, call.sid, nva, 1, NULL)

    cdef _end_of_input(self, Call call):
        call.remote_done = True
        if call.discard:
            return
        if call.inbuf is not None and len(call.inbuf):
            self._reject(call, INTERNAL, "the request ended inside a message")
        elif call.method == INFER_STREAM:
            self.events.append((call, None))
        elif call.messages != 1:
            self._reject(call, INTERNAL, "a unary call takes exactly one request message, "
                                         f"not {call.messages}")
        else:
            self.events.append((call, call.frame))
            call.frame = None

    cdef _message(self, Call call, bytes frame):
        call.messages += 1
        if call.method == INFER_STREAM:
            self.events.append((call, frame))
        elif call.messages == 1:
            call.frame = frame
        else:
            self._reject(call, INTERNAL, "a unary call takes exactly one request message")

    cdef bint _prefix_ok(self, Call call, int flag, Py_ssize_t size):
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
        ``inbuf`` (its size known from its prefix)."""
        cdef Py_ssize_t pos = 0, size, take, total = length
        cdef const uint8_t* p
        cdef bytearray buf
        while pos < total and not call.discard:
            if call.inbuf is not None:
                buf = call.inbuf
                if len(buf) < 5:
                    take = min(5 - len(buf), total - pos)
                    buf += PyBytes_FromStringAndSize(<const char*>data + pos, take)
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
                    pos += take
                if len(buf) < call.need:
                    return 0
                call.inbuf = None
                self._message(call, bytes(memoryview(buf)[5:]))
                continue
            p = data + pos
            if total - pos < 5:
                call.inbuf = bytearray(PyBytes_FromStringAndSize(<const char*>p, total - pos))
                return 0
            size = (<Py_ssize_t>p[1] << 24) | (p[2] << 16) | (p[3] << 8) | p[4]
            if not self._prefix_ok(call, p[0], size):
                return 0
            if total - pos < 5 + size:
                call.inbuf = bytearray(PyBytes_FromStringAndSize(<const char*>p, total - pos))
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
    if frame.hd.type != NGHTTP2_HEADERS or frame.headers.cat != NGHTTP2_HCAT_REQUEST:
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
    if frame.hd.type != NGHTTP2_HEADERS or frame.headers.cat != NGHTTP2_HCAT_REQUEST:
        return 0  # a client's trailers: nothing the executor reads
    call = _call_of(session, frame.hd.stream_id)
    if call is None:
        return 0
    try:
        if namelen and name[0] == b":"[0]:
            if _is(name, namelen, b":path"):
                call.method = _PATHS.get(PyBytes_FromStringAndSize(<const char*>value,
                                                                   valuelen), -1)
            elif _is(name, namelen, b":method"):
                call.bad_method = not (valuelen == 4 and memcmp(value, b"POST", 4) == 0)
        elif _is(name, namelen, b"content-type"):
            call.bad_type = not (valuelen >= 16 and memcmp(value, b"application/grpc", 16) == 0
                                 and (valuelen == 16 or value[16] in (b"+"[0], b";"[0])))
        elif _is(name, namelen, b"grpc-timeout"):
            t = parse_timeout(PyBytes_FromStringAndSize(<const char*>value,
                                                        valuelen).decode("latin-1"))
            if t is not None:
                call.timeout = t
        elif _is(name, namelen, b"authorization"):
            call.token = PyBytes_FromStringAndSize(<const char*>value,
                                                   valuelen).decode("latin-1")
        elif _is(name, namelen, b"grpc-encoding"):
            call.bad_encoding = not (valuelen == 8 and memcmp(value, b"identity", 8) == 0)
    except Exception:
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE  # resets this stream only
    return 0


cdef int _on_data_chunk(nghttp2_session* session, uint8_t flags, int32_t sid,
                        const uint8_t* data, size_t length, void* user_data) noexcept:
    cdef Call call = _call_of(session, sid)
    # Windows: the connection's is given back at once (other streams go on); a stream's
    # unless it is held (then when it is released).
    nghttp2_session_consume_connection(session, length)
    if call is None or call.holds == 0:
        nghttp2_session_consume_stream(session, sid, length)
    else:
        call.unconsumed += length
    if call is None:
        return 0
    try:
        (<Connection>user_data)._data(call, data, length)
    except Exception:
        log.exception("reading a gRPC message failed")
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
    return 0


cdef int _on_frame_recv(nghttp2_session* session, const nghttp2_frame* frame,
                        void* user_data) noexcept:
    cdef Connection conn = <Connection>user_data
    cdef Call call
    cdef bint end = frame.hd.flags & NGHTTP2_FLAG_END_STREAM
    if frame.hd.type != NGHTTP2_HEADERS and frame.hd.type != NGHTTP2_DATA:
        return 0
    call = _call_of(session, frame.hd.stream_id)
    if call is None:
        return 0
    try:
        if frame.hd.type == NGHTTP2_HEADERS and frame.headers.cat == NGHTTP2_HCAT_REQUEST:
            conn._headers_done(call, end)
        elif end and not call.remote_done:
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
            if call.finished:
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
