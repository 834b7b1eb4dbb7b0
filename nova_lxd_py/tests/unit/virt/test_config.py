"""Tables for the pure flavor/image/host -> liblxc config translation."""

import dataclasses

import ddt
from nova import exception as nova_exception
from nova import objects
from oslotest import base

from nova_lxd_py import exception
from nova_lxd_py.vif import naming
from nova_lxd_py.virt import config


IDMAP = config.IdMap(uid_start=100000, gid_start=200000, size=65536)
LIMITS = config.Limits(memory_bytes=256 * 1024 ** 2, cpu_period_us=100000,
                       cpu_quota_us=100000, cpu_shares=1024, cpuset='1',
                       pids_max=4096)
UNLIMITED = config.Limits(memory_bytes=512 * 1024 ** 2, cpu_period_us=50000,
                          cpu_quota_us=-1, cpu_shares=2048, cpuset='',
                          pids_max=0)


def flavor(vcpus=1, memory_mb=256, **extra_specs):
    return objects.Flavor(vcpus=vcpus, memory_mb=memory_mb, root_gb=1,
                          extra_specs=extra_specs)


def parse(text):
    """Config text -> [(key, value)], checking the 'key = value' syntax."""
    items = []
    for line in text.splitlines():
        if line.startswith('#'):
            continue
        key, sep, value = line.partition(' = ')
        assert sep and key.startswith('lxc.'), line
        items.append((key, value))
    return items


def values(items, key):
    return [v for k, v in items if k == key]


@ddt.ddt
class SecurityFromFlavorTest(base.BaseTestCase):

    @ddt.unpack
    @ddt.data(
        # extra specs, allow_privileged, allow_nesting -> (privileged, nesting)
        ({}, False, False, (False, False)),
        ({}, True, True, (False, False)),
        ({'lxc:privileged': 'false', 'lxc:nesting': 'no'}, False, False,
         (False, False)),
        ({'lxc:privileged': 'true'}, True, False, (True, False)),
        ({'lxc:privileged': 'True'}, True, False, (True, False)),
        ({'lxc:privileged': '1'}, True, False, (True, False)),
        ({'lxc:nesting': 'yes'}, False, True, (False, True)),
        ({'lxc:privileged': 'on', 'lxc:nesting': 'true'}, True, True,
         (True, True)),
        ({'hw:cpu_policy': 'shared'}, False, False, (False, False)),
    )
    def test_security_from_flavor_when_allowed(self, specs, allow_priv,
                                               allow_nest, expected):
        sec = config.security_from_flavor(specs, allow_priv, allow_nest)
        self.assertEqual(expected, (sec.privileged, sec.nesting))

    @ddt.unpack
    @ddt.data(
        ({'lxc:privileged': 'true'}, False, True, 'lxc:privileged',
         'allow_privileged'),
        ({'lxc:nesting': 'true'}, True, False, 'lxc:nesting',
         'allow_nesting'),
        ({'lxc:privileged': 'true', 'lxc:nesting': 'true'}, True, False,
         'lxc:nesting', 'allow_nesting'),
    )
    def test_security_from_flavor_forbidden(self, specs, allow_priv,
                                            allow_nest, spec, option):
        e = self.assertRaises(exception.PrivilegedNotAllowed,
                              config.security_from_flavor, specs,
                              allow_priv, allow_nest)
        self.assertIn(spec, str(e))
        self.assertIn(option, str(e))

    @ddt.data({'lxc:privileged': 'maybe'}, {'lxc:nesting': ''},
              {'lxc:privileged': '2'}, {'lxc:nesting': 'enabled'})
    def test_security_from_flavor_bad_value(self, specs):
        # InvalidInput makes the compute manager abort the build instead of
        # rescheduling it onto every other host.
        self.assertRaises(nova_exception.InvalidInput,
                          config.security_from_flavor, specs, True, True)


