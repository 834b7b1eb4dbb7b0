"""Create the service project, users, roles, services and endpoints.

Idempotent: what exists is kept. Runs once per bring-up, in one process,
with the admin credentials of the ``nova-lxd-py`` entry in clouds.yaml.

    python keystone_seed.py CLOUDS_YAML SERVICE_PASSWORD
"""

import os
import sys

import openstack

REGION = 'RegionOne'
# user name -> (service name, service type, endpoint URL)
SERVICES = {
    'nova': ('nova', 'compute', 'http://127.0.0.1:8774/v2.1'),
    'placement': ('placement', 'placement', 'http://127.0.0.1:8778'),
    'glance': ('glance', 'image', 'http://127.0.0.1:9292'),
    'neutron': ('neutron', 'network', 'http://127.0.0.1:9696'),
}
ROLES = ('admin', 'service')


def seed(conn, password):
    identity = conn.identity
    domain = identity.find_domain('default')
    project = identity.find_project('service', domain_id=domain.id) or \
        identity.create_project(name='service', domain_id=domain.id)
    roles = {name: identity.find_role(name) or identity.create_role(name=name)
             for name in ROLES}
    for user_name, (svc_name, svc_type, url) in SERVICES.items():
        user = identity.find_user(user_name, domain_id=domain.id)
        if user is None:
            user = identity.create_user(name=user_name, password=password,
                                        domain_id=domain.id)
        for role in roles.values():
            identity.assign_project_role_to_user(project, user, role)
        service = identity.find_service(svc_name) or identity.create_service(
            name=svc_name, type=svc_type)
        have = {e.interface for e in identity.endpoints(service_id=service.id)}
        for interface in ('public', 'internal'):
            if interface not in have:
                identity.create_endpoint(service_id=service.id,
                                         interface=interface, url=url,
                                         region_id=REGION)


def main():
    clouds_yaml, password = sys.argv[1:3]
    os.environ['OS_CLIENT_CONFIG_FILE'] = clouds_yaml
    seed(openstack.connect(cloud='nova-lxd-py'), password)


if __name__ == '__main__':
    main()
