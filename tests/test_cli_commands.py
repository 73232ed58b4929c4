# SPDX-License-Identifier: MIT
"""The command line as operators use it: JSON out, one-line errors, nothing changed on refusal."""

from __future__ import annotations

import json
import mailbox
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import Desk, build_mail, write_config

from maild.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_init_writes_config_and_database_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `maild init DIR` writes DIR/maild.toml and the SQLite database; a second init changes nothing.
    assert main(["init", str(tmp_path / "d")]) == 0
    cfg = tmp_path / "d" / "maild.toml"
    assert cfg.exists() and (tmp_path / "d" / "maild.db").exists()
    before = cfg.read_text()
    assert 'secret = "' in before and "test" not in before
    assert main(["init", str(tmp_path / "d")]) == 1
    assert "already exists" in capsys.readouterr().err
    assert cfg.read_text() == before


def test_config_error_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A misspelt key or a wrong value is a one-line error naming it, not a traceback.
    cfg = tmp_path / "maild.toml"
    cfg.write_text("[smtp]\nlisten = 'nonsense'\n")
    assert main(["--config", str(cfg), "cases", "list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[smtp] listen" in err
    cfg.write_text("[relay]\nprot = 25\n")
    assert main(["--config", str(cfg), "cases", "list"]) == 1
    assert "unknown setting [relay] prot" in capsys.readouterr().err
    cfg.write_text("[smtp]\nprocess_timeout = 0\n")
    assert main(["--config", str(cfg), "cases", "list"]) == 1
    assert "[smtp] process_timeout: expected 1 to 86400 seconds, got 0" in capsys.readouterr().err


def test_env_overrides_config(tmp_path: Path) -> None:
    # MAILD_<SECTION>_<KEY> wins over the file.
    from maild import config

    cfg = write_config(tmp_path, database_url="sqlite:///x.db")
    s = config.load(cfg, env={"MAILD_RELAY_PORT": "2600", "MAILD_SMTP_LISTEN": "127.0.0.1:9999",
                              "MAILD_DATABASE_URL": "sqlite:////tmp/y.db"})
    assert (s.relay.port, s.smtp.listen, s.database_url) == (2600, "127.0.0.1:9999", "sqlite:////tmp/y.db")
    with pytest.raises(config.ConfigError, match="MAILD_RELAY_PORT"):
        config.load(cfg, env={"MAILD_RELAY_PORT": "many"})


def test_directory_import_csv_and_reimport_keeps_history(sqlite_desk: Desk, tmp_path: Path) -> None:
    # Importing again (CSV this time, a contact renamed) updates records and keeps the case.
    sqlite_desk.ingest(build_mail())
    out = sqlite_desk.cli_json("directory", "import", str(REPO / "examples" / "directory.csv"))
    assert out["contacts"] == 3 and out["created"] == []
    assert sqlite_desk.case(1)["requester"] == "peter@initech.example"
    code, _, err = sqlite_desk.cli("directory", "import", str(tmp_path / "missing.toml"))
    assert code == 1 and "cannot read" in err


def test_bad_directory_changes_nothing(sqlite_desk: Desk, tmp_path: Path) -> None:
    # A file with one bad record is refused whole: the good records before it are not imported.
    bad = tmp_path / "bad.toml"
    bad.write_text('[[organisation]]\nname = "New Org"\n\n[[contact]]\norganisation = "New Org"\n'
                   'email = "x@new.example"\nroles = ["boss"]\n')
    code, _, err = sqlite_desk.cli("directory", "import", str(bad))
    assert code == 1 and "unknown role(s) boss" in err
    lines = sqlite_desk.cli("directory", "list")[1].splitlines()
    assert not any("New Org" in line for line in lines)


def test_cases_set_refuses_bad_transition_and_changes_nothing(sqlite_desk: Desk) -> None:
    # New -> Closed No Response is not allowed: error, exit 1, case unchanged.
    sqlite_desk.ingest(build_mail())
    before = sqlite_desk.case(1)
    code, out, err = sqlite_desk.cli("cases", "set", "1", "--status", "closed-no-response", "--priority", "P2")
    assert code == 1 and out == "" and "cannot change status from new to closed-no-response" in err
    assert sqlite_desk.case(1) == before
    code, _, err = sqlite_desk.cli("cases", "set", "1", "--status", "on-hold")
    assert code == 1 and "--until" in err
    code, _, err = sqlite_desk.cli("cases", "set", "99", "--status", "closed")
    assert code == 1 and "no case 99" in err
    code, _, err = sqlite_desk.cli("cases", "set", "1", "--etr", "tomorrow")
    assert code == 1 and "bad time" in err


def test_cases_reply_sends_and_starts_work(sqlite_desk: Desk) -> None:
    # A staff reply queues mail to the requester, stops the first-response clock, moves New -> In Progress.
    sqlite_desk.ingest(build_mail())
    out = sqlite_desk.cli_json("cases", "reply", "1", "--body", "Looking into it.", "--as", "tom@support.example.com",
                               "--await-customer", "--now", "2026-11-20T11:00")
    assert out["status"] == "in-progress" and out["first_responded_at"] == "2026-11-20T18:00:00Z"
    assert out["awaiting_customer_since"] == "2026-11-20T18:00:00Z"
    item = next(i for i in sqlite_desk.outbox() if i.template == "staff_reply")
    assert item.to_addr == "peter@initech.example" and b"Looking into it." in item.data
    outbox = sqlite_desk.cli_json("outbox", "list", "--json")
    assert {o["template"] for o in outbox} == {"ack_new_case", "staff_reply"}
    assert all(o["status"] == "queued" for o in outbox)


def test_cases_duplicate_and_list_filters(sqlite_desk: Desk) -> None:
    # Marking a duplicate names the master; list filters by status and organisation.
    sqlite_desk.ingest(build_mail(message_id="<a@i>"))
    sqlite_desk.ingest(build_mail(message_id="<b@i>", subject="Same problem"))
    out = sqlite_desk.cli_json("cases", "duplicate", "2", "--of", "1")
    assert (out["status"], out["duplicate_of"]) == ("duplicate", 1)
    assert [c["number"] for c in sqlite_desk.cli_json("cases", "list", "--json", "--status", "duplicate")] == [2]
    assert len(sqlite_desk.cli_json("cases", "list", "--json", "--org", "Initech Inc")) == 2
    code, _, err = sqlite_desk.cli("cases", "list", "--org", "Nope")
    assert code == 1 and "no organisation" in err


def test_ingest_files_mbox_and_maildir_with_a_bad_file(sqlite_desk: Desk, tmp_path: Path) -> None:
    # `maild ingest` takes .eml, mbox and Maildir; a non-mail file is reported and the rest go on.
    eml = tmp_path / "one.eml"
    eml.write_bytes(build_mail(message_id="<f1@i>"))
    box = mailbox.mbox(str(tmp_path / "box.mbox"))
    box.add(build_mail(message_id="<f2@i>", subject="mbox one"))
    box.add(build_mail(message_id="<f3@i>", subject="mbox two"))
    box.close()
    md = mailbox.Maildir(str(tmp_path / "md"))
    md.add(build_mail(message_id="<f4@i>", subject="maildir"))
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    code, out, err = sqlite_desk.cli("ingest", str(eml), str(junk), str(tmp_path / "box.mbox"), str(tmp_path / "md"))
    lines = [json.loads(line) for line in out.splitlines()]
    assert [r["outcome"] for r in lines] == ["new-case"] * 4
    assert set(lines[0]) == {"message_id", "outcome", "case", "reason"}
    assert code == 1 and "junk.png" in err and "not a mail" in err


def test_python_dash_m_maild_runs(tmp_path: Path) -> None:
    # The package runs as `python -m maild`.
    proc = subprocess.run([sys.executable, "-m", "maild", "--version"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stdout.startswith("maild ")


def test_walk_new_user_quick_path(tmp_path: Path) -> None:
    # The README walk: init, import the example directory, ingest the example mail, see a P4 New case.
    d = tmp_path / "desk"
    assert main(["init", str(d)]) == 0
    cfg = str(d / "maild.toml")
    assert main(["--config", cfg, "directory", "import", str(REPO / "examples" / "directory.toml")]) == 0
    eml = str(REPO / "examples" / "new-case.eml")
    proc = subprocess.run([sys.executable, "-m", "maild", "--config", cfg, "ingest", eml],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["outcome"] == "new-case"
    proc = subprocess.run([sys.executable, "-m", "maild", "--config", cfg, "cases", "list", "--json"],
                          capture_output=True, text=True, check=True)
    case = json.loads(proc.stdout)[0]
    assert (case["priority"], case["status"]) == ("P4", "new")


def test_views_answer_while_another_process_holds_the_write_lock(sqlite_desk: Desk) -> None:
    # The lists and views only read: an operator can look at the queue, cases, held mail and the
    # outbox while the daemon commits (or while a message hangs holding SQLite's write lock).
    sqlite_desk.ingest(build_mail(sender="Anna <anna@acme.example>"))
    writer = sqlite3.connect(sqlite_desk.settings.database_url.split("///", 1)[1], isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        assert sqlite_desk.cli_json("queue")["queued"] == 0
        assert [c["number"] for c in sqlite_desk.cli_json("cases", "list", "--json")] == [1]
        assert sqlite_desk.cli_json("cases", "show", "1", "--json")["requester"] == "anna@acme.example"
        assert sqlite_desk.cli_json("held", "list", "--json") == []
        assert [r["template"] for r in sqlite_desk.cli_json("outbox", "list", "--json")] == ["ack_new_case"]
        code, _, err = sqlite_desk.cli("directory", "list")
        assert code == 0, err
    finally:
        writer.rollback()
        writer.close()
