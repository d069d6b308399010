"""Stable names: slugs for devices, models and engine builds."""

from __future__ import annotations

import re


def slugify(text: str) -> str:
    """Lowercase ``text``; runs of characters other than ``a-z 0-9 .`` become one ``-``.

    >>> slugify("AMD EPYC 7B13 64-Core Processor")
    'amd-epyc-7b13-64-core-processor'
    >>> slugify("SmolLM2-135M-Instruct.Q4_1")
    'smollm2-135m-instruct.q4-1'
    """
    slug = re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.")
    return slug or "unknown"
