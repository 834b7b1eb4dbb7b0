"""LXD's image templates (pongo2) rendered into a guest's files.

An LXD image's metadata.yaml names templates for files such as
/etc/hostname and /etc/hosts (see :mod:`lxd_metadata`); the driver renders
them with the instance's host name before the container first starts.
Only the part of pongo2 that the templates of the public images use is
supported (see :func:`render`); anything else raises TemplateError and the
driver leaves that file as the image has it.
"""

import re


class TemplateError(ValueError):
    """A template uses what :func:`render` does not support."""


_TAG = re.compile(r'\{\{(-?)(.*?)(-?)\}\}|\{%(-?)(.*?)(-?)%\}|\{#.*?#\}',
                  re.S)
_TOKEN = re.compile(r'''\s*(?:
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<number>\d+(?:\.\d+)?)
  | (?P<op>==|!=|&&|\|\||[()!,|:.])
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
)''', re.X | re.S)
_ESCAPE = re.compile(r'\\(.)', re.S)
_ESCAPES = {'n': '\n', 't': '\t', '\\': '\\', '"': '"', "'": "'"}


def _unescape(match):
    return _ESCAPES.get(match.group(1), match.group(0))


def render(text, context):
    """Render an LXD (pongo2) template with ``context``.

    Supported, which is what the templates of the images on
    images.linuxcontainers.org use (hostname, hosts, cloud-init):

    * ``{{ expr }}``; ``{# comments #}``; ``-`` whitespace control;
    * ``{% if expr %}`` ... ``{% elif expr %}`` ... ``{% else %}`` ...
      ``{% endif %}``, nested;
    * expressions: "strings", numbers, true/false, dotted names looked up
      in ``context`` (``container.name``, ``instance.name``,
      ``properties.default``; a missing one is empty),
      ``config_get("key", default)`` (from ``context['config']``, else
      the default), ``==``, ``!=``, ``and``/``&&``, ``or``/``||``,
      ``not``/``!``, parentheses and the ``default:"x"`` filter.

    Anything else (``{% for %}``, other functions or filters) raises
    TemplateError; the caller should then leave that file alone.
    """
    out = []
    frames = []   # per open if: [parent emits, branch emits, taken, else]
    pos, strip_next = 0, False
    for match in _TAG.finditer(text):
        literal = text[pos:match.start()]
        if strip_next:
            literal = literal.lstrip()
        if match.group(1) == '-' or match.group(4) == '-':
            literal = literal.rstrip()
        emitting = all(f[1] for f in frames)
        if emitting:
            out.append(literal)
        pos = match.end()
        strip_next = match.group(3) == '-' or match.group(6) == '-'
        if match.group(2) is not None:
            if emitting:
                out.append(_display(_evaluate(match.group(2), context)))
        elif match.group(5) is not None:
            _statement(match.group(5).strip(), context, frames, emitting)
    if frames:
        raise TemplateError('{% if %} without {% endif %}')
    literal = text[pos:]
    out.append(literal.lstrip() if strip_next else literal)
    return ''.join(out)


def _statement(body, context, frames, emitting):
    word, rest = (body.split(None, 1) + [''])[:2]
    if word == 'if':
        value = emitting and _true(_evaluate(rest, context))
        frames.append([emitting, value, value, False])
    elif word in ('elif', 'else', 'endif') and not frames:
        raise TemplateError('{%% %s %%} without {%% if %%}' % word)
    elif word == 'elif':
        frame = frames[-1]
        if frame[3]:
            raise TemplateError('{% elif %} after {% else %}')
        value = (frame[0] and not frame[2]
                 and _true(_evaluate(rest, context)))
        frame[1], frame[2] = value, frame[2] or value
    elif word == 'else':
        frame = frames[-1]
        frame[1], frame[2], frame[3] = frame[0] and not frame[2], True, True
    elif word == 'endif':
        frames.pop()
    else:
        raise TemplateError('unsupported tag {%% %s %%}' % word)


def _display(value):
    if value is None:
        return ''
    if isinstance(value, bool):
        return 'True' if value else 'False'
    return str(value)


def _true(value):
    return bool(value)


def _tokens(expr):
    tokens, pos = [], 0
    expr = expr.strip()
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if not match or match.end() == pos:
            raise TemplateError('cannot parse %r' % expr)
        pos = match.end()
        kind = match.lastgroup
        tokens.append((kind, match.group(kind)))
    return tokens


def _evaluate(expr, context):
    parser = _Expression(_tokens(expr), context)
    value = parser.parse_or()
    if parser.pos != len(parser.tokens):
        raise TemplateError('cannot parse %r' % expr)
    return value


class _Expression:
    """Recursive descent over the tokens, evaluating as it goes."""

    def __init__(self, tokens, context):
        self.tokens, self.pos, self.context = tokens, 0, context

    def peek(self):
        return self.tokens[self.pos] if self.pos < len(self.tokens) else (
            None, None)

    def take(self, *values):
        kind, value = self.peek()
        if value in values and kind in ('op', 'name'):
            self.pos += 1
            return value
        return None

    def expect(self, value):
        if not self.take(value):
            raise TemplateError('expected %r' % value)

    def parse_or(self):
        value = self.parse_and()
        while self.take('or', '||'):
            right = self.parse_and()
            value = value if _true(value) else right
        return value

    def parse_and(self):
        value = self.parse_not()
        while self.take('and', '&&'):
            right = self.parse_not()
            value = right if _true(value) else value
        return value

    def parse_not(self):
        if self.take('not', '!'):
            return not _true(self.parse_not())
        return self.parse_compare()

    def parse_compare(self):
        value = self.parse_filtered()
        op = self.take('==', '!=')
        if op:
            right = self.parse_filtered()
            same = _comparable(value) == _comparable(right)
            return same if op == '==' else not same
        return value

    def parse_filtered(self):
        value = self.parse_primary()
        while self.take('|'):
            kind, name = self.peek()
            if kind != 'name' or name != 'default':
                raise TemplateError('unsupported filter %r' % name)
            self.pos += 1
            self.expect(':')
            fallback = self.parse_primary()
            value = value if _true(value) else fallback
        return value

    def parse_primary(self):
        kind, value = self.peek()
        self.pos += 1
        if kind == 'string':
            return _ESCAPE.sub(_unescape, value[1:-1])
        if kind == 'number':
            return float(value) if '.' in value else int(value)
        if kind == 'op' and value == '(':
            inner = self.parse_or()
            self.expect(')')
            return inner
        if kind == 'name':
            if value in ('true', 'True', 'false', 'False'):
                return value.lower() == 'true'
            if value in ('nil', 'None', 'none'):
                return None
            if self.take('('):
                return self.call(value)
            return self.lookup(value)
        raise TemplateError('unexpected %r' % (value,))

    def lookup(self, name):
        value = self.context.get(name)
        while self.take('.'):
            kind, attr = self.peek()
            if kind not in ('name', 'number'):
                raise TemplateError('expected a name after "."')
            self.pos += 1
            value = value.get(attr) if isinstance(value, dict) else None
        return value

    def call(self, name):
        args = []
        if not self.take(')'):
            args.append(self.parse_or())
            while self.take(','):
                args.append(self.parse_or())
            self.expect(')')
        if name != 'config_get' or not 1 <= len(args) <= 2:
            raise TemplateError('unsupported function %s/%d'
                                % (name, len(args)))
        config = self.context.get('config') or {}
        default = args[1] if len(args) == 2 else ''
        return config.get(str(args[0]), default)


def _comparable(value):
    return '' if value is None else value
