"""Figures as they come, the summary table, and docs/benchmark.md.

Each goal is a `Section` of `Row`s: a figure, its value, the ceiling it is measured against (in
the same run), the result (usually the ratio), the goal and whether it is met. Rows print the
moment they are added. The markdown file has a generated part (a header with the machine and
the commit, the summary, a table per goal) above MARKER, and whatever is below MARKER is kept.
A run of some goals only (--only, --fleet) replaces those goals' tables and keeps the others,
each table saying which run measured it.
"""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path

MARKER = "<!-- end of the generated part: everything below this line is kept by make bench -->"
ORDER = ["goal1", "goal2", "fleet", "goal3", "goal4", "goal5", "retry", "aware"]
_SECTION = re.compile(r"<!-- section:(\w+) -->\n(.*?)<!-- /section:\1 -->\n", re.S)
_HEADLINE = re.compile(r"<!-- headline (\{.*?\}) -->")


@dataclass
class Row:
    figure: str
    value: str
    ceiling: str = ""
    result: str = ""
    goal: str = ""
    met: bool | None = None
    headline: bool = False


def verdict(met: bool | None) -> str:
    return "" if met is None else ("yes" if met else "**no**")


@dataclass
class Section:
    key: str
    title: str
    method: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def begin(self) -> Section:
        print(f"\n== {self.title}", flush=True)
        print(textwrap.fill(self.method, 100, initial_indent="   ", subsequent_indent="   "))
        return self

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        text = f"  {row.figure}: {row.value}"
        if row.ceiling:
            text += f"  | ceiling {row.ceiling}"
        if row.result:
            text += f"  | {row.result}"
        if row.goal:
            text += f"  (goal {row.goal}: {'met' if row.met else 'NOT met'})"
        print(text, flush=True)
        return row

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(textwrap.fill(text, 100, initial_indent="   - ", subsequent_indent="     "))

    def markdown(self, stamp: str) -> str:
        lines = [f"## {self.title}", "", f"_{stamp}_", "", self.method, ""]
        lines += ["| figure | value | ceiling (same run) | result | goal | met |"]
        lines += ["|---|---|---|---|---|---|"]
        for r in self.rows:
            lines.append(
                f"| {r.figure} | {r.value} | {r.ceiling} | {r.result} | {r.goal} "
                f"| {verdict(r.met)} |"
            )
        lines.append("")
        lines += [f"- {n}" for n in self.notes]
        if self.notes:
            lines.append("")
        for r in self.rows:
            if r.headline:
                head = {"section": self.title.split(":", 1)[0], **asdict(r)}
                lines.append(f"<!-- headline {json.dumps(head, ensure_ascii=False)} -->")
        return "\n".join(lines) + "\n"


def summary(sections: list[Section]) -> None:
    """The headline figures of the run, as a table on stdout."""
    ranked = sorted(sections, key=lambda s: ORDER.index(s.key))
    rows = [(s.title.split(":", 1)[0], r) for s in ranked for r in s.rows if r.headline]
    if not rows:
        return
    cells = [("goal", "figure", "result", "ceiling", "goal", "met")]
    cells += [
        (g, r.figure, r.result or r.value, r.ceiling, r.goal, verdict(r.met)) for g, r in rows
    ]
    widths = [max(len(c[i].replace("**", "")) for c in cells) for i in range(6)]
    print("\n== Summary")
    for i, c in enumerate(cells):
        print(
            "  " + "  ".join(v.replace("**", "").ljust(w) for v, w in zip(c, widths, strict=True))
        )
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))


HOW = """\
`make bench` (`python -m benchmarks.dispatch`) runs everything below in one go and writes this
file and [benchmark.png](benchmark.png); `make bench-fleet` runs the fleet sweep of goal 2 alone
(it replaces that table and keeps the others). Options: `--quick` (a smoke run with small
counts), `--only goal1,goal3,...` (of goal1 goal2 fleet goal3 goal4 goal5 retry aware),
`--backlog N`, `--no-write`, `--out PATH`; `aware` measures issue 14's adaptive concurrency and
retry lane (`--aware-n N`, `--lane-backlog N`). The machine is shared and noisy, so every figure
stands next to a ceiling measured in the same run, and throughput is the better of two bursts
against the better of two ceilings.
`make bench-instructions` (`python -m benchmarks.dispatch.instructions`, `--runs N`, `--n N`)
counts Redis's instructions per delivery in a 3,000-delivery burst with redis-server under
callgrind (it installs valgrind when missing): the figure moves by 2-5% from run to run (three
runs each in one hour: 73.6-76.8k at 122faad, 70.5-73.1k at 1568a3f; 69.7-71.0k at 39aca99 on
another day) where CPU time on this machine moves by a third, so it is the one to compare
commits by.

Processes: one redis-server, one aiohttp receiver (`benchmarks/dispatch/receiver.py`), the raw
loop (`benchmarks/dispatch/raw.py`: a bare `aiohttp.ClientSession` sending the request the daemon
sends, captured at the receiver) and the daemon (`python -m cycles_events.cli run`), each a
process of its own, so CPU time is read from `/proc/<pid>/stat` (utime + stime), memory from
`/proc/<pid>/status`, and Redis's work from `INFO cpu` (used_cpu_user + used_cpu_sys) and
`INFO commandstats` (after `CONFIG RESETSTAT`; commands run inside scripts counted as Redis
counts them, the driver's own pushes and polls taken off)."""


def write(
    path: Path, sections: list[Section], host: dict[str, str], stamp: str, chart: bool
) -> None:
    """Write the generated part of the file, keeping the other goals' tables and the tail."""
    old = path.read_text() if path.exists() else ""
    head, _, tail = old.partition(MARKER)
    if not _:
        head, tail = "", "\n" + old if old else ""
    blocks = dict(_SECTION.findall(head))
    for s in sections:
        blocks[s.key] = s.markdown(stamp)
    ordered = [k for k in ORDER if k in blocks]
    heads = []
    for k in ordered:
        heads += [json.loads(h) for h in _HEADLINE.findall(blocks[k])]
    lines = ["# Benchmark", "", HOW, ""]
    lines += ["| machine | |", "|---|---|"]
    lines += [
        f"| CPU | {host['cpu']} ({host['cores']} cores) |",
        f"| Python | {host['python']} |",
        f"| Redis | {host['redis']} |",
        f"| latest run: commit | `{host['commit']}` ({host['tree']}) |",
        f"| latest run: date | {host['date']} |",
        "",
        "(Tables measured by an earlier, partial run say so in their first line.)",
        "",
        "## Summary",
        "",
        "| goal | figure | result | ceiling | goal | met |",
        "|---|---|---|---|---|---|",
    ]
    for h in heads:
        result = h["result"] or h["value"]
        lines.append(
            f"| {h['section']} | {h['figure']} | {result} | {h['ceiling']} | {h['goal']} "
            f"| {verdict(h['met'])} |"
        )
    lines.append("")
    if chart or (path.parent / "benchmark.png").exists():
        lines += ["![throughput and added latency against offered load](benchmark.png)", ""]
    body = "\n".join(lines) + "\n"
    for k in ordered:
        body += f"<!-- section:{k} -->\n{blocks[k]}<!-- /section:{k} -->\n\n"
    path.write_text(body + MARKER + (tail if tail.startswith("\n") else "\n" + tail))
