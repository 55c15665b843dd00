"""The ``hearth`` command, run as a user runs it: a real subprocess."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

HEARTH = shutil.which("hearth", path=str(Path(sys.executable).parent))
#: the code under test, where it is not the installed one (a worktree run with PYTHONPATH=src):
#: without it the subprocess ran the installed package, and a test of a fix passed or failed
#: on code it never saw
PYTHONPATH = {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}


def hearth(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert HEARTH, "the hearth console script is not installed beside this python"
    return subprocess.run(
        [HEARTH, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={"COLUMNS": "160", "PATH": str(Path(sys.executable).parent), **PYTHONPATH},
    )


def test_demo_writes_reopens_and_shows_the_household() -> None:
    done = hearth("demo")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "reopened from disk" in out
    for fact in (
        "oat latte",
        "cortado",
        "green-mug",
        "shelf-2",
        "camomile",
        "Bob is up late",
        "CORRECTION",
        "withheld: health",  # the context the robot asks for before making her coffee
        "beverage/coffee: cortado (on weekends",
        "because you asked for it",
        "feedback_implicit [beverage]",  # the prompt as the model reads it: no rich markup
        # Sunday: a second robot joins with a code, syncs, is cut off, catches up
        'joined "Alice and Bob\'s home"',
        "Alice's mug there: green-mug",  # written on the kitchen robot before it joined
        "serves Alice a weekend oat cortado",  # the kitchen's correction, made while apart
        "looks for the blue mug on the hall table",  # the hall's move, made while apart
        "blood pressure tablet at 21:00",  # the kitchen robot's medication task reads it
        "none (no health key)",  # and it never reached the hall robot
    ):
        assert fact in " ".join(out.split()), fact  # lines folded anywhere
    assert done.stderr == ""  # nothing warned of, on either robot


def test_demo_explains_the_mug_by_mondays_correction_with_no_clock_warning() -> None:
    done = hearth("demo")
    assert done.returncode == 0, done.stderr
    # Alice corrected the mug on Monday 2026-03-09; Tuesday to Friday she kept it, and the
    # robot's idle hour folded those four confirmations in without restating her preference
    explained = next(line for line in done.stdout.splitlines() if "explain(alice" in line)
    assert "because you asked for it on 2026-03-09 on kitchen-robot" in explained, explained
    assert "confirmed 4 times since" in explained, explained
    assert "4 new confirmations" in done.stdout
    # the story clock only moves forward, so reopening the store finds nothing to distrust
    both = done.stdout + done.stderr
    for warning in ("cannot be right", "going by the system clock", "until the clock catches up"):
        assert warning not in both, warning


async def test_status_lists_documents_of_a_peer(tmp_path: Path) -> None:
    from hearthsync import Peer

    async with Peer.open(tmp_path / "robot", device="hall") as peer:
        await peer.add_user("alice", name="Alice")
        await peer.set_preference("alice", "tea/mug", "green")
    done = hearth("status", str(tmp_path / "robot"))
    assert done.returncode == 0, done.stderr
    assert "user/alice/prefs" in done.stdout
    assert "hall" in done.stdout
    assert "in no household (hearth init, or hearth join)" in done.stdout


def test_status_of_a_folder_without_a_peer_is_a_clear_error(tmp_path: Path) -> None:
    done = hearth("status", str(tmp_path))
    assert done.returncode == 2
    assert "no hearthsync peer" in done.stderr


def test_ordinary_mistakes_are_one_error_line_and_leave_nothing_behind(tmp_path: Path) -> None:
    """Found in review: these printed tracebacks, or made a store in a folder that was not
    a peer, which a later ``hearth join`` then found belonged to another device."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for args in (["run", str(empty)], ["revoke", str(empty), "ZZZZZZZZZZZZZZZZ"]):
        done = hearth(*args)
        assert done.returncode == 2, args
        assert "no hearthsync peer" in done.stderr, args
        assert list(empty.iterdir()) == [], args
    mistyped = hearth("join", str(tmp_path / "j"), "HS1-garbage", "--device", "j")
    assert mistyped.returncode == 1
    assert "an invite code looks like" in mistyped.stderr
    with socket.socket() as closed:  # a well-formed code whose inviter is not there
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    unreachable = hearth("join", str(tmp_path / "j"), f"HS1-{'A' * 26}-127.0.0.1:{port}",
                         "--device", "j")  # fmt: skip
    assert unreachable.returncode == 1
    assert "could not reach the inviter" in unreachable.stderr
    # no half-made peer: only the key it sent, which a retry with this code sends again
    assert [p.name for p in (tmp_path / "j").iterdir()] == ["join.pending"]
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    made = hearth("init", str(a_file), "--household", "H", "--device", "x")
    assert made.returncode == 1
    assert made.stderr.startswith("error:")
    robot = tmp_path / "robot"
    assert hearth("init", str(robot), "--household", "H", "--device", "k").returncode == 0
    nowhere = hearth("run", str(robot), "--listen", "192.0.2.1:7430", "--no-mdns", "--no-api")
    assert nowhere.returncode == 1
    assert "error: cannot listen on 192.0.2.1:7430 for sync" in " ".join(nowhere.stderr.split())
    for done in (mistyped, unreachable, made, nowhere):
        assert "Traceback" not in done.stderr + done.stdout


