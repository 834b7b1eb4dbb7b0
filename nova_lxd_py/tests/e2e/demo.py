"""Boot a system container through Nova's REST API, on this host.

    sudo python -m nova_lxd_py.tests.e2e.demo

Nova runs in this one process, as in the end-to-end tests (REST API,
conductor, scheduler, Placement, a fake Glance; the compute service on
LXCDriver and this host's liblxc). The demo builds a busybox image locally,
uploads it, boots a server with ``--nic none``, looks inside the guest,
deletes it and checks that nothing is left. Every phase is timed. It cleans
up after itself even when it fails, and exits non-zero if anything failed.
"""

import contextlib
import logging
import os
import signal
import sys
import tempfile
import time
import unittest

from nova.compute import power_state

from nova_lxd_py.tests.e2e import base
from nova_lxd_py.tests import guest_image
from nova_lxd_py.virt import container

SERVER_NAME = 'demo'
IMAGE_MARKER = 'nova-lxd-py demo image'
CONSOLE_TAIL_LINES = 10
SHOW_FIELDS = (
    'id', 'name', 'status', 'OS-EXT-STS:vm_state', 'OS-EXT-STS:task_state',
    'OS-EXT-STS:power_state', 'OS-EXT-SRV-ATTR:host',
    'OS-EXT-SRV-ATTR:hypervisor_hostname', 'OS-EXT-SRV-ATTR:instance_name',
    'OS-EXT-SRV-ATTR:hostname', 'flavor', 'image', 'addresses', 'created',
    'OS-SRV-USG:launched_at',
)


class Phases:
    """Prints each phase as it starts and how long it took."""

    def __init__(self):
        self.times = []

    @contextlib.contextmanager
    def __call__(self, name):
        print('\n==> %s' % name, flush=True)
        started = time.monotonic()
        try:
            yield
        finally:
            took = time.monotonic() - started
            self.times.append((name, took))
            print('    (%.2f s)' % took, flush=True)

    def summary(self):
        width = max(len(name) for name, _ in self.times)
        print('\nTime per phase:')
        for name, took in self.times:
            print('  %-*s %7.2f s' % (width, name, took))
        print('  %-*s %7.2f s' % (width, 'total',
                                  sum(t for _, t in self.times)))


def show(server):
    """The fields of ``openstack server show`` that matter here."""
    flavor = server['flavor']
    values = dict(server)
    values['flavor'] = '%s (%d MB RAM, %d vCPU, %d GB disk)' % (
        flavor['original_name'], flavor['ram'], flavor['vcpus'],
        flavor['disk'])
    values['image'] = server['image']['id']
    values['addresses'] = server['addresses'] or '(none: --nic none)'
    values['OS-EXT-STS:power_state'] = power_state.STATE_MAP[
        server['OS-EXT-STS:power_state']]
    width = max(len(f) for f in SHOW_FIELDS)
    for field in SHOW_FIELDS:
        print('  %-*s  %s' % (width, field, values.get(field)))


def indented(text):
    return '\n'.join('    ' + line for line in text.rstrip().splitlines())


class Demo(base.ContainerTestBase):
    """The whole demo as one test case, so Nova's fixtures clean up."""

    phases = None
    image_path = None

    def setUp(self):
        with self.phases('start Nova: API, conductor, scheduler, placement,'
                         ' compute'):
            super().setUp()

    def runTest(self):
        phase = self.phases
        with phase('upload the image to Glance'):
            with open(self.image_path, 'rb') as f:
                data = f.read()
            image_id = self._create_container_image(data, name='busybox')
            print('    image %s, %d bytes' % (image_id, len(data)))
        with phase('create the container flavor'):
            flavor_id = self._create_container_flavor(name='c1.tiny')
            print('    flavor c1.tiny: %d MB, %d vCPU, %d GB, %s' % (
                base.FLAVOR_MEMORY_MB, base.FLAVOR_VCPUS,
                base.FLAVOR_DISK_GB, ', '.join(
                    '%s=%s' % spec
                    for spec in base.CONTAINER_FLAVOR_SPECS.items())))
        with phase('POST /servers --nic none, wait for ACTIVE'):
            server = self._boot(image_id, flavor_id, name=SERVER_NAME)
        uuid = server['id']
        show(server)
        state, pid = container.state(uuid)
        print('  on the host: liblxc state %s, init pid %d, container %s'
              % (state, pid, container.container_dir(uuid)))

        with phase('look inside the guest'):
            for argv in (['ps'], ['/usr/bin/free', '-m'], ['nproc'],
                         ['cat', '/etc/image-marker']):
                print('  $ %s' % ' '.join(argv))
                print(indented(self.run_in_guest(uuid, *argv)))
        with phase('console log (os-getConsoleOutput)'):
            self.wait_for_console(uuid, 'guest init: booted')
            output = self.api.post_server_action(uuid, {
                'os-getConsoleOutput': {'length': CONSOLE_TAIL_LINES}})
            print(indented(output['output']))
            self.assertIn('guest init: booted', output['output'])
        with phase('DELETE /servers/{id}, wait until it is gone'):
            self._delete_server(server)
        with phase('check the host is clean'):
            self.assertHostClean(uuid)
            print('    no container, cgroup, mount or directory left for %s'
                  % uuid)


def run(phases):
    with tempfile.TemporaryDirectory(prefix='nova-lxd-py-demo-') as tmp:
        with phases('build the busybox image locally'):
            Demo.image_path = guest_image.write_tarball(
                os.path.join(tmp, 'busybox.tar.gz'), IMAGE_MARKER)
            print('    %s' % Demo.image_path)
        Demo.phases = phases
        case = Demo()
        result = unittest.TestResult()
        case.run(result)
        # Nova's fixtures have run their cleanups, containers included.
        host_dirs = getattr(case, 'host_dirs', None)
        if host_dirs is not None:
            if os.path.exists(host_dirs.path):
                print('\n%s is still there' % host_dirs.path)
                return False
            print('\nRemoved the private instances_path %s' % host_dirs.path)
    for _, error in result.errors + result.failures:
        # The traceback comes last, after Nova's captured log.
        print('\nFAILED:\n' + '\n'.join(error.splitlines()[-60:]),
              file=sys.stderr)
    for _, reason in result.skipped:
        print('\nSKIPPED: %s' % reason, file=sys.stderr)
    return result.wasSuccessful() and not result.skipped


def main():
    if os.geteuid() != 0:
        print('The demo runs real containers: run it as root.',
              file=sys.stderr)
        return 2

    signals = []

    def interrupted(signum, frame):
        signals.append(signum)
        raise KeyboardInterrupt()

    # Turn a kill into an exception, so the cleanups run.
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    # Nova's log is captured while the case runs, but its thread pools log
    # their shutdown after the capture ends.
    logging.getLogger('nova.thread_pool_factory').setLevel(logging.WARNING)
    phases = Phases()
    try:
        ok = run(phases)
    except KeyboardInterrupt:
        signals.append(signal.SIGINT)
    if signals:
        # Nova's code may have turned the interrupt into another error.
        print('\nInterrupted; cleaned up.', file=sys.stderr)
        return 128 + signals[0]
    phases.summary()
    print('\nDemo %s.' % ('passed' if ok else 'FAILED'))
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
