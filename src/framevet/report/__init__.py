"""Reporting: findings and their renderings (objtool text, JSON, SARIF, HTML)."""

from framevet.report.findings import Finding, Location, locate

__all__ = ["Finding", "Location", "locate"]
