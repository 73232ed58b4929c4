# SPDX-License-Identifier: MIT
"""The benchmark's deterministic corpus: a directory of organisations, new conversations, replies.

Everything comes from one ``random.Random(seed)``, so two runs send the same bytes. New
conversations come from MPOCs; a reply is a *spec* until maild's acknowledgement of its conversation
is known (the relay captured it): ``Reply.render(ack)`` then writes it in one of the header shapes
real clients produce (Gmail, Thunderbird and Outlook with In-Reply-To/References; Outlook with the
headers stripped, relying on the subject tag; a reply to the ack's Reply-To address with neither
tag nor references; a follow-up to the customer's own first mail), with English, German and
Portuguese reply/forward prefixes. About 10% of messages carry a 20-200 KB attachment, and some
bodies are iso-8859-1 or windows-1252.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from pathlib import Path

SUPPORT = "support@example.com"
REPLY_SHARE = 0.30
ATTACHMENT_SHARE = 0.10
START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)

TOPICS = ["Phones down at {site}", "Cannot log in to the portal ({site})", "Call quality poor in {site}",
          "Voicemail not delivered - {site}", "New user request for {site}", "Invoice question {site}",
          "Queue routing broken at {site}", "Help", "Urgent!", "Teams calls drop after 30 minutes ({site})"]
SITES = ["Berlin", "São Paulo", "Denver", "Zürich", "Lisboa", "Köln", "Porto", "Austin", "Malmö", "Curitiba"]
BODIES = {
    "en": "Hello,\n\nsince this morning {site} has trouble: {topic}.\nPlease have a look.\n\nThanks,\n{name}\n",
    "de": "Hallo,\n\nseit heute früh hat {site} Störungen: {topic}.\nBitte prüfen Sie das – Grüße aus Köln.\n\n"
          "Viele Grüße\n{name}\n",
    "pt": "Olá,\n\ndesde hoje cedo {site} está com problemas: {topic}.\nPor favor, verifiquem – "
          "obrigado pela atenção.\n\nAtenciosamente,\n{name}\n",
}
REPLY_TEXT = {"en": "Any news? It still fails for {site}.\n", "de": "Gibt es Neuigkeiten? Es klappt weiterhin "
              "nicht in {site}.\n", "pt": "Alguma novidade? Ainda não funciona em {site}.\n"}
REPLY_PREFIX = {"en": ["Re:", "RE:"], "de": ["AW:", "Aw:"], "pt": ["RES:", "Re:"]}
FORWARD_PREFIX = {"en": ["Fwd:", "FW:"], "de": ["WG:"], "pt": ["ENC:"]}
SHAPES = ["gmail", "thunderbird", "outlook", "outlook-stripped", "forward", "reply-address", "own-followup"]
FIRST = ["Anna", "Bernd", "Carla", "Diego", "Eva", "Fátima", "Günter", "Helena", "Ivo", "Jürgen", "Léa"]
LAST = ["Almeida", "Bauer", "Costa", "Dietrich", "Engel", "Ferreira", "Groß", "Hahn", "Lima", "Müller"]


@dataclass(frozen=True)
class Contact:
    name: str
    email: str
    locale: str
    org: str


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class NewConversation:
    index: int
    sender: Contact
    subject: str
    body: str
    charset: str
    message_id: str
    date: datetime
    attachment: Attachment | None

    def render(self) -> bytes:
        return _build(self.sender, SUPPORT, self.subject, self.body, self.charset, self.message_id, self.date,
                      self.attachment, {})


@dataclass(frozen=True)
class Ack:
    """What a client sees of maild's acknowledgement: its Message-ID, subject and Reply-To."""

    message_id: str  # without angle brackets
    subject: str
    reply_to: str


@dataclass(frozen=True)
class Reply:
    index: int
    conversation: NewConversation
    sender: Contact
    shape: str
    prefix: str
    body: str
    charset: str
    message_id: str
    date: datetime
    attachment: Attachment | None

    def render(self, ack: Ack | None) -> tuple[bytes, str]:
        """The reply's bytes and its envelope recipient, given the conversation's acknowledgement."""
        conv, headers = self.conversation, {}
        orig = conv.message_id.strip("<>")
        if self.shape == "own-followup" or ack is None:  # answers its own first mail; no ack needed
            headers = {"In-Reply-To": f"<{orig}>", "References": f"<{orig}>"}
            return self._bytes(f"{self.prefix} {conv.subject}", SUPPORT, headers), SUPPORT
        subject = f"{self.prefix} {ack.subject}"
        to = SUPPORT
        if self.shape in ("gmail", "thunderbird"):
            headers = {"In-Reply-To": f"<{ack.message_id}>", "References": f"<{orig}> <{ack.message_id}>"}
            to = ack.reply_to
        elif self.shape == "outlook":
            headers = {"In-Reply-To": f"<{ack.message_id}>", "References": f"<{ack.message_id}>",
                       "Thread-Topic": conv.subject, "Thread-Index": "AdqBENCH" + f"{self.index:08d}"}
            to = ack.reply_to
        elif self.shape == "outlook-stripped":  # Exchange/a gateway dropped the id headers
            headers = {"Thread-Topic": conv.subject}
        elif self.shape == "reply-address":  # tag removed by the user, ids stripped: only To is left
            subject = f"{self.prefix} {conv.subject}"
            to = ack.reply_to
        return self._bytes(subject, to, headers), to

    def _bytes(self, subject: str, to: str, headers: dict[str, str]) -> bytes:
        return _build(self.sender, to, subject, self.body, self.charset, self.message_id, self.date,
                      self.attachment, headers)


