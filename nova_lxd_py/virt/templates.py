"""LXD image templates (metadata.yaml's create/start templates), rendered
into a new instance's root before its first start."""

import os

from oslo_log import log as logging

from nova_lxd_py.privsep import fs
from nova_lxd_py.storage.formats import lxd_templates

LOG = logging.getLogger(__name__)


def render(top, image, owner, hostname, instance):
    """Write an LXD image's create/start templates into the new root.

    Rendered once, before the first start, into ``top``: the root-disk
    backend's writable layer (a fresh directory, so nothing the guest made
    is followed).
    A template whose directory is not a plain directory in the image is
    skipped with a warning rather than written through a link.
    """
    templates = image.meta.get('templates') or {}
    for guest_path, spec in sorted(templates.items()):
        parts = [p for p in guest_path.split('/') if p not in ('', '.')]
        if not parts or '..' in parts:
            continue
        made = _template_dirs(image.rootfs, top, parts[:-1])
        lower = os.path.join(image.rootfs, *parts)
        if not made or os.path.islink(lower) or (
                os.path.lexists(lower) and not os.path.isfile(lower)):
            LOG.warning('LXD template for %s skipped: the image has a '
                        'link or a non-file on its path', guest_path,
                        instance=instance)
            continue
        mode = os.lstat(lower).st_mode & 0o7777 \
            if os.path.lexists(lower) else 0o644
        try:
            text = lxd_templates.render(spec['template'], {
                'container': {'name': hostname},
                'instance': {'name': hostname},
                'properties': spec.get('properties') or {}})
        except lxd_templates.TemplateError as e:
            LOG.warning('LXD template for %(path)s skipped: %(err)s',
                        {'path': guest_path, 'err': e},
                        instance=instance)
            continue
        fs.write_file(os.path.join(top, *parts), text.encode(), *owner,
                      mode)


def _template_dirs(image_root, top, parts):
    """Mirror the image's directories ``parts`` in ``top``; False if
    one of them is a link or not a directory in the image."""
    for i in range(1, len(parts) + 1):
        lower = os.path.join(image_root, *parts[:i])
        if os.path.islink(lower) or not os.path.isdir(lower):
            return False
        st = os.lstat(lower)
        fs.make_dir(os.path.join(top, *parts[:i]), st.st_uid, st.st_gid,
                    st.st_mode & 0o7777)
    return True
