"""`python tests/netwait.py ARGS...` runs `phinetune ARGS` and prints, as the last line of its stderr, the seconds
it spent waiting on the network (name lookups, connects, TLS handshakes, socket reads) and asleep (retry back-offs):
`network wait: 0.123 s`.

For the tests that say a command does not wait on an unreachable Hub: this figure is what such a wait is made of,
and it does not grow with the machine's load, while the command's wall time does (importing torch alone takes
seconds more on a busy machine).
"""

from __future__ import annotations

import atexit
import functools
import runpy
import socket
import ssl
import sys
import time

waited = 0.0
_clock = time.perf_counter


def _timed(call):
    @functools.wraps(call)
    def wrapper(*args, **kwargs):
        global waited
        start = _clock()
        try:
            return call(*args, **kwargs)
        finally:
            waited += _clock() - start

    return wrapper


def _report() -> None:
    sys.stderr.write(f"\nnetwork wait: {waited:.3f} s\n")
    sys.stderr.flush()


socket.getaddrinfo = _timed(socket.getaddrinfo)
for _name in ("connect", "connect_ex", "recv", "recv_into", "recvfrom", "sendall"):
    setattr(socket.socket, _name, _timed(getattr(socket.socket, _name)))
for _name in ("do_handshake", "read", "recv", "recv_into"):
    setattr(ssl.SSLSocket, _name, _timed(getattr(ssl.SSLSocket, _name)))
time.sleep = _timed(time.sleep)

if __name__ == "__main__":
    atexit.register(_report)
    sys.argv = ["phinetune", *sys.argv[1:]]
    runpy.run_module("phinetune", run_name="__main__", alter_sys=True)
