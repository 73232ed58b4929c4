# SPDX-License-Identifier: MIT
"""The handlers behind ``maild`` commands: each loads settings, runs one transaction, prints."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, defer, sessionmaker

from maild import clock, config
from maild.cases import case_detail_json, case_json
from maild.db import open_store, reading, transaction
from maild.directory import DirectoryError, import_records, read_file
from maild.enums import Status
from maild.held import HeldError, accept_held, drop_held, held_json
from maild.macd import billing, log_time
from maild.models import Case, Contact, HeldMessage, Organisation, OutboxItem, Staff
from maild.staff import StaffError, change_case, get_case, mark_duplicate, staff_reply


def known_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the operator's input problem: printed as one line, exit 1."""
    return (config.ConfigError, StaffError, DirectoryError, HeldError, ValueError, OSError, OperationalError)


def settings_of(args: argparse.Namespace) -> config.Settings:
    return config.load(args.config)


def store(settings: config.Settings) -> sessionmaker[Session]:
    return open_store(settings.database_url)[1]


def now_of(args: argparse.Namespace, settings: config.Settings) -> datetime:
    value = getattr(args, "now", None)
    return clock.parse_time(value, settings.zone) if value else clock.now()


def when(value: str | None, settings: config.Settings) -> datetime | None:
    return clock.parse_time(value, settings.zone) if value else None


def emit(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False, default=str))


def cmd_help(args: argparse.Namespace) -> int:  # pragma: no cover - argparse requires a subcommand
    return 2


# -- set-up and running --------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from maild.initconfig import write_default_config

    target = Path(args.dir)
    path = write_default_config(target)
    settings = config.load(path)
    open_store(settings.database_url)
    print(f"wrote {path}; database at {settings.database_url}")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from maild.ingest.files import FileProblem, iter_paths
    from maild.ingest.pipeline import run_ingest
    from maild.ingest.raw import RawMail

    settings = settings_of(args)
    factory = store(settings)
    now = now_of(args, settings)
    problems = 0
    for item in iter_paths([Path(p) for p in args.paths]):
        if isinstance(item, FileProblem):
            problems += 1
            print(f"maild: skipped {item.where}: {item.problem}", file=sys.stderr)
            continue
        raw = RawMail(data=item.data, source="file", received_at=now, extra={"path": item.where})
        emit(run_ingest(factory, settings, raw, now=now).as_json())
        sys.stdout.flush()
    return 1 if problems else 0


def cmd_tick(args: argparse.Namespace) -> int:
    from maild.scheduler import tick

    settings = settings_of(args)
    for action in tick(store(settings), settings, now_of(args, settings)):
        emit(action)
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    from maild.outbound.sender import send_due

    settings = settings_of(args)
    for action in send_due(store(settings), settings, now_of(args, settings)):
        emit(action)
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    from maild.ingest import queue

    settings = settings_of(args)
    factory = store(settings)
    processed = 0
    if args.process:  # what the daemon's queue runner does, here and now (the daemon may be stopped)
        while taken := queue.process_pending(factory, settings):
            processed += taken
    with reading(factory) as session:
        report = queue.status(session)
    emit({**report, "processed": processed} if args.process else report)
    return 0


# -- directory ---------------------------------------------------------------------------------------


