"""MkDocs hook: render the pages' LaTeX formulas as MathML while building, so no script is needed.

Not a page of the site (``mkdocs.yml`` excludes ``*.py`` from it and lists this file under
``hooks``). ``pymdownx.arithmatex`` (generic mode) finds ``$...$`` and ``$$...$$`` in the
Markdown and keeps them apart from the rest of the text; this hook converts each one to MathML
with latex2mathml, which browsers display natively: the site loads no math library and works
offline. A formula latex2mathml cannot convert is a build warning (an error with ``--strict``).
"""

from __future__ import annotations

import html
import logging
import re

from latex2mathml.converter import convert

log = logging.getLogger("mkdocs.hooks.mathml")

# pymdownx.arithmatex's generic output: \( inline \) in a span, \[ display \] in a div
FORMULA = re.compile(r'<(span|div) class="arithmatex">\s*\\([(\[])(.*?)\\[)\]]\s*</\1>', re.S)


def on_page_content(content: str, page, **kwargs) -> str:
    def mathml(match: re.Match[str]) -> str:
        tex = html.unescape(match.group(3)).strip()
        display = "block" if match.group(2) == "[" else "inline"
        try:
            return convert(tex, display=display)
        except Exception as error:  # noqa: BLE001 - latex2mathml raises many kinds
            log.warning("%s: cannot render the formula %r as MathML: %s", page.file.src_uri, tex, error)
            return match.group(0)

    return FORMULA.sub(mathml, content)
