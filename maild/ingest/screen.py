# SPDX-License-Identifier: MIT
"""Screens: the messages that never become a case and never get an automatic reply (SPEC §2).

Each screen is a pure predicate with the same signature, ``(inbound, ctx) -> Skip | None``;
``screen()`` runs them in ``SCREENS`` order and the first match wins: own mail and loops first
(RELIABILITY L4, L5), then bounces (L2), then auto-replies (RFC 3834, L1), then bulk and list mail.
A ``Skip`` is an outcome, not an error: the caller stores the message and records the reason.

Decisions the corpus (shared/corpus) informed:

* ``X-Auto-Response-Suppress`` is a *request* not to auto-reply, not a sign that the mail was
  automated; Exchange and some Outlook/MAPI senders put it on mail a person wrote. It does not screen;
  ``no_ack_reason`` reports it so no acknowledgement goes out (RELIABILITY L1). Every auto-reply in the
  corpus that carries it is caught by its Auto-Submitted header or its subject anyway.
* ``List-Unsubscribe`` alone does not screen: transactional and CRM-sent mail from real people carries
  it too. It also only suppresses the acknowledgement. ``List-Id``/``List-Post`` (RFC 2919/2369) do
  screen, as SPEC §2 says.
* An empty return path means a bounce (RFC 5321 §4.5.5) unless the message is plainly an auto-reply,
  which RFC 3834 §3.3 also asks to be sent with a null return path: those get the auto-reply reason.
* Non-RFC 3464 bounces are recognised by subject only together with a second sign (a system sender,
  a null return path, Auto-Submitted, or a returned message/headers part), so a customer writing
  "Undeliverable invoices" is not screened. The subject must *start* with the phrase: a customer's
  "Fwd: Undeliverable: ..." forwarding a bounce to us is a request, not a bounce.
* ARF feedback reports (RFC 5965) and read receipts (MDN, RFC 8098) are reports but no bounce of ours:
  kind "ignored".
"""

from __future__ import annotations

import email
import email.policy
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from typing import Literal

from maild.ingest.parse import Inbound
from maild.threading.addresses import is_our_message_id


@dataclass(frozen=True, kw_only=True)
class ScreenContext:
    """What the screens need to know about this deployment."""

    own_addresses: frozenset[str]  # lower-case: support@, the extra intake addresses, noreply@ ...
    own_domains: frozenset[str]  # domains maild writes its Message-IDs under
    loop_token: str  # the value maild writes into its loop header
    secret: bytes  # the HMAC secret of maild's Message-IDs (threading.addresses)
    loop_header: str = "X-Maild-Loop"
    max_received: int = 50  # RELIABILITY L5: 50 accepted, 51 refused


@dataclass(frozen=True)
class Skip:
    kind: Literal["bounce", "ignored", "loop"]
    reason: str


Screen = Callable[[Inbound, ScreenContext], Skip | None]

_SYSTEM_LOCALS = frozenset({"mailer-daemon", "mailerdaemon", "mail-daemon", "mail.delivery.system"})
_POSTMASTER_LOCALS = frozenset({"postmaster", "mdaemon", "bounce", "bounces"})
_SYSTEM_NAMES_RE = re.compile(
    r"^(?:mail delivery (?:system|subsystem)|mailer[- ]daemon|mail administrator|postmaster|"
    r"system administrator|mail system|microsoft outlook|e-?mail delivery system)$",
    re.IGNORECASE,
)
_BOUNCE_SUBJECT_RE = re.compile(
    r"^\s*(?:undeliverable|undelivered mail|delivery status notification|returned mail|"
    r"mail delivery failed|delivery failure|message status - undeliverable|failure notice|"
    r"mail system error|non[- ]?deliver|nondeliverable|delivery has failed|delivery notification|"
    r"warning: could not send message|could not send message|postmaster notify|"
    r"unzustellbar|nicht zustellbar|non remis|non distribuable|mensagem não entregue|não entregue|"
    r"onbestelbaar|niet bezorgd|olevererbart|nie dostarczono|недоставленное сообщение|"
    r"ваше сообщение не доставлено|メールエラー通知)",
    re.IGNORECASE,
)
_OOO_PHRASES = (
    r"automatic reply|auto[- ]?reply|auto[- ]?respon[cs]e?|automatic response|out of (?:the )?office"
    r"(?: (?:auto)?reply)?|abwesenheitsnotiz|automatische antwort|réponse automatique|"
    r"resposta autom[áa]tica|aus[êe]ncia tempor[áa]ria|fora do escrit[óo]rio|respuesta autom[áa]tica|"
    r"fuera de la oficina|automatyczna odpowied[źz]|afwezigheidsassistent|automatisch antwoord|"
    r"autosvar|automatiskt svar|frav[æa]rsmelding|automaattinen vastaus|risposta automatica"
)
# The phrase opens the subject ("Automatic reply: X", "[Automatyczna odpowiedź] X") or is the whole
# subject, or closes it in parentheses ("Re: X (Automatic Response)", AOL). A subject that merely
# mentions out-of-office ("Out of office greeting not playing") does not match.
_OOO_SUBJECT_RE = re.compile(
    rf"^\s*\[?\s*(?:{_OOO_PHRASES})\s*(?:[:：\]\-]|$)|\(\s*(?:{_OOO_PHRASES})\s*\)\s*$",
    re.IGNORECASE,
)
_AUTOREPLY_HEADERS = ("x-autoreply", "x-autorespond", "x-autoresponder", "x-autoreply-from",
                      "x-mail-autoreply", "x-autogenerated", "x-fc-machinegenerated")  # fmt: skip
