"""README.md cannot drift from the code: every `kproxy ...` command line it shows parses
with kproxy's own parser, every flag and config field of its configuration table exists,
the `synced` log line it shows is what a sync prints (keys, order, kinds of value), and its
Performance table shows the committed bench results it links to."""

from __future__ import annotations

import argparse
import json
import re
from ipaddress import ip_address
from pathlib import Path

import pytest

from kproxy.agent import Agent
from kproxy.backends.nft.backend import NftBackend
from kproxy.backends.nft.fake import FakeNft
from kproxy.cli.config_file import SCHEMA, Field
from kproxy.cli.logs import configure_logging
from kproxy.cli.parser import build_parser, parse_command_line
from kproxy.model import NodeConfig
from kproxy.tracker import Tracker
from tests.builders import endpoint_slice, service

TOP = Path(__file__).resolve().parents[2]
README = (TOP / "README.md").read_text()
INTERFACES = (TOP / "docs" / "INTERFACES.md").read_text()

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"(?<!`)`(kproxy [^`]+)`(?!`)")
# a line that shows a form rather than one command: [optional], a|b, placeholders
PLACEHOLDER = re.compile(r"\[|\]|\||\.\.\.|\b[A-Z][A-Z_]+\b")
FLAG = re.compile(r"(?<![\w-])(--?[a-zA-Z][a-zA-Z0-9-]*)")


def code_blocks(text: str) -> list[str]:
    return FENCE.findall(text)


def command_lines(text: str) -> list[str]:
    """Every `kproxy ...` line of a code block, and every inline `kproxy ...` span."""
    found = []
    for block in code_blocks(text):
        for line in block.splitlines():
            line, _, comment = line.partition(" # ")
            if line.strip().startswith("kproxy "):
                found.append(line.strip())
            if example := re.search(r"e\.g\. (kproxy .*)", comment):  # an example in a comment
                found.append(example[1].strip())
    prose = FENCE.sub("", text)
    found += [" ".join(m.split()) for m in INLINE.findall(prose)]
    return found


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for action in parser._actions for o in action.option_strings}


def takes_value(parser: argparse.ArgumentParser, flag: str) -> bool:
    return any(flag in a.option_strings and a.nargs != 0 for a in parser._actions)


def check_command_line(line: str) -> None:
    """Commands and lab actions (a|b: each) exist, every flag exists where it is given, and
    a line that is one concrete command (no [optional], a|b or PLACEHOLDER) parses as it is.
    A bare `kproxy lab` or `kproxy trace` in prose names a command: it need not parse."""
    words = line.split()[1:]
    words = words[:words.index("--")] if "--" in words else words  # after `--`: another program's
    parser: argparse.ArgumentParser = build_parser()
    known, path, named_only = options(parser), [parser], True
    rest = list(words)
    while rest:
        word = rest.pop(0)
        if word.startswith("-"):
            named_only = False
            flag = word.split("=")[0]
            if "=" not in word and any(takes_value(p, flag) for p in path):
                rest = rest[1:]  # its value
            continue
        choices = subcommands(path[-1])
        if not choices:
            named_only = False
            continue  # a positional argument (URL, NODE_OR_POD, ...)
        names = word.split("|")
        assert set(names) <= set(choices), f"{line!r}: {names} not among {sorted(choices)}"
        for name in names:
            known |= options(choices[name])
        if len(names) > 1:
            break
        path.append(choices[names[0]])
    flags = set(FLAG.findall(" ".join(words)))
    assert flags <= known, f"{line!r}: no such flag {sorted(flags - known)}"
    if not PLACEHOLDER.search(line) and not named_only:  # one concrete command: it must parse
        try:
            parse_command_line(line.split()[1:])
        except SystemExit as exit_:
            pytest.fail(f"{line!r} does not parse (exit {exit_.code})")


README_COMMANDS = command_lines(README)


def test_the_readme_shows_command_lines_of_every_kind():
    shown = {line.split()[1] for line in README_COMMANDS}
    assert shown >= {"run", "sync", "dump", "cleanup", "trace", "config", "lab"}
    assert any(not PLACEHOLDER.search(line) for line in README_COMMANDS)  # some concrete ones too


