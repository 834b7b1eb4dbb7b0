"""LXD images: template rendering, metadata.yaml, recognising the tarballs.

Unpacking for real (into a user namespace) is in the functional tests.
"""

import collections
import io
import os
import subprocess
import tarfile

import ddt
import fixtures
from oslotest import base
import yaml

from nova_lxd_py.storage.formats import lxd
from nova_lxd_py.storage.formats import lxd_metadata
from nova_lxd_py.storage.formats import lxd_templates
from nova_lxd_py.storage.formats import stream
from nova_lxd_py.tests.images import lxd as lxd_images

Uname = collections.namedtuple('Uname', 'sysname nodename release version '
                                        'machine')
CONTEXT = {'container': {'name': 'web-1'}, 'instance': {'name': 'web-1'},
           'properties': {'default': 'from-properties', 'empty': ''}}


@ddt.ddt
class RenderTest(base.BaseTestCase):

    @ddt.unpack
    @ddt.data(
        ('{{ container.name }}\n', 'web-1\n'),
        ('{{container.name}}', 'web-1'),
        ('127.0.1.1\t{{ instance.name }}\n', '127.0.1.1\tweb-1\n'),
        ('no tags at all', 'no tags at all'),
        ('{{ missing }}|{{ container.missing }}|{{ missing.x.y }}', '||'),
        ('{{ properties.default }}', 'from-properties'),
        ('{{ config_get("user.meta-data", "") }}', ''),
        ("{{ config_get('user.x', 'fallback') }}", 'fallback'),
        ('{{ config_get("user.x", properties.default) }}',
         'from-properties'),
        ('{{ config_get("user.set", "d") }}', 'configured'),
        ('{{ config_get("user.x") }}', ''),
        ('{{ "a \\"quoted\\" \\\\ str" }}', 'a "quoted" \\ str'),
        ('{{ 42 }} {{ 1.5 }} {{ true }} {{ nil }}', '42 1.5 True '),
        ('{{ properties.empty|default:"dflt" }}', 'dflt'),
        ('{{ container.name|default:"dflt" }}', 'web-1'),
        ('a{# a comment {{ x }} #}b', 'ab'),
        ('{% if container.name == "web-1" %}yes{% endif %}', 'yes'),
        ('{% if container.name != "web-1" %}yes{% endif %}', ''),
        ('{% if missing %}a{% elif properties.default %}b{% else %}c'
         '{% endif %}', 'b'),
        ('{% if missing %}a{% elif missing %}b{% else %}c{% endif %}', 'c'),
        ('{% if true %}a{% elif true %}b{% else %}c{% endif %}', 'a'),
        ('{% if not missing and container.name %}x{% endif %}', 'x'),
        ('{% if !missing && (missing || true) %}x{% endif %}', 'x'),
        ('{% if missing or properties.empty %}x{% else %}y{% endif %}',
         'y'),
        ('{% if container.name %}{% if missing %}a{% else %}b{% endif %}'
         '{% else %}{% if true %}c{% endif %}{% endif %}', 'b'),
        ('{% if missing %}{% if true %}a{% else %}b{% endif %}{% endif %}',
         ''),
        ('{% if config_get("user.network-config", "") == "" %}dhcp'
         '{% else %}{{ config_get("user.network-config", "") }}{% endif %}',
         'dhcp'),
        ('a  \n {%- if true -%}  \n b \n {%- endif %}', 'ab'),
        ('x\n  {{- container.name -}}  \ny', 'xweb-1y'),
        ('{{ missing == nil }} {{ missing == "" }}', 'True True'),
    )
    def test_render(self, template, expected):
        context = dict(CONTEXT, config={'user.set': 'configured'})
        self.assertEqual(expected, lxd_templates.render(template, context))

    def test_real_templates(self):
        context = {'container': {'name': 'web-1'}, 'properties': {}}
        self.assertEqual('web-1\n', lxd_templates.render(
            lxd_images.HOSTNAME_TPL, context))
        hosts = lxd_templates.render(lxd_images.HOSTS_TPL, context)
        self.assertIn('127.0.1.1   web-1\n', hosts)
        self.assertIn('::1     ip6-localhost ip6-loopback\n', hosts)
        network = lxd_templates.render(lxd_images.NETWORK_TPL, context)
        self.assertEqual('version: 1\n', network[:11])
        self.assertIn('control: auto\n', network)

    @ddt.data(
        '{% for x in y %}{% endfor %}',
        '{% if true %}unclosed',
        '{% endif %}',
        '{% else %}',
        '{% if true %}a{% else %}b{% elif true %}c{% endif %}',
        '{{ unknown_function("x") }}',
        '{{ config_get("a", "b", "c") }}',
        '{{ x|upper }}',
        '{{ container. }}',
        '{{ "unterminated }}',
        '{{ (true }}',
        '{{ a b }}',
        '{{ }}',
    )
    def test_unsupported(self, template):
        self.assertRaises(lxd_templates.TemplateError,
                          lxd_templates.render, template, CONTEXT)