# RFC 2919 List-Id, RFC 2369 List-Post; ezmlm's Mailing-List and the older X-Mailing-List.
_LIST_HEADERS = ("List-Id", "List-Post", "Mailing-List", "X-Mailing-List")
_FALSE_VALUES = frozenset({"", "no", "false", "0", "off"})
_DSN_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
_REPORT_TYPE_RE = re.compile(r"report-type\s*=\s*\"?([a-z0-9-]+)", re.IGNORECASE)
_RETURNED_PART_RE = re.compile(
    rb"^content-type:\s*(?:message/rfc822|text/rfc822-headers|message/delivery-status|"
    rb"message/global|message/global-headers|message/global-delivery-status)",
    re.IGNORECASE | re.MULTILINE,
)


def _local(address: str | None) -> str:
    return (address or "").rpartition("@")[0].lower()


def _null_sender(inbound: Inbound) -> bool:
    """RFC 5321 §4.5.5: notifications are sent with an empty reverse path."""
    if inbound.raw.mail_from is not None and inbound.raw.mail_from.strip() in ("", "<>"):
        return True
    return any(v.strip() == "<>" for v in inbound.header_all("return-path"))


def _system_sender(inbound: Inbound) -> bool:
    if _local(inbound.from_addr) in _SYSTEM_LOCALS:
        return True
    return_paths = [v.strip().strip("<>") for v in inbound.header_all("return-path")]
    if any(rp.lower() == "mailer-daemon" or _local(rp) in _SYSTEM_LOCALS for rp in return_paths):
        return True
    return bool(_SYSTEM_NAMES_RE.match(inbound.from_name.strip()))


def _returned_part(inbound: Inbound) -> bool:
    """A returned message, its headers, or a delivery-status part (RFC 3464 §2, RFC 6522)."""
    return bool(_RETURNED_PART_RE.search(inbound.raw.data))


def _delivery_status_child(inbound: Inbound) -> bool:
    """A message/delivery-status part directly under the top multipart (a DSN with the wrong
    top-level type). One nested inside a forwarded message/rfc822 is a customer forwarding a bounce."""
    data = inbound.raw.data
    if not inbound.content_type.startswith("multipart/") or b"delivery-status" not in data.lower():
        return False
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    payload = msg.get_payload()
    if not isinstance(payload, list):
        return False
    return any(isinstance(part, Message) and part.get_content_type() in _DSN_TYPES for part in payload)


def _auto_submitted(inbound: Inbound) -> str | None:
    """RFC 3834 §5: any Auto-Submitted value other than "no" marks automatic mail."""
    value = inbound.header("auto-submitted")
    if value is None:
        return None
    keyword = re.split(r"[\s;(]", value.strip(), maxsplit=1)[0].lower()
    return None if keyword in ("", "no") else value.strip()


def own_mail(inbound: Inbound, ctx: ScreenContext) -> Skip | None:
    """Mail from one of our own addresses, or carrying a Message-ID that maild made (L4)."""
    if inbound.from_addr is not None and inbound.from_addr in {a.lower() for a in ctx.own_addresses}:
        return Skip("loop", "own address")
    for domain in ctx.own_domains:
        if is_our_message_id(inbound.message_id, domain, ctx.secret):
            return Skip("loop", "loop: own Message-ID")
    return None


def loop_header(inbound: Inbound, ctx: ScreenContext) -> Skip | None:
    """Our loop header with our token (RT's X-RT-Loop-Prevention); a forged value does not count."""
    if not ctx.loop_token:  # an unset token must not turn every empty header into a loop
        return None
    for value in inbound.header_all(ctx.loop_header):
        if hmac.compare_digest(value.strip().encode(), ctx.loop_token.encode()):
            return Skip("loop", f"loop: {ctx.loop_header}")
    return None


def too_many_hops(inbound: Inbound, ctx: ScreenContext) -> Skip | None:
    """RFC 5321 §6.3: a message with too many Received headers is looping (L5)."""
    hops = len(inbound.header_all("received"))
    return Skip("loop", f"loop: {hops} Received headers") if hops > ctx.max_received else None


