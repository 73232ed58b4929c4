# SPDX-License-Identifier: MIT
"""Outbound mail: templates -> composed message -> outbox row -> relay (SPEC §6)."""

from __future__ import annotations

from maild.outbound.outbox import queue_mail

__all__ = ["queue_mail"]