def test_status_of_a_robot_killed_without_a_goodbye_says_it_is_not_running(
    tmp_path: Path,
) -> None:
    """Found in review: after a SIGKILL, run.json outlived the robot and status showed it as
    running."""
    from hearthsync.runner import RUN_FILE

    robot = tmp_path / "robot"
    assert hearth("init", str(robot), "--household", "H", "--device", "k").returncode == 0
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    pid = int(gone.stdout)
    (robot / RUN_FILE).write_text(json.dumps({"pid": pid, "host": "x", "port": 1, "links": {}}))
    done = hearth("status", str(robot))
    assert done.returncode == 0, done.stderr
    assert f"not running ({RUN_FILE} was left by pid {pid}, gone)" in done.stdout


def test_bench_sync_without_its_baseline_says_which_extra_to_install() -> None:
    """pycrdt-websocket, the baseline, is in the ``bench`` extra, not a robot's dependencies:
    without it ``hearth bench sync`` ended in a ModuleNotFoundError traceback."""
    code = (
        "import sys; sys.modules['pycrdt.websocket'] = None; "
        "sys.argv = ['hearth', 'bench', 'sync', '--quick']; "
        "from hearthsync.cli import main; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        env={**os.environ, "COLUMNS": "160", **PYTHONPATH},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "pip install 'hearthsync[bench]'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_bench_local_quick_writes_the_named_keys(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = hearth("bench", "local", "--quick", "--json", str(out))
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    for key in (
        "write_durable_per_s",
        "sqlite_batched_insert_per_s",
        "write_vs_sqlite",
        "reopen_year_s",
        "recall_at_10",
        "vector_speedup",
        "vector_bytes_per_item",
        "store_bytes_after_compaction_ratio",
        "index_catchup_s",
        "recall_under_load_max_ms",
        "recall_idle_p50_ms",
        "write_floor_per_s",
        "write_floor_vs_sqlite",
    ):
        assert isinstance(figures[key], float), key
        assert figures[key] > 0, key
    assert figures["write_vs_sqlite"] == pytest.approx(
        figures["write_durable_per_s"] / figures["sqlite_batched_insert_per_s"]
    )
    assert figures["write_floor_vs_sqlite"] == pytest.approx(
        figures["write_floor_per_s"] / figures["sqlite_batched_insert_per_s"]
    )
    assert figures["recall_under_load_vs_idle"] == pytest.approx(
        figures["recall_under_load_max_ms"] / figures["recall_idle_p50_ms"]
    )


async def test_forget_removes_the_user_and_refuses_a_running_peer(tmp_path: Path) -> None:
    from hearthsync import Peer
    from hearthsync.runner import RUN_FILE

    path = tmp_path / "robot"
    async with Peer.open(path, device="hall") as peer:
        await peer.add_user("alice", name="Alice")
        await peer.add_user("bob", name="Bob")
        await peer.set_preference("alice", "tea/mug", "green")
    (path / RUN_FILE).write_text(json.dumps({"pid": os.getpid(), "host": "x", "port": 1}))
    refused = hearth("forget", str(path), "alice")
    assert refused.returncode == 2
    assert "'hearth run' is running" in refused.stderr
    (path / RUN_FILE).unlink()
    done = hearth("forget", str(path), "alice")
    assert done.returncode == 0, done.stderr
    assert "forgot alice" in done.stdout
    unknown = hearth("forget", str(path), "carol")
    assert unknown.returncode == 1
    assert "unknown user 'carol'" in unknown.stderr
    async with Peer.open(path) as peer:
        assert peer.users() == ["bob"]
        assert list(peer.forgotten()) == ["alice"]


async def test_context_prints_tables_or_json_and_maintain_runs_the_slow_loop(
    tmp_path: Path,
) -> None:
    from hearthsync import Condition, Peer

    path = tmp_path / "robot"
    async with Peer.open(path, device="kitchen") as peer:
        await peer.add_user("chen", name="Mrs Chen")
        await peer.set_preference("chen", "beverage/tea", "jasmine", condition=Condition())
        await peer.set_health("chen", "medication/evening", "two pills after dinner")
    table = hearth("context", str(path), "chen", "--task", "prepare_morning_beverage")
    assert table.returncode == 0, table.stderr
    assert "jasmine" in table.stdout
    assert "withheld: health" in table.stdout
    assert "two pills" not in table.stdout  # not this task's to read
    done = hearth("context", str(path), "chen", "--task", "medication_reminder", "--json")
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert [h["record"]["value"] for h in reply["context"]["health"]] == ["two pills after dinner"]
    assert "two pills after dinner" in reply["prompt"]
    unknown = hearth("context", str(path), "nobody", "--task", "vacuum")
    assert unknown.returncode == 1
    said = " ".join(unknown.stderr.split())  # an error, on stderr, that a CLI user can act on
    assert "error: unknown user 'nobody': add them first" in said
    assert "'user ID NAME' on the console" in said
    assert unknown.stdout == ""
    maintained = hearth("maintain", str(path))
    assert maintained.returncode == 0, maintained.stderr
    assert maintained.stdout.strip().endswith("changes")


def test_maintain_names_a_bad_lookback_as_the_flag_the_user_typed(tmp_path: Path) -> None:
    path = tmp_path / "robot"
    made = hearth("init", str(path), "--household", "Our Home", "--device", "kitchen")
    assert made.returncode == 0, made.stderr
    done = hearth("maintain", str(path), "--lookback", "nope")
    assert done.returncode == 1
    assert "lookback must look like" in done.stderr
    assert "'nope'" in done.stderr
    assert "history_window" not in done.stdout + done.stderr


def test_invite_refuses_a_ttl_of_zero_or_less_and_writes_no_invite(tmp_path: Path) -> None:
    from hearthsync import enrolment

    path = tmp_path / "kitchen"
    made = hearth("init", str(path), "--household", "Our Home", "--device", "kitchen")
    assert made.returncode == 0, made.stderr
    for ttl in ("-5m", "0", "0s"):
        refused = hearth("invite", str(path), "--ttl", ttl, "--address", "127.0.0.1:7420")
        assert refused.returncode == 2, ttl
        assert "Invalid value for --ttl: must be longer than zero" in refused.stderr, ttl
        assert "HS1-" not in refused.stdout, ttl
    state = enrolment.load(path)
    assert state is not None
    assert state.invites == []  # nothing already expired was handed out
    granted = hearth("invite", str(path), "--ttl", "90s", "--address", "127.0.0.1:7420")
    assert granted.returncode == 0, granted.stderr
    assert "CODE HS1-" in granted.stdout


def test_invite_does_not_hand_out_the_address_of_a_run_that_is_gone(tmp_path: Path) -> None:
    # run.json outlives a 'hearth run' killed without a goodbye: its address answers nobody
    from hearthsync import enrolment
    from hearthsync.runner import RUN_FILE

    path = tmp_path / "kitchen"
    made = hearth("init", str(path), "--household", "Our Home", "--device", "kitchen")
    assert made.returncode == 0, made.stderr
    dead = 2**22 + 1  # above Linux's largest pid: no process has it
    (path / RUN_FILE).write_text(json.dumps({"pid": dead, "host": "10.0.0.9", "port": 7420}))
    refused = hearth("invite", str(path))
    assert refused.returncode == 2
    assert "start 'hearth run' first" in refused.stderr
    assert "HS1-" not in refused.stdout
    state = enrolment.load(path)
    assert state is not None
    assert state.invites == []


def test_invite_from_a_robot_listening_everywhere_hands_out_its_lan_address(
    tmp_path: Path,
) -> None:
    """The README starts a robot with ``--listen 0.0.0.0:7420``: every invite was refused
    ("0.0.0.0 is not an address a robot can dial"; found by a new user).  The code now carries
    the address discovery advertises."""
    from hearthsync.crypto.pairing import Invite
    from hearthsync.discovery.service import default_addresses
    from hearthsync.runner import RUN_FILE

    path = tmp_path / "kitchen"
    made = hearth("init", str(path), "--household", "Our Home", "--device", "kitchen")
    assert made.returncode == 0, made.stderr
    running = {"pid": os.getpid(), "host": "0.0.0.0", "port": 7420}
    (path / RUN_FILE).write_text(json.dumps(running))
    done = hearth("invite", str(path))
    assert done.returncode == 0, done.stderr
    code = next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("CODE "))
    invite = Invite.parse(code)
    assert (invite.host, invite.port) == (default_addresses()[0], 7420)
    assert invite.host != "0.0.0.0"
    assert f"will dial {invite.host}:7420" in " ".join(done.stdout.split())


@pytest.mark.parametrize("only", ["abc", "1,x", "-1"])
def test_chaos_refuses_fault_numbers_that_are_not_numbers_without_a_traceback(only: str) -> None:
    done = hearth("chaos", "--only-faults", only, "--schedules", "1")
    assert done.returncode == 2
    assert "Invalid value for --only-faults: wants fault numbers" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr


async def test_names_and_values_are_printed_as_typed_never_as_markup(tmp_path: Path) -> None:
    """Found in review: a household name is any text, and the command line printed it as rich
    markup.  "Flat 2[/b]" raised MarkupError: ``hearth init`` exited 1 having made the
    household, and ``hearth status`` failed on every robot of it; "Casa [red]Rossi" lost its
    "[red]".  An error quoting what the user typed, and a preference's value in ``hearth
    context``, failed alike."""
    from hearthsync import Condition, Peer

    path = tmp_path / "kitchen"
    name = "Flat 2[/b] Casa [red]Rossi :fire:"
    made = hearth("init", str(path), "--household", name, "--device", "kitchen")
    assert made.returncode == 0, made.stderr
    assert f"household {name} (" in " ".join(made.stdout.split())
    shown = hearth("status", str(path))
    assert shown.returncode == 0, shown.stderr
    assert f"household {name!r}: this robot is owner" in " ".join(shown.stdout.split())
    refused = hearth("revoke", str(path), "[/b]")
    assert refused.returncode == 1
    assert "error: no robot named '[/b]'" in " ".join(refused.stderr.split())
    async with Peer.open(path) as peer:
        await peer.add_user("chen", name="Mrs Chen")
        await peer.set_preference("chen", "beverage/tea", "[/b] jasmine", condition=Condition())
    table = hearth("context", str(path), "chen", "--task", "prepare_morning_beverage")
    assert table.returncode == 0, table.stderr
    assert "[/b] jasmine" in table.stdout
    for done in (made, shown, refused, table):
        assert "Traceback" not in done.stderr + done.stdout
        assert "MarkupError" not in done.stderr + done.stdout


def test_a_refused_init_leaves_the_folder_as_it_was(tmp_path: Path) -> None:
    """Found in review: ``hearth init`` opened the peer before it checked the household's
    name, and a refused init left a key, a store and a lock file, tied to the device name
    (the next init, with another, was refused)."""
    new = tmp_path / "new"
    for household, device in (("", "kitchen"), ("x" * 300, "kitchen"), ("Home", "Kitchen")):
        refused = hearth("init", str(new), "--household", household, "--device", device)
        assert refused.returncode == 1, (household, device)
        assert refused.stderr.startswith("error:"), refused.stderr
        assert "Traceback" not in refused.stderr
        assert not new.exists(), (household, device)
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = hearth("init", str(empty), "--household", "", "--device", "hall")
    assert refused.returncode == 1
    assert list(empty.iterdir()) == []
    made = hearth("init", str(new), "--household", "Home", "--device", "hall")
    assert made.returncode == 0, made.stderr
    held = sorted(p.name for p in new.iterdir())
    again = hearth("init", str(new), "--household", "", "--device", "hall")
    assert again.returncode == 1
    assert sorted(p.name for p in new.iterdir()) == held


def test_a_refused_or_failed_join_leaves_what_the_folder_held(tmp_path: Path) -> None:
    """Found in review: ``hearth join`` checked --peer after it had made the folder and a
    key, and left join.pending; it removed the empty folder the user had made for a bad
    --device; and it left its key, store and lock file beside the user's files when it
    failed in a folder of another kind."""
    with socket.socket() as closed:  # a well-formed code whose inviter is not there
        closed.bind(("127.0.0.1", 0))
        code = f"HS1-{'A' * 26}-127.0.0.1:{closed.getsockname()[1]}"
    empty = tmp_path / "empty"
    empty.mkdir()
    bad_device = hearth("join", str(empty), code, "--device", "Hall")
    assert bad_device.returncode == 1
    assert "error: device must be" in bad_device.stderr
    assert empty.is_dir()
    assert list(empty.iterdir()) == []
    bad_peer = hearth("join", str(tmp_path / "p"), code, "--device", "p", "--peer", "127.0.0.1")
    assert bad_peer.returncode == 1
    assert "missing ':PORT'" in bad_peer.stderr
    assert not (tmp_path / "p").exists()
    home = tmp_path / "home"
    assert hearth("init", str(home), "--household", "H", "--device", "home").returncode == 0
    held = sorted(p.name for p in home.iterdir())
    joined = hearth("join", str(home), code, "--device", "home")
    assert joined.returncode == 1
    assert "already belongs to a household" in joined.stderr
    assert sorted(p.name for p in home.iterdir()) == held
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    unreachable = hearth("join", str(notes), code, "--device", "n")
    assert unreachable.returncode == 1
    assert "could not reach the inviter" in unreachable.stderr
    assert sorted(p.name for p in notes.iterdir()) == ["join.pending", "todo.txt"]
    for done in (bad_device, bad_peer, joined, unreachable):
        assert "Traceback" not in done.stderr + done.stdout


def test_invite_refuses_a_ttl_over_30_days_in_one_line(tmp_path: Path) -> None:
    """Found in review: --ttl had no upper bound, and a huge one raised OverflowError (a
    traceback) writing the invite to household.key."""
    path = tmp_path / "kitchen"
    made = hearth("init", str(path), "--household", "Our Home", "--device", "kitchen")
    assert made.returncode == 0, made.stderr
    credentials = (path / "household.key").read_bytes()
    for ttl in ("99999999999999999999d", "31d", "2592001"):
        refused = hearth("invite", str(path), "--ttl", ttl, "--address", "127.0.0.1:7420")
        assert refused.returncode == 2, ttl
        said = " ".join(refused.stderr.split())
        assert "Invalid value for --ttl: must be at most 30d (2592000 seconds)" in said, ttl
        assert "Traceback" not in refused.stderr, ttl
    assert (path / "household.key").read_bytes() == credentials  # no invite written
    granted = hearth("invite", str(path), "--ttl", "30d", "--address", "127.0.0.1:7420")
    assert granted.returncode == 0, granted.stderr
    assert "CODE HS1-" in granted.stdout


#: a `hearth` whose import of the command line takes a real SIGINT midway, as a Ctrl-C typed
#: while the command starts does: the signal is sent by the import itself, so it lands there
_CTRL_C_WHILE_LOADING = """
import importlib.abc, os, signal, sys

class Interrupting(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "hearthsync.cli":
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, Interrupting())
sys.argv = ["hearth", "demo"]
from importlib.metadata import entry_points
(script,) = entry_points(group="console_scripts", name="hearth")
sys.exit(script.load()())
"""


def test_ctrl_c_while_the_command_loads_stops_it_quietly_with_status_130() -> None:
    # found by a user: a Ctrl-C in the first half second printed a traceback of the imports
    done = subprocess.run(
        [sys.executable, "-c", _CTRL_C_WHILE_LOADING],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(Path(sys.executable).parent), **PYTHONPATH},
    )
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "KeyboardInterrupt" not in done.stderr
    assert "reopened from disk" not in done.stdout  # the demo never ran


def test_the_command_line_loads_without_the_peer_until_a_command_needs_it() -> None:
    # `hearth --help`, a mistyped option and tab completion waited 0.6 s for the peer, the
    # CRDT library and numpy to load, and a Ctrl-C meanwhile had nothing to stop but imports
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, hearthsync.cli; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(Path(sys.executable).parent), **PYTHONPATH},
    )
    assert loaded.returncode == 0, loaded.stderr
    modules = set(loaded.stdout.strip().strip("[]").replace("'", "").split(", "))
    assert "hearthsync.cli" in modules
    assert not {"hearthsync.peer", "pycrdt", "numpy", "usearch"} & modules
