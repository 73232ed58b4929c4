# SPDX-License-Identifier: MIT
"""``maild init``: the commented default configuration, with a fresh random HMAC secret."""

from __future__ import annotations

from pathlib import Path

from maild.config import ConfigError, new_secret

TEMPLATE = """\
# maild configuration. Every key can be overridden by MAILD_<SECTION>_<KEY>, e.g. MAILD_DATABASE_URL.
# Times without a UTC offset are wall-clock times in [time] zone.

[database]
# Empty: SQLite (WAL, synchronous=FULL) at <[paths] data>/maild.db.
# PostgreSQL for several maild processes: "postgresql+psycopg://maild@db.example.com/maild"
url = ""

[paths]
data = "."              # SQLite file lives here (relative paths are relative to this file)
invoices = "invoices"   # billing drops <YYYY-MM>/<organisation>.pdf here
templates = ""          # empty: the mail templates shipped with maild

[smtp]
listen = "127.0.0.1:8025"        # the MTA hands mail over here (Postfix transport_maps, smtp:[127.0.0.1]:8025)
max_message_size = 26214400      # 25 MB; larger mail gets 552 5.3.4
max_recipients = 100
tls_cert = ""                    # PEM files; when set, STARTTLS is offered
tls_key = ""
queue = true                     # 250 once the message is stored, case work right after; false: before the 250
processes = 0                    # worker processes for intake work; 0: in the daemon (see docs/PERFORMANCE.md)
process_timeout = 300            # seconds a message may take to process; past it the worker is killed, or
                                 # (processes = 0) the work process exits 70 and is started again

[relay]
host = "localhost"
port = 25
security = "none"                # none | starttls | tls (certificates are verified; no plaintext fallback)
username = ""
password_file = ""               # keep the password out of this file
give_up_hours = 96               # temporary failures are retried with back-off for 4 days

[intake]
address = "support@example.com"
# extra intake addresses and the case kind each opens:
extra = {{ "macd@example.com" = "macd", "billing@example.com" = "billing" }}
own_addresses = ["noreply@example.com"]
staff_alerts = ""                # operator alerts; empty: every active staff member
notify_mpoc_on_unauthorised = true
ack_per_sender_per_hour = 5
ack_per_sender_per_day = 20
reopen_days = 7

[imap]
url = ""                         # imaps://user:pass@imap.example.com:993/INBOX to poll a mailbox
processed_folder = "Processed"
failed_folder = "Failed"

[time]
zone = "America/Denver"
holidays = []                    # extra closed days, e.g. ["2026-12-24"]
holiday_country = "US"           # default public holidays; "" for none
business_day_start = "08:00"
business_day_end = "17:00"

[desk]
name = "Client Services Support"
phone = "+1 800 555 0100"
chat_url = "https://support.example.com/chat"
status_page = ""

[lifecycle]
no_response_business_days = 2
grace_business_days = 1

[security]
secret = "{secret}"              # signs reply addresses and Message-IDs; keep it secret and stable
trusted_authserv_ids = []        # your MTA's Authentication-Results id, to honour its DMARC verdict

[maintenance]
connect_products = ["connect"]
connect_first_sprint = "2026-01-06"
plan_ahead_days = 60             # recurring windows are planned this far ahead automatically; 0: by hand
"""


def write_default_config(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "maild.toml"
    if path.exists():
        raise ConfigError(f"{path} already exists; not overwriting it")
    path.write_text(TEMPLATE.format(secret=new_secret()), encoding="utf-8")
    path.chmod(0o600)
    return path
