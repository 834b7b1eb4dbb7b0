"""Image formats, detected from the image's first bytes.

Each format module has ``NAME``, ``detect(head) -> bool`` and a privileged
``unpack(archive, dest, uid_shift, gid_shift)``.
"""

from nova_lxd_py.storage.formats import tar

FORMATS = (tar,)
HEAD_BYTES = 512


def detect(path):
    """The format module for the file at ``path``, or None."""
    with open(path, 'rb') as f:
        head = f.read(HEAD_BYTES)
    for fmt in FORMATS:
        if fmt.detect(head):
            return fmt
    return None