@pytest.mark.parametrize("line", README_COMMANDS)
def test_every_command_line_in_the_readme_parses(line):
    check_command_line(line)


@pytest.mark.parametrize("line", ["kproxy --bogus", "kproxy lab up --bogus", "kproxy lab frob",
                                  "kproxy sync --manifests", "kproxy lab up|frob"])
def test_the_check_would_catch_a_wrong_line(line):
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        check_command_line(line)


def section(text: str, title: str) -> str:
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("| `"):  # a row whose first cell is code: a flag
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def field_paths(cell: str) -> list[str]:
    """`conntrack.maxPerCore`, `.tcpCloseWaitTimeout` -> conntrack.maxPerCore, conntrack.tcpCloseWaitTimeout;
    what follows "(" in the cell is values, not fields."""
    paths, prefix = [], ""
    for token in re.findall(r"`([^`]+)`", cell.split("(")[0]):
        if token.startswith("."):
            token = prefix + token[1:]
        paths.append(token)
        prefix = token.rsplit(".", 1)[0] + "." if "." in token else ""
    return paths


def schema_field(path: str) -> object:
    node: object = SCHEMA
    for part in path.split("."):
        assert isinstance(node, dict) and part in node, f"no config field {path!r}"
        node = node[part]
    return node


def test_every_flag_and_field_of_the_configuration_table_exists():
    rows = table_rows(section(README, "Configuration"))
    assert len(rows) >= 20
    run = subcommands(build_parser())["run"]
    flags = options(run)
    fields = []
    for row in rows:
        for flag in FLAG.findall(row[0]):
            assert flag in flags, f"configuration table: no flag {flag}"
        for path in field_paths(row[1]):
            assert isinstance(schema_field(path), Field), f"configuration table: {path} is a section"
            fields.append(path)
    assert "conntrack.tcpCloseWaitTimeout" in fields and "bindAddressHardFail" in fields


def test_every_node_flag_of_the_command_line_table_exists():
    rows = table_rows(section(README, "Command line"))
    sync = options(subcommands(build_parser())["sync"])
    assert rows and all(f in sync for row in rows for f in FLAG.findall(row[0]))


# --- the `synced` line ---------------------------------------------------------------------

TEXT_LINE = re.compile(r"^(?P<time>\S+) \[(?P<level>\w+) *\] (?P<event>\w+) (?P<fields>.*)$")


def kind(value: str) -> str:
    if value in ("True", "False"):
        return "bool"
    return "int" if value.isdigit() else "float" if re.fullmatch(r"\d+\.\d+", value) else "other"


def text_shape(line: str) -> tuple[str, str, list[tuple[str, str]]]:
    m = TEXT_LINE.match(line)
    assert m, f"not a text log line: {line!r}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", m["time"]), m["time"]
    fields = [tuple(pair.split("=", 1)) for pair in m["fields"].split()]
    return m["level"], m["event"], [(k, kind(v)) for k, v in fields]


def json_shape(line: str) -> list[tuple[str, str]]:
    return [(k, type(v).__name__) for k, v in json.loads(line).items()]


def documented(text: str) -> tuple[list[str], list[str]]:
    lines = [line for block in code_blocks(text) for line in block.splitlines()]
    return ([line for line in lines if "] synced " in line],
            [line for line in lines if line.startswith("{") and '"event": "synced"' in line])


@pytest.fixture
def real_sync(capsys):
    """A real Agent.sync() against FakeNft, logging as `kproxy sync` does; its stderr line."""
    tracker = Tracker(on_change=lambda: None)
    tracker.replace("Service", [service(f"web{i}", cluster_ip=f"10.96.0.{10 + i}") for i in range(3)])
    tracker.replace("EndpointSlice", [endpoint_slice(f"web{i}", [f"10.244.1.{2 + i}"]) for i in range(3)])

    def sync(fmt: str) -> str:
        configure_logging(fmt)
        node = NodeConfig(hostname="node1", node_ips=(ip_address("10.1.1.10"),))
        Agent(node, {4: NftBackend(FakeNft())}, tracker).sync()
        out = capsys.readouterr()
        (line,) = [line for line in out.err.splitlines() if "synced" in line]
        assert "synced" not in out.out  # logs go to stderr
        return line

    yield sync
    configure_logging()


