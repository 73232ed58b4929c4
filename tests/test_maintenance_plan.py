# SPDX-License-Identifier: MIT
"""`maild maintenance plan/add/list/edit/cancel` as an operator uses them: the windows they create and refuse."""

from __future__ import annotations

from pathlib import Path

from helpers import Desk


def test_plan_creates_a_year_of_third_friday_and_connect_windows_once(desk: Desk) -> None:
    # A year of planning: one monthly window per third Friday 22:00-04:00 MT, Connect every 3 weeks on
    # Tuesday 21:00-23:00; planning again (even further) never creates a window twice.
    out = desk.cli_json("maintenance", "plan", "--until", "2027-11-30", "--now", "2026-12-01T09:00")
    monthly = [w for w in out["created"] if w["kind"] == "monthly"]
    assert [w["start"] for w in monthly[:2]] == ["2026-12-19T05:00:00Z", "2027-01-16T05:00:00Z"]  # 22:00 MST
    assert monthly[0]["end"] == "2026-12-19T11:00:00Z"  # 04:00 MST the next morning
    assert len(monthly) == 12 and monthly[-1]["start"] == "2027-11-20T05:00:00Z"  # 2027-11-19 22:00 MST
    assert next(w for w in monthly if w["start"].startswith("2027-07"))["start"] == "2027-07-17T04:00:00Z"  # MDT
    assert all(w["products"] == [] and w["notices"] == [] for w in monthly)  # [] = every product
    connect = [w for w in out["created"] if w["kind"] == "connect"]
    assert connect[0]["start"] == "2026-12-09T04:00:00Z"  # Tue 2026-12-08 21:00 MST, a 3-week sprint date
    assert all(w["products"] == ["connect"] for w in connect)
    assert len(connect) == 18 and connect[-1]["start"] == "2027-12-01T04:00:00Z"  # Tue 11-30 21:00 MST: --until counts
    again = desk.cli_json("maintenance", "plan", "--until", "2027-11-30", "--now", "2026-12-02T09:00")
    assert again == {"created": []}
    more = desk.cli_json("maintenance", "plan", "--until", "2027-12-31", "--now", "2026-12-02T09:00")
    assert [w["start"] for w in more["created"] if w["kind"] == "monthly"] == ["2027-12-18T05:00:00Z"]
    assert len(desk.cli_json("maintenance", "list", "--json")) == len(out["created"]) + len(more["created"])


def test_a_moved_planned_window_is_not_planned_again(desk: Desk) -> None:
    # Staff moved the December window; planning again must not put the original slot back.
    out = desk.cli_json("maintenance", "plan", "--until", "2026-12-31", "--now", "2026-12-01T09:00")
    monthly = next(w for w in out["created"] if w["kind"] == "monthly")
    desk.cli_json("maintenance", "edit", str(monthly["id"]), "--start", "2026-12-18T23:00", "--now",
                  "2026-12-01T10:00")
    assert desk.cli_json("maintenance", "plan", "--until", "2026-12-31", "--now", "2026-12-02T09:00") == {"created": []}


def test_add_refuses_bad_windows_with_one_line_and_creates_nothing(desk: Desk) -> None:
    # Unknown kind, end before start, unscheduled without products, bad time: one-line error, exit 1.
    base = ["maintenance", "add", "--now", "2027-05-01T09:00"]
    cases = [
        (["--kind", "weekly", "--start", "2027-05-04T23:00", "--end", "2027-05-05T01:00"], "unknown kind 'weekly'"),
        (["--kind", "monthly", "--start", "2027-05-04T23:00", "--end", "2027-05-04T22:00"], "end after it starts"),
        (["--kind", "unscheduled", "--start", "2027-05-04T23:00", "--end", "2027-05-05T01:00",
          "--description", "x", "--reason", "y"], "needs --products"),
        (["--kind", "monthly", "--start", "tomorrow", "--end", "2027-05-05T01:00"], "bad time 'tomorrow'"),
    ]
    for args, message in cases:
        code, out, err = desk.cli(*base, *args)
        assert code == 1 and out == ""
        assert err.startswith("maild: error: ") and message in err and err.count("\n") == 1
    assert desk.cli_json("maintenance", "list", "--json") == []
    code, _, err = desk.cli("maintenance", "plan", "--until", "next year")
    assert code == 1 and "bad date" in err


def test_add_times_without_offset_are_mountain_time(desk: Desk) -> None:
    # --start without an offset is MT; with an offset it is taken as given; products are lower-cased.
    out = desk.cli_json("maintenance", "add", "--kind", "monthly", "--start", "2027-06-18T22:00",
                        "--end", "2027-06-19T04:00:00-06:00", "--products", "Cloud, connect", "--now",
                        "2027-06-01T09:00")
    assert (out["start"], out["end"]) == ("2027-06-19T04:00:00Z", "2027-06-19T10:00:00Z")
    assert out["products"] == ["cloud", "connect"] and out["sent"] == []
    code, _, err = desk.cli("maintenance", "add", "--kind", "monthly", "--start", "2027-06-18T22:00",
                            "--end", "2027-06-19T04:00", "--now", "2027-06-01T09:00")
    assert code == 1 and "already exists" in err


def test_edit_before_any_notice_changes_quietly_and_cancel_of_unknown_window_fails(desk: Desk) -> None:
    # Before any notice went out an edit just changes the window (no correction); bad ids are refused.
    out = desk.cli_json("maintenance", "plan", "--until", "2027-01-31", "--now", "2027-01-01T09:00")
    wid = str(next(w for w in out["created"] if w["kind"] == "monthly")["id"])
    edited = desk.cli_json("maintenance", "edit", wid, "--products", "cloud", "--description", "Kernel updates",
                           "--now", "2027-01-02T09:00")
    assert edited["products"] == ["cloud"] and edited["description"] == "Kernel updates"
    assert edited["sent"] == [] and edited["notices"] == []
    code, _, err = desk.cli("maintenance", "edit", wid, "--now", "2027-01-02T09:00")
    assert code == 1 and "nothing to change" in err
    code, _, err = desk.cli("maintenance", "cancel", "999", "--now", "2027-01-02T09:00")
    assert code == 1 and "no maintenance window 999" in err
    cancelled = desk.cli_json("maintenance", "cancel", wid, "--now", "2027-01-02T09:00")
    assert cancelled["status"] == "cancelled" and cancelled["sent"] == []


def test_scheduler_plans_recurring_windows_ahead_once_a_day(tmp_path: Path) -> None:
    # With plan_ahead_days the daemon's tick plans the monthly and Connect windows itself, once a day.
    from helpers import mt, write_config

    from maild.scheduler import tick

    d = Desk(write_config(tmp_path, database_url=f"sqlite:///{tmp_path}/m.db", plan_ahead_days=40))
    actions = tick(d.factory, d.settings, mt(2026, 11, 22, 9, 0))
    planned = [a for a in actions if a.get("action") == "planned"]
    starts = sorted(a["start"][:10] for a in planned if a["kind"] == "monthly")
    assert starts == ["2026-12-19"]  # 2026-12-18 22:00 MST is 2026-12-19 05:00 UTC; the next is 2027-01-15
    assert all(a["kind"] in ("monthly", "connect") for a in planned)
    again = tick(d.factory, d.settings, mt(2026, 11, 22, 9, 1))
    assert [a for a in again if a.get("action") == "planned"] == []
    listed = d.cli_json("maintenance", "list", "--json")
    assert len(listed) == len(planned)
    d.close()
