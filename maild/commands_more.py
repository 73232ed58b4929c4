# SPDX-License-Identifier: MIT
"""Commands of the scheduled subsystems: master cases, maintenance windows, invoices.

Same shape as ``maild.commands``: parse, one transaction, print JSON. Commands that change what
customers see on the status page rewrite it after their transaction committed.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from datetime import date, datetime
from typing import Any, TypeAlias

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from maild import clock, invoices, maintenance, master, status_page
from maild.cases import case_json
from maild.commands import emit, now_of, settings_of, store, when
from maild.config import Settings
from maild.db import transaction
from maild.models import Case, MaintenanceWindow

log = logging.getLogger(__name__)

Parsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"  # not subscriptable at run time


def register(sub: Parsers, cmd: Callable[..., argparse.ArgumentParser],
             add_now: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the ``master``, ``maintenance`` and ``invoices`` command groups."""
    _register_master(sub, cmd, add_now)
    _register_maintenance(sub, cmd, add_now)
    i = cmd(sub, "invoices", _help, "monthly invoice mails")
    isub = i.add_subparsers(dest="sub", required=True, metavar="SUBCOMMAND")
    p = cmd(isub, "list", cmd_invoices_list, "invoice mails sent, per organisation and period")
    p.add_argument("--period", metavar="YYYY-MM")
    p.add_argument("--json", action="store_true")


def _register_master(sub: Parsers, cmd: Callable[..., argparse.ArgumentParser],
                     add_now: Callable[[argparse.ArgumentParser], None]) -> None:
    m = cmd(sub, "master", _help, "P1G master cases: one problem affecting several organisations")
    msub = m.add_subparsers(dest="sub", required=True, metavar="SUBCOMMAND")
    p = cmd(msub, "open", cmd_master_open, "open a master case (priority P1G)")
    p.add_argument("--title", required=True)
    p.add_argument("--platform", required=True, metavar="P")
    p.add_argument("--body", help="also send this first update")
    p.add_argument("--as", dest="as_", metavar="EMAIL", help="the staff member opening it (default: staff)")
    add_now(p)
    p = cmd(msub, "update", cmd_master_update, "send an update to subscribers and linked cases' requesters")
    p.add_argument("number", type=int)
    p.add_argument("--body", required=True)
    p.add_argument("--close", action="store_true", help="this is the final update: close the master case")
    p.add_argument("--as", dest="as_", metavar="EMAIL")
    add_now(p)
    p = cmd(msub, "link", cmd_master_link, "link an organisation's case N to master case M")
    p.add_argument("number", type=int)
    p.add_argument("--to", type=int, required=True, metavar="M")
    p.add_argument("--as", dest="as_", metavar="EMAIL")
    add_now(p)
    for name, fn, text in (("subscribe", cmd_master_subscribe, "subscribe to a master case or a platform"),
                           ("unsubscribe", cmd_master_unsubscribe, "end a subscription")):
        p = cmd(msub, name, fn, text)
        p.add_argument("--email", required=True)
        group = p.add_mutually_exclusive_group(required=True)
        group.add_argument("--master", type=int, metavar="M")
        group.add_argument("--platform", metavar="P")
    p = cmd(msub, "list", cmd_master_list, "master cases with their links, subscribers and updates")
    p.add_argument("--json", action="store_true")


def _register_maintenance(sub: Parsers, cmd: Callable[..., argparse.ArgumentParser],
                          add_now: Callable[[argparse.ArgumentParser], None]) -> None:
    w = cmd(sub, "maintenance", _help, "maintenance windows and their notices")
    wsub = w.add_subparsers(dest="sub", required=True, metavar="SUBCOMMAND")
    p = cmd(wsub, "add", cmd_maintenance_add, "add a maintenance window (unscheduled: announced at once)")
    p.add_argument("--kind", required=True, metavar="monthly|connect|unscheduled")
    p.add_argument("--start", required=True, metavar="T")
    p.add_argument("--end", required=True, metavar="T")
    _window_text_args(p)
    add_now(p)
    p = cmd(wsub, "plan", cmd_maintenance_plan, "create the recurring monthly and Connect windows up to DATE")
    p.add_argument("--until", required=True, metavar="DATE")
    add_now(p)
    p = cmd(wsub, "list", cmd_maintenance_list, "windows with their products and the notices sent")
    p.add_argument("--json", action="store_true")
    p = cmd(wsub, "cancel", cmd_maintenance_cancel, "cancel a window; whoever was told gets a cancellation")
    p.add_argument("id", type=int)
    add_now(p)
    p = cmd(wsub, "edit", cmd_maintenance_edit, "change a window; whoever was told gets a correction")
    p.add_argument("id", type=int)
    p.add_argument("--start", metavar="T")
    p.add_argument("--end", metavar="T")
    _window_text_args(p)
    add_now(p)


def _window_text_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--products", metavar="A,B", help="affected products (monthly: empty means every product)")
    p.add_argument("--description", metavar="X", help="a short description of the work")
    p.add_argument("--reason", metavar="Y", help="a short reason")


def _publish(factory: sessionmaker[Session], settings: Settings, now: datetime) -> None:
    # The change is committed by now; a status page that cannot be written must not make the command
    # look failed. The scheduler rewrites the page on its next tick.
    try:
        status_page.publish(factory, settings, now)
    except OSError as exc:
        log.warning("status page not updated: %s", exc)


def _help(args: argparse.Namespace) -> int:  # pragma: no cover - argparse requires a subcommand
    return 2


def _products(value: str | None) -> list[str] | None:
    return None if value is None else [p.strip() for p in value.split(",") if p.strip()]


