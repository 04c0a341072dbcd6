"""User text (label names, file names, typed vocabularies, error messages) inside the Markdown the
page renders, shown exactly as typed.

HTML escaping alone is not enough there: Gradio's Markdown turns `![t](http://host/pixel.png)` in
a label name into an image every visitor's browser fetches (a tracking pixel on a public Space),
and `**x**` into bold. Every ASCII punctuation character Markdown gives a meaning to is
backslash-escaped, then the HTML characters are escaped (`&`, `<`, `>` become entities, which
Markdown shows as the characters)."""

from __future__ import annotations

import html
import re

_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_{}\[\]()#+\-.!|~=:])")


def literal(text) -> str:
    """`text` as it reads, never as Markdown or HTML."""
    return html.escape(_MARKDOWN_PUNCTUATION.sub(r"\\\1", str(text)), quote=False)


# The page's own policy, in its head: images only from the app itself (its files, data: and blob:
# previews), whatever text gets rendered: a second line of defence behind `literal`.
IMAGE_POLICY = "<meta http-equiv=\"Content-Security-Policy\" content=\"img-src 'self' data: blob:\">"