@ddt.ddt
class MetadataTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.machine = 'x86_64'
        self.useFixture(fixtures.MockPatch(
            'os.uname', side_effect=lambda: Uname(
                'Linux', 'host', '6.1', '#1', self.machine)))

    def parse(self, **fields):
        meta = {'architecture': 'x86_64'}
        meta.update(fields)
        return lxd_metadata.parse_metadata(yaml.safe_dump(meta).encode())

    @ddt.unpack
    @ddt.data(
        ('x86_64', 'x86_64'), ('x86_64', 'amd64'), ('aarch64', 'arm64'),
        ('aarch64', 'aarch64'), ('armv7l', 'armhf'), ('ppc64le', 'ppc64el'),
        ('s390x', 's390x'), ('riscv64', 'riscv64'), ('i686', 'i386'),
    )
    def test_architecture_aliases(self, machine, image):
        self.machine = machine
        self.assertEqual(machine,
                         self.parse(architecture=image)['architecture'])

    def test_other_architecture_refused_naming_both(self):
        e = self.assertRaises(stream.UnsafeImage, self.parse,
                              architecture='arm64')
        self.assertEqual("it is an LXD image for aarch64 (metadata.yaml says "
                         "'arm64') and this host is x86_64", str(e))

    @ddt.unpack
    @ddt.data(
        (b'architecture: [x86_64\n  - : {bad\n', 'not valid YAML'),
        (b'- just\n- a list\n', 'not a mapping'),
        (b'', 'not a mapping'),
        (b'properties: {}\n', 'names no architecture'),
        (b'architecture: [x86_64]\n', 'names no architecture'),
        (b'architecture: x86_64\nproperties: [a]\n',
         'properties is not a mapping'),
        (b'architecture: x86_64\nproperties: {a: {b: c}}\n',
         "properties 'a' is not a string"),
        (b'architecture: x86_64\ntemplates: [a]\n',
         'templates is not a mapping'),
        (b'architecture: x86_64\n!!python/object:os.system {}\n',
         'not valid YAML'),
    )
    def test_bad_metadata_refused(self, text, reason):
        e = self.assertRaises(stream.UnsafeImage,
                              lxd_metadata.parse_metadata, text)
        self.assertIn(reason, str(e))

    def test_real_metadata(self):
        facts = lxd_metadata.parse_metadata(lxd_images.metadata_yaml())
        self.assertEqual('x86_64', facts['architecture'])
        self.assertEqual('20231114_22:13', facts['properties']['serial'])
        # The cloud-init template applies on copy only: not kept.
        self.assertEqual({
            '/etc/hostname': {'when': ['create', 'copy'],
                              'create_only': False,
                              'template': 'hostname.tpl', 'properties': {}},
            '/etc/hosts': {'when': ['create', 'copy'], 'create_only': False,
                           'template': 'hosts.tpl', 'properties': {}},
        }, facts['templates'])

    def test_scalars_become_strings(self):
        facts = self.parse(properties={'n': 1, 'b': True, 'none': None,
                                       2: 'two'})
        self.assertEqual({'n': '1', 'b': 'true', 'none': '', '2': 'two'},
                         facts['properties'])

    def test_templates_kept_on_create_or_start(self):
        facts = self.parse(templates={
            '/a': {'when': ['start'], 'template': 'a.tpl'},
            '/b': {'when': 'create', 'template': 'b.tpl',
                   'create_only': True, 'properties': {'k': 'v'}},
            '/c': {'when': ['copy', 'rename'], 'template': 'c.tpl'},
            '/d': {'template': 'd.tpl'},
            '//e/./f': {'when': ['create'], 'template': 'sub/e.tpl'},
        })
        self.assertEqual({
            '/a': {'when': ['start'], 'create_only': False,
                   'template': 'a.tpl', 'properties': {}},
            '/b': {'when': ['create'], 'create_only': True,
                   'template': 'b.tpl', 'properties': {'k': 'v'}},
            '/e/f': {'when': ['create'], 'create_only': False,
                     'template': 'sub/e.tpl', 'properties': {}},
        }, facts['templates'])

    @ddt.unpack
    @ddt.data(
        ('etc/hostname', 'x.tpl', 'not an absolute path'),
        ('/etc/../../host', 'x.tpl', 'not an absolute path'),
        ('/', 'x.tpl', 'not an absolute path'),
        ('/etc/hostname', '../../etc/shadow', 'not a file under templates'),
        ('/etc/hostname', '/etc/shadow', 'not a file under templates'),
        ('/etc/hostname', None, 'not a file under templates'),
        ('/etc/hostname', '', 'not a file under templates'),
    )
    def test_template_paths_refused(self, guest_path, name, reason):
        e = self.assertRaises(stream.UnsafeImage, self.parse, templates={
            guest_path: {'when': ['create'], 'template': name}})
        self.assertIn(reason, str(e))


