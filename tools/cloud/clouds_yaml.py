"""Add or remove one cloud entry in a clouds.yaml, keeping the others.

    python clouds_yaml.py add PATH NAME AUTH_URL PASSWORD
    python clouds_yaml.py remove PATH NAME
"""

import os
import sys

import yaml


def load(path):
    try:
        with open(path) as f:
            return yaml.safe_load(f) or {}
    except FileNotFoundError:
        return {}


def save(path, data, mode):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        yaml.safe_dump(data, f, default_flow_style=False, sort_keys=False)
    os.chmod(tmp, mode)
    os.rename(tmp, path)


def entry(auth_url, password):
    return {
        'auth': {'auth_url': auth_url, 'username': 'admin',
                 'password': password, 'project_name': 'admin',
                 'user_domain_name': 'Default',
                 'project_domain_name': 'Default'},
        'region_name': 'RegionOne',
        'identity_api_version': 3,
        'interface': 'public',
    }


def main(argv):
    action, path, name = argv[:3]
    data = load(path)
    clouds = data.setdefault('clouds', {}) or {}
    data['clouds'] = clouds
    if action == 'add':
        clouds[name] = entry(*argv[3:5])
    elif action == 'remove':
        if clouds.pop(name, None) is None:
            return
        if not clouds and set(data) == {'clouds'}:
            os.unlink(path)
            return
    else:
        raise SystemExit('unknown action %r' % action)
    # Readable by every user of the host, as the issue asks; this is a
    # test cloud on loopback only.
    save(path, data, 0o644)


if __name__ == '__main__':
    main(sys.argv[1:])
