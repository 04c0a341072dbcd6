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

# What can start Markdown anywhere in a line (emphasis, code, links, images, escapes, tables,
# strikethrough, headings) ...
_INLINE = re.compile(r"([\\`*_{}\[\]()#!|~])")
# ... and what only does at the start of a line (lists, setext underlines; a quote's ">" is an
# entity after `html.escape`, which starts nothing): escaped there
# alone, so that "not-there.png" still reads as it is in API answers that carry the same text.
_LINE_START = re.compile(r"^(\s*)(\d+)([.)])|^(\s*)([-+=])", re.MULTILINE)

# GitHub-style autolinks (what the page's Markdown turns into links without any brackets): a
# scheme's "://", "www." and an e-mail's "@", each broken by one escape.
_AUTOLINK = re.compile(r"(?<=[A-Za-z])(:)(?=//)|(?<![\w.])www(\.)|(?<=\w)(@)(?=\w)")


def literal(text) -> str:
    """`text` as it reads, never as Markdown or HTML."""
    text = _INLINE.sub(r"\\\1", str(text))
    text = _LINE_START.sub(lambda m: f"{m[1]}{m[2]}\\{m[3]}" if m[2] else f"{m[4]}\\{m[5]}", text)
    text = _AUTOLINK.sub(lambda m: m[0][:-1] + "\\" + m[0][-1], text)
    return html.escape(text, quote=False)


# The page's own policy, in its head: images only from the app itself (its files, data: and blob:
# previews), whatever text gets rendered: a second line of defence behind `literal`.
IMAGE_POLICY = "<meta http-equiv=\"Content-Security-Policy\" content=\"img-src 'self' data: blob:\">"
