"""The `edgewarm` CLI as a user drives it, against a running service and real nginx caches."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from edgewarm import auth
from edgewarm.client import Client
from edgewarm.store import SCHEMA_VERSION, open_store, sqlite
from edgewarm.testing import DEFAULT_HOST, Lab
from edgewarm.testing.faults import FaultServer, Respond, always
from edgewarm.testing.lab import SLOW_RATE
from edgewarm.testing.service import DEMO_SECRET, DEMO_USER, ServiceProcess, free_port, start_service, write_config

from .conftest import credentials_env, server_env

pytestmark = pytest.mark.integration
EDGEWARM = str(Path(sys.executable).with_name("edgewarm"))


def run(args: list[str], env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EDGEWARM, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "250", **env},
    )


def test_submit_250_urls_from_a_file_makes_3_calls_and_waits_to_the_end(
    service: ServiceProcess, lab: Lab, tmp_path: Path
) -> None:
    """`submit --file F --wait` with 250 URLs prints 3 task ids, follows them, exits 0. The ids alone are on
    stdout, the progress and the summary on stderr (they were mixed: `watch $(submit --wait …)` took the
    bars' words for task ids)."""
    paths = lab.make_files(250, 256, prefix="/cli/")
    listing = tmp_path / "urls.txt"
    listing.write_text("".join(f"http://{DEFAULT_HOST}{p}\n" for p in paths))
    result = run(["submit", "--file", str(listing), "--wait"], credentials_env(service, tmp_path))
    assert result.returncode == 0, result.stderr + result.stdout
    taskids = result.stdout.split()
    assert len(taskids) == 3 and all(len(t) == 36 and t.count("-") == 4 for t in taskids), result.stdout
    assert "all succeeded" in result.stderr
    query = run(["query", taskids[0]], credentials_env(service, tmp_path))
    assert json.loads(query.stdout)["data"] == {"taskid": taskids[0], "status": 0, "msg": "Succeeded"}
    assert (
        query.stdout == f'{{"status":0,"data":{{"taskid":"{taskids[0]}","status":0,"msg":"Succeeded"}}}}\n'
    )  # as sent


def test_watch_exits_1_when_a_url_failed(service: ServiceProcess, lab: Lab, tmp_path: Path) -> None:
    """A 404 URL: `submit` from stdin then `watch` ends with exit status 1 and shows the failure."""
    (good,) = lab.make_files(1, 100, prefix="/cli-bad/")
    stdin = f"http://{DEFAULT_HOST}{good}\nhttp://{DEFAULT_HOST}/cli-bad/missing.bin\n"
    submitted = run(["submit"], credentials_env(service, tmp_path), stdin=stdin)
    assert submitted.returncode == 0, submitted.stderr
    (taskid,) = submitted.stdout.split()
    watched = run(["watch", taskid], credentials_env(service, tmp_path))
    assert watched.returncode == 1
    assert "missing.bin" in watched.stdout and "404" in watched.stdout
    assert f"every failed URL, to send again: edgewarm failed {taskid}" in watched.stdout, watched.stdout


def test_failed_lists_every_failed_url_once_to_send_again(service: ServiceProcess, lab: Lab, tmp_path: Path) -> None:
    """`watch` shows the first 5 failures; `failed` lists them all: each failed URL once on stdout (a URL failed
    in two tasks and on every node too), in the tasks' order, ready for `submit -f -`; `--why` a line per
    failed item (task, node, URL, status, attempts, error); the count on stderr; an unknown task named, exit 1,
    the others listed."""
    env = credentials_env(service, tmp_path)
    good = lab.make_files(2, 100, prefix="/cli-failed/")
    missing = [f"http://{DEFAULT_HOST}/cli-failed/missing-{i}.bin" for i in range(7)]
    first = run(["submit"], env, stdin="".join(f"http://{DEFAULT_HOST}{p}\n" for p in good) + "\n".join(missing))
    second = run(["submit", missing[6], f"http://{DEFAULT_HOST}/cli-failed/other.bin"], env)
    taskids = first.stdout.split() + second.stdout.split()
    assert len(taskids) == 2, first.stderr + second.stderr
    assert run(["watch", *taskids], env).returncode == 1  # to their end
    listed = run(["failed", *taskids], env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [*missing, f"http://{DEFAULT_HOST}/cli-failed/other.bin"], listed.stdout
    assert "8 failed URLs in 2 tasks" in listed.stderr, listed.stderr
    nodes = len(lab.cache_nodes())
    why = run(["failed", "--why", taskids[1]], env)
    rows = [line.split("\t") for line in why.stdout.splitlines()]
    assert len(rows) == 2 * nodes and all(len(row) == 7 for row in rows), why.stdout
    assert {(row[0], row[2]) for row in rows} == {(taskids[1], "warm")}, rows
    shield = [row for row in rows if row[1] == "shield-1"]  # the edges' items not attempted after it
    assert [(row[4], row[5]) for row in shield] == [("404", "1"), ("404", "1")], rows
    assert {row[1] for row in rows} == {node.name for node in lab.cache_nodes()}, rows
    assert f"{2 * nodes} failed items (2 URLs) in 1 task" in why.stderr, why.stderr
    spelled = run(["failed", taskids[1], taskids[1].upper(), taskids[1].replace("-", "")], env)  # one task
    assert "2 failed URLs in 1 task" in spelled.stderr and len(spelled.stdout.split()) == 2, spelled
    unknown = "00000000-0000-4000-8000-000000000000"
    partly = run(["failed", unknown, ".", taskids[1]], env)  # `.` was another route's path: it ended the command
    assert partly.returncode == 1 and f"task {unknown}: not found" in partly.stderr, partly.stderr
    assert "task .: not found" in partly.stderr, partly.stderr
    assert partly.stdout.splitlines() == [missing[6], f"http://{DEFAULT_HOST}/cli-failed/other.bin"], partly.stdout
    again = run(["submit", "-f", "-"], env, stdin=listed.stdout)  # what it is for
    assert again.returncode == 0 and len(again.stdout.split()) == 1, again.stderr
    # A purge and a warm of one URL on one node are two items (`--refresh-first`): a line each (one was lost).
    both = run(["submit", "--refresh-first", missing[0]], env).stdout.split()
    assert run(["watch", *both], env).returncode == 1
    actions = sorted(line.split("\t")[2] for line in run(["failed", "--why", *both], env).stdout.splitlines())
    assert "purge" in actions and "warm" in actions, actions
    # A wrong server address (a path no route has) is said as such, not as every task unknown.
    wrong = run(["failed", taskids[0]], {**env, "EDGEWARM_SERVER": service.url + "/edgewarm/"})
    assert wrong.returncode == 1 and "no such route here" in wrong.stderr and "not found" not in wrong.stderr, wrong


def test_watch_names_a_task_it_cannot_find_and_follows_the_others(
    service: ServiceProcess, lab: Lab, tmp_path: Path
) -> None:
    """Before: `0/?` bars for both, then "JD code 1: task not found" without saying which id."""
    (good,) = lab.make_files(1, 100, prefix="/cli-unknown/")
    submitted = run(["submit"], credentials_env(service, tmp_path), stdin=f"http://{DEFAULT_HOST}{good}\n")
    (taskid,) = submitted.stdout.split()
    unknown = "00000000-0000-4000-8000-000000000000"
    watched = run(["watch", taskid, unknown], credentials_env(service, tmp_path))
    assert watched.returncode == 1
    assert f"task {unknown}: not found" in watched.stderr, watched.stderr
    assert taskid in watched.stdout and "Succeeded" in watched.stdout, watched.stdout
    alone = run(["watch", unknown], credentials_env(service, tmp_path))
    assert alone.returncode == 1 and f"task not found: {unknown}" in alone.stderr, alone.stderr


def test_credentials_from_a_client_config_file(service: ServiceProcess, tmp_path: Path) -> None:
    """`quota` works with only a client config file giving server, username and secret."""
    config = tmp_path / "client.toml"
    config.write_text(f'server = "{service.url}"\nusername = "{DEMO_USER}"\nsecret = "{DEMO_SECRET}"\n')
    result = run(["quota"], {"EDGEWARM_CLIENT_CONFIG": str(config), "EDGEWARM_SECRET": "", "EDGEWARM_USERNAME": ""})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["urls"]["limit"] == 100_000_000


@pytest.mark.parametrize(
    ("content", "error"), [(None, "no such file"), ('username = ["a"]\n', "username must be a string")]
)
def test_a_client_config_that_is_named_but_missing_or_wrong_is_a_clear_error(
    tmp_path: Path, content: str | None, error: str
) -> None:
    """A client config named by --client-config or EDGEWARM_CLIENT_CONFIG that does not exist, or holds a
    value that is not a string: one error line naming the file (before: ignored, or sent as "['a']")."""
    config = tmp_path / "client.toml"
    if content is not None:
        config.write_text(content)
    result = run(["quota"], {"EDGEWARM_CLIENT_CONFIG": str(config), "EDGEWARM_SECRET": "", "EDGEWARM_USERNAME": ""})
    assert result.returncode == 2 and f"client config {config}: {error}" in result.stderr, result.stderr


def test_a_wrong_secret_is_a_clear_error(service: ServiceProcess, tmp_path: Path) -> None:
    """A wrong secret: exit status 1 and JD code 7 in the message."""
    env = {**credentials_env(service, tmp_path), "EDGEWARM_SECRET": "wrong"}
    result = run(["submit", f"http://{DEFAULT_HOST}/x"], env)
    assert result.returncode == 1
    assert "JD code 7" in result.stderr


def test_a_password_in_the_server_address_is_not_printed(tmp_path: Path) -> None:
    """A proxy with basic auth in front: the address given with its password (before: printed whole in the
    error, on stderr, which CI logs keep)."""
    empty = tmp_path / "empty-client.toml"
    empty.touch()
    server = f"http://admin:hunter2pass@127.0.0.1:{free_port()}"
    env = {"EDGEWARM_USERNAME": DEMO_USER, "EDGEWARM_SECRET": DEMO_SECRET, "EDGEWARM_CLIENT_CONFIG": str(empty)}
    for args in (["quota"], ["tasks"], ["query", "x"]):
        result = run(args, {**env, "EDGEWARM_SERVER": server})
        assert result.returncode != 0, (args, result)
        assert "hunter2pass" not in result.stdout + result.stderr, (args, result)
        assert "http://admin:***@127.0.0.1:" in result.stderr, (args, result.stderr)
    # Without a scheme it was printed whole; a port that is no number gave a traceback (httpx.InvalidURL), one out
    # of range "Connection refused" (re-testers').
    for given, said in (
        (server.removeprefix("http://"), "is not an http(s) URL"),
        ("http://admin:hunter2pass@127.0.0.1:abc", "is not a URL"),
        ("http://admin:hunter2pass@127.0.0.1:99999", "is not a URL"),
        ("http://admin:hunter2pass@[::1", "is not a URL"),
    ):
        result = run(["quota"], {**env, "EDGEWARM_SERVER": given})
        assert result.returncode == 2 and "Traceback" not in result.stderr, (given, result.stderr)
        assert "hunter2pass" not in result.stderr and said in result.stderr and "admin:***@" in result.stderr, (
            given,
            result.stderr,
        )


def test_sign_prints_the_jd_signature() -> None:
    """`sign` prints md5(yyyymmdd + username + secret): PRODUCT.md's example."""
    result = run(["sign", "-u", "jcloud_00", "--secret", "e7a31b1c5ea0efa9aa2f29c6559f7d61", "--date", "20161023"], {})
    assert result.stdout.strip() == "a35685491fd80a80b40a718c3a5c5c56"
    assert auth.sign  # the CLI uses the same function; see tests/unit/test_auth.py


def test_sign_takes_the_user_from_the_client_config(tmp_path: Path) -> None:
    """With only a client config (username, secret), `sign` signs for that user, as the other tools take it
    (before: "Missing option '--username'")."""
    config = tmp_path / "client.toml"
    config.write_text('username = "jcloud_00"\nsecret = "e7a31b1c5ea0efa9aa2f29c6559f7d61"\n')
    env = {"EDGEWARM_CLIENT_CONFIG": str(config), "EDGEWARM_USERNAME": "", "EDGEWARM_SECRET": ""}
    result = run(["sign", "--date", "20161023"], env)
    assert result.stdout.strip() == "a35685491fd80a80b40a718c3a5c5c56", result.stderr


def test_another_username_than_the_client_configs_needs_its_own_secret(tmp_path: Path) -> None:
    """`sign -u x` with jcloud_00's client config signed for x with jcloud_00's secret, exit 0 (and `submit -u
    bob` was refused "signature incorrect", unexplained): a usage error naming whose secret it is."""
    config = tmp_path / "client.toml"
    config.write_text('username = "jcloud_00"\nsecret = "e7a31b1c5ea0efa9aa2f29c6559f7d61"\n')
    env = {"EDGEWARM_CLIENT_CONFIG": str(config), "EDGEWARM_USERNAME": "", "EDGEWARM_SECRET": ""}
    result = run(["sign", "-u", "bob", "--date", "20161023"], env)
    assert result.returncode == 2 and result.stdout == "", result
    said = f"user bob (--username or EDGEWARM_USERNAME): the secret of client config {config} is jcloud_00's; give"
    assert said in result.stderr, result.stderr
    same = run(["sign", "-u", "jcloud_00", "--date", "20161023"], env)
    assert same.stdout.strip() == "a35685491fd80a80b40a718c3a5c5c56", same.stderr
    own = run(["sign", "-u", "bob", "--secret", "s", "--date", "20161023"], env)
    assert own.returncode == 0 and own.stdout.strip() == auth.sign("bob", "s", date(2016, 10, 23)), own.stderr


def test_help_shows_each_options_environment_variable() -> None:
    """`submit --help` names EDGEWARM_SERVER and the per-option variables."""
    result = run(["submit", "--help"], {})
    assert "EDGEWARM_SERVER" in result.stdout and "EDGEWARM_SUBMIT_PER_CALL" in result.stdout


def test_tasks_lists_and_filters(service: ServiceProcess, lab: Lab, tmp_path: Path) -> None:
    """`tasks --json --url KEYWORD` lists the task that has a matching URL, and no other."""
    (path,) = lab.make_files(1, 10, prefix="/listme-unique/")
    env = credentials_env(service, tmp_path)
    submitted = run(["submit", "--wait", f"http://{DEFAULT_HOST}{path}"], env)
    taskid = submitted.stdout.split()[0]
    listed = json.loads(run(["tasks", "--json", "--url", "listme-unique"], env).stdout)
    assert [t["taskid"] for t in listed["tasks"]] == [taskid]
    # The table, 80 columns wide into a pipe: the id whole, to copy for `watch` (it was cut to "e481a9…").
    table = run(["tasks", "--url", "listme-unique"], {**env, "COLUMNS": "80"}).stdout
    assert taskid in table and max(len(line) for line in table.splitlines()) <= 80, table
    # Into a pipe with no COLUMNS (`tasks | grep Failed`): each task on one line (before: folded at 80
    # columns, "Succ" / "eeded", so grep found nothing).
    env = {k: v for k, v in {**os.environ, **env}.items() if k != "COLUMNS"}
    piped = subprocess.run(
        [EDGEWARM, "tasks", "--url", "listme-unique"], env=env, capture_output=True, text=True, timeout=60
    )
    (row,) = [line for line in piped.stdout.splitlines() if taskid in line]
    assert "0 Succeeded" in row, piped.stdout
    # None found: said (it printed an empty table), on stderr, stdout left empty.
    none = run(["tasks", "--url", "listme-none-such"], credentials_env(service, tmp_path))
    assert (none.returncode, none.stdout, none.stderr) == (0, "", "no tasks match (edgewarm tasks --help)\n")


def test_tasks_says_how_to_list_the_next_page_and_lists_it_after_its_cursor(
    service: ServiceProcess, lab: Lab, tmp_path: Path
) -> None:
    """A full page of `tasks` ends (on stderr) with `edgewarm tasks --after CURSOR`; that lists the tasks
    after the page, each once, also with a task submitted between the two; a bad cursor is refused."""
    paths = lab.make_files(4, 10, prefix="/pageme-unique/")
    env = credentials_env(service, tmp_path)
    made = [run(["submit", f"http://{DEFAULT_HOST}{p}"], env).stdout.split()[0] for p in paths[:3]][::-1]
    first = run(["tasks", "--url", "pageme-unique", "--limit", "2"], env)
    (hint,) = [line for line in first.stderr.splitlines() if line.startswith("more: ")]
    cursor = hint.split("--after ", 1)[1].split()[0]
    # The command as it is to be given: with the page's filters and size (it said "with the same filters",
    # and a tester's copy of it as shown listed every task).
    assert hint == f"more: edgewarm tasks --url pageme-unique --limit 2 --after {cursor}", hint
    assert all(taskid in first.stdout for taskid in made[:2]) and made[2] not in first.stdout, first.stdout
    run(["submit", f"http://{DEFAULT_HOST}{paths[3]}"], env)
    rest = json.loads(run(["tasks", "--json", "--url", "pageme-unique", "--limit", "2", "--after", cursor], env).stdout)
    assert ([t["taskid"] for t in rest["tasks"]], rest["next"]) == ([made[2]], None)
    last = run(["tasks", "--url", "pageme-unique", "--limit", "2", "--after", cursor], env)
    assert made[2] in last.stdout and "more: " not in last.stderr, last.stderr
    bad = run(["tasks", "--after", "not-a-cursor"], env)
    assert bad.returncode != 0 and "after: not a task list's cursor" in bad.stderr, bad.stderr
    # Whom it was asked of, when given by flags, is in the command (a newcomer's copy without its
    # --client-config read the default one); never the secret.
    config = tmp_path / "my client.toml"
    config.write_text(f'server = "{service.url}"\nusername = "{DEMO_USER}"\nsecret = "{DEMO_SECRET}"\n')
    config.chmod(0o600)
    flagged = run(["tasks", "--client-config", str(config), "--url", "pageme-unique", "--limit", "2"], {})
    (hint,) = [line for line in flagged.stderr.splitlines() if line.startswith("more: ")]
    assert hint.startswith(f"more: edgewarm tasks --url pageme-unique --client-config '{config}' --limit 2 "), hint
    assert DEMO_SECRET not in hint
    # A proxy's password in the server's address is shown as *** there too (a reviewer's: it was printed).
    proxied = service.url.replace("http://", "http://proxyuser:s3cretpass@")
    flagged = run(["tasks", "--server", proxied, "--url", "pageme-unique", "--limit", "2"], env)
    (hint,) = [line for line in flagged.stderr.splitlines() if line.startswith("more: ")]
    masked = service.url.replace("http://", "http://proxyuser:***@")
    assert hint.startswith(f"more: edgewarm tasks --url pageme-unique --server '{masked}' --limit 2 "), hint


def test_tasks_says_a_task_was_cancelled(tmp_path: Path) -> None:
    """`tasks` shows why a task failed when it was cancelled, as `watch` does ("2 Failed (cancelled)")."""
    from edgewarm.testing.service import start_service

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # connections refused: the task stays open until cancelled
        nodes = '[[nodes]]\nname = "dead"\nurl = "http://{}:{}"\n'.format(*sock.getsockname())
        with start_service(tmp_path, nodes) as service:
            env = credentials_env(service, tmp_path)
            taskid = run(["submit", f"http://{DEFAULT_HOST}/cancel-me"], env).stdout.split()[0]
            assert run(["cancel", taskid], env).returncode == 0
            table = run(["tasks"], {**env, "COLUMNS": "200"}).stdout
    (row,) = [line for line in table.splitlines() if taskid in line]
    assert "2 Failed (cancelled)" in row, table


def test_cancel_takes_several_tasks_and_says_which_it_could_not_cancel(tmp_path: Path) -> None:
    """`cancel A B C`: a line per task; the running ones cancelled, one ended already and one unknown said on
    their lines, exit 1 (the others cancelled all the same)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # connections refused: the tasks stay open until cancelled
        nodes = '[[nodes]]\nname = "dead"\nurl = "http://{}:{}"\n'.format(*sock.getsockname())
        with start_service(tmp_path, nodes) as service:
            env = credentials_env(service, tmp_path)
            first, second = (run(["submit", f"http://{DEFAULT_HOST}/cancel-{i}"], env).stdout.strip() for i in "ab")
            assert run(["cancel", first], env).returncode == 0
            unknown = "00000000-0000-4000-8000-000000000000"
            both = run(["cancel", first, unknown, ".", second], env)  # `.`: another route's path, it ended all
            with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
                ended = [client.task(t, limit=0) for t in (first, second)]
    lines = both.stdout.splitlines()
    assert both.returncode == 1 and len(lines) == 4, both.stdout + both.stderr
    assert lines[0].startswith(f"{first}: not cancelled: ") and "ended" in lines[0], lines
    assert lines[1].startswith(f"{unknown}: not cancelled: ") and "not found" in lines[1], lines
    assert lines[2] == ".: not cancelled: task not found", lines
    assert lines[3] == f"{second}: Failed (cancelled)", lines
    assert [(v["status"], v["reason"]) for v in ended] == [(2, "cancelled"), (2, "cancelled")], ended


def test_submit_splits_by_the_limit_the_server_states(lab: Lab, tmp_path: Path) -> None:
    """With `urls_per_call = 40` on the server and no --per-call, 100 URLs go in 3 calls."""
    from edgewarm.testing.service import start_service

    paths = lab.make_files(100, 16, prefix="/cli-limit/")
    with start_service(tmp_path, lab.nodes_toml(), extra="[limits]\nurls_per_call = 40\n") as service:
        stdin = "".join(f"http://{DEFAULT_HOST}{p}\n" for p in paths)
        result = run(["submit"], credentials_env(service, tmp_path), stdin=stdin)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) == 3


def test_submit_splits_a_list_of_long_urls_by_the_body_size_the_server_takes(lab: Lab, tmp_path: Path) -> None:
    """`urls_per_call = 5000` with the default body limit (1 MiB): 5,000 URLs of 230 characters are 1.2 MB. The
    calls are split by size too (before: the first call refused with 413, mid-run in a longer list)."""
    from edgewarm.testing.service import start_service

    urls = "".join(f"http://{DEFAULT_HOST}/{'x' * 200}/{n}\n" for n in range(5000))
    with start_service(tmp_path, lab.nodes_toml(), extra="[limits]\nurls_per_call = 5000\n") as service:
        result = run(["submit"], credentials_env(service, tmp_path), stdin=urls)
        with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
            sizes = [client.task(t, limit=0)["total"] for t in result.stdout.split()]
    assert result.returncode == 0, result.stderr
    nodes = len(lab.cache_nodes())
    assert len(sizes) == 2 and sum(sizes) == 5000 * nodes and max(sizes) < 4600 * nodes, sizes


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_quota_answered_by_a_proxys_gateway_error_sends_nothing(tmp_path: Path, status: int) -> None:
    """The quota's call answered 502 (a proxy with no backend): taken for an older server's answer, every check
    before the calls was skipped, and the calls went (a tester's: 3 tasks made, then a foreign domain refused).
    Nothing is sent, saying so."""
    with FaultServer(always(Respond(status, body=b"<html>bad gateway</html>"))) as proxy:
        result = run(["submit", f"http://{DEFAULT_HOST}/a"], server_env(f"http://127.0.0.1:{proxy.port}", tmp_path))
        methods = [r.method for r in proxy.requests]
    assert result.returncode == 1 and "(nothing was sent)" in result.stderr, result.stderr
    assert methods == ["GET"], methods  # the quota's call alone


def test_a_call_larger_than_a_proxy_takes_says_what_to_do(tmp_path: Path) -> None:
    """A proxy in front with a smaller body limit answers 413 (to the quota's call too: JD's limits then). Before:
    "JD code -1: request body too large" (a 413 told as JD's internal error, nothing to do about it)."""
    with FaultServer(always(Respond(413, body=b"request body too large"))) as proxy:
        result = run(["submit", f"http://{DEFAULT_HOST}/a"], server_env(f"http://127.0.0.1:{proxy.port}", tmp_path))
    assert result.returncode == 1, result.stdout
    # A call of one URL: fewer per call cannot help (a tester's one URL of 2,000,000 characters was told to).
    said = "(HTTP 413): the call held one entry alone, of 25 characters: the server, or a proxy in front, takes no"
    assert said in result.stderr, result.stderr
    assert "JD code" not in result.stderr and "--per-call" not in result.stderr, result.stderr
    with FaultServer(always(Respond(413, body=b"request body too large"))) as proxy:
        two = [f"http://{DEFAULT_HOST}/a", f"http://{DEFAULT_HOST}/b"]
        result = run(["submit", *two], server_env(f"http://127.0.0.1:{proxy.port}", tmp_path))
    assert "(HTTP 413): send fewer URLs per call (--per-call)" in result.stderr, result.stderr


def test_a_sending_whose_output_is_closed_stops_and_says_what_it_made(service: ServiceProcess, tmp_path: Path) -> None:
    """`edgewarm submit … | head -1`: exit 1 and nothing said, the calls after went on, and the task ids not
    printed were said nowhere (a tester's). The sending stops at the first id it cannot print, saying it. Another
    command whose reader went away ends quietly, 141 (Python said "Exception ignored … BrokenPipeError")."""
    urls = [f"http://{DEFAULT_HOST}/closed/{n}" for n in range(3)]
    env = {**os.environ, "COLUMNS": "250", **credentials_env(service, tmp_path)}
    submit = subprocess.Popen(
        [EDGEWARM, "submit", "--per-call", "1", *urls], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert submit.stdout is not None and submit.stderr is not None
    submit.stdout.close()  # its reader gone before the first id
    said = submit.stderr.read().decode()
    assert submit.wait(timeout=60) == 141, said  # as README says (a re-tester's: 1)
    made = re.search(r"so no more calls were made; the tasks made: (\S+) \(the last not printed\)", said)
    assert made is not None, said
    assert "(1 of 3 calls made tasks: argument 1; not sent: arguments 2-3, from " in said, said
    with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
        assert [t["taskid"] for t in client.tasks(url="/closed/")["tasks"]] == [made.group(1)]
        assert client.task(made.group(1), limit=10)["items"][0]["url"] == urls[0]
    with open("/dev/full", "w") as full:  # a failing write: a traceback, the task not named (a re-tester's)
        failed = subprocess.run(
            [EDGEWARM, "submit", "--per-call", "1", *urls], stdout=full, capture_output=False, stderr=subprocess.PIPE,
            env=env, timeout=60, text=True,
        )  # fmt: skip
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert "the output could not be written (No space left on device), so no more calls" in failed.stderr
    closed = subprocess.run(  # `>&-`: exit 0 and silent, the tasks made and their ids told nowhere (a re-tester's)
        [EDGEWARM, "submit", f"http://{DEFAULT_HOST}/closed/never"], stderr=subprocess.PIPE, env=env, timeout=60,
        text=True, preexec_fn=lambda: os.close(1),
    )  # fmt: skip
    assert closed.returncode == 1 and "standard output is closed" in closed.stderr, closed.stderr
    for other in (["tasks"], ["quota"], ["watch", made.group(1)]):  # a traceback, or exit 0 and nothing said
        closed = subprocess.run(
            [EDGEWARM, *other], stderr=subprocess.PIPE, env=env, timeout=60, text=True, preexec_fn=lambda: os.close(1)
        )
        said = "Error: standard output is closed (>&-): what the command says would go nowhere; nothing was done\n"
        assert (closed.returncode, closed.stderr) == (1, said), (other, closed.stderr)
    with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
        assert not client.tasks(url="/closed/never")["tasks"]
    tasks = subprocess.Popen([EDGEWARM, "tasks"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert tasks.stdout is not None and tasks.stderr is not None
    tasks.stdout.close()
    quiet = tasks.stderr.read().decode()
    assert tasks.wait(timeout=60) == 141 and quiet == "", quiet
    for other in (["tasks"], ["tasks", "--json"], ["--help"]):  # any command's output: a traceback before
        with open("/dev/full", "w") as full:
            failed = subprocess.run(
                [EDGEWARM, *other], stdout=full, stderr=subprocess.PIPE, env=env, timeout=60, text=True
            )
        said = "Error: the output could not be written (No space left on device)\n"
        assert failed.returncode == 1 and failed.stderr == said, (other, failed.stderr)


def test_a_call_refused_midway_says_which_urls_were_not_sent(lab: Lab, tmp_path: Path) -> None:
    """100 URLs in calls of 40, the 70th longer than the server's max_url_length (its check, at its call): the
    first call's task id is printed, and the error says call 2 of 3 was refused and no task was made from line
    41 (named) on (before: only the refusal)."""
    from edgewarm.testing.service import start_service

    urls = [f"http://{DEFAULT_HOST}/cli-mid/{n}" for n in range(100)]
    urls[69] = f"http://{DEFAULT_HOST}/{'x' * 5000}"
    with start_service(tmp_path, lab.nodes_toml(), extra="[limits]\nurls_per_call = 40\n") as service:
        result = run(["submit"], credentials_env(service, tmp_path), stdin="\n".join(urls) + "\n")
    assert result.returncode == 1 and len(result.stdout.split()) == 1, result.stdout
    said = (
        "(1 of 3 calls made tasks (ids above): stdin lines 1-40; call 2 was refused; no task made: stdin lines 41-100, "
    )
    said += f"from {urls[40]} on)"
    assert said in result.stderr, result.stderr


def test_demo_warms_every_url_and_stops_all_it_started() -> None:
    """The README's first command ends in `edgewarm demo`: a fleet, a service, a task warmed and checked
    (every edge HIT, the origin asked once per URL), exit 0; then nothing it started is left running."""
    env = {**os.environ, "COLUMNS": "400"}  # rich wraps at 80 columns when not on a terminal
    run = subprocess.run(
        [sys.executable, "-m", "edgewarm", "demo", "--urls", "30"], capture_output=True, text=True, timeout=180, env=env
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "all succeeded" in run.stdout
    assert "HIT on the edges for 60 of 60 requests; the origin was asked 30 times for 30 URLs." in run.stdout
    listening = re.search(r"listening on \S+ \(PID (\d+)\)", run.stdout)
    assert listening is not None
    service_pid = int(listening.group(1))
    ports = [int(p) for p in re.findall(r"http://127\.0\.0\.1:(\d+)", run.stdout.split("config")[0])]
    assert len(ports) == 4  # origin, shield, two edges
    assert not Path(f"/proc/{service_pid}").exists()
    for port in ports:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_serve_logs_a_caution_for_settings_that_keep_a_feature_from_working(tmp_path: Path) -> None:
    """`connect_timeout` not below `read_timeout` starts (it is valid) and the log says what it costs, before the
    line that says it runs (whoever waits for that line has it then: read after it, CI once had it not yet)."""
    extra = "[engine]\nconnect_timeout = 10.0\nread_timeout = 10.0\n"
    nodes = '[[nodes]]\nname = "edge-1"\nurl = "http://127.0.0.1:9"\n'
    with start_service(tmp_path, nodes, extra=extra) as service:
        log = service.log_text()
    caution = "connect_timeout (10 s) is not below read_timeout (10 s)"
    assert caution in log
    assert log.index(caution) < log.index("edgewarm running")


NOWHERE_NODES = '[[nodes]]\nname = "edge-1"\nurl = "http://127.0.0.1:9"\n'
SHARED_ENVVARS = {
    "EDGEWARM_SERVER",
    "EDGEWARM_USERNAME",
    "EDGEWARM_SECRET",
    "EDGEWARM_CLIENT_CONFIG",
    "EDGEWARM_CONFIG",
}
COMMANDS = (
    "serve",
    "api",
    "worker",
    "check-config",
    "db upgrade",
    "demo",
    "submit",
    "refresh",
    "watch",
    "query",
    "tasks",
    "cancel",
    "quota",
    "sign",
)


@pytest.mark.parametrize(
    "args",
    [
        ["submit", "--per-call", "-1", f"http://{DEFAULT_HOST}/a", f"http://{DEFAULT_HOST}/b"],
        ["submit", "--per-call", "0", f"http://{DEFAULT_HOST}/a"],
        ["refresh", "--per-call", "0", f"http://{DEFAULT_HOST}/a"],
        ["watch", "--interval", "0", "148555aa-eee7-48cb-97bd-42fd052e3c84"],
        ["tasks", "--limit", "0"],
        ["tasks", "--offset", "-1"],
        ["demo", "--urls", "0"],
    ],
)
def test_a_count_size_or_interval_out_of_range_is_a_usage_error(
    service: ServiceProcess, tmp_path: Path, args: list[str]
) -> None:
    """`submit --per-call -1` and the like: exit status 2 naming the option, before anything is sent."""
    result = run(args, credentials_env(service, tmp_path))
    assert result.returncode == 2, result.stderr + result.stdout
    assert f"'{args[1]}'" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("date", [[], ["--date", "20161023"]])
def test_sign_with_an_unknown_time_zone_is_a_usage_error(date: list[str]) -> None:
    """`sign --timezone Bad/Zone`: exit status 2 naming the option and the value, no traceback."""
    result = run(["sign", "-u", "a", "--secret", "b", "--timezone", "Bad/Zone", *date], {})
    assert result.returncode == 2, result.stderr
    assert "'--timezone'" in result.stderr and "Bad/Zone" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_time_zone_in_the_client_config_is_a_clear_error(tmp_path: Path) -> None:
    """`timezone = "Bad/Zone"` in the client config: exit status 2 (a usage error, as README says) naming the file
    and the value, no traceback."""
    config = tmp_path / "client.toml"
    config.write_text('server = "http://127.0.0.1:9"\nusername = "a"\nsecret = "b"\ntimezone = "Bad/Zone"\n')
    result = run(["quota"], {"EDGEWARM_CLIENT_CONFIG": str(config), "EDGEWARM_SECRET": "", "EDGEWARM_USERNAME": ""})
    assert result.returncode == 2, result.stderr
    assert f"client config {config}" in result.stderr and "Bad/Zone" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_each_options_environment_variable_is_named_after_the_option(command: str) -> None:
    """--help names EDGEWARM_<COMMAND>_<OPTION> from the option's flag (`--wait`: EDGEWARM_SUBMIT_WAIT, not
    the Python name's EDGEWARM_SUBMIT_WAIT_), or one of the shared variables."""
    result = run([*command.split(), "--help"], {})
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # click wraps at 80 columns, even inside "[env var: …]"
    prefix = "EDGEWARM_" + command.upper().replace("-", "_").replace(" ", "_")
    named = {f"{prefix}_{flag.upper().replace('-', '_')}" for flag in re.findall(r"--([a-z][a-z-]*)", text)}
    for envvar in re.findall(r"env var: ([A-Za-z0-9_]+)", text):
        assert envvar in SHARED_ENVVARS or envvar in named, envvar


@pytest.mark.parametrize("command", ["submit", "refresh"])
def test_the_wait_option_is_taken_from_its_environment_variable(
    service: ServiceProcess, lab: Lab, tmp_path: Path, command: str
) -> None:
    """EDGEWARM_SUBMIT_WAIT=1 (EDGEWARM_REFRESH_WAIT=1) follows the task to its end, as --wait does."""
    (path,) = lab.make_files(1, 10, prefix=f"/cli-wait-env-{command}/")
    envvar = f"EDGEWARM_{command.upper()}_WAIT"
    assert f"[env var: {envvar}]" in " ".join(run([command, "--help"], {}).stdout.split())
    result = run([command, f"http://{DEFAULT_HOST}{path}"], {**credentials_env(service, tmp_path), envvar: "1"})
    last = result.stderr.rstrip().rsplit("\n", 1)[-1]
    # the summary only --wait prints (the lab's nginx refuses purges: a refresh ends failed, and exits 1)
    assert last in ("all succeeded", "some items failed"), result.stderr + result.stdout
    assert result.returncode == (0 if last == "all succeeded" else 1)


@pytest.mark.parametrize("command", ["serve", "api", "worker"])
def test_a_listen_port_in_use_is_one_clear_error_line(tmp_path: Path, command: str) -> None:
    """The port (for a worker, `metrics_listen`'s) is taken: a non-zero exit within seconds, one line saying
    so, no traceback, and no "edgewarm running" before it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        extra = f'metrics_listen = "127.0.0.1:{port}"\n' if command == "worker" else ""
        config = write_config(
            tmp_path / "edgewarm.toml",
            store=f"sqlite:///{tmp_path}/edgewarm.db",
            nodes_toml=NOWHERE_NODES,
            port=port if command != "worker" else free_port(),
            extra=extra,
        )
        result = subprocess.run(
            [EDGEWARM, command, "--config", str(config)], capture_output=True, text=True, timeout=30
        )
    output = result.stdout + result.stderr
    assert result.returncode not in (0, None), output
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in output.lower(), output
    assert "Traceback" not in output and "edgewarm running" not in output
    # The log is JSON (the default): the line saying why is a JSON line too, at error (it was click's `Error: …`,
    # the one line a log shipper could not read: a deployer's).
    last = json.loads(result.stderr.strip().splitlines()[-1])
    assert last["level"] == "error" and "cannot listen on" in last["message"], last


@pytest.mark.parametrize("closed", ["<&-", ">&-", "2>&-", "<&- >&- 2>&-"])
def test_a_service_started_with_standard_files_closed_stops_cleanly(tmp_path: Path, closed: str) -> None:
    """Started under `<&-`, `>&-` or `2>&-`, uvloop's files took those numbers and it aborted at its close (exit
    134 after "stopped cleanly", and a start's error lost: a deployer's): exit 0, and 1 with the error said."""
    port = free_port()
    config = write_config(
        tmp_path / "edgewarm.toml", store=f"sqlite:///{tmp_path}/edgewarm.db", nodes_toml=NOWHERE_NODES, port=port
    )
    log = tmp_path / "serve.log"
    stderr = "" if "2>&-" in closed else f" 2>{shlex.quote(str(log))}"
    shell = f"exec {shlex.quote(EDGEWARM)} serve --config {shlex.quote(str(config))} {closed}{stderr}"
    proc = subprocess.Popen(["sh", "-c", shell])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.05)
        time.sleep(0.3)  # (its handlers are in before it listens; nothing else is waited for)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text() if log.exists() else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if "2>&-" not in closed:
        assert "edgewarm stopped cleanly" in log.read_text()
        with socket.socket() as taken:  # a start that fails says why, and exits 1
            taken.bind(("127.0.0.1", port))
            taken.listen()
            failed = subprocess.run(["sh", "-c", shell], timeout=30)
        assert failed.returncode == 1
        assert "cannot listen on" in log.read_text().splitlines()[-1]


@pytest.mark.parametrize("command", [["serve"], ["api"], ["db", "upgrade"]])
def test_a_sqlite_folder_that_cannot_be_made_is_one_clear_error_line(tmp_path: Path, command: list[str]) -> None:
    """The store's folder would be under a file: a non-zero exit, one line naming the folder, no traceback
    (before: a FileExistsError traceback)."""
    (tmp_path / "afile").write_text("not a folder")
    config = write_config(
        tmp_path / "edgewarm.toml",
        store=f"sqlite:///{tmp_path}/afile/sub/edgewarm.db",
        nodes_toml=NOWHERE_NODES,
        port=free_port(),
    )
    result = subprocess.run([EDGEWARM, *command, "--config", str(config)], capture_output=True, text=True, timeout=30)
    output = result.stdout + result.stderr
    assert result.returncode not in (0, None), output
    assert f"cannot make the folder {tmp_path}/afile/sub" in output, output
    assert "Traceback" not in output and "edgewarm running" not in output


@pytest.mark.parametrize("command", ["submit", "refresh"])
def test_waiting_on_a_service_that_goes_away_is_one_clear_error_line(tmp_path: Path, command: str) -> None:
    """`submit --wait` (or `refresh --wait`) follows a task; the service stops meanwhile and stays away
    past --patience: a non-zero exit and one line saying the server cannot be reached, no traceback (before:
    a ClientError traceback), after the line saying it is asked again."""
    with FaultServer(always(Respond(200, delay=30))) as node:
        nodes = f'[[nodes]]\nname = "n"\nurl = "{node.url}"\n'
        service = start_service(tmp_path, nodes, extra="[engine]\ngrace_seconds = 0.5\n")
        with service, following(service, tmp_path, [command, "--wait", "--patience", "1"], node) as follower:
            service.stop()
            out, err = follower.communicate(timeout=30)
    assert follower.returncode not in (0, None), out + err
    lines = err.strip().splitlines()  # the progress (its last frame) is on stderr too
    assert "Traceback" not in err and lines[-1].startswith("Error: no answer from"), err
    assert lines[0].endswith(": asking again for up to 1 s"), err


def test_waiting_rides_out_a_restart_of_the_service(tmp_path: Path) -> None:
    """`submit --wait` follows a task through a restart of the service (README: a restart loses nothing): it
    said "Error: no answer" and exited 1 at the first look the stopped service did not answer."""
    with FaultServer(always(Respond(200, body=b"ok", delay=1.0))) as node:
        nodes = f'[[nodes]]\nname = "n"\nurl = "{node.url}"\n'
        service = start_service(tmp_path, nodes, extra="[engine]\ngrace_seconds = 0.2\n")
        with service, following(service, tmp_path, ["submit", "--wait"], node) as follower:
            service.stop()
            assert follower.stderr is not None
            said = follower.stderr.readline()  # the follower looked and found no one
            service.start()
            out, err = follower.communicate(timeout=60)
    assert follower.returncode == 0, said + out + err
    assert said.endswith("asking again for up to 60 s\n") and "all succeeded" in err, said + out + err


@contextlib.contextmanager
def following(
    service: ServiceProcess, tmp_path: Path, command: list[str], node: FaultServer
) -> Iterator[subprocess.Popen[str]]:
    """`edgewarm COMMAND URL` in the background (a --wait that follows its task), once its request has reached
    `node`; killed at the end."""
    follower = subprocess.Popen(
        [EDGEWARM, *command, f"http://{DEFAULT_HOST}/followed.txt"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **credentials_env(service, tmp_path)},
    )
    try:
        deadline = time.monotonic() + 15
        while not node.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert node.requests, "the task's request never reached the node"
        yield follower
    finally:
        follower.kill()
        follower.wait(10)


@contextlib.contextmanager
def kept_demo(urls: int) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """`edgewarm demo --keep` started, with the lines it printed until it waits; killed at the end."""
    demo = subprocess.Popen(
        [sys.executable, "-m", "edgewarm", "demo", "--urls", str(urls), "--keep"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "400"},
    )
    try:
        assert demo.stdout is not None
        lines = []
        for line in demo.stdout:  # bounded: the demo prints a few dozen lines before it waits
            lines.append(line)
            if "Ctrl-C to stop" in line or len(lines) > 500:
                break
        yield demo, lines
    finally:
        demo.kill()


def test_demo_keep_stopped_by_sigterm_stops_all_it_started() -> None:
    """`edgewarm demo --keep` ended by SIGTERM (a plain kill, a supervisor) as by Ctrl-C: its service and
    fleet stop and its folder goes (before, only Ctrl-C did that: SIGTERM left all of it running)."""
    with kept_demo(10) as (demo, lines):
        out = "".join(lines)
        assert "Still serving" in out, out
        # The curl it prints works as given: a task id back.
        curl = next(line for line in lines if line.startswith("curl -s "))
        answer = subprocess.run(shlex.split(curl), capture_output=True, text=True, timeout=30)
        assert json.loads(answer.stdout)["status"] == 0, answer.stdout + answer.stderr
        demo.send_signal(signal.SIGTERM)
        demo.wait(timeout=60)
    listening = re.search(r"listening on \S+ \(PID (\d+)\)", out)
    folder = re.search(r"config\S*: (\S+)/edgewarm\.toml", out)
    assert listening is not None and folder is not None, out
    assert not Path(f"/proc/{listening.group(1)}").exists()
    assert not Path(folder.group(1)).exists()
    ports = [int(p) for p in re.findall(r"http://127\.0\.0\.1:(\d+)", out.split("config")[0])]
    assert len(ports) == 4
    for port in ports:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()


@pytest.mark.parametrize("command", ["serve", "api"])
def test_metrics_listen_given_to_serve_or_api_is_said_to_be_unused(tmp_path: Path, command: str) -> None:
    """`serve` and `api` serve /metrics on `listen`; a `metrics_listen` given to them was ignored without a word."""
    nodes = '[[nodes]]\nname = "n"\nurl = "http://127.0.0.1:9"\n'
    unused = f'metrics_listen = "127.0.0.1:{free_port()}"'
    with start_service(tmp_path, nodes, extra=unused, command=command) as service:
        log = service.log.read_text()
    assert "metrics_listen is for `edgewarm worker`: this process serves /metrics on `listen`" in log, log


def test_demo_keep_whose_service_dies_says_so_and_fails() -> None:
    """Its `edgewarm serve` killed: the demo ended with status 0 and nothing said, "Ctrl-C to stop." its last
    line. Now it says the service ended, shows its log's end, and exits 1 (its fleet stopped all the same)."""
    with kept_demo(5) as (demo, lines):
        listening = re.search(r"listening on \S+ \(PID (\d+)\)", "".join(lines))
        assert listening is not None and any(line.startswith("Its log: ") for line in lines), lines
        os.kill(int(listening.group(1)), signal.SIGKILL)
        rest, _ = demo.communicate(timeout=60)
    assert demo.returncode == 1, rest
    assert "edgewarm serve ended by itself (killed by signal 9)" in rest, rest


def test_check_config_takes_the_file_as_the_server_commands_do_and_warns(tmp_path: Path) -> None:
    """check-config PATH, --config PATH and EDGEWARM_CONFIG name the same file (before, only PATH); settings
    that keep a feature from working are warned of, as `serve` logs them."""
    config = write_config(
        tmp_path / "edgewarm.toml",
        store=f"sqlite:///{tmp_path}/e.db",
        nodes_toml=NOWHERE_NODES,
        port=free_port(),
        extra="[engine]\nconnect_timeout = 5.0\nread_timeout = 5.0\n",
    )
    answers = [
        run(["check-config", str(config)], {}),
        run(["check-config", "--config", str(config)], {}),
        run(["check-config"], {"EDGEWARM_CONFIG": str(config)}),
    ]
    for answer in answers:
        assert answer.returncode == 0, answer.stderr
        assert answer.stdout.startswith(f"{config}: OK (1 user, 1 node, 0 shields"), answer.stdout
        assert answer.stdout.rstrip().endswith("store sqlite)"), answer.stdout
        assert "warning: [engine] connect_timeout (5 s) is not below read_timeout" in answer.stderr
    relative = write_config(tmp_path / "relative.toml", store="sqlite:data/e.db", nodes_toml=NOWHERE_NODES, port=1)
    said = run(["check-config", str(relative)], {}).stdout  # it named the whole URL
    assert said.rstrip().endswith("store sqlite)"), said
    # A database an older edgewarm left where it read sqlite:///PATH as relative: `serve` refuses it; check-config
    # said OK and nothing more (a tester's upgrade); it warns now, with the same words.
    wanted = tmp_path / "srv" / "x.db"
    old = tmp_path / "cwd" / str(wanted).lstrip("/")
    old.parent.mkdir(parents=True)
    sqlite3.connect(old).close()
    moved = write_config(tmp_path / "moved.toml", store=f"sqlite://{wanted}", nodes_toml=NOWHERE_NODES, port=1)
    checked = subprocess.run(
        [EDGEWARM, "check-config", str(moved)], capture_output=True, text=True, timeout=120, cwd=tmp_path / "cwd"
    )
    assert checked.returncode == 0 and f"warning: the store: 'sqlite://{wanted}' is {wanted}" in checked.stderr, checked
    missing = run(["check-config"], {"EDGEWARM_CONFIG": ""})
    assert missing.returncode == 2 and "give the config file" in missing.stderr
    assert "can be changed" not in answers[0].stderr and "can be read" not in answers[0].stderr
    config.chmod(0o666)  # it holds the users' secrets
    answer = run(["check-config", str(config)], {})
    assert answer.returncode == 0, answer.stderr
    assert f"warning: {config} can be changed by other users of this machine (mode 666): chmod go-w" in answer.stderr
    # For CI and deploy hooks: warnings fail with --strict (before: exit 0 and OK, whatever they said).
    strict = run(["check-config", "--strict", str(config)], {})
    assert strict.returncode == 1 and strict.stderr.rstrip().endswith(" (--strict)"), strict
    assert "OK" not in strict.stdout, strict  # a script reading the output saw "OK" (a re-tester's)
    config.chmod(0o600)
    clean = write_config(tmp_path / "clean.toml", store=f"sqlite:///{tmp_path}/c.db", nodes_toml=NOWHERE_NODES, port=1)
    clean.write_text(clean.read_text().replace(DEMO_SECRET, "a-secret-of-its-own-0123"))  # not README's example
    clean.chmod(0o600)
    assert run(["check-config", "--strict", str(clean)], {}).returncode == 0
    store = tmp_path / "c.db"
    store.touch()
    store.chmod(0o644)  # made by the operator, readable by everyone: `serve` warned of it, check-config not
    readable = run(["check-config", str(clean)], {})
    assert readable.returncode == 0 and "can be read by every user" in readable.stderr, readable
    store.unlink()
    # Two files: one was checked and the other ignored, saying nothing (a tester's); EDGEWARM_CONFIG's gives way.
    for twice in (["--config", str(clean), str(config)], ["--config", str(clean), "--config", str(config)]):
        both = run(["check-config", *twice], {})
        assert both.returncode == 2 and "give one config file" in both.stderr, both
    assert run(["check-config", str(clean)], {"EDGEWARM_CONFIG": str(config)}).stdout.startswith(f"{clean}: OK")


def test_check_config_names_every_problem_at_once_and_warns_of_no_users(tmp_path: Path) -> None:
    """Before: the first problem and "(and 1 more problem(s))", a port out of range called "not HOST:PORT",
    and a config without users "OK" with no word (every call would be refused)."""
    broken = tmp_path / "broken.toml"
    broken.write_text('listen = "127.0.0.1:99999"\nstore = 5\n[[nodes]]\nname = "n"\nurl = "http://127.0.0.1:1"\n')
    answer = run(["check-config", str(broken)], {})
    assert answer.returncode == 1
    assert "listen: '127.0.0.1:99999': port 99999 is out of range (1-65535)" in answer.stderr, answer.stderr
    assert "\nstore: " in answer.stderr, answer.stderr
    lonely = tmp_path / "lonely.toml"
    lonely.write_text('[[nodes]]\nname = "n"\nurl = "http://127.0.0.1:1"\n')
    answer = run(["check-config", str(lonely)], {})
    assert answer.returncode == 0, answer.stderr
    assert "warning: no [[users]]: every call will be refused" in answer.stderr


def test_db_upgrade_says_what_it_did(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`db upgrade` says whether it created the schema, upgraded it from an older version or found nothing to
    do (before: "schema at version 3" whatever it did). Before it, on an older store, `check-config` warns
    of the upgrade to run and `serve` refuses to start, both naming the config file (they said `--config
    FILE`; check-config said nothing)."""

    def upgrade(config: Path) -> str:
        result = subprocess.run([EDGEWARM, "db", "upgrade", "--config", str(config)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    new = write_config(
        tmp_path / "new.toml", store=f"sqlite:///{tmp_path}/new.db", nodes_toml=NOWHERE_NODES, port=free_port()
    )
    made = f"created the schema (version {SCHEMA_VERSION}) in sqlite:///{tmp_path}/new.db: a new, empty store (check"
    assert upgrade(new).startswith(made)
    assert upgrade(new) == f"the schema is at version {SCHEMA_VERSION} already: nothing to do"

    async def make_older(url: str) -> None:
        async with open_store(url):
            pass

    with monkeypatch.context() as older:  # a database made by the edgewarm before the last migration
        older.setattr(sqlite, "SCHEMA_VERSION", SCHEMA_VERSION - 1)
        older.setattr(sqlite, "MIGRATIONS", sqlite.MIGRATIONS[: SCHEMA_VERSION - 1])
        asyncio.run(make_older(f"sqlite:///{tmp_path}/old.db"))
    old = write_config(
        tmp_path / "old.toml", store=f"sqlite:///{tmp_path}/old.db", nodes_toml=NOWHERE_NODES, port=free_port()
    )
    needs = f"this edgewarm needs {SCHEMA_VERSION}: run `edgewarm db upgrade --config {old}`"
    checked = subprocess.run([EDGEWARM, "check-config", str(old)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and needs in checked.stderr, checked.stderr
    assert any(line.startswith("warning: the store: database ") for line in checked.stderr.splitlines()), checked
    started = subprocess.run([EDGEWARM, "serve", "--config", str(old)], capture_output=True, text=True, timeout=60)
    assert started.returncode == 1 and needs in started.stderr, started.stderr
    assert "FILE" not in started.stderr and not list(tmp_path.glob("old.db-*")), started.stderr
    assert upgrade(old) == f"upgraded the schema from version {SCHEMA_VERSION - 1} to {SCHEMA_VERSION}"


def test_a_submit_stopped_by_sigterm_has_printed_every_task_it_made_and_says_where_it_stopped(
    lab: Lab, tmp_path: Path
) -> None:
    """300 URLs in calls of 1, SIGTERM once the first id is out: the ids came only at the end (a killed submit
    printed none, though 81 tasks were made), and SIGTERM left no word. Now each id is printed as its call
    returns, and the stop says which entries made tasks, which call may have, and the first not sent."""
    urls = [f"http://{DEFAULT_HOST}/cli-term/{n}" for n in range(300)]
    with start_service(tmp_path, lab.nodes_toml()) as service:
        env = {**os.environ, **credentials_env(service, tmp_path)}
        args = [EDGEWARM, "submit", "--per-call", "1", "-f", "-"]
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write("\n".join(urls).encode())
        proc.stdin.close()
        first = proc.stdout.readline().decode().strip()
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.stdout.read().decode(), proc.stderr.read().decode()
        code = proc.wait(timeout=30)
        printed = [first, *rest.split()]
        with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
            made = client.tasks(url="/cli-term/", limit=1000)["tasks"]
    assert code == 143 and len(printed[0]) == 36, (code, printed, err)
    n = len(printed)
    spans = "stdin line 1" if n == 1 else f"stdin lines 1-{n}"
    if "may have made one" in err:  # the call cut had not reached the server whole: no task of it to find
        assert set(printed) <= {t["taskid"] for t in made} and len(made) - n in (0, 1), (printed, made)
        said = f"interrupted: {n} of 300 calls made tasks (ids above): {spans}; call {n + 1} (stdin line {n + 1}) may"
        assert said in err and f"not sent: stdin lines {n + 2}-300, from {urls[n + 1]} on" in err, err
    else:  # the task of the call cut, looked for, is printed too (4 times of 4 a tester's had none printed)
        assert set(printed) == {t["taskid"] for t in made}, (printed, made)
        said = f"interrupted: {n} of 300 calls made tasks (ids above): {spans}; not sent: stdin lines {n + 1}-300"
        assert said in err and f"from {urls[n]} on" in err, err


def test_a_list_that_cannot_go_whole_is_refused_before_any_call(lab: Lab, tmp_path: Path) -> None:
    """Refused whole, nothing sent: a line that is not UTF-8 (it was a traceback, after calls were made), a URL
    the server cannot take, or of a domain not the user's (each was refused at its call, the calls before it
    made; the domains as /v1/quota states them), more URLs than the day's
    quota has left (its call was refused half way), --per-call over the user's limit (sent, then refused).
    Taken: a file in UTF-8 with a byte order mark and CRLF lines (its first URL was refused), the same URL
    twice, in one spelling or two (its calls were refused, or it was warmed and charged twice). Refused whole
    too: a directory to refresh that does not end with '/' (its call was refused, those before it made)."""
    good = [f"http://{DEFAULT_HOST}/cli-whole/{n}" for n in range(30)]
    with start_service(tmp_path, lab.nodes_toml(), extra="[limits]\nurls_per_call = 10\n") as service:
        assert service.proc is not None  # the day's quota cut to 40 (the demo user's own is unbounded)
        service.config.write_text(service.config.read_text().replace("urls_per_day = 100000000", "urls_per_day = 40"))
        os.kill(service.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "config reloaded" not in service.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        env = credentials_env(service, tmp_path)
        latin1 = tmp_path / "latin1.txt"
        latin1.write_bytes("\n".join(good[:5]).encode() + b"\nhttp://www.example.test/caf\xe9\n")
        refusals = {
            "latin1": run(["submit", "-f", str(latin1)], env),
            "illegal": run(
                ["submit"], env, stdin="\n".join(["# a comment", *good[:20], "http://www.example.test/%zz", *good[20:]])
            ),
            "quota": run(["submit"], env, stdin="\n".join(good + [u + "?more" for u in good[:11]])),
            "per-call": run(["submit", "--per-call", "11", *good[:3]], env),
            "not yours": run(["submit"], env, stdin="\n".join([*good[:25], "http://www.not-yours.test/x", *good[25:]])),
            "not a dir": run(["refresh", "--dir", f"http://{DEFAULT_HOST}/d1/", f"http://{DEFAULT_HOST}/d2"], env),
        }
        with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
            assert client.tasks()["tasks"] == [], {k: v.stderr for k, v in refusals.items()}
            windows = tmp_path / "windows.txt"
            again = [*good[:3], good[3].replace(DEFAULT_HOST, DEFAULT_HOST.upper() + ":80")]  # the same objects
            windows.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(good[:12] + again).encode() + b"\r\n")
            taken = run(["submit", "-f", str(windows)], env)
            made = client.tasks()["tasks"]
    assert refusals["latin1"].returncode == 1
    assert f"{latin1}, line 6: not UTF-8 text (nothing was sent)" in refusals["latin1"].stderr
    assert refusals["illegal"].returncode == 1
    assert "1 of the entries cannot be sent, nothing was: stdin line 22: illegal URL 'http://www.example.test/%zz'" in (
        refusals["illegal"].stderr
    )
    assert refusals["quota"].returncode == 1
    assert "41 URLs, but 40 of today's 40 are left" in refusals["quota"].stderr, refusals["quota"].stderr
    assert refusals["not a dir"].returncode == 1
    said = f"argument 2: a directory must end with '/' (and have no query): http://{DEFAULT_HOST}/d2"
    assert said in refusals["not a dir"].stderr, refusals["not a dir"].stderr
    assert refusals["not yours"].returncode == 1
    said = "1 of the entries is not in your domains (www.example.test, *.example.test), nothing was sent: stdin "
    said += "line 26: the domain www.not-yours.test is not yours"
    assert said in refusals["not yours"].stderr, refusals["not yours"].stderr
    assert refusals["per-call"].returncode == 2
    assert "--per-call 11 is over your limit of 10 URLs per call" in refusals["per-call"].stderr
    assert taken.returncode == 0 and "4 duplicate entries left out" in taken.stderr, taken.stderr
    assert sorted(t["total"] for t in made) == [2 * 3, 10 * 3], made  # 12 URLs in calls of 10, on 3 nodes


def test_a_server_address_that_is_not_the_services_says_so(service: ServiceProcess, tmp_path: Path) -> None:
    """A server address with a path, or another server's: "JD code -1: Not Found" and "JD code -1: HTTP 404:
    not JSON" read as errors inside edgewarm. Now they name the route asked and say the address is likely
    wrong."""
    env = credentials_env(service, tmp_path)
    with_path = run(["quota"], {**env, "EDGEWARM_SERVER": service.url + "/api"})
    with FaultServer(always(Respond(200, body=b"<html>hello</html>"))) as other:
        elsewhere = run(["submit", "http://www.example.test/a"], {**env, "EDGEWARM_SERVER": other.url})
    assert with_path.returncode == 1 and "JD code" not in with_path.stderr, with_path.stderr
    assert "HTTP 404 for /api/v1/quota: no such route here: is the server address edgewarm's own" in (with_path.stderr)
    assert elsewhere.returncode == 1 and "JD code" not in elsewhere.stderr, elsewhere.stderr
    assert "HTTP 200 for /api/prefetch, not edgewarm's answer: is the server address" in elsewhere.stderr


def connected_to(pid: int, port: int | None) -> bool:
    """Whether process `pid` holds a TCP connection to `port` on loopback (from /proc: no tool needed)."""
    sockets = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                sockets.add(target[len("socket:[") : -1])
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return any(int(row[2].rpartition(":")[2], 16) == port and row[9] in sockets for row in rows)


@pytest.mark.parametrize(("stop", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_while_following_exits_130_or_143(tmp_path: Path, stop: int, code: int) -> None:
    """Ctrl-C in `watch` (or `submit --wait` following its tasks) said "Aborted!" and exited 1, which a script
    reads as a task that failed, and SIGTERM said nothing; now "interrupted" and 130 or 143, as shells
    expect."""
    with FaultServer(always(Respond(200, delay=30))) as node:
        nodes = f'[[nodes]]\nname = "n"\nurl = "{node.url}"\n'
        with start_service(tmp_path, nodes) as service, Client(service.url, DEMO_USER, DEMO_SECRET) as client:
            taskid = client.prefetch([f"http://{DEFAULT_HOST}/slow.txt"])
            env = {**os.environ, **credentials_env(service, tmp_path)}
            watcher = subprocess.Popen(
                [EDGEWARM, "watch", taskid],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                # A shell without job control starts background commands with SIGINT ignored, and children
                # inherit that (then Ctrl-C does nothing): the watcher gets the default, as in a terminal.
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )
            try:
                deadline = time.monotonic() + 30
                while not connected_to(watcher.pid, service.port) and time.monotonic() < deadline:
                    time.sleep(0.05)  # started, and following (it keeps its connection between looks)
                watcher.send_signal(stop)
                _out, err = watcher.communicate(timeout=30)
            finally:
                watcher.kill()
    # Saying the task goes on (a tester's user took "interrupted" alone for it cancelled).
    said = f"interrupted: the tasks go on in the service (`edgewarm watch {taskid}` follows them again"
    assert watcher.returncode == code and said in err, (watcher.returncode, err)


def test_the_operator_cancels_a_users_running_tasks_from_the_store(service: ServiceProcess, lab: Lab) -> None:
    """`edgewarm admin cancel` (the service's config, no user's credentials) stops a user's task in the running
    service: by its id, and with --user every running task of the user. Each ends failed, reason "cancelled",
    cancelled_by "operator" in the API and "cancelled by operator" in the service's log, its items not started
    unsent; an unknown id exits 1, something else than an id 2 (nothing cancelled)."""
    paths = [f"/slow/admin-{i}.bin" for i in range(60)]  # 10 s each from the origin: the tasks run a while
    for path in paths:
        lab.write_file(path, b"x" * 10 * SLOW_RATE)
    with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
        first = client.prefetch([f"http://{DEFAULT_HOST}{p}" for p in paths[:30]])
        second, third = (client.prefetch([f"http://{DEFAULT_HOST}{p}"]) for p in paths[30:32])
        admin = [EDGEWARM, "admin", "cancel", "--config", str(service.config)]
        wrong = subprocess.run([*admin, first, "junk"], capture_output=True, text=True, timeout=60)
        assert wrong.returncode == 2 and "'junk' is not a task id" in wrong.stderr, wrong
        assert client.task(first)["status"] == 1  # the wrong call cancelled nothing
        by_id = subprocess.run([*admin, first], capture_output=True, text=True, timeout=60)
        assert by_id.returncode == 0, by_id
        assert by_id.stdout.startswith(f"{first} (user {DEMO_USER}): cancelled"), by_id.stdout
        unknown = "00000000-0000-4000-8000-000000000000"
        by_user = subprocess.run([*admin, unknown, "--user", DEMO_USER], capture_output=True, text=True, timeout=60)
        assert by_user.returncode == 1, by_user
        lines = by_user.stdout.splitlines()
        assert lines[0] == f"{unknown}: not found", lines
        assert {line.split()[0] for line in lines[1:]} >= {second, third}, lines
        assert all(": cancelled" in line for line in lines[1:]), lines
        views = [client.wait(taskid, timeout=60) for taskid in (first, second, third)]
        items = client.task(first)["items"]
        # A name not in the config (a typo read as an idle user before), and a configured user without tasks.
        # --user given twice: both looked at (the last one only, before).
        idle = subprocess.run(
            [*admin, "--user", "nobody", "--user", DEMO_USER], capture_output=True, text=True, timeout=60
        )
        assert (idle.returncode, idle.stdout) == (
            0,
            f"user nobody has no task running (no such user in the config)\nuser {DEMO_USER} has no task running\n",
        ), idle
    for view in views:
        assert (view["status"], view["reason"], view["cancelled_by"]) == (2, "cancelled", "operator"), view
    assert sum(1 for item in items if item["error"] == "cancelled") >= 30, "the first task's items went on"
    deadline = time.monotonic() + 10  # each task's end is its own line, the first's not necessarily first
    while time.monotonic() < deadline and not all(
        any(said in line and first in line for line in service.log_text().splitlines())
        for said in ("task ended", "cancelled (seen in the store)")
    ):
        time.sleep(0.05)
    ended = [line for line in service.log_text().splitlines() if "task ended" in line and first in line]
    assert len(ended) == 1 and "cancelled by operator" in ended[0], ended
    # The service says so when it learns of it, its items under way named (before: nothing until the task's end,
    # a tester's observation; a user's cancel through the API has its line).
    seen = [line for line in service.log_text().splitlines() if "cancelled (seen in the store)" in line]
    assert any(first in line for line in seen), seen
    # `admin tasks` lists them from the store (a tenant tester's: no command showed a removed user's tasks).
    listing = [EDGEWARM, "admin", "tasks", "--config", str(service.config), "--user"]
    listed = subprocess.run(
        [*listing, DEMO_USER, "--status", "2", "--json"], capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed
    summaries = [t for t in json.loads(listed.stdout)["tasks"] if t["taskid"] in (first, second, third)]
    assert [t["taskid"] for t in summaries] == [third, second, first], summaries  # newest first (of this test's)
    assert all(t["cancelled_by"] == "operator" for t in summaries), summaries
    table = subprocess.run([*listing, f" {DEMO_USER}", "--limit", "1"], capture_output=True, text=True, timeout=60)
    assert table.returncode == 0 and third in table.stdout and first not in table.stdout, table
    # A page with more after it says how to list them (the newest 1,000 were all it could list: a session's note).
    more = table.stderr.strip().split()
    assert more[:-1] == ["more:", "edgewarm", *listing[1:], DEMO_USER, "--limit", "1", "--after"], table.stderr
    following = subprocess.run([EDGEWARM, *more[2:]], capture_output=True, text=True, timeout=60)
    assert following.returncode == 0 and second in following.stdout and third not in following.stdout, following
    walked: list[str] = []  # every page in JSON, by its `next`: each task once, newest first
    after: list[str] = []
    for _ in range(100):  # bounded: this test's user has fewer tasks
        page = subprocess.run([*listing, DEMO_USER, "--limit", "2", "--json", *after], capture_output=True, timeout=60)
        answer = json.loads(page.stdout)
        walked += [t["taskid"] for t in answer["tasks"]]
        if answer["next"] is None:
            break
        after = ["--after", answer["next"]]
    whole = json.loads(subprocess.run([*listing, DEMO_USER, "--json"], capture_output=True, timeout=60).stdout)
    assert walked == [t["taskid"] for t in whole["tasks"]] and whole["next"] is None, (walked, whole)
    assert walked.index(third) < walked.index(second) < walked.index(first), walked
    bad = subprocess.run([*listing, DEMO_USER, "--after", "not-a-cursor"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not a task list's cursor" in bad.stderr, bad
    none = subprocess.run([*listing, "nobody"], capture_output=True, text=True, timeout=60)
    assert (none.returncode, none.stdout, none.stderr) == (
        0,
        "",
        "user nobody has no tasks (no such user in the config)\n",
    ), none


def test_an_empty_argument_is_refused_and_an_empty_pipe_is_nothing_to_send(tmp_path: Path) -> None:
    """A CLI tester's: `edgewarm submit "$url"` with `$url` empty read stdin (no argument left), and in a
    `while read` loop sent the loop's other lines as one task; `edgewarm failed … | edgewarm submit -f -` exited
    2 when nothing had failed. Refused before any call (no server here: none is asked); an empty pipe is exit 0."""
    env = server_env(f"http://127.0.0.1:{free_port()}", tmp_path)  # nothing listens: a call would fail (exit 1)
    lines = "http://www.example.test/a\nhttp://www.example.test/b\n"
    for command in ("submit", "refresh"):
        for args in ([""], ["http://www.example.test/x", "  "]):
            empty = run([command, *args], env, stdin=lines)
            number = len(args)
            assert (empty.returncode, empty.stdout) == (2, ""), empty
            assert f"argument {number} is empty (an unset variable?): nothing was sent" in empty.stderr, empty
        piped = run([command, "-f", "-"], env, stdin="# nothing failed\n\n")
        assert (piped.returncode, piped.stdout, piped.stderr) == (0, "", "no URLs on stdin: nothing was sent\n")
        (blank := tmp_path / "blank.txt").write_text("# only a comment\n\n")
        named = run([command, "-f", str(blank)], env)
        assert named.returncode == 2 and f"no URLs in {blank} (blank lines and comments only)" in named.stderr, named