@ddt.ddt
class LimitsFromFlavorTest(base.BaseTestCase):

    @ddt.unpack
    @ddt.data(
        # flavor, default pids_max -> Limits fields except cpuset
        (flavor(), 4096,
         (256 * 1024 ** 2, 100000, 100000, 1024, 4096)),
        (flavor(vcpus=4, memory_mb=2048), 0,
         (2048 * 1024 ** 2, 100000, 400000, 4096, 0)),
        (flavor(**{'quota:cpu_period': '50000'}), 100,
         (256 * 1024 ** 2, 50000, 50000, 1024, 100)),
        (flavor(vcpus=2, **{'quota:cpu_quota': '30000'}), 100,
         (256 * 1024 ** 2, 100000, 30000, 2048, 100)),
        (flavor(**{'quota:cpu_quota': '0'}), 100,
         (256 * 1024 ** 2, 100000, -1, 1024, 100)),
        (flavor(**{'quota:cpu_quota': '-1'}), 100,
         (256 * 1024 ** 2, 100000, -1, 1024, 100)),
        (flavor(**{'quota:cpu_shares': '333'}), 100,
         (256 * 1024 ** 2, 100000, 100000, 333, 100)),
        (flavor(**{'lxc:pids_max': '77'}), 4096,
         (256 * 1024 ** 2, 100000, 100000, 1024, 77)),
        (flavor(**{'lxc:pids_max': '0'}), 4096,
         (256 * 1024 ** 2, 100000, 100000, 1024, 0)),
    )
    def test_limits_from_flavor_extra_specs(self, fl, pids_default, expected):
        limits = config.limits_from_flavor(fl, [0, 1, 2, 3, 4, 5, 6, 7],
                                           pids_default, 'seed')
        self.assertEqual(expected, (limits.memory_bytes,
                                    limits.cpu_period_us,
                                    limits.cpu_quota_us, limits.cpu_shares,
                                    limits.pids_max))

    @ddt.data({'quota:cpu_quota': 'lots'}, {'quota:cpu_period': '1.5'},
              {'quota:cpu_shares': ''}, {'lxc:pids_max': 'many'})
    def test_limits_from_flavor_bad_value(self, specs):
        self.assertRaises(nova_exception.InvalidInput,
                          config.limits_from_flavor, flavor(**specs), [0, 1],
                          100, 'seed')

    @ddt.unpack
    @ddt.data(
        # vcpus, host CPUs, seed -> cpuset ('' = all CPUs, no restriction)
        # crc32('a') % 2 == 1, crc32('d') % 2 == 0: 1-vCPU guests spread.
        (1, [0, 1], 'a', '1'),
        (1, [0, 1], 'd', '0'),
        # crc32('a') % 4 == 3 wraps round to CPU 0; 'b' starts at 1.
        (2, [0, 1, 2, 3], 'a', '0,3'),
        (2, [0, 1, 2, 3], 'b', '1,2'),
        (3, [0, 1, 2, 3], 'd', '0,1,2'),
        (1, [0, 2, 5, 7], 'a', '7'),
        (2, [0, 1], 'a', ''),
        (4, [0, 1], 'a', ''),
        (1, [3], 'a', ''),
    )
    def test_limits_from_flavor_cpuset(self, vcpus, host_cpus, seed,
                                       expected):
        limits = config.limits_from_flavor(flavor(vcpus=vcpus), host_cpus,
                                           0, seed)
        self.assertEqual(expected, limits.cpuset)

    def test_pick_cpuset_same_seed_same_cpus(self):
        picks = {config.pick_cpuset(2, list(range(8)), 'instance-uuid')
                 for _ in range(5)}
        self.assertEqual(1, len(picks))


