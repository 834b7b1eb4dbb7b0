"""Server snapshots (createImage, and so shelve): the guest's root to
Glance without stopping it (see storage.snapshot). Part of LXCDriver (a
mixin)."""

from nova import exception as nova_exception
from nova.objects import fields

from nova_lxd_py.storage import snapshot
from nova_lxd_py.virt import container
from nova_lxd_py.virt import host


class SnapshotMixin:

    def snapshot(self, context, instance, image_id, update_task_state):
        """Upload the guest's root to Glance without stopping it.

        The guest is frozen only while its changed files are copied (see
        storage.snapshot); a paused guest stays paused, a stopped one
        stopped. A container that is missing is InstanceNotRunning (as
        Nova's driver battery expects), one that goes missing meanwhile
        InstanceNotFound: the compute manager takes either for a deleted
        instance and removes the image record.
        """
        if container.state(instance.uuid)[0] == 'UNDEFINED':
            raise nova_exception.InstanceNotRunning(
                instance_id=instance.uuid)
        try:
            snapshot.upload(context, instance, image_id,
                            self._snapshot_metadata(instance),
                            update_task_state)
        except Exception as e:
            if container.state(instance.uuid)[0] == 'UNDEFINED':
                raise nova_exception.InstanceNotFound(
                    instance_id=instance.uuid) from e
            raise

    @staticmethod
    def _snapshot_metadata(instance):
        """Glance fields that make the snapshot boot on this driver again.

        A zstd tarball of the root is a raw/bare image to Glance. The record
        the compute manager made already holds what Nova inherits from the
        instance's image (os_distro, min_disk, ...); purge_props=False keeps
        it, and these are set over it.
        """
        properties = {
            'img_hv_type': fields.HVType.LXC,
            'hw_vm_mode': fields.VMMode.EXE,
            'architecture': fields.Architecture.canonicalize(host.machine()),
        }
        if instance.obj_attr_is_set('os_type') and instance.os_type:
            properties['os_type'] = instance.os_type
        return {'disk_format': 'raw', 'container_format': 'bare',
                'properties': properties}
