# SPDX-License-Identifier: MIT
"""The ``maild`` command line (CONTRACT.md): parse -> one service call in one transaction -> print.

Every command exits non-zero with a one-line ``maild: error: ...`` on stderr for bad input and, since
each runs in one transaction, a refused command changes nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from maild import __version__

log = logging.getLogger("maild")


class UsageError(Exception):
    """Bad input on the command line, phrased for the operator."""


def _add_now(p: argparse.ArgumentParser) -> None:
    p.add_argument("--now", metavar="T", help="act as of this ISO 8601 time (no offset: the configured zone)")


def build_parser() -> argparse.ArgumentParser:
    from maild import commands as c

    parser = argparse.ArgumentParser(prog="maild", description="Email-driven support ticketing daemon.")
    parser.add_argument("--config", metavar="PATH", help="config file (default: $MAILD_CONFIG or ./maild.toml)")
    parser.add_argument("--version", action="version", version=f"maild {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # --config is accepted after the subcommand too (`maild run --config /etc/maild/maild.toml`)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    def cmd(parent: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
            fn: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_, description=help_, parents=[common])
        p.set_defaults(func=fn)
        return p

    p = cmd(sub, "init", c.cmd_init, "write a commented default config to DIR/maild.toml and create the database")
    p.add_argument("dir", nargs="?", default=".")
    cmd(sub, "run", _cmd_run, "run the daemon: SMTP listener, IMAP poller, outbox sender, scheduler")
    p = cmd(sub, "ingest", c.cmd_ingest, "take .eml files, mbox files or Maildirs through intake")
    _add_now(p)
    p.add_argument("paths", nargs="+", metavar="PATH")
    p = cmd(sub, "tick", c.cmd_tick, "run every due time-driven rule once")
    _add_now(p)
    p = cmd(sub, "send", c.cmd_send, "deliver what is due in the outbox once")
    _add_now(p)
    p = cmd(sub, "queue", c.cmd_queue, "SMTP mail accepted and not yet processed, as JSON")
    p.add_argument("--process", action="store_true", help="process it all now, then report")

    d = cmd(sub, "directory", c.cmd_help, "organisations, contacts and staff")
    dsub = d.add_subparsers(dest="sub", required=True, metavar="SUBCOMMAND")
    p = cmd(dsub, "import", c.cmd_directory_import, "load a TOML or CSV directory file")
    p.add_argument("file")
    p = cmd(dsub, "list", c.cmd_directory_list, "show the directory as JSON")

    cs = cmd(sub, "cases", c.cmd_help, "work cases")
    csub = cs.add_subparsers(dest="sub", required=True, metavar="SUBCOMMAND")
    p = cmd(csub, "list", c.cmd_cases_list, "list cases")
    p.add_argument("--json", action="store_true")
    p.add_argument("--status", metavar="S")
    p.add_argument("--org", metavar="O")
    p = cmd(csub, "show", c.cmd_cases_show, "one case with its messages and events")
    p.add_argument("number", type=int)
    p.add_argument("--json", action="store_true")
    p = cmd(csub, "reply", c.cmd_cases_reply, "reply to the requester")
    p.add_argument("number", type=int)
    p.add_argument("--body", required=True)
    p.add_argument("--await-customer", action="store_true", help="we asked the customer something")
    p.add_argument("--as", dest="as_", metavar="EMAIL", help="the technician replying (default: the assignee)")
    _add_now(p)
    p = cmd(csub, "set", c.cmd_cases_set, "change a case")
    p.add_argument("number", type=int)
    p.add_argument("--status", metavar="S")
    p.add_argument("--priority", metavar="P")
    p.add_argument("--etr", metavar="T", help="estimated time of resolution")
    p.add_argument("--assign", metavar="EMAIL")
    p.add_argument("--until", metavar="T", help="with --status on-hold: when the hold ends")
    p.add_argument("--expedited", choices=("yes", "no"), help="MACD: expedited (extra fee, 4-hour response)")
    p.add_argument("--as", dest="as_", metavar="EMAIL")
    _add_now(p)
    p = cmd(csub, "log-time", c.cmd_cases_log_time, "log time worked on a case (MACD billing)")
    p.add_argument("number", type=int)
    p.add_argument("--minutes", type=int, required=True)
    p.add_argument("--note", default="")
    p.add_argument("--as", dest="as_", metavar="EMAIL")
    _add_now(p)
    from maild.escalation import cmd_cases_escalate

    p = cmd(csub, "escalate", cmd_cases_escalate, "escalate a case to the next level of the escalation path")
    p.add_argument("number", type=int)
    p.add_argument("--reason", metavar="TEXT")
    p.add_argument("--as", dest="as_", metavar="EMAIL")
    _add_now(p)
    p = cmd(csub, "duplicate", c.cmd_cases_duplicate, "mark case N a duplicate of case M")
    p.add_argument("number", type=int)
    p.add_argument("--of", type=int, required=True, metavar="M")
    p.add_argument("--as", dest="as_", metavar="EMAIL")
    _add_now(p)

    h = cmd(sub, "held", c.cmd_help, "held intake")
    hsub = h.add_subparsers(dest="sub", required=True, metavar="SUBCOMMAND")
    p = cmd(hsub, "list", c.cmd_held_list, "held messages")
    p.add_argument("--json", action="store_true")
    p.add_argument("--all", action="store_true", help="also accepted and dropped ones")
    for name, fn, text in (("accept", c.cmd_held_accept, "accept a held message (opens or threads it)"),
                           ("drop", c.cmd_held_drop, "drop a held message (its bytes stay stored)")):
        p = cmd(hsub, name, fn, text)
        p.add_argument("id", type=int)
        p.add_argument("--as", dest="as_", metavar="EMAIL")
        _add_now(p)

    o = cmd(sub, "outbox", c.cmd_help, "outbound mail")
    osub = o.add_subparsers(dest="sub", required=True, metavar="SUBCOMMAND")
    p = cmd(osub, "list", c.cmd_outbox_list, "outbound mail and its delivery state")
    p.add_argument("--json", action="store_true")
    p.add_argument("--status", metavar="S")

    _extra_commands(sub, cmd)
    return parser


def _extra_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], cmd: Callable[..., argparse.ArgumentParser]
) -> None:
    """Commands of later subsystems (master cases, maintenance, invoices), registered if present."""
    from maild import commands_more

    commands_more.register(sub, cmd, _add_now)


def _long_option(item: str, name: str, shortest: int) -> bool:
    """``item`` is ``name`` or an abbreviation argparse takes for it (at least ``shortest`` long)."""
    return len(item) >= shortest and name.startswith(item)


def _run_only(argv: Sequence[str]) -> argparse.Namespace | None:
    """``maild [--config P] [-v] run [--config P]``, parsed without loading the other commands: the
    listener process ``maild run`` becomes must not load SQLAlchemy (``maild.listener``). Accepts what
    the whole parser accepts for it (abbreviations too); None for anything else (``--help``, a
    mistake), which the whole parser then handles."""
    config: str | None = None
    verbose = False
    command = None
    items = iter(argv)
    for item in items:
        option, eq, value = item.partition("=")
        short_v = item[:1] == "-" and set(item[1:]) == {"v"}  # -v, -vv ...
        if command is None and (short_v or (not eq and _long_option(item, "--verbose", 6))):
            verbose = True  # a top-level option only; "--vers" would be --version
        elif _long_option(option, "--config", 3):
            if not eq:
                value = next(items, "")
            if not value or value.startswith("-"):
                return None
            config = value
        elif item == "run" and command is None:
            command = item
        else:
            return None
    if command is None:
        return None
    return argparse.Namespace(command="run", config=config, verbose=verbose, func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from maild.config import load
    from maild.listener import run
    from maild.logs import setup_logging

    settings = load(args.config)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    return run(settings)


def _known_errors(args: argparse.Namespace) -> tuple[type[BaseException], ...]:
    if args.func is _cmd_run:  # the config's errors, and the OS's (an unreadable file)
        from maild.config import ConfigError

        return (ConfigError, ValueError, OSError)
    from maild.commands import known_errors

    return known_errors()


def main(argv: Sequence[str] | None = None) -> int:
    args = _run_only(sys.argv[1:] if argv is None else argv)
    if args is None:
        args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except _known_errors(args) as exc:
        print(f"maild: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