class ReadMetadataTest(base.BaseTestCase):
    """metadata.yaml and templates read from an unpacked tree."""

    def setUp(self):
        super().setUp()
        self.root = self.useFixture(fixtures.TempDir()).path
        self.outside = self.useFixture(fixtures.TempDir()).path
        self.secret = os.path.join(self.outside, 'secret')
        with open(self.secret, 'w') as f:
            f.write('host secret')
        os.mkdir(os.path.join(self.root, 'templates'))
        self.write('metadata.yaml', lxd_images.metadata_yaml())
        for name, text in lxd_images.TEMPLATES.items():
            self.write('templates/' + name, text.encode())

    def write(self, name, data):
        with open(os.path.join(self.root, name), 'wb') as f:
            f.write(data)

    def replace(self, name, how):
        path = os.path.join(self.root, name)
        if os.path.isdir(path):
            os.rename(path, path + '.moved')
        else:
            os.unlink(path)
        if how == 'symlink':
            os.symlink(self.secret if name != 'templates' else self.outside,
                       path)
        elif how == 'fifo':
            os.mkfifo(path)

    def refused(self, reason):
        e = self.assertRaises(stream.UnsafeImage, lxd_metadata.read_metadata,
                              self.root)
        self.assertIn(reason, str(e))

    def test_templates_read(self):
        facts = lxd_metadata.read_metadata(self.root)
        self.assertEqual(lxd_images.HOSTNAME_TPL,
                         facts['templates']['/etc/hostname']['template'])
        self.assertEqual(lxd_images.HOSTS_TPL,
                         facts['templates']['/etc/hosts']['template'])

    def test_metadata_symlink_refused(self):
        self.replace('metadata.yaml', 'symlink')
        self.refused('metadata.yaml in the LXD image is not a regular file')

    def test_metadata_fifo_refused(self):
        self.replace('metadata.yaml', 'fifo')
        self.refused('metadata.yaml in the LXD image is not a regular file')

    def test_no_metadata_refused(self):
        self.replace('metadata.yaml', 'remove')
        self.refused('has no metadata.yaml')

    def test_templates_dir_symlink_refused(self):
        self.replace('templates', 'symlink')
        self.refused('templates in the LXD image is not a directory')

    def test_template_symlink_refused(self):
        self.replace('templates/hosts.tpl', 'symlink')
        self.refused('hosts.tpl in the LXD image is not a regular file')

    def test_template_missing_refused(self):
        self.replace('templates/hosts.tpl', 'remove')
        self.refused("names template 'hosts.tpl' for /etc/hosts, which is "
                     'not in templates/')

    def test_no_templates_dir_refused(self):
        self.replace('templates', 'remove')
        self.refused('has no templates/ directory')

    def test_template_in_symlinked_subdir_refused(self):
        meta = yaml.safe_load(lxd_images.metadata_yaml())
        meta['templates']['/etc/hostname']['template'] = 'sub/hostname.tpl'
        self.write('metadata.yaml', yaml.safe_dump(meta).encode())
        os.symlink(self.outside, os.path.join(self.root, 'templates/sub'))
        with open(os.path.join(self.outside, 'hostname.tpl'), 'w') as f:
            f.write('from the host')
        self.refused('sub in the LXD image is not a directory')

    def test_template_not_utf8_refused(self):
        self.write('templates/hosts.tpl', b'\xff\xfe')
        self.refused("template 'hosts.tpl' is not UTF-8 text")

    def test_templates_capped(self):
        self.write('templates/hosts.tpl',
                   b'x' * (lxd_metadata.TEMPLATES_MAX - 10))
        self.refused('more than 1024 KiB of templates')

    def test_metadata_capped(self):
        self.write('metadata.yaml', b'#' * (lxd_metadata.METADATA_MAX + 1))
        self.refused('metadata.yaml in the LXD image is larger than')