def cmd_directory_import(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    records = read_file(Path(args.file))
    with transaction(store(settings)) as session:
        report = import_records(session, records)
    emit(report.as_json())
    return 0


def cmd_directory_list(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    with reading(store(settings)) as session:
        for org in session.scalars(select(Organisation).order_by(Organisation.name)):
            emit({"organisation": org.name, "locale": org.locale, "products": org.products,
                  "domains": sorted(d.domain for d in org.domains), "timezone": org.timezone})
        for c in session.scalars(select(Contact).order_by(Contact.email)):
            emit({"contact": c.email, "name": c.name, "organisation": c.organisation.name, "roles": c.roles,
                  "active": c.active})
        for s in session.scalars(select(Staff).order_by(Staff.email)):
            emit({"staff": s.email, "name": s.name, "active": s.active, "kinds": s.kinds})
    return 0


# -- cases ----------------------------------------------------------------------------------------------


def cmd_cases_list(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    query = select(Case).order_by(Case.id)
    if args.status:
        try:
            query = query.where(Case.status == Status(args.status).value)
        except ValueError:
            raise StaffError(f"unknown status {args.status!r} (one of: {', '.join(s.value for s in Status)})") from None
    with reading(store(settings)) as session:
        if args.org:
            org = session.scalar(select(Organisation).where(Organisation.name == args.org))
            if org is None:
                raise StaffError(f"no organisation {args.org!r}")
            query = query.where(Case.organisation_id == org.id)
        rows = [case_json(c) for c in session.scalars(query)]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
    else:
        for r in rows:
            print(f"#{r['number']:<6} {r['status']:<28} {r['priority']:<4} {r['organisation'] or '-':<20} "
                  f"{r['subject'][:60]}")
    return 0


def cmd_cases_show(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    with reading(store(settings)) as session:
        case = get_case(session, args.number)
        detail = case_detail_json(session, case)
        detail["billing"] = billing(session, case)
    if args.json:
        print(json.dumps(detail, ensure_ascii=False))
        return 0
    print(f"Case #{detail['number']}: {detail['subject']}")
    for key in ("status", "priority", "kind", "organisation", "requester", "assignee", "created_at",
                "first_response_due", "next_update_due", "linked_to", "duplicate_of"):
        print(f"  {key}: {detail[key]}")
    for m in detail["messages"]:
        print(f"\n--- {m['direction']} {m['date']} {m['from']} ({m['author']})\n{m['text']}")
        if m["quoted"]:
            print("  [quoted history folded]")
    return 0


def _actor(session: Session, case: Case, as_: str | None) -> str:
    if as_:
        return str(as_).lower()
    return case.assignee.email if case.assignee else "staff"


def cmd_cases_reply(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    now = now_of(args, settings)
    with transaction(store(settings)) as session:
        case = get_case(session, args.number)
        items = staff_reply(session, settings, case, body=args.body, staff_email=_actor(session, case, args.as_),
                            now=now, await_customer=args.await_customer)
        out = case_json(case)
        out["outbox"] = [i.id for i in items]
    emit(out)
    return 0


def cmd_cases_set(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    now = now_of(args, settings)
    etr, until = when(args.etr, settings), when(args.until, settings)
    expedited = None if args.expedited is None else args.expedited == "yes"
    if not any((args.status, args.priority, etr, args.assign, expedited is not None)):
        raise StaffError("nothing to change: give --status, --priority, --etr, --assign or --expedited")
    with transaction(store(settings)) as session:
        case = get_case(session, args.number)
        change_case(session, settings, case, actor=_actor(session, case, args.as_), now=now, status=args.status,
                    priority=args.priority, etr=etr, assignee=args.assign, hold_until=until, expedited=expedited)
        out = case_json(case)
    emit(out)
    return 0


def cmd_cases_log_time(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    now = now_of(args, settings)
    with transaction(store(settings)) as session:
        case = get_case(session, args.number)
        log_time(session, case, minutes=args.minutes, staff=_actor(session, case, args.as_), now=now, note=args.note)
        session.flush()
        out = {"case": case.id, **billing(session, case)}
    emit(out)
    return 0


def cmd_cases_duplicate(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    now = now_of(args, settings)
    with transaction(store(settings)) as session:
        case, master = get_case(session, args.number), get_case(session, args.of)
        mark_duplicate(session, case, master, actor=_actor(session, case, args.as_), now=now)
        out = case_json(case)
    emit(out)
    return 0


# -- held and outbox ---------------------------------------------------------------------------------------


def cmd_held_list(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    query = select(HeldMessage).order_by(HeldMessage.id)
    if not args.all:
        query = query.where(HeldMessage.status == "held")
    with reading(store(settings)) as session:
        rows = [held_json(h) for h in session.scalars(query)]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
    else:
        for r in rows:
            print(f"{r['id']:<5} {r['status']:<8} {r['reason']:<24} {r['sender'][:30]:<30} {r['subject'][:50]}")
    return 0


def _held_action(args: argparse.Namespace, accept: bool) -> int:
    settings = settings_of(args)
    now = now_of(args, settings)
    actor = (args.as_ or "staff").lower()
    with transaction(store(settings)) as session:
        held = session.get(HeldMessage, args.id)
        if held is None:
            raise HeldError(f"no held message {args.id}")
        if accept:
            accept_held(session, settings, held, actor=actor, now=now)
        else:
            drop_held(held, actor=actor, now=now)
        out = held_json(held)
    emit(out)
    return 0


def cmd_held_accept(args: argparse.Namespace) -> int:
    return _held_action(args, accept=True)


def cmd_held_drop(args: argparse.Namespace) -> int:
    return _held_action(args, accept=False)


def cmd_outbox_list(args: argparse.Namespace) -> int:
    from maild.outbound.outbox import outbox_json

    settings = settings_of(args)
    with reading(store(settings)) as session:  # the rows' bytes stay in the store
        rows = [outbox_json(i) for i in session.scalars(select(OutboxItem).order_by(OutboxItem.id)
                                                        .options(defer(OutboxItem.data, raiseload=True)))]
    if args.status:
        rows = [r for r in rows if r["status"] == args.status]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
    else:
        for r in rows:
            print(f"{r['id']:<5} {r['status']:<8} {r['attempts']:<3} {r['template']:<24} {r['to']:<30} "
                  f"{r['subject'][:40]}")
    return 0
