"""bindep.txt lists what the host scripts install, so `bindep -b` on a
host tells an operator the same story as tools/setup-host.sh."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))))


def bash_array(path, name):
    with open(os.path.join(REPO, path)) as f:
        text = f.read()
    body = re.search(r'^%s=\((.*?)\)' % name, text, re.M | re.S).group(1)
    return {word for line in body.splitlines()
            for word in line.split('#')[0].split()}


def bindep():
    """{package: set of profiles} ('' for no profile beyond platform)."""
    packages = {}
    with open(os.path.join(REPO, 'bindep.txt')) as f:
        for line in f:
            line = line.split('#')[0].strip()
            if not line:
                continue
            name, _, selector = line.partition(' ')
            profiles = set(selector.strip('[]').split()) - {'platform:dpkg'}
            packages.setdefault(name, set()).update(profiles or {''})
    return packages


def test_criu_profile_is_what_build_sh_installs():
    wanted = (bash_array('tools/criu/build.sh', 'BUILD_DEPS') |
              bash_array('tools/criu/build.sh', 'RUN_DEPS'))
    listed = bindep()
    # python3 runs every tool here; bindep names only its -dev and -venv.
    missing = sorted(p for p in wanted - {'python3'} if p not in listed)
    assert missing == []


def test_setup_host_packages_are_in_bindep():
    listed = bindep()
    missing = sorted(p for p in bash_array('tools/setup-host.sh', 'PACKAGES')
                     if p not in listed)
    assert missing == []
