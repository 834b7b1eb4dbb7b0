"""Moving an instance's files to another compute host, over ssh.

Resize and cold migration copy the files of a stopped instance (its root
and ephemeral disk images, or its root tree, and its console log) from the
source's ``[lxc] container_path`` to the same path on the destination, as
the libvirt driver copies its disks: a GNU tar stream (sparse files stay
sparse, numeric owners, xattrs and device nodes kept) piped into ``ssh
<dest> tar -x``. Nothing is shared between hosts; every byte crosses the
network between them.

The destination unpacks into ``<container_path>/.incoming/<uuid>`` and
renames it to ``<container_path>/<uuid>`` only once the stream is complete,
so a transfer that breaks off (the destination dies, its disk fills, the
link drops) never leaves anything that looks like an instance; the
destination removes stale incoming trees when its compute service starts.
A move to the same host copies locally (reflinks where the file system
has them) along the same two steps.

Every host must use the same ``[lxc] container_path`` (as libvirt's hosts
share ``instances_path``); ssh's user, port, key and known_hosts come from
``[lxc] migration_ssh_*``.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
import threading

from oslo_config import cfg
from oslo_utils import uuidutils

from nova_lxd_py import privsep

CONF = cfg.CONF

INCOMING = '.incoming'
# A host name or an IPv4/IPv6 address; never an ssh option.
_HOST = re.compile(r'^[A-Za-z0-9_][A-Za-z0-9_.:%-]{0,252}$')
# What may be sent: disk images, root trees, the console log.
_ENTRY = re.compile(r'^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$')
TAR_CREATE = ['tar', '--create', '--file=-', '--sparse', '--numeric-owner',
              '--xattrs', "--xattrs-include=*", '--acls']
TAR_EXTRACT = ['tar', '--extract', '--file=-', '--numeric-owner',
               '--same-permissions', '--xattrs', "--xattrs-include=*",
               '--acls']


def _uuid(name):
    if not uuidutils.is_uuid_like(name) or '/' in name:
        raise ValueError('not an instance uuid: %r' % name)
    return name


def _host(host):
    if not isinstance(host, str) or not _HOST.match(host):
        raise ValueError('not a host name or address: %r' % (host,))
    return host


def _entries(entries):
    for entry in entries:
        if not isinstance(entry, str) or not _ENTRY.match(entry):
            raise ValueError('not a file of an instance: %r' % (entry,))
    return list(entries)


def _confined(path):
    root = os.path.realpath(CONF.lxc.container_path)
    real = os.path.realpath(path)
    if not real.startswith(root + os.sep):
        raise ValueError('%s is outside [lxc] container_path' % path)
    return real


def incoming_dir(name):
    return os.path.join(CONF.lxc.container_path, INCOMING, _uuid(name))


def final_dir(name):
    return os.path.join(CONF.lxc.container_path, _uuid(name))


def ssh_argv(host):
    """ssh to ``host`` as ``[lxc] migration_ssh_*`` say, never asking."""
    argv = ['ssh', '-o', 'BatchMode=yes',
            '-o', 'ConnectTimeout=%d' % CONF.lxc.migration_ssh_connect_timeout,
            '-o', 'ServerAliveInterval=5', '-o', 'ServerAliveCountMax=3',
            '-p', str(CONF.lxc.migration_ssh_port),
            '-l', CONF.lxc.migration_ssh_user]
    if CONF.lxc.migration_ssh_identity_file:
        argv += ['-i', CONF.lxc.migration_ssh_identity_file,
                 '-o', 'IdentitiesOnly=yes']
    if CONF.lxc.migration_ssh_known_hosts_file:
        argv += ['-o', 'UserKnownHostsFile=' +
                 CONF.lxc.migration_ssh_known_hosts_file,
                 '-o', 'StrictHostKeyChecking=yes']
    return argv + ['--', _host(host)]


def _receive_script(name):
    """The destination's side: unpack, then rename into place."""
    inc, final = incoming_dir(name), final_dir(name)
    q = shlex.quote
    return ('set -e; umask 022; rm -rf {inc}; mkdir -p {top}; '
            'mkdir -m 0711 {inc}; {tar} -C {inc}; '
            'if [ -e {final} ]; then rm -rf {inc}; '
            'echo "{final} exists already" >&2; exit 17; fi; '
            'mv -T {inc} {final}').format(
                inc=q(inc), top=q(os.path.dirname(inc)), final=q(final),
                tar=' '.join(q(a) for a in TAR_EXTRACT))