@ddt.ddt
class CgroupLinesTest(base.BaseTestCase):

    def test_cgroup_lines_v1_limited(self):
        self.assertEqual([
            ('lxc.cgroup.memory.limit_in_bytes', 256 * 1024 ** 2),
            ('lxc.cgroup.cpu.cfs_period_us', 100000),
            ('lxc.cgroup.cpu.cfs_quota_us', 100000),
            ('lxc.cgroup.cpu.shares', 1024),
            ('lxc.cgroup.cpuset.cpus', '1'),
            ('lxc.cgroup.pids.max', 4096),
        ], config.cgroup_lines(LIMITS, 1))

    def test_cgroup_lines_v1_unlimited(self):
        self.assertEqual([
            ('lxc.cgroup.memory.limit_in_bytes', 512 * 1024 ** 2),
            ('lxc.cgroup.cpu.cfs_period_us', 50000),
            ('lxc.cgroup.cpu.cfs_quota_us', -1),
            ('lxc.cgroup.cpu.shares', 2048),
        ], config.cgroup_lines(UNLIMITED, 1))

    def test_cgroup_lines_v2_limited(self):
        self.assertEqual([
            ('lxc.cgroup2.memory.max', 256 * 1024 ** 2),
            ('lxc.cgroup2.cpu.max', '100000 100000'),
            ('lxc.cgroup2.cpu.weight', 39),
            ('lxc.cgroup2.cpuset.cpus', '1'),
            ('lxc.cgroup2.pids.max', 4096),
        ], config.cgroup_lines(LIMITS, 2))

    @ddt.unpack
    @ddt.data(
        # flavor swap 0 still limits: no swap beyond the memory
        (1, 0, ('lxc.cgroup.memory.memsw.limit_in_bytes', 256 << 20)),
        (1, 64 << 20, ('lxc.cgroup.memory.memsw.limit_in_bytes',
                       (256 + 64) << 20)),
        (2, 0, ('lxc.cgroup2.memory.swap.max', 0)),
        (2, 64 << 20, ('lxc.cgroup2.memory.swap.max', 64 << 20)),
    )
    def test_cgroup_lines_swap(self, version, swap, expected):
        lines = config.cgroup_lines(
            dataclasses.replace(LIMITS, swap_bytes=swap), version)
        self.assertIn(expected, lines)
        # v1 rejects a memory+swap limit below the memory limit: after it.
        self.assertGreater(lines.index(expected), 0)

    def test_cgroup_lines_no_swap_line_without_accounting(self):
        for version in (1, 2):
            self.assertEqual([], [k for k, _ in config.cgroup_lines(
                LIMITS, version) if 'swap' in k])

    def test_cgroup_lines_v2_unlimited(self):
        self.assertEqual([
            ('lxc.cgroup2.memory.max', 512 * 1024 ** 2),
            ('lxc.cgroup2.cpu.max', 'max 50000'),
            ('lxc.cgroup2.cpu.weight', 79),
        ], config.cgroup_lines(UNLIMITED, 2))

    @ddt.unpack
    @ddt.data(
        # cpu.shares -> cpu.weight (the kernel's/runc's linear mapping of
        # [2, 262144] onto [1, 10000]; out-of-range shares are clamped)
        (0, 1), (2, 1), (3, 1), (1024, 39), (2048, 79), (4096, 157),
        (262144, 10000), (10 ** 6, 10000),
    )
    def test_cgroup_lines_v2_shares_to_weight(self, shares, weight):
        limits = config.Limits(memory_bytes=1, cpu_period_us=100000,
                               cpu_quota_us=-1, cpu_shares=shares,
                               cpuset='', pids_max=0)
        lines = dict(config.cgroup_lines(limits, 2))
        self.assertEqual(weight, lines['lxc.cgroup2.cpu.weight'])


def build(**overrides):
    kwargs = dict(instance_name='instance-00000001', hostname='guest',
                  rootfs='overlay:/cache/rootfs:/c/upper',
                  idmap=IDMAP, security=config.Security(), limits=LIMITS,
                  cgroup_version=1, init_kind='busybox',
                  console_log='/c/console.log', console_size_kb=1024)
    kwargs.update(overrides)
    return parse(config.build(**kwargs))


