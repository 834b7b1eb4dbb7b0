"""A stand-in nova-conductor inside the nova-compute under test.

``test_shim_load`` puts this directory on PYTHONPATH, so Python imports
this file as ``sitecustomize`` when the stock ``nova-compute`` console
script starts. nova-compute pings nova-conductor and waits for it before it
loads its driver, and without a message broker no other process can
answer. This adds an RPC server on the conductor topic to the process's own
fake transport, answering just what start-up asks before
``ComputeManager.init_host`` reaches the driver. Nova's code itself is not
changed. Inert unless NOVA_LXD_PY_CONDUCTOR_STUB=1.
"""

import os

if os.environ.get('NOVA_LXD_PY_CONDUCTOR_STUB') == '1':
    # What nova-compute does first; it must precede every other import.
    from nova import monkey_patch
    monkey_patch.patch(backend='threading')

    import oslo_messaging as messaging

    from nova import baserpc
    from nova.conductor import api as conductor_api
    from nova.objects import base as objects_base
    from nova.objects import service as service_obj
    from nova import rpc

    class ConductorStub:
        target = messaging.Target(version='3.0')

        ANSWERS = {
            # A new compute service: no record yet.
            ('Service', 'get_by_host_and_binary'): None,
            ('Service', 'get_minimum_version'): service_obj.SERVICE_VERSION,
        }

        def object_class_action_versions(self, context, objname, objmethod,
                                         object_versions, args, kwargs):
            try:
                return self.ANSWERS[objname, objmethod]
            except KeyError:
                raise NotImplementedError(
                    'conductor stub: %s.%s' % (objname, objmethod))

    _wait_until_ready = conductor_api.API.wait_until_ready

    def wait_until_ready(self, context, *args, **kwargs):
        # nova.rpc has its transport by now (config.parse_args made it).
        server = rpc.get_server(
            messaging.Target(topic='conductor', server='conductor-stub'),
            [ConductorStub(), baserpc.BaseRPCAPI('conductor', None)],
            objects_base.NovaObjectSerializer())
        server.start()
        return _wait_until_ready(self, context, *args, **kwargs)

    conductor_api.API.wait_until_ready = wait_until_ready
