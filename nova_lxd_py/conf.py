"""Every option of nova-lxd-py, in the ``[lxc]`` group.

Options are registered on import by :func:`register_opts`, never read at
import time; :func:`list_opts` feeds ``oslo-config-generator``.
"""

import nova.conf
from oslo_config import cfg

GROUP = cfg.OptGroup(
    'lxc',
    title='System containers (nova-lxd-py)',
    help='Options for the liblxc compute driver. Set '
         '``[DEFAULT] compute_driver = lxc_py.LXCDriver`` to use it.')

OPTS = [
    cfg.StrOpt(
        'container_path',
        default='$instances_path/containers',
        help='Directory holding one folder per container: its liblxc config, '
             'its copy-on-write root layer and its console log. This is the '
             'liblxc "lxcpath" of every instance on this host.'),
    cfg.StrOpt(
        'image_cache_path',
        default='$instances_path/_base_lxc',
        help='Directory where Glance images are unpacked once per host into '
             'root filesystems shared read-only by the containers built from '
             'them. Related: ``[image_cache] manager_interval``.'),
    cfg.StrOpt(
        'root_disk_backend',
        default='overlay',
        choices=[('overlay', 'overlayfs: a writable upper layer per '
                             'instance over the cached image (no copy)'),
                 ('dir', 'a full copy of the cached image per instance'),
                 ('btrfs', 'a btrfs snapshot of the cached image per '
                           'instance (container_path and image_cache_path '
                           'on one btrfs file system); root_gb is a qgroup '
                           'limit')],
        help='How a container root filesystem is made from the cached image. '
             'With overlay or dir, when the flavor has a root disk size, '
             'what the guest writes goes to an ext4 file system of that '
             'size (a '
             'sparse file in the container\'s directory, loop-mounted on '
             'the host while the instance exists), so a guest that fills '
             'its disk gets ENOSPC and the host does not fill up. With '
             'btrfs it is a qgroup limit on the instance\'s subvolume '
             'instead (the guest gets EDQUOT).'),
    cfg.StrOpt(
        'idmap_user',
        default='root',
        help='User whose subordinate id ranges (/etc/subuid, /etc/subgid) map '
             'the ids of unprivileged containers. The user nova-compute runs '
             'as needs no range of its own.'),
    cfg.IntOpt(
        'idmap_size',
        default=65536, min=65536,
        help='Number of user and group ids mapped into each unprivileged '
             'container, starting at the first id of ``idmap_user``\'s range. '
             'The range must be at least this large.'),
    cfg.BoolOpt(
        'allow_privileged',
        default=False,
        help='Allow flavors with ``lxc:privileged=true`` to run containers '
             'without a user namespace (container root is host root). Off by '
             'default: such containers can escape far more easily.'),
    cfg.BoolOpt(
        'allow_nesting',
        default=False,
        help='Allow flavors with ``lxc:nesting=true`` to run containers that '
             'may start containers themselves (cgroup and proc mounted '
             'read-write).'),
    cfg.IntOpt(
        'pids_max',
        default=4096, min=0,
        help='Maximum number of processes and threads in one container '
             '(pids cgroup). 0 means unlimited. A flavor can set its own with '
             'the ``lxc:pids_max`` extra spec.'),
    cfg.StrOpt(
        'lxcfs_path',
        default='/var/lib/lxcfs',
        help='Mount point of lxcfs. When lxcfs runs, /proc/meminfo, '
             '/proc/cpuinfo, /proc/stat and /proc/uptime in the guest show '
             'the flavor\'s size instead of the host\'s. Empty disables it.'),
    cfg.StrOpt(
        'seccomp_profile',
        default='/usr/share/lxc/config/common.seccomp',
        help='liblxc seccomp policy applied to every container (the one '
             'shipped with the lxc package blocks kernel module loading, '
             'kexec and similar). Empty disables seccomp filtering.'),
    cfg.IntOpt(
        'console_log_size_kb',
        default=1024, min=64,
        help='Size in KiB at which a container console log is rotated (one '
             'rotated file is kept). The console-output API returns at most '
             'the last 100 KiB.'),
    cfg.ListOpt(
        'image_formats',
        default=['qcow2', 'raw', 'squashfs', 'lxd', 'oci', 'tarball'],
        item_type=cfg.types.String(choices=[
            'qcow2', 'raw', 'squashfs', 'lxd', 'oci', 'tarball']),
        help='Image formats this host turns into root file systems: qcow2 '
             'and raw disk images (partitioned or a bare ext4/xfs/btrfs; '
             'read through a read-only kernel mount in a private mount '
             'namespace), squashfs, LXD/Incus images, OCI layouts and '
             'docker-save archives, and root file system tarballs. The '
             'disk_format capabilities reported to placement follow this '
             'list. Leave out raw and qcow2 if Glance users are untrusted '
             'and you would rather not have the host kernel parse their '
             'file systems.'),
    cfg.IntOpt(
        'max_unpacked_image_gb',
        default=64, min=1,
        help='Largest root file system (GiB of file data) an image may '
             'unpack to. The flavor\'s root disk, when smaller, is the limit '
             'instead; an image over it is refused while unpacking, so a '
             'decompression bomb stops there.'),
    cfg.StrOpt(
        'oci_init',
        default='',
        help='Host path of a static init (e.g. /bin/busybox from Debian\'s '
             'busybox-static) copied in as /sbin/init of OCI images and '
             'docker-save archives that have none, so that an application '
             'image can boot as a system container; the image\'s entrypoint '
             'is not run. Empty: such images are refused.'),
    cfg.BoolOpt(
        'remove_orphans',
        default=False,
        help='What to do with containers, root disks and mounts in '
             '``container_path`` that belong to no instance of this host '
             '(left by a crash or a failed cleanup). They are found at '
             'start-up and by the image cache manager\'s periodic pass and '
             'always logged; with this option they are also stopped and '
             'removed.'),
    cfg.StrOpt(
        'snapshot_compression',
        default='zstd',
        choices=[
            ('zstd', 'zstd level 1 (100-200 MB/s of tree on 2 cores; '
                     'images about a third of the tree)'),
            ('zstd-fast', 'zstd --fast=4 (about twice as fast, images '
                          'about a third larger)'),
            ('none', 'a plain tarball: as fast as reading the tree, '
                     'images as large as it'),
        ],
        help='How a snapshot\'s root file system tarball is compressed on '
             'its way to Glance. Compression is what bounds a snapshot\'s '
             'speed on fast disks; choose by what is scarcer, the compute '
             'host\'s CPU time or Glance\'s storage and the network to '
             'it. This driver boots every choice.'),
    cfg.StrOpt(
        'ovs_network_namespace',
        default='',
        help='Named network namespace (``ip netns``; a file in '
             '/run/netns) in which ovs-vswitchd runs, as it may with the '
             'userspace ``netdev`` datapath on a host without the '
             'openvswitch kernel module. The host end of each \'ovs\' '
             'port\'s veth pair is moved there before os-vif adds it to '
             'the integration bridge, since ovs-vswitchd opens ports by '
             'name in its own namespace; the guest end still goes into '
             'the container. Empty: ovs-vswitchd runs in nova-compute\'s '
             'namespace (the usual case). Hybrid plug (``ovs_hybrid_plug``, '
             'Neutron\'s iptables_hybrid firewall) is refused with this '
             'set: use the openvswitch or noop firewall driver. Related: '
             '``[os_vif_ovs] ovsdb_connection``, which must reach that '
             'switch\'s database.'),
    cfg.IntOpt(
        'start_timeout',
        default=30, min=1,
        help='Seconds to wait for a container to reach RUNNING after start.'),
    cfg.IntOpt(
        'soft_reboot_timeout',
        default=60, min=1,
        help='Seconds to wait for the guest init to restart after a soft '
             'reboot request before falling back to a hard reboot.'),
    cfg.BoolOpt(
        'suspend_to_disk',
        default=True,
        help='``server suspend`` checkpoints the guest with CRIU into its '
             'instance directory and stops it: its memory is freed and it '
             'survives a restart of nova-compute or of the host; '
             '``resume`` restores it, processes and open connections '
             'included. Needs a CRIU that works on this host (nova-compute '
             'says at start whether it does). False, no working CRIU, or a '
             'guest CRIU cannot checkpoint (the log says why): the guest '
             'is frozen in memory instead (cgroup freezer) and lost if the '
             'host restarts.'),
    cfg.IntOpt(
        'checkpoint_timeout',
        default=300, min=1,
        help='Seconds a checkpoint (CRIU dump) or a restore of one guest '
             'may take before it fails; a failed checkpoint leaves the '
             'guest running, a failed restore keeps the checkpoint for '
             'another resume.'),
]