def bounce(inbound: Inbound, ctx: ScreenContext) -> Skip | None:
    """Delivery status notifications, standard (RFC 3464/6522) or not, and other reports."""
    if inbound.content_type == "multipart/report":
        match = _REPORT_TYPE_RE.search(inbound.header("content-type") or "")
        report_type = match.group(1).lower() if match else "unknown"
        if report_type == "feedback-report":
            return Skip("ignored", "feedback report: multipart/report; report-type=feedback-report")
        if report_type == "disposition-notification":
            return Skip("ignored", "read receipt: multipart/report; report-type=disposition-notification")
        return Skip("bounce", "bounce: multipart/report")
    if _delivery_status_child(inbound):
        return Skip("bounce", "bounce: message/delivery-status part")
    if _local(inbound.from_addr) in _SYSTEM_LOCALS:
        return Skip("bounce", f"bounce: From {inbound.from_addr}")
    subject_says = bool(_BOUNCE_SUBJECT_RE.match(inbound.subject))
    if _null_sender(inbound):
        # otherwise an RFC 3834 §3.3 auto-reply or bulk mail: the later screens name it
        bounced = _null_sender_bounce(inbound, subject_says)
        return Skip("bounce", "bounce: empty return path") if bounced else None
    second_sign = (
        _system_sender(inbound)
        or _local(inbound.from_addr) in _POSTMASTER_LOCALS
        or _returned_part(inbound)
        or _auto_submitted(inbound) is not None
    )
    if subject_says and second_sign:
        return Skip("bounce", f"bounce: subject {inbound.subject[:40]!r}")
    postmaster = _local(inbound.from_addr) in _POSTMASTER_LOCALS
    if postmaster and (_returned_part(inbound) or _system_sender(inbound)):
        return Skip("bounce", f"bounce: From {inbound.from_addr}")
    return None


def _null_sender_bounce(inbound: Inbound, subject_says: bool) -> bool:
    """Whether a null-sender message is a bounce rather than an RFC 3834 §3.3 auto-reply or bulk mail."""
    if subject_says or _system_sender(inbound) or _returned_part(inbound):
        return True
    precedence = (inbound.header("precedence") or "").strip().lower()
    return _auto_reply_reason(inbound) is None and precedence not in ("bulk", "junk", "list")


def _auto_reply_reason(inbound: Inbound) -> str | None:
    value = _auto_submitted(inbound)
    if value is not None:
        return f"auto-reply: Auto-Submitted: {value}"
    for name in _AUTOREPLY_HEADERS:
        found = inbound.header(name)
        if found is not None and found.strip().lower() not in _FALSE_VALUES:
            return f"auto-reply: {name}"
    precedence = (inbound.header("precedence") or "").strip().lower()
    if precedence == "auto_reply":
        return "auto-reply: Precedence: auto_reply"
    if _OOO_SUBJECT_RE.search(inbound.subject):
        return f"auto-reply: subject {inbound.subject[:40]!r}"
    return None


def auto_reply(inbound: Inbound, ctx: ScreenContext) -> Skip | None:
    """RFC 3834 auto-replies and vacation/out-of-office messages (L1)."""
    reason = _auto_reply_reason(inbound)
    return Skip("ignored", reason) if reason else None


def bulk(inbound: Inbound, ctx: ScreenContext) -> Skip | None:
    """Bulk and mailing-list mail (RFC 2076 Precedence; RFC 2919 List-Id; RFC 2369 List-Post)."""
    precedence = (inbound.header("precedence") or "").strip().lower()
    if precedence in ("bulk", "list", "junk"):
        return Skip("ignored", f"bulk: Precedence: {precedence}")
    for name in _LIST_HEADERS:
        if inbound.header(name) is not None:
            return Skip("ignored", f"list: {name}")
    return None


SCREENS: tuple[Screen, ...] = (own_mail, loop_header, too_many_hops, bounce, auto_reply, bulk)


def screen(inbound: Inbound, ctx: ScreenContext) -> Skip | None:
    """The first screen that matches, or None when the message may become a case."""
    for predicate in SCREENS:
        skip = predicate(inbound, ctx)
        if skip is not None:
            return skip
    return None


def no_ack_reason(inbound: Inbound) -> str | None:
    """Why no automatic reply may go to this (unscreened) message, or None (RFC 3834 §2, L1).

    Covers the signs that do not screen the message: ``X-Auto-Response-Suppress`` asking for no
    auto-reply (All, AutoReply or OOF, [MS-OXCMAIL] §2.2.3.2.20), and ``List-Unsubscribe``.
    """
    suppress = (inbound.header("x-auto-response-suppress") or "").lower()
    tokens = {t.strip() for t in suppress.split(",")}
    if tokens & {"all", "autoreply", "oof"}:
        return f"X-Auto-Response-Suppress: {suppress}"
    if inbound.header("list-unsubscribe") is not None:
        return "List-Unsubscribe"
    return None
