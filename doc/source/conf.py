"""Sphinx configuration of the nova-lxd-py documentation.

Build it with::

    pip install -r doc/requirements.txt
    sphinx-build -W -b html doc/source doc/build/html

The package itself must be installed too: the configuration reference is
read from its ``oslo.config.opts`` entry point.
"""

project = 'nova-lxd-py'
copyright = 'nova-lxd-py developers'
author = 'nova-lxd-py developers'

extensions = [
    # .. show-options:: renders options from oslo.config.opts namespaces.
    'oslo_config.sphinxext',
    # .. support_matrix:: renders support-matrix.ini.
    'sphinx_feature_classification.support_matrix',
]

root_doc = 'index'
exclude_patterns = []
html_theme = 'alabaster'
