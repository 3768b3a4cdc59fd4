"""``--config FILE``: the TOML configuration file of ``twistd inginious-backend`` and ``inginious-agent``.

Parsed in-process here (the options are what makeService gets); a real twistd
reading a file is in test_operator_errors.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, List

import pytest
from twisted.python import usage

from inginious_tx.agent import tap as agent_tap
from inginious_tx.backend import tap as backend_tap
from inginious_tx.config import SECTIONS, config_argv, load_section

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "contrib" / "inginious-tx.toml"
TASKS = str(REPO / "examples" / "tasks")


def backend(*args: str) -> backend_tap.Options:
    options = backend_tap.Options()
    options.parseOptions(list(args))
    return options


def agent(*args: str) -> agent_tap.Options:
    options = agent_tap.Options()
    options.parseOptions(list(args))
    return options


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "itx.toml"
    path.write_text(text)
    return str(path)


def test_the_file_sets_options_of_every_kind(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [backend]
        clients = ["tcp:2000", "zmq:tcp://127.0.0.1:2002"]
        agents = "zmq:tcp://127.0.0.1:2001"     # one value for a repeatable option
        policy = "fair"
        max-retries = 3
        ping-interval = 0.5
        max-waiting-per-client = "none"
        max_inputdata = 1000                    # underscores work as on the command line

        [agent]
        backend = "zmq:tcp://127.0.0.1:2001"
        kind = "mock"
        slots = 3
        environment = ["default", "py"]
        allow-network = true
        allow-run-cmd = false
        option = {result = "failed", delay = 0.5, init = false}
        """.replace("\n        ", "\n"),
    )
    b = backend("--config", path)
    assert b["clients"] == ["tcp:2000", "zmq:tcp://127.0.0.1:2002"] and b["agents"] == ["zmq:tcp://127.0.0.1:2001"]
    assert (b["policy"], b["settings"].max_retries, b["settings"].ping_interval) == ("fair", 3, 0.5)
    assert b["settings"].max_waiting_per_client is None and b["settings"].max_inputdata == 1000
    a = agent(f"--config={path}")
    assert (a["backend"], a["kind"], a["slots"]) == ("zmq:tcp://127.0.0.1:2001", "mock", 3)
    assert a["config"].environments == ["default", "py"]
    assert a["maxima"].allow_network and not a["maxima"].allow_run_cmd
    assert a["config"].options == {"result": "failed", "delay": "0.5", "init": "false"}


def test_the_command_line_wins(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[backend]\nclients = ["tcp:2000", "tcp:2002"]\nagents = ["tcp:2001"]\npolicy = "fair"\nmax-retries = 3\n'
        '[agent]\nbackend = "tcp:127.0.0.1:2001"\nkind = "mock"\nenvironment = ["a", "b"]\n',
    )
    b = backend("--policy", "shortest-first", "--config", path, "-c", "tcp:3000", "--max-retries", "0")
    assert b["policy"] == "shortest-first" and b["settings"].max_retries == 0
    assert b["clients"] == ["tcp:3000"]  # the command line's list replaces the file's
    assert b["agents"] == ["tcp:2001"]  # what the command line does not give comes from the file
    a = agent("--config", path, "-e", "c", "--backend", "tcp:127.0.0.1:2009")
    assert a["config"].environments == ["c"] and a["backend"] == "tcp:127.0.0.1:2009"


@pytest.mark.parametrize(
    "text, message",
    [
        ("[backend]\nnope = 1\n", "{path}: [backend] nope: no such option (see twistd inginious-backend --help)"),
        ("[backend]\nmax-retries = -1\n", "{path}: [backend] max-retries = '-1': must be >= 0"),
        ("[backend]\nping-interval = 'soon'\n", "{path}: [backend] ping-interval = 'soon': not a number"),
        ("[backend]\npolicy = ['fair']\n", "{path}: [backend] policy: takes one value, not a list"),
        ("[backend]\nmax-retries = true\n", "{path}: [backend] max-retries: expected a string or a number"),
        ("[backend]\nlist-policies = true\n", "{path}: [backend] list-policies: --list-policies is a command-line"),
        ("[backend]\nhelp = true\n", "{path}: [backend] help: --help is a command-line action"),
        ("[backend]\nclients = [{a = 1}]\n", "{path}: [backend] clients: expected a string or a number"),
        ("[backend]\nclients = ['foo:bar']\n", "--clients: no transport understands the endpoint 'foo:bar'"),
        ("policy = 'fair'\n", "{path}: 'policy' outside a table: options go under [backend] or [agent]"),
        ("[agent]\nkind = 'mock'\n", "{path}: no [backend] table"),
        ("[backend\n", "--config '{path}': not valid TOML: "),
    ],
)
def test_errors_name_the_file_the_table_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(usage.UsageError) as e:
        backend("--config", path)
    assert str(e.value).startswith(message.format(path=path))


def test_flags_in_the_file_are_true_or_false(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\nbackend = "tcp:127.0.0.1:2001"\nkind = "mock"\nallow-network = "yes"\n')
    with pytest.raises(usage.UsageError, match=re.escape(f"{path}: [agent] allow-network: expected true or false")):
        agent("--config", path)


def test_a_missing_file_and_a_missing_value() -> None:
    with pytest.raises(usage.UsageError, match="--config '/no/such.toml': No such file or directory"):
        backend("--config", "/no/such.toml")
    with pytest.raises(usage.UsageError, match="--config requires a value"):
        backend("--config")


def _documented_keys(text: str, section: str) -> List[str]:
    """The keys of ``[section]`` in the example, set or commented out."""
    body = text.split(f"[{section}]\n", 1)[1].split("\n[", 1)[0]
    return re.findall(r"^#? ?([a-z][a-z0-9-]*) = ", body, re.M)


@pytest.mark.parametrize("section, options_class", [("backend", backend_tap.Options), ("agent", agent_tap.Options)])
def test_the_example_file_is_valid_and_shows_every_option(section: str, options_class: Any) -> None:
    """contrib/inginious-tx.toml: each table is accepted as it is, and names every setting of its command
    (an option added to a command must be added to the example: the docs include it as the full example)."""
    options = options_class()
    table = load_section(str(EXAMPLE), section)
    argv = config_argv(options, table, str(EXAMPLE), [])
    assert argv and all(arg.startswith("--") for arg in argv)
    settings = {name.rstrip("=") for name in options.longOpt} - {"help", "version", "config"}
    settings = {name for name in settings if not name.startswith("list-")}
    documented = set(_documented_keys(EXAMPLE.read_text(), section)) | set(table)
    missing = sorted(settings - documented)
    assert not missing, f"add these options of twistd inginious-{section} to {EXAMPLE}: {missing}"
    assert set(SECTIONS) == {"backend", "agent"}


def test_the_example_runs_with_local_paths(tmp_path: Path) -> None:
    """The example, with its paths pointed at this checkout, parses completely for both commands."""
    text = EXAMPLE.read_text().replace("/var/lib/inginious-tx/tasks", TASKS)
    path = write(tmp_path, text)
    b = backend("--config", path)
    assert b["agents"] == ["zmq:tcp://127.0.0.1:2001"] and b["policy"] == "fair" and not b["embedded"]
    a = agent("--config", path, "--kind", "mock")
    assert a["config"].tasks_dir == TASKS and a["config"].options == {"pids_limit": "256"}
