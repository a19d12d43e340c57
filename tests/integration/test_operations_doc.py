"""docs/operations.md against the code: every metric and every log action is documented.

The log catalogue is read from the code itself (every `logs.<level>("action", ...)` call under
cycles_events/), so a new action, or one whose level changes, fails here until the page
lists it with an example line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.dashboard_support import exposed_metrics

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "docs" / "operations.md"
README = ROOT / "README.md"
LOG_CALL = re.compile(r"\blogs\.(debug|info|warning|error)\(\s*\"([a-z_]+)\"")


def section(text: str, heading: str) -> str:
    """The body of a `## ` or `### ` section, up to the next heading of the same or a
    higher level."""
    level = heading.split(" ", 1)[0]
    start = text.index(heading + "\n") + len(heading) + 1
    stop = re.compile(rf"^#{{1,{len(level)}}} ", re.M).search(text, start)
    return text[start : stop.start() if stop else len(text)]


def code_actions() -> dict[str, set[str]]:
    """action -> the levels it is logged at, from the source."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "cycles_events").rglob("*.py")):
        for level, action in LOG_CALL.findall(path.read_text()):
            found.setdefault(action, set()).add(level.upper())
    return found


def test_the_code_has_actions_to_document() -> None:
    actions = code_actions()
    assert {"started", "delivery_failed", "unexpected_error", "redis_unavailable"} <= set(actions)


def test_every_log_action_is_in_the_catalogue_with_its_level() -> None:
    body = section(OPERATIONS.read_text(), "## Log lines")
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| ([A-Z]+) \|", body, re.M))
    actions = code_actions()
    assert set(rows) == set(actions), {
        "undocumented": sorted(set(actions) - set(rows)),
        "not in the code": sorted(set(rows) - set(actions)),
    }
    for action, level in rows.items():
        assert level in actions[action], (action, level, actions[action])


def test_every_log_action_has_an_example_line() -> None:
    body = section(OPERATIONS.read_text(), "## Log lines")
    blocks = re.findall(r"```json\n(.*?)```", body, re.S)
    assert blocks, "no ```json block of example lines"
    examples: dict[str, dict[str, object]] = {}
    for line in "".join(blocks).splitlines():
        doc = json.loads(line)
        assert set(doc) >= {"ts", "level", "action"}, line
        assert list(doc)[:3] == ["ts", "level", "action"], line  # the order the daemon writes
        assert str(doc["action"]) not in examples, f"two examples of {doc['action']}"
        examples[str(doc["action"])] = doc
    actions = code_actions()
    assert set(examples) == set(actions), sorted(set(examples) ^ set(actions))
    for action, doc in examples.items():
        assert doc["level"] in actions[action], (action, doc["level"])
        for field in ("password", "secret", "authorization"):
            assert field not in {k.lower() for k in doc}, (action, field)


def documented_metrics() -> set[str]:
    body = section(OPERATIONS.read_text(), "### Metrics")
    return set(re.findall(r"^\| `(cycles_[a-z_]+)` \|", body, re.M))


def test_every_exposed_metric_is_documented() -> None:
    exposed = {m for m in exposed_metrics() if m.startswith("cycles_")}
    histograms = {m[: -len("_bucket")] for m in exposed if m.endswith("_bucket")}
    expected = {
        m for m in exposed if not any(m.startswith(h + "_") for h in histograms)
    } | histograms
    documented = documented_metrics()
    assert documented == expected, {
        "undocumented": sorted(expected - documented),
        "not exposed": sorted(documented - expected),
    }


def test_every_metric_the_readme_lists_is_documented() -> None:
    text = README.read_text()
    start = text.index("Metrics: the contract's")
    paragraph = text[start : text.index("\n\n", start)]
    names = [re.sub(r"\{.*", "", n) for n in re.findall(r"`([^`]+)`", paragraph)]
    documented = documented_metrics()
    listed = 0
    for name in names:
        if name.startswith("cycles_"):
            assert name in documented, name
            listed += 1
        elif name.startswith("…_"):
            suffix = name[1:]
            assert any(m.endswith(suffix) for m in documented), name
            listed += 1
    assert listed >= 20
