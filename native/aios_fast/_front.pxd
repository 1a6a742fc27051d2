# Declarations of the native gRPC front (aios_fast._front), asyncpg's way: the cdef
# classes, the typed base class the Python server subclasses
# (``aios_fast.executor.native_front.NativeServer(Server)``: its callbacks ``dispatch``,
# ``admit`` and ``writable`` are typed cpdef methods, its settings typed fields), and a
# call's states as enums instead of a cluster of flags. aios_fast/_front.pyi is the
# Python view of the same.
from libc.stdint cimport int32_t, uint8_t


cdef extern from "nghttp2/nghttp2.h":
    ctypedef struct nghttp2_session:
        pass


cdef enum Method:  # Call.method; exported to Python as INFER, INFER_RESULT, INFER_STREAM
    METHOD_UNKNOWN = -1
    METHOD_INFER = 0
    METHOD_INFER_RESULT = 1
    METHOD_INFER_STREAM = 2
    # the Open Inference Protocol's (OIP_METHODS: the position in wire.OIP_METHODS + 3)
    METHOD_OIP_FIRST = 3
    METHOD_OIP_STREAM = 9  # ModelStreamInfer: its messages are read as INFER_STREAM's


cdef enum CallState:  # a call's answer side
    CALL_OPEN = 0  # nothing answered yet
    CALL_ANSWERING = 1  # response HEADERS submitted: messages may follow
    CALL_FINISHED = 2  # the status is set: nothing more may be sent (trailers pending)
    CALL_CLOSED = 3  # the stream is gone (status sent, reset, or the connection lost)


cdef enum InputState:  # a call's request side
    IN_HEADERS = 0  # its header block is being read
    IN_BODY = 1  # its messages are being read
    IN_DONE = 2  # the client ended its side (END_STREAM)
    IN_REFUSED = 3  # refused by this layer: further bytes are dropped unread


cdef enum HeaderFault:  # bits: what a request's header block got wrong
    HDR_METHOD = 1  # :method is not POST (HTTP 405)
    HDR_TYPE = 2  # content-type is not application/grpc (HTTP 415)
    HDR_ENCODING = 4  # a grpc-encoding other than identity (UNIMPLEMENTED)
    HDR_TOO_LARGE = 8  # the header list is over MAX_HEADER_LIST (RESOURCE_EXHAUSTED)


cdef enum Hold:  # bits of Call.holds: why a stream's receive window stays shut
    HOLD_TASK = 1  # the server's (Call.hold): its tasks are not keeping up
    HOLD_QUEUE = 2  # its unsent answers are over QUEUED_HIGH


cdef class Server
cdef class Connection


cdef class Call:
    cdef readonly int method  # a Method
    cdef readonly double timeout  # seconds, or -1: none
    cdef readonly object token  # the authorization header, or None
    cdef public object task  # the server's: cancel() is called if the stream goes away
    cdef CallState state
    cdef InputState input
    cdef int faults  # HeaderFault bits
    cdef int holds  # Hold bits (0: give the stream's receive window back)
    cdef Connection conn  # None once closed
    cdef Server server
    cdef int32_t sid
    cdef Py_ssize_t header_bytes  # the header list's size as RFC 7541 counts it
    cdef Py_ssize_t unconsumed  # bytes received while held, not yet given back
    cdef object inbuf  # bytearray: an incomplete message's bytes
    cdef Py_ssize_t need  # its size with the prefix, once known
    cdef object frame  # a unary call's message, until its end of input
    cdef int messages
    cdef Py_ssize_t buffered  # request bytes held here (inbuf + frame)
    cdef list out  # bytes chunks not yet handed to nghttp2
    cdef Py_ssize_t out_head, out_off, queued
    cdef int status
    cdef bytes status_message

    cdef _unhold(self, int reason)
    cdef _queue(self, bytes message)
    cdef _kick(self, CallState was)
    cdef Py_ssize_t _fill(self, uint8_t* buf, size_t length) except -1
    cdef _close(self)


cdef class Connection:
    cdef nghttp2_session* session
    cdef Server server
    cdef public object transport
    cdef public object tag  # the server's own state for this connection
    cdef object loop
    cdef dict calls
    cdef list events
    cdef Py_ssize_t max_message
    cdef bint flush_scheduled, write_paused, reading_paused, closing
    cdef bint handshaken  # the client's preface and first SETTINGS arrived
    cdef bint stalled  # over a budget: its HTTP/2 window is not given back
    cdef int holds
    cdef object _flush_cb
    cdef double opened  # loop time it was accepted (handshake timeout)
    cdef double last_recv  # loop time of the last bytes read (keepalive)
    cdef double ping_sent  # loop time of the keepalive PING not yet answered (0: none)
    cdef Py_ssize_t buffered  # request bytes its calls hold
    cdef Py_ssize_t unsent  # answer bytes its calls hold, not yet sent
    cdef Py_ssize_t unconsumed  # connection window held back while stalled

    cdef _hold(self, int delta)
    cdef _schedule_flush(self)
    cdef _flush(self)
    cdef _stall(self)
    cdef _relieve(self)
    cdef _refuse(self)
    cdef _submit_response(self, Call call)
    cdef _trailers_only(self, Call call, int http_status)
    cdef _reject(self, Call call, int code, str message)
    cdef _headers_done(self, Call call, bint end)
    cdef _plain_status(self, Call call, bytes status)
    cdef _end_of_input(self, Call call)
    cdef _message(self, Call call, bytes frame)
    cdef bint _prefix_ok(self, Call call, int flag, Py_ssize_t size) except -1
    cdef int _data(self, Call call, const uint8_t* data, size_t length) except -1


cdef class Server:
    """The base of the Python server: settings the compiled layer reads as C fields, the
    process-wide books, and the callbacks it makes."""
    cdef public object loop  # the event loop serving (set by the subclass when it binds)
    cdef public Py_ssize_t max_message  # bytes of the largest request message
    cdef readonly set connections  # the open Connections
    cdef public bint check_headers  # call admit() at each call's headers
    cdef public Py_ssize_t connection_budget  # bytes a connection's calls may hold
    cdef public Py_ssize_t budget  # bytes all connections' calls may hold
    cdef public Py_ssize_t max_connections  # open connections (more are refused)
    cdef public double handshake_timeout  # seconds to get the preface + SETTINGS (0: none)
    cdef readonly Py_ssize_t buffered  # request bytes held now, all connections
    cdef readonly Py_ssize_t unsent  # answer bytes not yet sent, all connections
    cdef int stalled  # connections stalled now
    cdef bint process_over  # a connection stalled for the process-wide budget
    # counters (monotonic)
    cdef readonly unsigned long long refused_streams  # new calls refused over a budget
    cdef readonly unsigned long long refused_connections  # past max_connections
    cdef readonly unsigned long long handshake_timeouts
    cdef readonly unsigned long long oversized_headers  # calls refused: header list too big
    cdef readonly unsigned long long stalls  # times a connection stopped being read
    cdef readonly unsigned long long connections_closed

    cpdef dispatch(self, Connection conn, list events)
    cpdef bint admit(self, Call call) except -1
    cpdef writable(self, Call call)
    cdef _relieve_all(self)
