"""``extract_text``: an HTML document to readable text, with lxml's HTML parser (libxml2)."""

from __future__ import annotations

import re

import lxml.html
from lxml import etree
from pydantic import BaseModel

from runtime.core.config import RetryPolicy
from runtime.tools.registry import tool

DROPPED = ("script", "style", "noscript", "template", "svg", "iframe", "head")
BLOCKS = frozenset((
    "p", "div", "section", "article", "header", "footer", "main", "aside", "nav", "li", "ul", "ol",
    "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "table", "tr", "br", "hr", "dt", "dd",
    "figcaption", "form", "title",
))


class ExtractedText(BaseModel):
    title: str
    text: str
    links: list[str]


def html_to_text(html: str, max_chars: int = 200_000) -> ExtractedText:
    if not html.strip():
        return ExtractedText(title="", text="", links=[])
    root = lxml.html.document_fromstring(html)
    title = " ".join((root.findtext(".//title") or "").split())
    links = [href for href in root.xpath("//a/@href") if isinstance(href, str)]
    etree.strip_elements(root, *DROPPED, with_tail=False)
    for element in root.iter():
        if isinstance(element.tag, str) and element.tag in BLOCKS:
            element.tail = "\n" + (element.tail or "")
            if element.text is not None or len(element):
                element.text = "\n" + (element.text or "")
    lines = [" ".join(line.split()) for line in root.text_content().splitlines()]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return ExtractedText(title=title, text=text[:max_chars], links=links[:500])


@tool(retry=RetryPolicy(max_attempts=1))
def extract_text(html: str, max_chars: int = 200_000) -> ExtractedText:
    """Turn an HTML document into its readable text (scripts, styles and markup removed), its title,
    and the links it holds."""
    return html_to_text(html, max_chars)