# -- master cases ---------------------------------------------------------------------------------


def cmd_master_open(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    factory = store(settings)
    now = now_of(args, settings)
    actor = (args.as_ or "staff").lower()
    with transaction(factory) as session:
        case = master.open_master(session, settings, title=args.title, platform=args.platform, actor=actor, now=now)
        if args.body:
            master.post_update(session, settings, case, body=args.body, actor=actor, now=now)
        out = master.master_json(session, case)
    _publish(factory, settings, now)
    emit(out)
    return 0


def cmd_master_update(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    factory = store(settings)
    now = now_of(args, settings)
    with transaction(factory) as session:
        case = master.get_master(session, args.number)
        event = master.post_update(session, settings, case, body=args.body, actor=(args.as_ or "staff").lower(),
                                   now=now, close=args.close)
        out = {**master.master_json(session, case), "sent_to": event.detail.get("recipients", [])}
    _publish(factory, settings, now)
    emit(out)
    return 0


def cmd_master_link(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    now = now_of(args, settings)
    with transaction(store(settings)) as session:
        out = case_json(master.link(session, args.number, args.to, actor=(args.as_ or "staff").lower(), now=now))
    emit(out)
    return 0


def _subscription(args: argparse.Namespace, remove: bool) -> int:
    settings = settings_of(args)
    with transaction(store(settings)) as session:
        out = master.subscribe(session, args.email, master=args.master, platform=args.platform, remove=remove)
    emit(out)
    return 0


def cmd_master_subscribe(args: argparse.Namespace) -> int:
    return _subscription(args, remove=False)


def cmd_master_unsubscribe(args: argparse.Namespace) -> int:
    return _subscription(args, remove=True)


def cmd_master_list(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    with transaction(store(settings)) as session:
        cases = session.scalars(select(Case).where(Case.kind == "master").order_by(Case.id)).all()
        rows = [master.master_json(session, c) for c in cases]
    _print(rows, args.json, lambda r: f"#{r['number']:<6} {r['status']:<14} {r['platform'] or '-':<16} "
                                      f"{len(r['linked']):>3} linked  {r['title'][:60]}")
    return 0


# -- maintenance ----------------------------------------------------------------------------------


def cmd_maintenance_add(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    factory = store(settings)
    now = now_of(args, settings)
    start, end = clock.parse_time(args.start, settings.zone), clock.parse_time(args.end, settings.zone)
    with transaction(factory) as session:
        window, actions = maintenance.add_window(
            session, settings, kind=args.kind, start=start, end=end, now=now, products=_products(args.products),
            description=args.description, reason=args.reason)
        out = {**maintenance.window_json(window), "sent": actions}
    _publish(factory, settings, now)
    emit(out)
    return 0


def cmd_maintenance_plan(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    factory = store(settings)
    now = now_of(args, settings)
    try:
        until = date.fromisoformat(args.until.strip())
    except ValueError:
        raise ValueError(f"bad date {args.until!r}: expected YYYY-MM-DD") from None
    with transaction(factory) as session:
        created = [maintenance.window_json(w) for w in maintenance.plan(session, settings, until=until, now=now)]
    _publish(factory, settings, now)
    emit({"created": created})
    return 0


def cmd_maintenance_list(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    with transaction(store(settings)) as session:
        windows = session.scalars(select(MaintenanceWindow).order_by(MaintenanceWindow.start, MaintenanceWindow.id))
        rows = [maintenance.window_json(w) for w in windows]
    _print(rows, args.json, lambda r: f"{r['id']:<5} {r['kind']:<12} {r['status']:<10} {r['start']} .. {r['end']}  "
                                      f"{','.join(r['products']) or 'all products'}  "
                                      "notices: " + ",".join(n["type"].removeprefix("maintenance_")
                                                             for n in r["notices"]))
    return 0


def _change_window(args: argparse.Namespace, cancel: bool) -> int:
    settings = settings_of(args)
    factory = store(settings)
    now = now_of(args, settings)
    with transaction(factory) as session:
        window = maintenance.get_window(session, args.id)
        if cancel:
            actions = maintenance.cancel_window(session, settings, window, now)
        else:
            actions = maintenance.edit_window(
                session, settings, window, now, start=when(args.start, settings), end=when(args.end, settings),
                products=_products(args.products), description=args.description, reason=args.reason)
        out = {**maintenance.window_json(window), "sent": actions}
    _publish(factory, settings, now)
    emit(out)
    return 0


def cmd_maintenance_cancel(args: argparse.Namespace) -> int:
    return _change_window(args, cancel=True)


def cmd_maintenance_edit(args: argparse.Namespace) -> int:
    if not any((args.start, args.end, args.products is not None, args.description is not None,
                args.reason is not None)):
        raise maintenance.MaintenanceError("nothing to change: give --start, --end, --products, --description "
                                           "or --reason")
    return _change_window(args, cancel=False)


# -- invoices -------------------------------------------------------------------------------------


def cmd_invoices_list(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    with transaction(store(settings)) as session:
        rows = invoices.sent_invoices(session, args.period)
    _print(rows, args.json, lambda r: f"{r['period']}  {r['organisation']:<30} {r['sent_at']}  "
                                      f"{', '.join(r['recipients'])}  {r['filename']}")
    return 0


def _print(rows: list[dict[str, Any]], as_json: bool, line: Callable[[dict[str, Any]], str]) -> None:
    if as_json:
        print(json.dumps(rows, ensure_ascii=False))
    else:
        for r in rows:
            print(line(r))
