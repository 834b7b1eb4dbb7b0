#!/usr/bin/env python3
"""The two ends of one TCP connection, for tools/criu/build.sh --check.

  tcp-pair.py server PORT LOG   accept ONE connection on 127.0.0.1:PORT, then
                                close the listener and echo every line back
  tcp-pair.py client PORT LOG   connect, then send "N\\n" and expect "N\\n"
                                back, N = 1, 2, ..., every 20 ms, for ever

Run each in the background (`&`): they start a session of their own and
append one line per event to LOG, flushed at once: "ready PID", "accepted
ADDR:PORT", "connected LPORT", then "ok N" per round trip (client) or
"echo N" (server), or "error ..." before exiting 1. The server accepts only
once, so a client that still gets answers after a restore is still on its
original connection. Each end exits by itself after TCP_PAIR_LIFETIME
seconds (default 120), so nothing outlives a check that died half way.
"""
import os
import signal
import socket
import sys
import time

LIFETIME = float(os.environ.get("TCP_PAIR_LIFETIME", "120"))


def log(fp, msg):
    fp.write(msg + "\n")
    fp.flush()


def server(port, fp):
    lsk = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsk.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsk.bind(("127.0.0.1", port))
    lsk.listen(1)
    log(fp, "ready %d" % os.getpid())
    lsk.settimeout(LIFETIME)
    sk, peer = lsk.accept()
    lsk.close()
    log(fp, "accepted %s:%d" % peer)
    sk.settimeout(LIFETIME)
    rfile = sk.makefile("rb")
    for line in rfile:
        sk.sendall(line)
        log(fp, "echo %s" % line.decode().strip())
    log(fp, "error: peer closed")
    sys.exit(1)


def client(port, fp):
    sk = socket.create_connection(("127.0.0.1", port), timeout=10)
    log(fp, "ready %d" % os.getpid())
    log(fp, "connected %d" % sk.getsockname()[1])
    # A restore may take a few seconds; the socket must not time out then.
    sk.settimeout(30)
    rfile = sk.makefile("rb")
    n = 0
    while True:
        n += 1
        sk.sendall(b"%d\n" % n)
        reply = rfile.readline()
        if reply.strip() != b"%d" % n:
            log(fp, "error: sent %d, got %r" % (n, reply))
            sys.exit(1)
        log(fp, "ok %d" % n)
        time.sleep(0.02)


def main():
    role, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    # A session and process group of our own: criu dumps the tree without
    # --shell-job and restores it without a terminal. (setsid() needs a
    # process that leads no group: fork if we do.)
    if os.getpgrp() == os.getpid() and os.fork():
        os._exit(0)
    os.setsid()
    # Nothing of the caller's: inherited descriptors (a CI runner's pipes, a
    # file outside our mount namespace) would go into the dump.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    fp = open(path, "a")
    signal.alarm(int(LIFETIME))
    try:
        {"server": server, "client": client}[role](port, fp)
    except Exception as exc:  # noqa: BLE001 - reported in the log
        log(fp, "error: %r" % (exc,))
        sys.exit(1)


if __name__ == "__main__":
    main()
