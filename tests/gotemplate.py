"""A small interpreter for the subset of Go's text/template that Ollama Modelfiles use, for tests.

There is no Go toolchain or ollama binary on the test machines, so this renders the Modelfile TEMPLATE
with Go's semantics for the constructs phinetune emits: text, `{{ .Field }}`, `{{ range .Messages }}`,
`{{ if }} / {{ else if }} / {{ else }} / {{ end }}`, the functions eq/or/and/not, parenthesised
sub-expressions, string literals, and the `{{-`/`-}}` whitespace trim markers. Anything else raises, so
an unsupported construct cannot be silently mis-rendered.
"""

from __future__ import annotations

import re

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(r'\s*(\(|\)|"(?:[^"\\]|\\.)*"|\.[A-Za-z_]\w*|\.|[A-Za-z_]\w*)')


def _lex(src: str) -> list[tuple[str, str]]:
    """[('text', s) | ('action', body)] with trim markers applied to neighbouring text (Go: ASCII spaces)."""
    out: list[list[str]] = []
    pos, trim_next = 0, False
    for m in _ACTION.finditer(src):
        text = src[pos : m.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        out.append(["text", text])
        out.append(["action", m.group(2).strip()])
        trim_next, pos = bool(m.group(3)), m.end()
    tail = src[pos:]
    out.append(["text", tail.lstrip(" \t\r\n") if trim_next else tail])
    return [(k, v) for k, v in out if not (k == "text" and v == "")]


def _parse(tokens, i=0, stop=("end",)):
    """Nodes until a keyword in `stop`; returns (nodes, index of the stopping token)."""
    nodes = []
    while i < len(tokens):
        kind, body = tokens[i]
        word = body.split(None, 1)[0] if kind == "action" and body else ""
        if kind == "action" and (word in stop or body.startswith("else")):
            return nodes, i
        if kind == "text":
            nodes.append(("text", body))
            i += 1
        elif word == "range":
            inner, j = _parse(tokens, i + 1)
            nodes.append(("range", body[5:].strip(), inner))
            i = _expect_end(tokens, j) + 1
        elif word == "if":
            branches, j = [], i
            cond = body[2:].strip()
            while True:
                inner, j = _parse(tokens, j + 1)
                branches.append((cond, inner))
                nxt = tokens[j][1]
                if nxt == "end":
                    break
                if nxt == "else":
                    cond = None
                elif nxt.startswith("else if "):
                    cond = nxt[len("else if ") :].strip()
                else:
                    raise ValueError(f"unsupported: {nxt!r}")
            nodes.append(("if", branches))
            i = j + 1
        else:
            nodes.append(("expr", body))
            i += 1
    if stop != ():
        raise ValueError("missing {{ end }}")
    return nodes, i


def _expect_end(tokens, j):
    if j >= len(tokens) or tokens[j][1] != "end":
        raise ValueError("range without {{ end }} (range/else is not supported)")
    return j


def _truth(v) -> bool:
    return bool(v)


def _eval(expr: str, dot):
    toks = [t for t in _TOKEN.findall(expr)]
    if "".join(toks).replace(" ", "") != expr.replace(" ", ""):
        raise ValueError(f"unsupported expression {expr!r}")
    value, rest = _command(toks, dot)
    if rest:
        raise ValueError(f"trailing tokens in {expr!r}")
    return value


def _operand(toks, dot):
    t = toks[0]
    if t == "(":
        value, rest = _command(toks[1:], dot)
        if not rest or rest[0] != ")":
            raise ValueError("unbalanced parenthesis")
        return value, rest[1:]
    if t.startswith('"'):
        return bytes(t[1:-1], "utf-8").decode("unicode_escape"), toks[1:]
    if t == ".":
        return dot, toks[1:]
    if t.startswith("."):
        return dot[t[1:]], toks[1:]
    raise ValueError(f"unsupported operand {t!r}")


def _command(toks, dot):
    funcs = {
        "eq": lambda a, *b: any(a == x for x in b),
        "not": lambda a: not _truth(a),
        "len": len,
        "or": lambda *a: next((x for x in a if _truth(x)), a[-1]),
        "and": lambda *a: next((x for x in a if not _truth(x)), a[-1]),
    }
    if toks and toks[0] in funcs:
        name, args, toks = toks[0], [], toks[1:]
        while toks and toks[0] != ")":
            value, toks = _operand(toks, dot)
            args.append(value)
        return funcs[name](*args), toks
    if toks and re.fullmatch(r"[A-Za-z_]\w*", toks[0]):
        raise ValueError(f"unsupported function {toks[0]!r}")
    return _operand(toks, dot)


def _run(nodes, dot, out: list[str]) -> None:
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "expr":
            out.append(str(_eval(node[1], dot)))
        elif node[0] == "range":
            for item in _eval(node[1], dot):
                _run(node[2], item, out)
        else:
            for cond, inner in node[1]:
                if cond is None or _truth(_eval(cond, dot)):
                    _run(inner, dot, out)
                    break


def render(template: str, data: dict) -> str:
    nodes, _ = _parse(_lex(template), stop=())
    out: list[str] = []
    _run(nodes, data, out)
    return "".join(out)
