"""No codec branch outside the codec folders: the rest of bitstack reaches a codec only through
``bitstack.codecs.get_codec`` and the ``Codec`` interface.

The check reads the code (Python's ``ast``, so comments and prose do not count) of every module of
``src/bitstack`` but ``codecs/`` and ``kernels/`` (one folder per codec there by design).
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import bitstack
from bitstack.codecs import codec_names, get_codec

PACKAGE = Path(bitstack.__file__).parent
EXEMPT_FOLDERS = ("codecs", "kernels")
EXEMPT_FILES: tuple[str, ...] = ()
# a codec's parameters and base buffers (names the manifest and the modules carry)
CODEC_WORDS = {"group_size", "rank", "plane_offset", "plane_step"}


def _forbidden() -> set[str]:
    """Codec names, the codecs' settings and the words above."""
    words = set(CODEC_WORDS) | set(codec_names())
    for name in codec_names():
        words |= {f.name for f in dataclasses.fields(get_codec(name).settings_type)}
    return words


def _findings(source: str, words: set[str]) -> list[str]:
    """'line: what' for every codec word of ``source`` used as code (a name, an attribute, a keyword,
    a string equal to one) and every import of a codec's folder."""
    found = []
    for node in ast.walk(ast.parse(source)):
        hit = None
        if isinstance(node, ast.Attribute) and node.attr in words:
            hit = f".{node.attr}"
        elif isinstance(node, ast.Name) and node.id in words:
            hit = node.id
        elif isinstance(node, ast.keyword) and node.arg in words:
            hit = f"{node.arg}="
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in words:
            hit = repr(node.value)
        elif isinstance(node, (ast.ImportFrom, ast.Import)):
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            folders = [m.split(".")[2] for m in modules if m.startswith("bitstack.codecs.") and m.count(".") >= 2]
            hit = next((f"import of bitstack.codecs.{f}" for f in folders if f in codec_names()), None)
        if hit:
            found.append(f"{node.lineno}: {hit}")
    return sorted(found, key=lambda f: int(f.split(":")[0]))


def test_the_check_finds_a_codec_branch():
    code = ('import bitstack.codecs.planes.grid\n'
            'def f(w, c):\n    """rank and planes in prose are fine"""\n    return w.group_size if c == "avd" else 0\n')
    assert _findings(code, _forbidden()) == ["1: import of bitstack.codecs.planes", "4: .group_size", "4: 'avd'"]


def test_no_codec_branch_outside_the_codec_folders():
    words = _forbidden()
    findings = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.split("/")[0] in EXEMPT_FOLDERS or relative in EXEMPT_FILES:
            continue
        findings += [f"{relative}:{f}" for f in _findings(path.read_text(encoding="utf-8"), words)]
    assert not findings, "codec branches outside bitstack/codecs:\n" + "\n".join(findings)
