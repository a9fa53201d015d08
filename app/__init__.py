"""The application layer: the `nfdseg` CLI, the one-shot pipeline and its report.

It sits on top of every stage (see docs/architecture.md) and nothing below imports it.
"""
