"""The destination's side of a live migration: the arriving guest runs.

The source starts this on the destination over ssh, as root, before it
checkpoints the guest (``transfer.arrival_start``)::

    python -m nova_lxd_py.virt.arrive --container-path P \\
        --image-cache-path C --root-disk-backend B --timeout T UUID

It loads what it needs and says ``ready``. The source then checkpoints the
guest and writes ``go`` followed by a tar stream of the guest's directory
(the container's config, disks, checkpoint and console log;
``transfer.arrival_finish``). This unpacks it into
``<container_path>/.incoming/<uuid>``, renames it into place (refusing if
the instance has a directory here already), mounts the guest's disks and
restores the checkpoint (``checkpoint.restore``: the ports that
``pre_live_migration`` plugged here are moved into the guest). Exit 0: the
guest runs here, its checkpoint removed; it prints the seconds from
``go``. Else exit 1 with why on stderr: nothing is left but, once
unpacked, the stopped directory, for Nova's rollback here
(``rollback_live_migration_at_destination``); the source restores the
guest from its own copy. End of input before ``go``: exit 0, nothing done.

The paths come from the source: every host has the same ones (as it has
the same ``[lxc] container_path`` for cold moves).
"""

import argparse
import os
import subprocess
import sys
import time

# All loaded before ``ready``: seconds of imports are no downtime.
from nova_lxd_py import conf
from nova_lxd_py import privsep
from nova_lxd_py.privsep import fs
from nova_lxd_py.storage import backends
from nova_lxd_py.storage import ephemeral
from nova_lxd_py.storage import transfer
from nova_lxd_py.virt import checkpoint
from nova_lxd_py.virt import container


def parse(argv):
    parser = argparse.ArgumentParser(prog='nova_lxd_py.virt.arrive')
    parser.add_argument('--container-path', required=True)
    parser.add_argument('--image-cache-path', required=True)
    parser.add_argument('--root-disk-backend', required=True)
    parser.add_argument('--timeout', type=int, required=True)
    parser.add_argument('uuid')
    return parser.parse_args(argv)


def prepare(args):
    """Configure what the arrival needs."""
    CONF = conf.CONF
    CONF([], project='nova', default_config_files=[],
         default_config_dirs=[])
    CONF.set_override('container_path', args.container_path, group='lxc')
    CONF.set_override('image_cache_path', args.image_cache_path,
                      group='lxc')
    # Run as root over ssh: the entrypoints run in this process.
    privsep.sys_admin_pctxt.client_mode = False


def read_line(fd):
    """One line from ``fd``, a byte at a time: what follows it (the tar
    stream) stays unread for tar."""
    line = b''
    while not line.endswith(b'\n'):
        byte = os.read(fd, 1)
        if not byte:
            break
        line += byte
    return line


def unpack(name, fd):
    """The tar stream on ``fd`` as instance ``name``'s directory."""
    def extract(inc):
        done = subprocess.run(transfer.TAR_EXTRACT + ['-C', inc], stdin=fd,
                              capture_output=True)
        if done.returncode:
            raise OSError('unpacking failed: %s' % done.stderr.decode(
                errors='replace').strip()[-500:])

    transfer.fill_into_place(name, extract)


def restore(args):
    """'' once the guest runs here, else why not."""
    cdir = container.container_dir(args.uuid)
    backend = backends.get(args.root_disk_backend)
    try:
        backend.activate(cdir)
        ephemeral.activate(cdir)
        why = checkpoint.restore(args.uuid, args.timeout)
    except Exception as e:
        why = '%s: %s' % (type(e).__name__, e)
    if why:
        for undo in (backend.deactivate, ephemeral.destroy):
            try:
                undo(cdir)
            except Exception as e:
                why += '; and %s failed: %s' % (undo.__name__, e)
        return why
    fs.remove_tree(checkpoint.images_dir(args.uuid))
    return ''


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    prepare(args)
    sys.stdout.write('ready\n')
    sys.stdout.flush()
    if read_line(0) != b'go\n':
        return 0    # the source gave up before sending anything
    started = time.monotonic()
    try:
        unpack(args.uuid, 0)
    except Exception as e:
        sys.stderr.write('%s\n' % e)
        return 1
    why = restore(args)
    if why:
        sys.stderr.write('%s\n' % why)
        return 1
    sys.stdout.write('restored in %.3f s\n' % (time.monotonic() - started))
    return 0


if __name__ == '__main__':
    sys.exit(main())
