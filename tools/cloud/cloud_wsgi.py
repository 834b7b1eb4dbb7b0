"""gunicorn entry points for the OpenStack APIs of the single-host cloud.

The apps parse ``sys.argv`` with oslo.config at import time, where
gunicorn's own arguments would make them exit ("unrecognized arguments"),
so argv is cut before any of them is imported. Each app finds its config
through its ``OS_<SERVICE>_CONFIG_DIR`` (and ``_FILES``) variables, which
cloud.sh sets.

    gunicorn 'cloud_wsgi:app("nova")'
"""

import importlib
import sys

sys.argv = sys.argv[:1]

MODULES = {
    'keystone': 'keystone.wsgi.api',
    'placement': 'placement.wsgi.api',
    'glance': 'glance.wsgi.api',
    'nova': 'nova.wsgi.osapi_compute',
    'nova-metadata': 'nova.wsgi.metadata',
    'neutron': 'neutron.wsgi.api',
}


def app(service):
    return importlib.import_module(MODULES[service]).application
