"""A small Debian guest with systemd and cloud-init, built by debootstrap.

The root file system comes from the Debian archive the host's apt uses, for
the host's own release (Debian 12 and 13 alike), and is packed as a
zstd tarball that the driver takes from Glance (raw/bare). It is built once
per host: the result is cached under /var/tmp, keyed by release, packages
and BUILD_VERSION, written atomically (temp dir + rename) under a file
lock, so concurrent test processes build it once and share it.

``python -m nova_lxd_py.tests.debian_image`` builds it (or finds it) and
prints its path.
"""

import fcntl
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

# Bump when the build steps change: cached images of older steps are not
# reused (the packages and cloud_cfg are part of the key already).
BUILD_VERSION = 1

PACKAGES = (
    'systemd-sysv',     # systemd as /sbin/init; runs cloud-init's stages
    'cloud-init',
    'ifupdown',         # cloud-init's "eni" renderer needs ifup/ifdown
    'isc-dhcp-client',  # ifupdown's dhcp; the OpenStack source's lease
    'net-tools',        # route(8): the eni renderer's static routes
    'iproute2',
    'iputils-ping',
)

CACHE_DIR = '/var/tmp/nova-lxd-py-debian-guest'
APT_DIR = '/etc/apt'
OS_RELEASE = '/etc/os-release'
DEBIAN_VERSION = '/etc/debian_version'
DEFAULT_MIRROR = 'http://deb.debian.org/debian'
CODENAMES = {'12': 'bookworm', '13': 'trixie', '14': 'forky'}

# Only the sources a config drive or a metadata service can give: the
# others cost minutes of probing in a guest that has none of them.
CLOUD_CFG = """\
# nova-lxd-py test image: Nova gives a config drive or a metadata service.
datasource_list: [ ConfigDrive, OpenStack, None ]
# Built in: no locale to generate at boot (the image has none to build from).
locale: C.UTF-8
"""
# Without sshd (and ssh-keygen) there are no host keys to make: cloud-init
# would log each attempt as an error.
NO_SSHD_CFG = """\
ssh_genkeytypes: []
"""


def cloud_cfg(packages):
    """The image's /etc/cloud/cloud.cfg.d/90_nova_lxd_py.cfg."""
    return CLOUD_CFG + ('' if 'openssh-server' in packages else NO_SSHD_CFG)


# What the build leaves no trace of: caches, logs and the build host's
# identity (a guest gets its own from cloud-init and systemd).
_EMPTIED_DIRS = ('var/cache/apt', 'var/lib/apt/lists', 'var/log',
                 'var/cache/debconf', 'dev', 'tmp', 'var/tmp')
_EMPTIED_FILES = ('etc/hostname', 'etc/machine-id', 'etc/resolv.conf')
_REMOVED = ('var/lib/dbus/machine-id', 'usr/share/doc', 'usr/share/man',
            'usr/share/info', 'usr/share/locale')


def skip_reason():
    """Why the image cannot be built here, or None if it can."""
    if os.geteuid() != 0:
        return 'building the Debian guest image (debootstrap) needs root'
    if not shutil.which('debootstrap'):
        return ('debootstrap is not installed (apt-get install debootstrap) '
                'to build the Debian guest image')
    if not shutil.which('zstd'):
        return 'zstd is not installed, to pack the Debian guest image'
    return None


def _os_release():
    fields = {}
    try:
        with open(OS_RELEASE) as f:
            for line in f:
                key, sep, value = line.strip().partition('=')
                if sep:
                    fields[key] = value.strip('"\'')
    except FileNotFoundError:
        pass
    return fields


def host_release():
    """The host's Debian codename: bookworm, trixie ..."""
    fields = _os_release()
    if fields.get('VERSION_CODENAME'):
        return fields['VERSION_CODENAME']
    try:
        with open(DEBIAN_VERSION) as f:
            version = f.read().strip()
    except FileNotFoundError:
        raise RuntimeError('not a Debian host: no /etc/debian_version')
    # "12.11" on a release, "trixie/sid" before one.
    if '/' in version:
        return version.split('/')[0]
    major = version.split('.')[0]
    if major not in CODENAMES:
        raise RuntimeError('unknown Debian version %r' % version)
    return CODENAMES[major]


def _one_line_sources(text):
    """(uri, [suites]) of a sources.list's ``deb`` lines."""
    for line in text.splitlines():
        words = line.split('#', 1)[0].split()
        if not words or words[0] != 'deb':
            continue
        words = words[1:]
        if words and words[0].startswith('['):     # [signed-by=... arch=...]
            while words and not words[0].endswith(']'):
                words.pop(0)
            words = words[1:]
        if len(words) >= 2:
            yield words[0], [words[1]]


def _deb822_sources(text):
    """(uri, [suites]) of a .sources file's enabled ``deb`` stanzas."""
    for stanza in text.split('\n\n'):
        fields, key = {}, None
        for line in stanza.splitlines():
            if line.startswith('#') or not line.strip():
                continue
            if line[0] in ' \t' and key:
                fields[key] += ' ' + line.strip()
                continue
            key, _, value = line.partition(':')
            key = key.strip().lower()
            fields[key] = value.strip()
        if 'deb' not in fields.get('types', '').split() or \
                fields.get('enabled', 'yes').lower() == 'no':
            continue
        suites = fields.get('suites', '').split()
        for uri in fields.get('uris', '').split():
            yield uri, suites


