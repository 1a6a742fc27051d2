"""How every aios-fast process runs: uvloop when installed, and one way to wait for
SIGTERM/SIGINT so each service stops through its own ``stop()``, in order."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = [
    "PARENT_ENV",
    "STOP_SIGNALS",
    "adopt_parent_death",
    "announce",
    "child_env",
    "die_with_parent",
    "install_uvloop",
    "release_memory",
    "reload_on_sighup",
    "reserve_stdout",
    "run",
    "say",
    "signal_event",
    "until_signalled",
]

T = TypeVar("T")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def install_uvloop() -> None:
    """Make new event loops uvloop ones (a plain asyncio loop where it is missing)."""
    try:
        import uvloop
    except ImportError:
        return
    uvloop.install()


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on uvloop: the entry point of every aios-fast process."""
    install_uvloop()
    return asyncio.run(main)


def signal_event() -> asyncio.Event:
    """An event the running loop sets on SIGTERM or SIGINT (instead of raising)."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, event.set)
    return event


def reload_on_sighup(auth, then=None) -> None:
    """Re-read ``auth``'s token file on SIGHUP (a bad file keeps the tokens in force),
    then call ``then()`` if given."""
    log = logging.getLogger("aios_fast.auth")

    def reload() -> None:
        try:
            auth.reload()
            log.info("tokens re-read from %s", auth.path)
        except Exception as exc:
            log.error("tokens not re-read: %s", exc)
        if then is not None:
            then()

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)


async def until_signalled() -> None:
    """Until SIGTERM or SIGINT; the caller then stops its services."""
    await signal_event().wait()


_announce_fd: int | None = None


def reserve_stdout() -> None:
    """Keep this process's stdout for ``announce`` alone: whatever else writes to it
    from now on (a model library printing while it loads, a user's block or policy)
    goes to stderr, so whoever started the process reads nothing but the announcement."""
    global _announce_fd
    if _announce_fd is None:
        sys.stdout.flush()
        _announce_fd = os.dup(1)
        os.dup2(2, 1)


def announce(info: dict) -> None:
    """One JSON line on the process's real stdout: where it listens, once it serves."""
    os.write(1 if _announce_fd is None else _announce_fd, (json.dumps(info) + "\n").encode())


_stdout_gone = False


def say(text: str = "") -> None:
    """A line of this process's own output on its real stdout (reserved or not). A reader
    that went away (``block up --json | head -1``) is not an error: the rest is dropped."""
    global _stdout_gone
    if _stdout_gone:
        return
    if _announce_fd is None:
        sys.stdout.flush()
    data = (text + "\n").encode()
    fd = 1 if _announce_fd is None else _announce_fd
    try:
        while data:
            data = data[os.write(fd, data) :]
    except (BrokenPipeError, ValueError):
        _stdout_gone = True


_PR_SET_PDEATHSIG = 1
PARENT_ENV = "AIOS_FAST_PARENT_PID"


def _libc_prctl():
    name = ctypes.util.find_library("c")  # runs ldconfig: never in a fork's child
    try:
        return ctypes.CDLL(name, use_errno=True).prctl if name else None
    except (OSError, AttributeError):
        return None


_prctl = _libc_prctl()


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies, even by
    SIGKILL, so no child is left behind serving (Linux; elsewhere nothing). Safe right
    after ``os.fork`` (libc was looked up at import). Note it is the parent *thread*
    that counts."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process that must die with this one: the child calls
    ``adopt_parent_death`` as it starts. (Not ``preexec_fn``: running Python between fork
    and exec in a process with threads can deadlock or crash the child.)"""
    return dict(os.environ if env is None else env, **{PARENT_ENV: str(os.getpid())})


def adopt_parent_death() -> None:
    """At the start of a process spawned with ``child_env``: die with that parent, and
    exit at once if it is already gone (it died between our fork and this call)."""
    parent = os.environ.pop(PARENT_ENV, "")  # not inherited by our own children
    if not parent.isdigit():
        return
    die_with_parent()
    if os.getppid() != int(parent):
        sys.stderr.write("parent process is gone; exiting\n")
        os._exit(1)


def _libc_trim():
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        return None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_malloc_trim = _libc_trim()


def release_memory() -> None:
    """Give memory freed after a burst back to the system: a full collection, then
    glibc's malloc_trim (a burst of 10,000 calls otherwise leaves the process at its
    high-water mark: freed blocks stay in malloc's arenas). A few ms; call when idle."""
    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)
