"""mkdocs hooks (``hooks:`` in mkdocs.yml): docstrings are reStructuredText-style
(``code``, :class:`Name`, :param:), and mkdocstrings renders field lists but not roles, so a
role is shown as the code it names: ``:class:`Finding``` reads as ``Finding``."""

import re

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|exc|data|obj):(<code>)")


def on_page_content(html, **kwargs):
    return ROLE.sub(r"\1", html)