def _tail(text, limit=1000):
    text = (text or b'').decode(errors='replace').strip()
    return text[-limit:]


def _pump(tar, sink, first=b''):
    """``first``, then tar's output, into ``sink``; the bytes of tar's.
    A destination that gave up ends it early (its stderr says why)."""
    sent = 0
    try:
        sink.write(first)
        while True:
            chunk = tar.stdout.read(1 << 20)
            if not chunk:
                break
            sink.write(chunk)
            sent += len(chunk)
    except BrokenPipeError:
        pass
    return sent


def fill_into_place(name, fill):
    """Instance ``name``'s directory on this host, made whole or not at
    all: ``fill(path)`` fills a fresh ``.incoming/<uuid>``, which is then
    renamed into place, unless the instance has a directory here already.
    On any failure the incoming directory goes."""
    inc, final = _confined(incoming_dir(name)), final_dir(name)
    shutil.rmtree(inc, ignore_errors=True)
    os.makedirs(os.path.dirname(inc), mode=0o711, exist_ok=True)
    os.mkdir(inc, 0o711)
    try:
        fill(inc)
        if os.path.lexists(final):
            raise OSError('%s exists already' % final)
        os.rename(inc, final)
    except BaseException:
        shutil.rmtree(inc, ignore_errors=True)
        raise