def host_mirror(release):
    """The archive URI the host's apt fetches ``release`` itself from."""
    parts = os.path.join(APT_DIR, 'sources.list.d')
    files = [os.path.join(APT_DIR, 'sources.list')] + sorted(
        glob.glob(os.path.join(parts, '*.list')) +
        glob.glob(os.path.join(parts, '*.sources')))
    for path in files:
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            continue
        parse = _deb822_sources if path.endswith('.sources') else \
            _one_line_sources
        for uri, suites in parse(text):
            if release in suites:
                return uri.rstrip('/')
    return DEFAULT_MIRROR


def image_path(release=None, packages=PACKAGES):
    """Where the image for ``release`` and ``packages`` is cached."""
    release = release or host_release()
    key = hashlib.sha256(repr((BUILD_VERSION, cloud_cfg(packages), release,
                               sorted(packages), os.uname().machine)
                              ).encode()).hexdigest()
    return os.path.join(CACHE_DIR, 'debian-%s-%s.tar.zst' % (release,
                                                             key[:12]))


def build(release=None, packages=PACKAGES, mirror=None):
    """Path of the guest image tarball (.tar.zst), built if not cached.

    Concurrent callers (threads or processes) wait for one build. Raises
    unittest.SkipTest when the host cannot build it (see skip_reason) and
    RuntimeError (debootstrap's output in it) when the build fails.
    """
    reason = skip_reason()
    if reason:
        raise unittest.SkipTest(reason)
    release = release or host_release()
    path = image_path(release, packages)
    if os.path.exists(path):
        return path
    os.makedirs(CACHE_DIR, exist_ok=True)
    with open(path + '.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(path):   # another process built it meanwhile
            return path
        # Under the lock, a work dir of this image is a killed builder's.
        prefix = '.build-%s-' % os.path.basename(path)
        for stale in glob.glob(os.path.join(CACHE_DIR, prefix + '*')):
            _remove_tree(stale)
        work = tempfile.mkdtemp(prefix=prefix, dir=CACHE_DIR)
        try:
            rootfs = os.path.join(work, 'rootfs')
            _debootstrap(rootfs, release, packages,
                         mirror or host_mirror(release))
            _configure(rootfs, packages)
            tarball = os.path.join(work, 'image.tar.zst')
            _pack(rootfs, tarball)
            os.rename(tarball, path)
        finally:
            _remove_tree(work)
    return path


def _remove_tree(path):
    """rm -rf ``path``, unmounting first what a killed debootstrap left
    mounted in it (/proc, /sys of the chroot)."""
    with open('/proc/self/mountinfo') as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points
                         if p.startswith(path.rstrip('/') + '/')),
                        reverse=True):
        subprocess.run(['umount', '-l', point], capture_output=True,
                       check=False)
    shutil.rmtree(path, ignore_errors=True)


def _run(argv, what, log_path=None):
    result = subprocess.run(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, DEBIAN_FRONTEND='noninteractive', LC_ALL='C'),
        check=False)
    if result.returncode:
        tail = result.stdout[-3000:]
        if log_path and os.path.exists(log_path):
            with open(log_path, errors='replace') as f:
                tail += '\n--- %s:\n%s' % (log_path, f.read()[-3000:])
        raise RuntimeError('%s failed (exit %d):\n%s'
                           % (what, result.returncode, tail))


def _debootstrap(rootfs, release, packages, mirror):
    # debootstrap's own resolver follows no virtual packages (cloud-init's
    # python3-cryptography needs one): it lays the base, apt adds the rest.
    debs = os.path.join(CACHE_DIR, 'debs-' + release)
    os.makedirs(debs, exist_ok=True)
    _run(['debootstrap', '--variant=minbase', '--cache-dir=' + debs,
          release, rootfs, mirror],
         'debootstrap of %s from %s' % (release, mirror),
         os.path.join(rootfs, 'debootstrap', 'debootstrap.log'))
    # No service starts in the build's chroot.
    policy = os.path.join(rootfs, 'usr/sbin/policy-rc.d')
    with open(policy, 'w') as f:
        f.write('#!/bin/sh\nexit 101\n')
    os.chmod(policy, 0o755)
    apt = ['chroot', rootfs, 'apt-get', '-q', '-y',
           '-o', 'Dpkg::Use-Pty=0', '-o', 'APT::Install-Recommends=false']
    _run(apt + ['install'] + list(packages), 'apt-get install in the image')
    _run(apt + ['clean'], 'apt-get clean in the image')
    os.unlink(policy)


def _configure(rootfs, packages):
    with open(os.path.join(rootfs, 'etc/cloud/cloud.cfg.d/'
                           '90_nova_lxd_py.cfg'), 'w') as f:
        f.write(cloud_cfg(packages))
    for name in _EMPTIED_DIRS:
        top = os.path.join(rootfs, name)
        for entry in os.listdir(top) if os.path.isdir(top) else ():
            entry = os.path.join(top, entry)
            if os.path.isdir(entry) and not os.path.islink(entry):
                shutil.rmtree(entry)
            else:
                os.unlink(entry)
    for name in _EMPTIED_FILES:
        path = os.path.join(rootfs, name)
        if os.path.lexists(path):
            os.unlink(path)
        open(path, 'w').close()
    for name in _REMOVED:
        path = os.path.join(rootfs, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)
    # apt and dpkg keep state under /var/cache and /var/log they expect.
    for name in ('var/cache/apt/archives/partial', 'var/lib/apt/lists/partial',
                 'var/log/apt'):
        os.makedirs(os.path.join(rootfs, name), exist_ok=True)


def _pack(rootfs, tarball):
    subprocess.run(['tar', '--numeric-owner', '--sort=name', '-C', rootfs,
                    '-I', 'zstd -q -T0 -6', '-cf', tarball, '.'], check=True)


if __name__ == '__main__':
    print(build())
    sys.exit(0)
