"""A ``SIGBUS`` guard for file mappings: a page that vanished under a reader reads as zeros, and the reader is told.

Reading a mapped page past the end of a file that was truncated after it was mapped (or whose filesystem went
away) raises ``SIGBUS``, which kills the process: there is no Python exception to catch. Copying through
``pread`` instead would be safe, but measured on warm files it is 3-10x slower for scattered rows
(``benchmarks/read_path.py``), so local reads keep the mapping and this module installs, once, a process-wide
``SIGBUS`` handler (glibc ``sigaction`` through ctypes) that:

- for an address inside a mapping registered with :func:`watch`, maps anonymous zero pages over the rest of that
  mapping (``mmap(MAP_FIXED)``), marks it faulted and returns, so the interrupted copy finishes (with zeros);
  the reader then sees :attr:`Watch.faulted` and raises :class:`~npyfeed.FileChangedError` instead of returning
  the batch;
- for any other address, puts back the handler that was there before (the default, or ``faulthandler``'s) and
  returns: the access faults again and the process dies exactly as it would have without npyfeed.

The handler is Python code run by ctypes, which takes the GIL first; a fault only happens inside the memcpy of a
gather (NumPy releases the GIL there), never inside malloc or the interpreter, so running Python code from it is
safe. Set ``NPYFEED_SIGBUS_GUARD=0`` to never install it; local reads then use ``pread`` (safe, slower).
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import sys
import threading
import weakref
from dataclasses import dataclass

__all__ = ["Watch", "enabled", "watch"]

_SIGBUS = 7 if sys.platform.startswith("linux") else -1
_SA_SIGINFO = 4
_MAP_FIXED = 0x10
_SI_ADDR_OFFSET = 16  # siginfo_t: si_signo, si_errno, si_code, (padding), then si_addr on 64-bit Linux


class _Sigaction(ctypes.Structure):
    # glibc's struct sigaction on 64-bit Linux (x86_64, aarch64): handler, 1024-bit mask, flags, restorer.
    _fields_ = [
        ("handler", ctypes.c_void_p),
        ("mask", ctypes.c_ulong * 16),
        ("flags", ctypes.c_int),
        ("restorer", ctypes.c_void_p),
    ]


_HANDLER_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


@dataclass
class Watch:
    """A registered mapping ``[start, stop)``; ``faulted`` turns True once a page of it vanished."""

    start: int
    stop: int
    faulted: bool = False


_lock = threading.Lock()
_watches: dict[int, Watch] = {}
_state: dict[str, object] = {}
_kept: list[object] = []  # every handler ever installed (one already replaced may still be running)


def _on_sigbus(signum: int, info: int, context: int) -> None:
    try:
        address = ctypes.c_void_p.from_address(info + _SI_ADDR_OFFSET).value or 0
        for w in list(_watches.values()):
            if w.start <= address < w.stop:
                page = address & ~(mmap.PAGESIZE - 1)
                libc = _state["libc"]
                prot, flags = mmap.PROT_READ, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_FIXED
                libc.mmap(page, w.stop - page, prot, flags, -1, 0)  # type: ignore[attr-defined]
                w.faulted = True
                return
        libc = _state["libc"]
        if _state.get("handed_over"):
            # The previous handler gave the fault back (faulthandler re-installs the one before it, us, then
            # re-raises): end with the default action, not a loop between the two.
            libc.signal(_SIGBUS, 0)  # type: ignore[attr-defined]
        else:
            _state["handed_over"] = True
            libc.sigaction(_SIGBUS, ctypes.byref(_state["previous"]), None)  # type: ignore[attr-defined, arg-type]
    except BaseException:  # never let an exception escape into C; the access faults again and dies as before
        with contextlib.suppress(BaseException):
            _state["libc"].sigaction(_SIGBUS, ctypes.byref(_state["previous"]), None)  # type: ignore[attr-defined, arg-type]


def enabled(recheck: bool = False) -> bool:
    """Install the handler (once); False where it cannot be (not 64-bit Linux, or ``NPYFEED_SIGBUS_GUARD=0``).

    ``recheck``: also put it back if someone replaced it since (``faulthandler.enable()`` after npyfeed mapped a
    file, say), keeping theirs as the one faults outside npyfeed's mappings go to. Called for each new mapping.
    """
    with _lock:
        if "ok" not in _state:
            _state["ok"] = _install()
        elif recheck and _state["ok"]:
            current = _Sigaction()
            libc = _state["libc"]
            if libc.sigaction(_SIGBUS, None, ctypes.byref(current)) == 0 and current.handler != _state["address"]:  # type: ignore[attr-defined]
                _state["ok"] = _install()
        return bool(_state["ok"])


def _install() -> bool:
    if _SIGBUS < 0 or ctypes.sizeof(ctypes.c_void_p) != 8 or os.environ.get("NPYFEED_SIGBUS_GUARD", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        libc.sigaction.argtypes = [ctypes.c_int, ctypes.POINTER(_Sigaction), ctypes.POINTER(_Sigaction)]
        libc.signal.restype = ctypes.c_void_p
        libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
        handler = _HANDLER_TYPE(_on_sigbus)
        action, previous = _Sigaction(), _Sigaction()
        action.handler = ctypes.cast(handler, ctypes.c_void_p).value
        action.flags = _SA_SIGINFO
        # Kept alive for the process's lifetime: the handler may run at any time from now on.
        _state.update(libc=libc, handler=handler, previous=previous, address=action.handler)
        _kept.append(handler)
        return libc.sigaction(_SIGBUS, ctypes.byref(action), ctypes.byref(previous)) == 0
    except (OSError, AttributeError):
        return False


def watch(mapping: mmap.mmap, address: int, length: int) -> Watch:
    """Register ``length`` bytes mapped at ``address`` by ``mapping`` until that mmap object is freed."""
    w = Watch(address, address + length)
    key = id(w)
    with _lock:
        _watches[key] = w
    weakref.finalize(mapping, _watches.pop, key, None)
    return w