@pytest.mark.parametrize("doc", ["README.md", "docs/INTERFACES.md"])
def test_the_documented_synced_line_is_what_a_sync_prints(real_sync, doc):
    text_lines, json_lines = documented(README if doc == "README.md" else INTERFACES)
    assert text_lines, f"{doc} shows no synced line"
    printed = text_shape(real_sync("text"))
    for line in text_lines:
        assert text_shape(line) == printed, (line, printed)
    printed_json = json_shape(real_sync("json"))
    for line in json_lines:
        assert json_shape(line) == printed_json, (line, printed_json)
    if doc == "README.md":
        assert json_lines, "README shows no JSON synced line"


# --- the Performance table -------------------------------------------------------------------

PERFORMANCE_ROWS = {  # row label (start) -> the figures of one result it shows, in order
    "cold `kproxy sync`": lambda r: [r["cold_sync"]["wall_s"]],
    "of which plan / render / kernel apply":
        lambda r: [r["cold_sync"][k] for k in ("plan_ms", "render_ms", "apply_ms")],
    "one endpoint change in a running agent: kernel apply":
        lambda r: [r["endpoint_change"]["apply_ms"][k] for k in ("median", "max")],
    "of which IPVS netlink requests":
        lambda r: [r["endpoint_change"]["netlink_ms"][k] for k in ("median", "max")],
    "same change, whole sync": lambda r: [r["endpoint_change"]["total_ms"][k] for k in ("median", "max")],
    "same change end to end": lambda r: [r["endpoint_change"]["e2e_ms"][k] / 1000 for k in ("median", "max")],
    "agent peak RSS": lambda r: [r["agent"]["VmHWM"]],
    "ruleset": lambda r: [r["ruleset"]["set_and_map_elements"] / 1000],
    "iptables ruleset": lambda r: [r["ruleset"][k] / 1000 for k in ("chains", "rules")],
    "IPVS state": lambda r: [r["ruleset"][k] / 1000 for k in ("virtual_servers", "real_servers")],
}


def performance_tables(text: str) -> list[tuple[str, list[str]]]:
    """Each table of the section with the bench JSON linked last before it."""
    tables: list[tuple[str, list[str]]] = []
    link, rows = None, []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            rows.append(line)
            continue
        if rows:
            assert link, "a Performance table without a bench JSON linked before it"
            tables.append((link, rows))
            rows = []
        link = ([None, *re.findall(r"\((docs/bench/[\w.-]+\.json)\)", line)][-1]) or link
    return tables


def test_the_performance_tables_show_their_committed_results():
    """Every figure of each table is in the bench JSON linked before it (as rounded)."""
    tables = performance_tables(section(README, "Performance"))
    assert {link for link, _rows in tables} >= {"docs/bench/nftables-1k-10k.json"}
    for link, table in tables:
        report = json.loads((TOP / link).read_text())
        assert report["kproxy_uncommitted_changes"] is False
        lines = [line for line in table if "---" not in line]
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        assert header[0].startswith(report["proxy_mode"].replace("ipvs", "IPVS")), (link, header[0])
        results = {r["services"]: r for r in report["results"]}
        sizes = [int(float(c.split("k ")[0]) * 1000) for c in header[1:]]
        assert sizes and set(sizes) <= set(results)
        for line in lines[1:]:
            label, *cells = [c.strip() for c in line.strip("|").split("|")]
            (figures,) = [f for start, f in PERFORMANCE_ROWS.items() if label.startswith(start)]
            for size, cell in zip(sizes, cells, strict=True):
                numbers = [float(n) for n in re.findall(r"\d+(?:\.\d+)?", cell.replace("MiB", ""))]
                expected = figures(results[size])
                if label == "ruleset":
                    numbers = numbers[-1:]  # the elements, in thousands
                assert len(numbers) == len(expected), (label, cell)
                for got, want in zip(numbers, expected, strict=True):
                    assert got == pytest.approx(want, rel=0.05, abs=0.06), (link, label, size, cell, want)
