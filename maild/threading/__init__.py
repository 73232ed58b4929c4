# SPDX-License-Identifier: MIT
"""Threading: which case a message belongs to."""

from maild.threading.match import CaseMatch, find_case

__all__ = ["CaseMatch", "find_case"]