# Resize and cold migration move an instance's disks between compute
# hosts over ssh, as the libvirt driver's do: every host needs the same
# [lxc] container_path and an sshd that lets the migration user in.
MIGRATION_OPTS = [
    cfg.StrOpt(
        'migration_ssh_user',
        default='root',
        help='User that resize and cold migration log in as on the other '
             'compute host (ssh) to receive an instance\'s disks. Its '
             'files land in ``[lxc] container_path`` owned by root, so it '
             'is root, or a user whose ssh session runs as root there. '
             'Related: ``migration_ssh_identity_file``.'),
    cfg.PortOpt(
        'migration_ssh_port',
        default=22,
        help='TCP port of sshd on the other compute hosts.'),
    cfg.StrOpt(
        'migration_ssh_identity_file',
        default='',
        help='Private key for those ssh logins (``ssh -i``); empty: '
             'root\'s own ssh configuration and keys. The transfer runs in '
             'the privsep daemon, as root.'),
    cfg.StrOpt(
        'migration_ssh_known_hosts_file',
        default='',
        help='known_hosts file with the host keys of every compute host; '
             'empty: root\'s own. Unknown or changed host keys are refused '
             '(StrictHostKeyChecking), never accepted on first use.'),
    cfg.IntOpt(
        'migration_ssh_connect_timeout',
        default=10, min=1,
        help='Seconds to wait for the ssh connection to the other host '
             'before the move fails (the instance stays on its source).'),
]


def register_opts(conf=cfg.CONF):
    conf.register_group(GROUP)
    conf.register_opts(OPTS + MIGRATION_OPTS, group=GROUP)


def list_opts():
    # oslo-config-generator wants (group, options) pairs, not a dict.
    return [(GROUP, OPTS + MIGRATION_OPTS)]


# nova.conf registers Nova's own options (instances_path, which our paths
# default to) in every process that reads ours, the privsep daemon included.
CONF = nova.conf.CONF
register_opts(CONF)