def tar_bytes(members, compression=''):
    """A tar of (name, data or None for a directory) pairs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w:' + compression) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@ddt.ddt
class KindTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path

    def kind(self, data):
        path = os.path.join(self.dir, 'image')
        with open(path, 'wb') as f:
            f.write(data)
        return lxd.kind(data[:65536], path)

    @ddt.data('', 'gz', 'xz', 'bz2')
    def test_unified(self, compression):
        data = tar_bytes([('metadata.yaml', b'architecture: x86_64\n'),
                          ('rootfs', None), ('rootfs/etc', None)],
                         compression)
        self.assertEqual(lxd.UNIFIED, self.kind(data))

    def test_unified_zstd(self):
        path = os.path.join(self.dir, 'image.tar.zst')
        os.mkdir(os.path.join(self.dir, 'tree'))
        with open(os.path.join(self.dir, 'tree', 'metadata.yaml'), 'w') as f:
            f.write('architecture: x86_64\n')
        subprocess.run(['tar', '--zstd', '-cf', path, '-C',
                        os.path.join(self.dir, 'tree'), '.'], check=True)
        with open(path, 'rb') as f:
            self.assertEqual(lxd.UNIFIED, lxd.kind(f.read(65536), path))

    def test_metadata_after_the_first_members_not_recognised(self):
        data = tar_bytes([('rootfs/f%d' % i, b'x') for i in range(10)]
                         + [('metadata.yaml', b'architecture: x86_64\n')])
        self.assertIsNone(self.kind(data))

    @ddt.data('', 'gz')
    def test_split(self, compression):
        meta = tar_bytes([('metadata.yaml', b'architecture: x86_64\n')],
                         'xz')
        squash = b'hsqs' + b'\0' * 1000
        self.assertEqual(lxd.SPLIT, self.kind(tar_bytes(
            [('fp.tar.xz', meta), ('fp.squashfs', squash)], compression)))
        self.assertEqual(lxd.SPLIT, self.kind(tar_bytes(
            [('.', None), ('fp.squashfs', squash), ('fp.tar.xz', meta)],
            compression)))

    @ddt.data(
        # a root file system tarball
        [('bin', None), ('bin/sh', b'elf'), ('etc', None)],
        [('./', None), ('./bin/sh', b'elf')],
        # a top-level file that is neither a squashfs nor LXD metadata
        [('README', b'hello'), ('rootfs.squashfs', b'hsqs')],
        [('other.tar', tar_bytes([('etc/passwd', b'root')]))],
        # a squashfs deeper than the top level
        [('images/fp.squashfs', b'hsqs')],
        # metadata.yaml below the top level
        [('rootfs/metadata.yaml', b'architecture: x86_64\n')],
    )
    def test_not_lxd(self, members):
        self.assertIsNone(self.kind(tar_bytes(members)))
        self.assertIsNone(self.kind(tar_bytes(members, 'gz')))

    def test_not_a_tar(self):
        self.assertIsNone(self.kind(b'hsqs' + b'\0' * 4096))
        self.assertIsNone(self.kind(b'\x1f\x8b' + b'garbage' * 100))
        self.assertFalse(lxd.detect(b'', os.path.join(self.dir, 'none')))