@ddt.ddt
class BuildTest(base.BaseTestCase):

    def test_build_records_instance_name_first(self):
        text = config.build(**dict(
            instance_name='instance-0000002a', hostname='g', rootfs='r',
            idmap=IDMAP, security=config.Security(), limits=LIMITS,
            cgroup_version=1, init_kind='busybox', console_log='c',
            console_size_kb=64))
        self.assertEqual('# nova.instance_name = instance-0000002a',
                         text.splitlines()[0])

    def test_build_readonly_mounts_and_init_environment(self):
        items = build(mounts=[('/c/eph0', '/mnt')],
                      readonly_mounts=[('/c/config-drive', '/config-drive')],
                      environment=[('product_name', 'OpenStack Nova')])
        self.assertEqual(['/c/eph0 mnt none bind,create=dir 0 0',
                          '/c/config-drive config-drive none '
                          'bind,ro,create=dir 0 0'],
                         [v for v in values(items, 'lxc.mount.entry')
                          if v.startswith('/c/')])
        self.assertEqual(['product_name=OpenStack Nova'],
                         values(items, 'lxc.environment'))

    def test_build_unprivileged_maps_ids_without_device_rules(self):
        items = build()
        self.assertEqual(['u 0 100000 65536', 'g 0 200000 65536'],
                         values(items, 'lxc.idmap'))
        keys = {k for k, _ in items}
        self.assertFalse({k for k in keys if '.devices.' in k})

    def test_build_unprivileged_drops_caps_systemd_would_misjudge(self):
        # systemd skips its debugfs/configfs mounts and module loading
        # only when these are out of the bounding set.
        drop = values(build(), 'lxc.cap.drop')[0].split()
        self.assertLessEqual({'sys_rawio', 'sys_module', 'sys_time'},
                             set(drop))

    @ddt.data(1, 2)
    def test_build_privileged_drops_caps_and_limits_devices(self, version):
        items = build(idmap=None, cgroup_version=version,
                      security=config.Security(privileged=True))
        prefix = 'lxc.cgroup.' if version == 1 else 'lxc.cgroup2.'
        self.assertEqual([], values(items, 'lxc.idmap'))
        drop = values(items, 'lxc.cap.drop')[0].split()
        self.assertIn('sys_module', drop)
        self.assertIn('sys_time', drop)
        self.assertEqual(['a'], values(items, prefix + 'devices.deny'))
        allowed = values(items, prefix + 'devices.allow')
        self.assertIn('c 1:3 rwm', allowed)          # /dev/null
        self.assertNotIn('b *:* rwm', allowed)
        # The deny-all rule comes before the exceptions to it.
        keys = [k for k, _ in items]
        self.assertLess(keys.index(prefix + 'devices.deny'),
                        keys.index(prefix + 'devices.allow'))

    def test_build_privileged_ignores_idmap(self):
        items = build(security=config.Security(privileged=True))
        self.assertEqual([], values(items, 'lxc.idmap'))
        self.assertTrue(values(items, 'lxc.cap.drop'))

    def test_build_unprivileged_without_idmap_refused(self):
        # Failing closed: an unprivileged flavor must never silently get a
        # container without a user namespace.
        self.assertRaises(ValueError, build, idmap=None)

    def test_build_lxcfs_entries_when_path_given(self):
        items = build(lxcfs_path='/var/lib/lxcfs')
        entries = values(items, 'lxc.mount.entry')
        self.assertIn('/var/lib/lxcfs/proc/meminfo proc/meminfo none '
                      'bind,optional 0 0', entries)
        self.assertIn('/var/lib/lxcfs/proc/cpuinfo proc/cpuinfo none '
                      'bind,optional 0 0', entries)
        self.assertTrue(all(e.startswith('/var/lib/lxcfs/')
                            for e in entries))

    def test_build_no_lxcfs_entries_without_path(self):
        self.assertEqual([], values(build(), 'lxc.mount.entry'))
        self.assertEqual([], values(build(lxcfs_path=''), 'lxc.mount.entry'))

    @ddt.unpack
    @ddt.data(
        ('busybox', 'SIGUSR2', 'SIGTERM'),
        ('systemd', 'SIGRTMIN+4', 'SIGINT'),
        ('sysv', 'SIGPWR', 'SIGINT'),
        ('something-else', 'SIGPWR', 'SIGINT'),
    )
    def test_build_signals_follow_init_kind(self, kind, halt, reboot):
        items = build(init_kind=kind)
        self.assertEqual([halt], values(items, 'lxc.signal.halt'))
        self.assertEqual([reboot], values(items, 'lxc.signal.reboot'))

    def test_build_seccomp_only_when_given(self):
        self.assertEqual([], values(build(), 'lxc.seccomp.profile'))
        self.assertEqual(['/p.seccomp'], values(
            build(seccomp_profile='/p.seccomp'), 'lxc.seccomp.profile'))

    @ddt.unpack
    @ddt.data(
        (False, 'cgroup:mixed proc:mixed sys:mixed'),
        (True, 'cgroup:rw:force proc:rw sys:rw'),
    )
    def test_build_mounts_follow_nesting(self, nesting, mount_auto):
        items = build(security=config.Security(nesting=nesting))
        self.assertEqual([mount_auto], values(items, 'lxc.mount.auto'))

    def test_build_paths_and_names(self):
        items = dict(build(hostname='web-1', console_size_kb=64))
        self.assertEqual('web-1', items['lxc.uts.name'])
        self.assertEqual('overlay:/cache/rootfs:/c/upper',
                         items['lxc.rootfs.path'])
        self.assertEqual('/c/console.log', items['lxc.console.logfile'])
        self.assertEqual(str(64 * 1024), items['lxc.console.size'])
        # The liblxc log is lxc-start's option (container.start): a log
        # file in the config is opened by every liblxc handle of it and
        # never closed.
        self.assertNotIn('lxc.log.file', items)
        self.assertEqual('empty', items['lxc.net.0.type'])
        self.assertEqual(str(256 * 1024 ** 2),
                         items['lxc.cgroup.memory.limit_in_bytes'])

    @ddt.unpack
    @ddt.data(
        # An overlay mounted in the guest's user namespace keeps its
        # metadata in user.* xattrs; other roots and privileged guests
        # (host root mounts it) take no option.
        ('overlay:/cache/rootfs:/c/upper', False, ['userxattr']),
        ('overlay:/cache/rootfs:/c/upper', True, []),
        ('dir:/c/rootfs', False, []),
        ('/c/rootfs', False, []),
    )
    def test_build_rootfs_options(self, rootfs, privileged, options):
        items = build(rootfs=rootfs,
                      security=config.Security(privileged=privileged),
                      idmap=None if privileged else IDMAP)
        self.assertEqual(options, values(items, 'lxc.rootfs.options'))

    def test_build_cgroup_v2_keys(self):
        keys = {k for k, _ in build(cgroup_version=2)}
        self.assertIn('lxc.cgroup2.memory.max', keys)
        self.assertFalse({k for k in keys if k.startswith('lxc.cgroup.')})


