"""Reading a guest's root file system from the host, as the guest would.

A guest's tree is untrusted: its symlinks may point anywhere. These helpers
resolve paths inside the tree only, never through the host's own files.
"""

import os


def resolve_in_root(rootfs, path, max_links=40):
    """Host path of guest ``path``, following links as the guest would.

    Every component is resolved inside ``rootfs``: an absolute link target
    restarts at the guest's root, never the host's. None if it loops.
    """
    parts = [p for p in path.split('/') if p]
    resolved = []
    while parts:
        part = parts.pop(0)
        if part == '..':
            resolved = resolved[:-1]
            continue
        if part == '.':
            continue
        host_path = os.path.join(rootfs, *resolved, part)
        if os.path.islink(host_path):
            max_links -= 1
            if max_links < 0:
                return None
            target = os.readlink(host_path)
            if target.startswith('/'):
                resolved = []
            parts = [p for p in target.split('/') if p] + parts
            continue
        resolved.append(part)
    return os.path.join(rootfs, *resolved)


def init_kind(rootfs):
    """'busybox', 'systemd' or 'sysv' from what /sbin/init is; None if none."""
    path = resolve_in_root(rootfs, '/sbin/init')
    if path is None or not os.path.isfile(path):
        return None
    # Judge the guest's path only: the cache's host path may say anything.
    guest_path = os.path.relpath(path, rootfs)
    if os.path.basename(guest_path) == 'busybox':
        return 'busybox'
    return 'systemd' if 'systemd' in guest_path else 'sysv'
