"""Keeps a restored guest's console: its pty master, written to its log.

A guest that liblxc starts has its console held by liblxc's monitor, which
writes it to ``lxc.console.logfile``. liblxc's restore gives the restored
guest no console (see criu_shim), so ``checkpoint.restore`` opens a pty for
it and starts this process, detached, with the master: it appends what the
guest writes to the same log, rotated at the same size into ``<log>.1`` as
liblxc does (``lxc.console.rotate = 1``), so the console-output API reads
one log whichever way the guest was started. It exits when the guest's last
holder of the console closes it (the guest stopped).

    python -m nova_lxd_py.virt.console_keeper FD LOG MAX_BYTES
"""

import errno
import os
import sys


def keep(fd, log, max_bytes):
    out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(out).st_size
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                if e.errno == errno.EIO:   # no slave holder left
                    return
                raise
            if not data:
                return
            if size + len(data) > max_bytes and size:
                os.close(out)
                os.replace(log, log + '.1')
                out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT |
                              os.O_TRUNC, 0o600)
                size = 0
            os.write(out, data)
            size += len(data)
    finally:
        os.close(out)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    fd, log, max_bytes = int(argv[0]), argv[1], int(argv[2])
    keep(fd, log, max_bytes)
    return 0


if __name__ == '__main__':
    sys.exit(main())