@ddt.ddt
class GuestHostnameTest(base.BaseTestCase):

    @ddt.unpack
    @ddt.data(
        ('web-1', 'web-1'),
        ('Web_Server.example.com', 'web-server-example-com'),
        ('  spaced  out ', 'spaced-out'),
        ('--edge--', 'edge'),
        ('ünïcode', 'n-code'),
        ('a' * 70, 'a' * 63),
        ('a' * 62 + '-b', 'a' * 62),
        ('', 'fallback'),
        (None, 'fallback'),
        ('___', 'fallback'),
    )
    def test_guest_hostname_sanitised(self, name, expected):
        self.assertEqual(expected, config.guest_hostname(name, 'fallback'))


NIC_A = config.Nic(link='tinaaaaaaaa-aa', hwaddr='fa:16:3e:00:00:0a',
                   mtu=1400)
NIC_B = config.Nic(link='tinbbbbbbbb-bb', hwaddr='fa:16:3e:00:00:0b')
NIC_C = config.Nic(link='tincccccccc-cc', hwaddr='fa:16:3e:00:00:0c',
                   mtu=9000)


def build_text(**overrides):
    kwargs = dict(instance_name='instance-00000001', hostname='guest',
                  rootfs='/c/rootfs', idmap=IDMAP,
                  security=config.Security(), limits=LIMITS,
                  cgroup_version=2, init_kind='busybox',
                  console_log='/c/console.log', console_size_kb=1024,
                  lxcfs_path='/var/lib/lxcfs')
    kwargs.update(overrides)
    return config.build(**kwargs)