@privsep.sys_admin_pctxt.entrypoint
def send(source_dir: str, entries: list, host: str, name: str) -> int:
    """Stream ``entries`` of ``source_dir`` to instance ``name``'s
    directory on ``host``; return the bytes of the stream.

    Raises OSError with what tar or ssh said when either fails; the
    destination then has no directory of the instance.
    """
    source_dir, entries = _confined(source_dir), _entries(entries)
    ssh = ssh_argv(host) + [_receive_script(name)]
    tar = subprocess.Popen(TAR_CREATE + ['-C', source_dir, '--'] + entries,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        remote = subprocess.Popen(ssh, stdin=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE)
    except Exception:
        tar.kill()
        tar.wait()
        raise
    try:
        sent = _pump(tar, remote.stdin)
    finally:
        tar.stdout.close()
        try:
            remote.stdin.close()
        except BrokenPipeError:
            pass
        tar_rc = tar.wait()   # EPIPE ends it if we stopped reading
        remote_err = remote.stderr.read()
        remote_rc = remote.wait()
        tar_err = tar.stderr.read()
    if remote_rc:
        raise OSError('receiving on %s failed (exit %d): %s' % (
            host, remote_rc, _tail(remote_err) or 'no message'))
    if tar_rc:
        raise OSError('reading %s failed: %s' % (source_dir, _tail(tar_err)))
    return sent


@privsep.sys_admin_pctxt.entrypoint
def copy_local(source_dir: str, entries: list, name: str) -> None:
    """The same-host variant of send(): a local copy (reflinks where the
    file system has them, sparse files kept sparse)."""
    source_dir, entries = _confined(source_dir), _entries(entries)

    def copy(inc):
        for entry in entries:
            proc = subprocess.run(
                ['cp', '-a', '--sparse=always', '--reflink=auto', '-T',
                 os.path.join(source_dir, entry), os.path.join(inc, entry)],
                capture_output=True)
            if proc.returncode:
                raise OSError('copying %s failed: %s' % (
                    entry, _tail(proc.stderr)))

    fill_into_place(name, copy)


@privsep.sys_admin_pctxt.entrypoint
def remove_remote_incoming(host: str, name: str) -> None:
    """Remove instance ``name``'s incoming tree on ``host`` (a transfer
    that broke off); never a directory that was there before."""
    script = 'rm -rf -- %s' % shlex.quote(incoming_dir(name))
    proc = subprocess.run(ssh_argv(host) + [script], capture_output=True,
                          timeout=CONF.lxc.migration_ssh_connect_timeout + 60)
    if proc.returncode:
        raise OSError('removing on %s failed: %s' % (host,
                                                     _tail(proc.stderr)))


@privsep.sys_admin_pctxt.entrypoint
def remove_incoming() -> list:
    """Remove every incoming tree of this host (transfers that broke off
    while this host's compute service was down); their instance uuids."""
    top = os.path.join(CONF.lxc.container_path, INCOMING)
    try:
        names = os.listdir(top)
    except FileNotFoundError:
        return []
    for name in names:
        shutil.rmtree(os.path.join(top, name), ignore_errors=True)
    return sorted(names)


@privsep.sys_admin_pctxt.entrypoint
def entries_of(source_dir: str) -> list:
    """Every entry of an instance's directory (a live migration takes
    them all: the container's config, disks, checkpoint, console log)."""
    return _entries(sorted(os.listdir(_confined(source_dir))))


def arrival_argv(name):
    """The destination's side of a live migration, run there over ssh:
    ``python -m nova_lxd_py.virt.arrive`` with this host's paths (which
    every host shares, as it shares ``[lxc] container_path``)."""
    return [sys.executable, '-I', '-m', 'nova_lxd_py.virt.arrive',
            '--container-path', CONF.lxc.container_path,
            '--image-cache-path', CONF.lxc.image_cache_path,
            '--root-disk-backend', CONF.lxc.root_disk_backend,
            '--timeout', str(CONF.lxc.checkpoint_timeout),
            _uuid(name)]


# Live migrations under way from this host: instance uuid -> the ssh
# process running nova_lxd_py.virt.arrive on the destination.
_ARRIVALS = {}
READY = b'ready\n'
GO = b'go\n'


def _close_stdin(proc):
    """End the destination's input; communicate() must not touch it."""
    try:
        proc.stdin.close()
    except BrokenPipeError:
        pass
    proc.stdin = None


@privsep.sys_admin_pctxt.entrypoint
def arrival_start(host: str, name: str) -> None:
    """Start the destination's side of instance ``name``'s live migration
    on ``host`` and wait until it is ready (its imports done, before the
    guest is checkpointed: none of it counts as the guest's downtime).
    Raises OSError with what it said if it does not get ready."""
    _uuid(name)
    if name in _ARRIVALS:
        raise OSError('a live migration of %s is under way already' % name)
    script = ' '.join(shlex.quote(a) for a in arrival_argv(name))
    proc = subprocess.Popen(ssh_argv(host) + [script],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = CONF.lxc.migration_ssh_connect_timeout + 60
    ready = [b'']

    def read_ready():
        ready[0] = proc.stdout.readline()

    reader = threading.Thread(target=read_ready, daemon=True)
    reader.start()
    reader.join(deadline)
    if ready[0] != READY:
        proc.kill()
        _, err = proc.communicate()
        raise OSError('the destination %s did not get ready: %s' % (
            host, _tail(err) or 'no answer within %d s' % deadline))
    _ARRIVALS[name] = proc


@privsep.sys_admin_pctxt.entrypoint
def arrival_finish(source_dir: str, entries: list, name: str) -> dict:
    """Stream ``entries`` of ``source_dir`` to the ready destination of
    instance ``name``, which unpacks them as its directory and restores
    the guest. {'sent': bytes, 'error': '' once the guest runs there,
    else why not}; the destination then keeps nothing but, if the
    restore failed, the directory (for Nova's rollback there)."""
    source_dir, entries = _confined(source_dir), _entries(entries)
    proc = _ARRIVALS.pop(_uuid(name), None)
    if proc is None:
        return {'sent': 0, 'error': 'no destination is ready for %s' % name}
    tar = subprocess.Popen(TAR_CREATE + ['-C', source_dir, '--'] + entries,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        sent = _pump(tar, proc.stdin, first=GO)
    finally:
        tar.stdout.close()
        _close_stdin(proc)
        tar_rc = tar.wait()
        tar_err = tar.stderr.read()
    try:
        out, err = proc.communicate(
            timeout=CONF.lxc.checkpoint_timeout + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {'sent': sent, 'error': 'the destination did not answer in '
                'time'}
    if tar_rc:
        return {'sent': sent, 'error': 'reading %s failed: %s' % (
            source_dir, _tail(tar_err))}
    if proc.returncode:
        return {'sent': sent, 'error': 'the destination failed (exit %d): '
                '%s' % (proc.returncode, _tail(err) or 'no message')}
    return {'sent': sent, 'error': ''}


@privsep.sys_admin_pctxt.entrypoint
def arrival_cancel(name: str) -> None:
    """The live migration of ``name`` stops before its data was sent: the
    destination's side ends, leaving nothing."""
    proc = _ARRIVALS.pop(_uuid(name), None)
    if proc is None:
        return
    _close_stdin(proc)
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