@dataclass(frozen=True)
class Corpus:
    contacts: list[Contact]
    organisations: list[tuple[str, str, str]]  # name, domain, locale
    new: list[NewConversation]
    replies: list[Reply]

    def directory_toml(self) -> str:
        lines = []
        for name, domain, locale in self.organisations:
            lines += ["[[organisation]]", f'name = "{name}"', f'domains = ["{domain}"]', f'locale = "{locale}"', ""]
        for i, c in enumerate(self.contacts):
            role = ["mpoc-primary", "mpoc-secondary", "technical"][i % 3]
            lines += ["[[contact]]", f'organisation = "{c.org}"', f'name = "{c.name}"', f'email = "{c.email}"',
                      f'roles = ["{role}"]', ""]
        return "\n".join(lines)

    def write_directory(self, path: Path) -> Path:
        path.write_text(self.directory_toml(), encoding="utf-8")
        return path


def _build(sender: Contact, to: str, subject: str, body: str, charset: str, message_id: str, date: datetime,
           attachment: Attachment | None, headers: dict[str, str]) -> bytes:
    msg = EmailMessage()
    msg["From"] = formataddr((sender.name, sender.email))
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = message_id
    for key, value in headers.items():
        msg[key] = value
    msg.set_content(body, charset=charset, cte="quoted-printable" if charset != "utf-8" else "8bit")
    if attachment is not None:
        maintype, _, subtype = attachment.content_type.partition("/")
        msg.add_attachment(attachment.data, maintype=maintype, subtype=subtype, filename=attachment.filename)
    return msg.as_bytes(policy=policy.SMTP)  # CRLF line ends, as a client sends them


def _attachment(rng: random.Random, n: int) -> Attachment | None:
    if rng.random() >= ATTACHMENT_SHARE:
        return None
    size = rng.randint(20_000, 200_000)
    kind = rng.choice([("application/pdf", "pdf"), ("image/png", "png"), ("text/csv", "csv")])
    return Attachment(f"evidence-{n}.{kind[1]}", kind[0], rng.randbytes(size))


def _charset(rng: random.Random) -> str:
    roll = rng.random()
    return "iso-8859-1" if roll < 0.08 else "windows-1252" if roll < 0.15 else "utf-8"


def make_corpus(n: int, seed: int = 8) -> Corpus:
    """``n`` messages: 70% new conversations from MPOCs, 30% replies to them."""
    rng = random.Random(seed)
    n_orgs = max(3, n // 40)
    locales = ["en", "de", "pt"]
    organisations = [(f"Org {i:04d}", f"org{i:04d}.example", locales[i % 3]) for i in range(n_orgs)]
    contacts = []
    for name, domain, locale in organisations:
        for j in range(3):
            person = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
            contacts.append(Contact(person, f"user{j}@{domain}", locale, name))
    mpocs = [c for i, c in enumerate(contacts) if i % 3 != 2]
    n_replies = int(n * REPLY_SHARE)
    new = []
    for i in range(n - n_replies):
        sender = rng.choice(mpocs)
        site = rng.choice(SITES)
        subject = rng.choice(TOPICS).format(site=site)
        charset = "utf-8" if sender.locale == "en" and rng.random() < 0.5 else _charset(rng)
        body = BODIES[sender.locale].format(site=site, topic=subject, name=sender.name)
        body = body.replace("–", "-") if charset == "iso-8859-1" else body  # latin-1 has no dash
        new.append(NewConversation(i, sender, subject, body, charset, f"<new-{seed}-{i}@{sender.email.split('@')[1]}>",
                                   START + timedelta(seconds=i), _attachment(rng, i)))
    replies = []
    for k in range(n_replies):
        conv = rng.choice(new)
        colleagues = [c for c in contacts if c.org == conv.sender.org]
        sender = conv.sender if rng.random() < 0.85 else rng.choice(colleagues)
        shape = rng.choice(SHAPES)
        prefix = rng.choice((FORWARD_PREFIX if shape == "forward" else REPLY_PREFIX)[sender.locale])
        charset = _charset(rng)
        body = REPLY_TEXT[sender.locale].format(site=rng.choice(SITES)) + "\n> " + conv.body.replace("\n", "\n> ")
        body = body.replace("–", "-") if charset == "iso-8859-1" else body
        replies.append(Reply(k, conv, sender, shape, prefix, body, charset,
                             f"<reply-{seed}-{k}@{sender.email.split('@')[1]}>", START + timedelta(hours=1, seconds=k),
                             _attachment(rng, n + k)))
    return Corpus(contacts, organisations, new, replies)
