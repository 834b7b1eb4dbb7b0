"""A size-limited file system for one instance's writable data.

A flavor's ``root_gb`` must mean something: what the guest writes lands in
an ext4 file system of exactly that size, made in a sparse file in the
container's directory and loop-mounted on the host at ``<dir>/disk`` while
the instance exists. A guest that fills it gets ENOSPC; the host's own file
system only ever holds what the guest really wrote.

The mount is made when the instance is created and again before every
start (after a host reboot it is gone), and removed with the instance.
Why a host mount: ext4 cannot be mounted inside the container's user
namespace, and liblxc's rootfs (overlay or directory) must be a path.
"""

import os
import re
import subprocess
import time

from oslo_config import cfg

from nova_lxd_py import privsep

CONF = cfg.CONF

IMAGE = 'root.img'
MOUNT = 'disk'
ROOT = 'root'
# Names of an instance's other disks (ephemeral0, ephemeral1, ...).
# How long wait_released waits for a checkpointed guest to let go.
DETACH_SECONDS = 10
_NAME = re.compile(r'^ephemeral[0-9]{1,3}$')


def _files(name):
    """(image file, mount point) names in the container dir for a disk."""
    if name == ROOT:
        return IMAGE, MOUNT
    if not _NAME.match(name):
        raise ValueError('not a disk name: %r' % name)
    return name + '.img', name


def image_path(container_dir, name=ROOT):
    return os.path.join(container_dir, _files(name)[0])


def mount_point(container_dir, name=ROOT):
    return os.path.join(container_dir, _files(name)[1])


def names(container_dir):
    """The instance's disks other than its root, in order."""
    try:
        found = [n[:-4] for n in os.listdir(container_dir)
                 if n.endswith('.img') and _NAME.match(n[:-4])]
    except FileNotFoundError:
        return []
    return sorted(found, key=lambda n: int(n[len('ephemeral'):]))


def _confined(path):
    root = os.path.realpath(CONF.lxc.container_path)
    real = os.path.realpath(path)
    if not real.startswith(root + os.sep):
        raise ValueError('%s is outside [lxc] container_path' % path)
    return real


def _run(argv):
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode:
        raise OSError('%s failed: %s' % (argv[0], proc.stderr.strip()))
    return proc.stdout


@privsep.sys_admin_pctxt.entrypoint
def make(container_dir: str, size_gb: int, uid: int, gid: int,
         source: str, name: str = ROOT) -> None:
    """The sparse ext4 file system, its root owned by the guest's root.

    ``source`` (a directory, or '') is copied in by mkfs itself, owners and
    modes kept, so no mount is needed to fill it.
    """
    cdir = _confined(container_dir)
    os.makedirs(cdir, mode=0o755, exist_ok=True)
    image = os.path.join(cdir, _files(name)[0])
    with open(image, 'wb') as f:
        f.truncate(size_gb << 30)
    argv = ['mkfs.ext4', '-q', '-F', '-m', '0', '-L', name,
            '-E', 'lazy_itable_init=1,lazy_journal_init=1,root_owner=%d:%d'
            % (uid, gid)]
    if source:
        argv += ['-d', source]
    try:
        _run(argv + [image])
    except Exception:
        os.unlink(image)
        raise


@privsep.sys_admin_pctxt.entrypoint
def mount(container_dir: str, name: str = ROOT) -> None:
    """Mount a disk of the instance (the root at ``<dir>/disk``) if it is
    not mounted."""
    cdir = _confined(container_dir)
    image, point = (os.path.join(cdir, f) for f in _files(name))
    if os.path.ismount(point):
        return
    os.makedirs(point, mode=0o711, exist_ok=True)
    _run(['mount', '-t', 'ext4', '-o', 'loop,nodev,nosuid,noatime', image,
          point])


@privsep.sys_admin_pctxt.entrypoint
def unmount(container_dir: str, name: str = ROOT) -> None:
    """Unmount it (the loop device goes with it); no error if it is not."""
    point = os.path.join(_confined(container_dir), _files(name)[1])
    if os.path.ismount(point):
        try:
            _run(['umount', point])
        except OSError:
            # Busy (a process of a guest that is being killed still holds
            # it): detach now, the kernel frees it with its last user.
            _run(['umount', '--lazy', point])


@privsep.sys_admin_pctxt.entrypoint
def wait_released(container_dir: str, name: str = ROOT) -> bool:
    """Wait (up to DETACH_SECONDS) until no loop device is backed by the
    unmounted disk; True once none is.

    A guest that CRIU just checkpointed can still hold its file system in
    its mount namespace, which the kernel tears down a moment later and
    which writes the disk then (ext4's superblock): a live migration that
    copied the image at once read it changing, and mounting it again
    before then would mount one image twice. Its loop device goes with
    that last user.
    """
    image = os.path.join(_confined(container_dir), _files(name)[0])
    deadline = time.monotonic() + DETACH_SECONDS
    while _loop_of(image):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _loop_of(image):
    """The loop devices backed by ``image`` (losetup's lines), or ''."""
    proc = subprocess.run(['losetup', '--associated', image],
                          capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ''


@privsep.sys_admin_pctxt.entrypoint
def grow(container_dir: str, size_gb: int, name: str = ROOT) -> bool:
    """Grow an unmounted disk of the instance to ``size_gb`` (a resize).

    False if it has that size already. Never shrinks: ext4 cannot shrink
    safely under a guest's data, so a smaller size is a ValueError (the
    driver refuses such a resize before anything is touched).
    """
    cdir = _confined(container_dir)
    image, point = (os.path.join(cdir, f) for f in _files(name))
    if os.path.ismount(point):
        raise ValueError('%s is mounted' % point)
    old, new = os.path.getsize(image), size_gb << 30
    if new < old:
        raise ValueError('%s is %d bytes, larger than %d GiB' % (
            image, old, size_gb))
    if new == old:
        return False
    proc = subprocess.run(['e2fsck', '-f', '-p', image], capture_output=True,
                          text=True)
    if proc.returncode > 1:   # 1: errors corrected
        raise OSError('e2fsck of %s failed: %s' % (image,
                                                   proc.stderr.strip()))
    with open(image, 'r+b') as f:
        f.truncate(new)
    try:
        _run(['resize2fs', image])
    except Exception:
        with open(image, 'r+b') as f:
            f.truncate(old)
        raise
    return True


@privsep.sys_admin_pctxt.entrypoint
def usage(container_dir: str) -> list:
    """[bytes used, bytes in all] of the instance's file system."""
    st = os.statvfs(os.path.join(_confined(container_dir), MOUNT))
    return [(st.f_blocks - st.f_bfree) * st.f_frsize,
            st.f_blocks * st.f_frsize]
