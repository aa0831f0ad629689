"""
Reading Postfix's configuration text as Postfix does (Salt ``__utils__``),
shared by the main.cf, master.cf and facts modules.
"""


def lines(text):
    """text's lines as Postfix reads them: ended by "\\n" only (str.splitlines
    also splits at U+2028, U+0085 and the like, which a value may hold)."""
    parts = text.split("\n")
    return parts[:-1] if parts and parts[-1] == "" else parts
