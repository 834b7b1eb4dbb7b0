"""Checkpoint/restore of guests with CRIU: what this host can do.

liblxc's ``lxc-checkpoint`` runs the ``criu`` it finds on PATH (the one
``tools/criu/build.sh`` installs comes first, in /usr/local/sbin). Whether
that CRIU works depends on its version and on this kernel, so nova-compute
finds out once, at start (``Checkpoints.probe``), and says so in its log:

- ``criu check`` must pass (Debian 12's CRIU 3.17 fails it on kernels with a
  larger vDSO);
- liblxc restores a guest's ports (``lxc.net.N.type = phys``) only with
  CRIU >= 3.15 (``--external netdev[...]``): the device is moved into the
  restored guest, never re-created inside its user namespace, which an
  unprivileged guest may not do (criu issue #3004);
- post-copy (lazy pages) needs userfaultfd (``uffd-noncoop``), pre-copy
  needs dirty memory tracking (``mem_dirty_track``, CONFIG_MEM_SOFT_DIRTY).
"""

import re
import shutil
import subprocess

from oslo_log import log as logging

from nova_lxd_py import privsep

LOG = logging.getLogger(__name__)

# liblxc 5's restore of phys devices (CRIU_EXTERNAL_NETDEV in its criu.c).
MIN_VERSION = (3, 15)
FEATURES = ('uffd-noncoop', 'mem_dirty_track')
CHECK_TIMEOUT = 60


@privsep.sys_admin_pctxt.entrypoint
def criu_check(timeout: int) -> dict:
    """What the ``criu`` on PATH says about this host.

    {'path': its path or '', 'version': 'X.Y[.Z]' or '', 'check': '' unless
    ``criu check`` ran and failed, then its last lines, 'features':
    {name: bool}}.
    """
    result = {'path': shutil.which('criu') or '', 'version': '',
              'check': '', 'features': {}}
    if not result['path']:
        return result
    out = _run([result['path'], '--version'], timeout)
    match = re.search(r'^Version:\s*(\d+(?:\.\d+)+)', out[1], re.M)
    result['version'] = match.group(1) if match else ''
    code, text = _run([result['path'], 'check'], timeout)
    result['check'] = '' if code == 0 else (
        '; '.join(text.strip().splitlines()[-3:])[-500:] or
        'criu check exited with %d' % code)
    for feature in FEATURES:
        code, _ = _run([result['path'], 'check', '--feature', feature],
                       timeout)
        result['features'][feature] = code == 0
    return result


def _run(argv, timeout):
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, '%s did not answer within %d s' % (argv[1], timeout)
    except OSError as e:
        return 127, str(e)
    return done.returncode, done.stdout.decode(errors='replace')


def version_tuple(text):
    return tuple(int(p) for p in text.split('.')) if text else ()


class Checkpoints:
    """This host's CRIU, as probed at start: ``available`` and, if not,
    ``reason`` (for an operator: what to install or fix)."""

    def __init__(self):
        self.version = ''
        self.reason = 'not probed yet'
        self.features = {}

    @property
    def available(self):
        return not self.reason

    @property
    def lazy_pages(self):
        return self.available and self.features.get('uffd-noncoop', False)

    @property
    def dirty_tracking(self):
        return self.available and self.features.get('mem_dirty_track',
                                                    False)

    def probe(self):
        found = criu_check(CHECK_TIMEOUT)
        self.version = found['version']
        self.features = found['features']
        self.reason = self._reason(found)
        if self.reason:
            LOG.warning('Guests on this host cannot be checkpointed: %s. '
                        'tools/criu/build.sh builds a CRIU that works here.',
                        self.reason)
        else:
            LOG.info('CRIU %(version)s (%(path)s) passes criu check: '
                     'post-copy (lazy pages) %(lazy)s, pre-copy (dirty '
                     'memory tracking) %(dirty)s',
                     {'version': self.version, 'path': found['path'],
                      'lazy': 'yes' if self.lazy_pages else 'no',
                      'dirty': 'yes' if self.dirty_tracking else 'no'})
        return self.available

    @staticmethod
    def _reason(found):
        if not found['path']:
            return 'no criu on PATH'
        if not found['version']:
            return '%s reports no version' % found['path']
        if version_tuple(found['version']) < MIN_VERSION:
            return ('CRIU %s at %s is older than %s, which liblxc needs to '
                    'restore a guest\'s ports' % (
                        found['version'], found['path'],
                        '.'.join(map(str, MIN_VERSION))))
        if found['check']:
            return 'criu check fails with CRIU %s at %s: %s' % (
                found['version'], found['path'], found['check'])
        return ''
