"""A loop-mounted btrfs for a benchmark run, and unmounting what a run made.

Shared by snapshot.py and spawn.py (``--backend btrfs``): the driver's
btrfs backend needs ``[lxc] container_path`` and ``image_cache_path`` on
one btrfs, which a test host rarely has, so a run makes one in a sparse
file of its own scratch directory. Everything here only touches paths
below that directory: containers are killed only in the run's own lxcpath.
"""

import os
import shutil
import subprocess
import sys
import time

UNMOUNT_WAIT_S = 10


def missing_tools():
    """Why --backend btrfs cannot run here, or None."""
    if not shutil.which('mkfs.btrfs') or not shutil.which('btrfs'):
        return ('--backend btrfs needs mkfs.btrfs and btrfs '
                '(Debian package btrfs-progs)')
    return None


class LoopBtrfs:
    """A btrfs in a sparse file, loop-mounted for the run.

    As the functional tests' fixture of the same name: ``close`` kills the
    run's containers, unmounts everything below the mount point and then
    it (the loop device, made with autoclear, goes with it; a leftover is
    detached) and removes the file, whatever happened before.
    """

    def __init__(self, base):
        self.image = os.path.join(base, 'btrfs.img')
        self.path = os.path.join(base, 'btrfs')
        self.lazy = []

    def make(self, size_mb):
        with open(self.image, 'wb') as f:
            f.truncate(size_mb << 20)
        subprocess.run(['mkfs.btrfs', '-q', '-f', self.image], check=True,
                       stdout=subprocess.DEVNULL)
        os.mkdir(self.path, 0o755)
        subprocess.run(['mount', '-t', 'btrfs', '-o', 'loop', self.image,
                        self.path], check=True)
        os.chmod(self.path, 0o755)   # the guest's root passes through

    def close(self):
        stop_containers(os.path.join(self.path, 'containers'))
        for point in sorted(mounts_under(self.path), reverse=True):
            if unmount(point):
                self.lazy.append(point)
        if os.path.exists(self.image):
            out = subprocess.run(['losetup', '-j', self.image],
                                 capture_output=True, text=True).stdout
            for line in out.splitlines():
                subprocess.run(['losetup', '-d', line.split(':', 1)[0]])
            os.unlink(self.image)


def mounts_under(path):
    """Mount points at or below ``path`` in this mount namespace."""
    with open('/proc/self/mountinfo') as f:
        points = [line.split()[4] for line in f]
    return [p for p in points
            if p == path or p.startswith(path.rstrip('/') + '/')]


def own_files_under(path):
    """Files below ``path`` this process holds open.

    liblxc, loaded in this process, keeps its log (the container's
    lxc.log, removed with the container) open until another container's
    config is loaded: the file system stays busy until we exit.
    """
    held = []
    for fd in os.listdir('/proc/self/fd'):
        try:
            target = os.readlink('/proc/self/fd/%s' % fd)
        except OSError:
            continue
        if target.startswith(path.rstrip('/') + '/'):
            held.append(target)
    return held


def unmount(path, lazy_below=()):
    """Unmount ``path``, waiting a little for a killed guest's processes to
    let go of it; lazily (it goes once the last user closes it) if this
    process holds a file there, if a file system it holds (``lazy_below``)
    is still in use, or if it stays busy. True if lazily."""
    deadline = time.monotonic() + UNMOUNT_WAIT_S
    while subprocess.run(['umount', path], stderr=subprocess.DEVNULL,
                         ).returncode:
        held = own_files_under(path) + [
            p for p in lazy_below if p.startswith(path.rstrip('/') + '/')]
        if held or time.monotonic() > deadline:
            print('%s is busy (%s): unmounted lazily; it goes when this '
                  'process exits' % (path, ', '.join(sorted(set(held))) or
                                     'not by us'), file=sys.stderr)
            subprocess.run(['umount', '--lazy', path], check=True)
            return True
        time.sleep(0.1)
    return False


def stop_containers(lxcpath):
    """Kill what is left running in this run's own lxcpath."""
    if not os.path.isdir(lxcpath):
        return
    for name in os.listdir(lxcpath):
        subprocess.run(['lxc-stop', '-k', '-n', name, '-P', lxcpath],
                       capture_output=True)
