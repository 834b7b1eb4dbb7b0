import setuptools


class Distribution(setuptools.Distribution):
    """Give setuptools dotted package names for pbr's directory entries.

    ``[files] packages`` in setup.cfg names directories, so the shim package
    appears as ``nova/virt/lxc_py``. A wheel does not care, but the finder
    that ``pip install -e .`` installs maps import names to folders and would
    never match ``nova.virt.lxc_py`` (README.md, "Packaging").
    """

    def finalize_options(self):
        super().finalize_options()  # pbr fills self.packages here
        if self.packages:
            self.packages = [p.replace('/', '.') for p in self.packages]


setuptools.setup(
    setup_requires=['pbr>=6.0.0'], pbr=True, distclass=Distribution)
