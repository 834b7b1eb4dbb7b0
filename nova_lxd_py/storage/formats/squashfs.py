"""Placeholder while this format is being written (issue 4)."""

NAME = 'squashfs'
DISK_FORMATS = ()
CONTAINER_FORMATS = ()


def detect(head, path):
    return False


def unpack(archive, target, workdir):
    raise NotImplementedError(NAME)