@ddt.ddt
class HotplugConfigTest(base.BaseTestCase):

    @ddt.data([], [NIC_A], [NIC_B], [NIC_A, NIC_B, NIC_C])
    def test_nics_of_reads_back_what_build_wrote(self, nics):
        self.assertEqual(nics, config.nics_of(build_text(guest_nics=nics)))

    @ddt.unpack
    @ddt.data(
        # the config's NICs -> the NICs it gets
        ([], [NIC_A]),                         # the first port
        ([NIC_A], [NIC_A, NIC_B]),             # attach: appended
        ([NIC_A, NIC_B], [NIC_A, NIC_B, NIC_C]),
        ([NIC_A, NIC_B, NIC_C], [NIC_A, NIC_C]),  # detach: renumbered
        ([NIC_A, NIC_B], [NIC_B]),
        ([NIC_A], []),                         # the last port: 'empty'
    )
    def test_with_nics_equals_building_with_them(self, before, after):
        # Swapping the network lines of a config gives, byte for byte, the
        # config spawn would have written for those NICs.
        self.assertEqual(build_text(guest_nics=after), config.with_nics(
            build_text(guest_nics=before), after))

    def test_with_nics_renumbers_names_and_keys(self):
        text = config.with_nics(build_text(guest_nics=[NIC_A, NIC_B]),
                                [NIC_B])
        items = parse(text)
        self.assertEqual([NIC_B.link], values(items, 'lxc.net.0.link'))
        self.assertEqual(['eth0'], values(items, 'lxc.net.0.name'))
        self.assertFalse([k for k, _ in items
                          if k.startswith('lxc.net.1.')])

    def test_with_nics_appends_when_the_config_has_none(self):
        text = '# nova.instance_name = i\nlxc.uts.name = g\n'
        self.assertEqual(
            text + 'lxc.net.0.type = phys\nlxc.net.0.link = %s\n'
            'lxc.net.0.name = eth0\nlxc.net.0.hwaddr = %s\n'
            'lxc.net.0.flags = up\n' % (NIC_B.link, NIC_B.hwaddr),
            config.with_nics(text, [NIC_B]))

    def test_nics_of_ignores_other_types_and_keys(self):
        text = ('lxc.net.0.type = veth\nlxc.net.0.link = br0\n'
                'lxc.net.1.type = phys\nlxc.net.1.link = %s\n'
                'lxc.net.1.hwaddr = %s\nlxc.network.type = x\n'
                'lxc.net.x.type = phys\n' % (NIC_B.link, NIC_B.hwaddr))
        self.assertEqual([NIC_B], config.nics_of(text))

    def test_with_nics_refuses_a_bad_device_name(self):
        bad = config.Nic(link='tin0\nlxc.x', hwaddr=NIC_A.hwaddr)
        self.assertRaises(naming.InvalidVif, config.with_nics, build_text(),
                          [bad])
