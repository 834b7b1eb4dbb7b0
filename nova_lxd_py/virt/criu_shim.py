"""The ``criu`` that liblxc runs while it restores a guest.

liblxc 5's restore (``lxc-checkpoint -r``) cannot give a guest back its
console: it never allocates the console's pty, then refuses ("lxc.console.path
configured on source host but not target") or, once the checkpoint's
tty.info is set aside, hands CRIU ``--ext-mount-map console:`` with no
path. liblxc runs the first ``criu`` on PATH, so ``checkpoint.restore`` puts
this one first, for that one restore only. For a ``restore`` it drops
liblxc's console mapping and adds the console CRIU needs: the pty that
``checkpoint.restore`` opened (``--inherit-fd fd[N]:tty[...]``, mounted on
the guest's /dev/console); every other command (``--version``, ``check``)
passes through unchanged. It then becomes the real criu.

Environment (set by checkpoint.restore): NOVA_LXD_PY_CRIU (the real
criu), NOVA_LXD_PY_CRIU_TTY (``fd[N]:tty[RDEV:DEV]``),
NOVA_LXD_PY_CRIU_CONSOLE (the pty's path, e.g. /dev/pts/3).
"""

import os
import sys

CRIU = 'NOVA_LXD_PY_CRIU'
TTY = 'NOVA_LXD_PY_CRIU_TTY'
CONSOLE = 'NOVA_LXD_PY_CRIU_CONSOLE'


def rewrite(args, tty, console):
    """criu's arguments (without argv[0]) as this restore needs them."""
    if not args or args[0] != 'restore':
        return list(args)
    out = []
    i = 0
    while i < len(args):
        if args[i] == '--ext-mount-map' and i + 1 < len(args) and \
                args[i + 1].startswith('console:'):
            i += 2
            continue
        out.append(args[i])
        i += 1
    if tty:
        out += ['--inherit-fd', tty]
    if console:
        out += ['--ext-mount-map', 'console:' + console]
    return out


def main(argv=None, environ=None):
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ if environ is None else environ
    real = environ.get(CRIU, '')
    if not os.path.isabs(real):
        sys.stderr.write('criu_shim: %s is not set to the real criu\n' % CRIU)
        return 127
    args = rewrite(argv, environ.get(TTY, ''), environ.get(CONSOLE, ''))
    os.execv(real, [real] + args)


if __name__ == '__main__':
    sys.exit(main())
