"""Reporting: renderings of findings (text, objtool text, JSON, SARIF, HTML)."""
