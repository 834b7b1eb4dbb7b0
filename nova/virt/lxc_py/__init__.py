from nova_lxd_py.virt.driver import LXCDriver  # noqa: F401
