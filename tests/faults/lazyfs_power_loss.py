# SPDX-License-Identifier: MIT
"""RELIABILITY D3: power loss under load, with LazyFS (https://github.com/dsrhaslab/lazyfs).

Not run in CI: LazyFS is not packaged in Debian (it is built from source against libfuse3 and needs
/dev/fuse and fusermount3). Run by hand:

    PYTHONPATH=tests python tests/faults/lazyfs_power_loss.py --lazyfs ~/lazyfs/lazyfs/build/lazyfs --runs 1000
    PYTHONPATH=tests python tests/faults/lazyfs_power_loss.py --lazyfs ... --runs 100 --control

Each run: mount LazyFS over a fresh directory, start ``python -m maild run`` with its data (SQLite,
WAL, synchronous=FULL) inside it, send mail from 4 clients with the nonce ledger, and at a random
moment tell LazyFS ``lazyfs::clear-cache`` (every write not fsynced is lost, as in a power cut) and
SIGKILL maild at once. Remount, start maild again, and run the ledger oracle: every nonce that got
250 must be there. ``--control`` runs maild under ``eatmydata`` (fsync a no-op), which *must* show
loss: that proves the set-up can see it. ``--dry-run`` skips LazyFS (plain directory, kill -9 only)
to check the plumbing. Prints one JSON line per run and a summary.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from faultlib import REPO, Ledger, MaildProcess, check_no_loss, free_port, smtp_send
from helpers import Desk, write_config

LAZYFS_CONFIG = """[faults]
fifo_path="{fifo}"
[cache]
apply_eviction=false
[cache.simple]
custom_size="512mb"
blocks_per_page=1
[filesystem]
log_all_operations=false
logfile=""
"""


def mount(lazyfs: str, root: Path, mnt: Path, cfg: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([lazyfs, str(mnt), "--config-path", str(cfg), "-o", "modules=subdir",
                             "-o", f"subdir={root}", "-f"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if subprocess.run(["mountpoint", "-q", str(mnt)], check=False).returncode == 0:
            return proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("LazyFS did not mount")


def umount(mnt: Path, proc: subprocess.Popen[bytes]) -> None:
    subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
    proc.wait(30)


def one_run(args: argparse.Namespace, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    base = Path(tempfile.mkdtemp(prefix="maild-d3-"))
    root, mnt, fifo = base / "root", base / "mnt", base / "faults.fifo"
    root.mkdir()
    mnt.mkdir()
    data_dir = root
    fs = None
    if not args.dry_run:
        subprocess.run(["mkfifo", str(fifo)], check=True)
        (base / "lazyfs.toml").write_text(LAZYFS_CONFIG.format(fifo=fifo))
        fs = mount(args.lazyfs, root, mnt, base / "lazyfs.toml")
        data_dir = mnt
    port = free_port()
    desk = Desk(write_config(data_dir, database_url=f"sqlite:///{data_dir}/maild.db",
                             extra=f'[smtp]\nlisten = "127.0.0.1:{port}"\n'))  # fmt: skip
    desk.import_directory(REPO / "examples" / "directory.toml")
    desk.close()
    proc = MaildProcess(desk.config_path, port, base / "maild.log")
    prefix = ["eatmydata"] if args.control else []
    proc.start(wrapper=prefix)
    ledger = Ledger()
    entries = [ledger.mail(i, sender="Anna <anna@acme.example>") for i in range(args.messages)]

    def power_cut() -> None:
        if fs is not None:
            fifo.write_text("lazyfs::clear-cache\n")
        proc.kill()

    cut = threading.Timer(rng.uniform(0.2, args.window), power_cut)
    cut.start()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda e: smtp_send(port, ledger, e, mail_from="anna@acme.example", timeout=10), entries))
    cut.join()
    proc.wait()
    if fs is not None:
        umount(mnt, fs)
        fs = mount(args.lazyfs, root, mnt, base / "lazyfs.toml")
    accepted = len(ledger.accepted())
    try:
        counts: dict[str, object] = dict(check_no_loss(f"sqlite:///{data_dir}/maild.db", ledger))
        lost: object = 0
    except AssertionError as broken:
        counts, lost = {}, str(broken).count("stored 0 times")
    except Exception as exc:  # a store that does not even open after the cut is loss too
        counts, lost = {"error": f"{type(exc).__name__}: {exc}"[:200]}, accepted
    if fs is not None:
        umount(mnt, fs)
    shutil.rmtree(base, ignore_errors=True)
    return {"seed": seed, "accepted_250": accepted, "lost": lost, **counts}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lazyfs", help="path to the lazyfs binary")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--messages", type=int, default=80)
    parser.add_argument("--window", type=float, default=2.0, help="latest power cut, seconds after start")
    parser.add_argument("--control", action="store_true", help="negative control: fsync disabled (eatmydata)")
    parser.add_argument("--dry-run", action="store_true", help="no LazyFS: kill -9 only (plumbing check)")
    args = parser.parse_args()
    if not args.dry_run and not (args.lazyfs and shutil.which("fusermount3")):
        print("LazyFS binary (--lazyfs) and fusermount3 are required; see the docstring", file=sys.stderr)
        return 2
    if args.control and not shutil.which("eatmydata"):
        print("the control needs eatmydata (Debian package eatmydata)", file=sys.stderr)
        return 2
    results = [one_run(args, seed) for seed in range(args.runs)]
    for r in results:
        print(json.dumps(r))
    lost_runs = sum(1 for r in results if r["lost"])
    print(json.dumps({"runs": len(results), "runs_with_loss": lost_runs, "control": args.control,
                      "dry_run": args.dry_run}))  # fmt: skip
    # With FULL, loss is a failure; in the control, *no* loss means the test cannot see loss.
    return int(lost_runs == 0) if args.control else int(lost_runs > 0)


if __name__ == "__main__":
    sys.exit(main())
