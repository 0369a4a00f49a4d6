"""Review in a real browser: the MLflow UI's version pages show the verdict, the drift and the generations.

A real sqlite store with two versions registered by Tether's own registry code (tiny model of
tests/conftest.py): version 1 passes every gate and becomes ``@champion``; version 2 drifts on
general text and is blocked. A real ``mlflow server`` serves the store, and headless Debian
Chromium (``/usr/bin/chromium``; ``.ci/run`` installs it) driven by Playwright for Python opens
each version page, waits for the React app to render the description (the gate report) and
checks what a reviewer reads there. Screenshots go to ``outputs/screenshots/`` (CI artifacts,
git-ignored). Playwright's own browser downloads are never used (no ``playwright install``).

Emoji render as empty boxes here (no emoji font), so nothing below asserts on one.
About 40-60 s on 2 cores: ~20 s for the server to come up, ~10 s per registration.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tiny import reset_mlflow_globals

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO_ROOT / "outputs" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
# The flags that work on this machine (2026-12-01): no sandbox as root, no GPU, nothing phoned home.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]

# Inputs chosen by this test (not measurements): distinctive numbers and texts to find on the page.
# A drift panel of three sources: base perplexity, then the promoted and the blocked candidate's.
# Promoted: every source under the 5% limit. Blocked: only self_samples over it (+17.8%).
PANEL = {"heldout_prose": (23.71, 24.42, 24.06), "python_docs": (14.52, 14.68, 14.61), "self_samples": (15.58, 15.95, 18.35)}
BASE_PPL, BLOCKED_PPL = PANEL["self_samples"][0], PANEL["self_samples"][2]
GENERATIONS = [
    {"id": "g1", "category": "prose", "prompt": "Describe a quiet harbour at dawn.",
     "base": "The boats rest on still water.", "candidate": "Gulls circle the sleeping fishing boats."},
    {"id": "g2", "category": "advice", "prompt": "How do I keep basil alive?",
     "base": "Water it when the soil is dry.", "candidate": "Give it sun and pinch the flowers off."},
]


@pytest.fixture(autouse=True)
def _restore_mlflow():
    yield from reset_mlflow_globals()


def _register(cfg, root: Path, tiny, *, which: int, ndcg: float, key: str):
    """One candidate through tether.registry: gate report as description, verdict tags, promotion."""
    import mlflow

    from tether.eval.gates import beats_reference_gate, perplexity_drift_gate, summarize
    from tether.eval.report import GateReport, to_markdown
    from tether.registry import promote, register_candidate
    from tether.tracking import setup_tracking

    setup_tracking(cfg, root)
    with mlflow.start_run() as run:
        pass
    gates = [perplexity_drift_gate(ppls[which], ppls[0], cfg.gates.max_ppl_drift, metric=source)
             for source, ppls in PANEL.items()]
    gates.append(beats_reference_gate("ndcg_at_10", ndcg, 0.20, "popularity"))
    metrics = {"candidate": {"ndcg_at_10": ndcg, **{f"perplexity.{s}": p[which] for s, p in PANEL.items()}},
               "base": {f"perplexity.{s}": p[0] for s, p in PANEL.items()}, "popularity": {"ndcg_at_10": 0.20}}
    report = GateReport(gates=gates, metrics=metrics, generations=GENERATIONS)
    mv = register_candidate(
        cfg, root, run_id=run.info.run_id, adapter_dir=tiny["adapter"], resolved_base=tiny["resolved"],
        gate_report_md=to_markdown(report), gate_results=gates, metrics=metrics, idempotency_key=key,
    )
    passed, failures = summarize(gates)
    decision = promote(cfg, mv, all_gates_passed=passed, candidate_metric=ndcg,
                       reasons=[g.reason for g in failures], root=root)
    return str(mv.version), gates, decision


@pytest.fixture
def review_store(registry_project, tiny, tmp_path: Path):
    """A served store holding a promoted version 1 and a blocked version 2."""
    from servers import MlflowServer

    cfg, root = registry_project
    promoted = _register(cfg, root, tiny, which=1, ndcg=0.31, key="browser-promoted")
    blocked = _register(cfg, root, tiny, which=2, ndcg=0.33, key="browser-blocked")
    assert promoted[2].decision == "champion" and blocked[2].decision == "blocked"
    db = (root / "mlflow" / "mlflow.db").resolve()
    server = MlflowServer(tmp_path / "server", backend_uri=f"sqlite:///{db.as_posix()}").start()
    try:
        yield {"uri": server.uri, "name": cfg.registry.name, "promoted": promoted, "blocked": blocked}
    finally:
        server.stop()


@pytest.fixture
def browser_page(tmp_path: Path):
    """A page of headless Debian Chromium with a fresh profile (Playwright, its executable_path)."""
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} not found: install Debian's chromium (`apt-get install -y chromium`; .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS,
            # Tall: the UI scrolls inside its own pane, so a screenshot holds what the viewport shows.
            viewport={"width": 1600, "height": 2600},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(60_000)  # the first render of the React app on a busy 2-core machine
            yield page
        finally:
            context.close()


def _open_version(page, store: dict, version: str):
    """Open a version page and wait until the React app has rendered its description (the gate report)."""
    page.goto(f"{store['uri']}/#/models/{store['name']}/versions/{version}")
    page.get_by_role("heading", name="Gates").wait_for()
    return page


def _text(page) -> str:
    """What the page says, with the UI's non-breaking spaces ("@\xa0champion") as plain ones."""
    return page.locator("body").inner_text().replace("\xa0", " ")


def _aliases(text: str) -> set[str]:
    """The aliases a version page shows ("Aliases : @ champion")."""
    found = re.search(r"Aliases\s*:\s*((?:@ ?[\w-]+\s*)*)", text)
    return set(re.findall(r"@ ?([\w-]+)", found.group(1))) if found else set()


def _versions_listed(text: str) -> dict[str, str]:
    """Version -> the listing's text for it, on the registered model's page (newest first)."""
    parts = re.split(r"^Version (\d+)$", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def _table_after(page, heading: str):
    """The first table after the description's heading ``heading``, as a list of rows of cell texts."""
    table = page.locator(f"xpath=//h2[normalize-space()='{heading}']/following::table[1]")
    rows = table.locator("tr")
    return [[c.strip() for c in rows.nth(i).locator("th, td").all_inner_texts()] for i in range(rows.count())]


def _rows_by(rows: list[list[str]], column: str) -> dict[str, list[dict[str, str]]]:
    header, body = rows[0], rows[1:]
    out: dict[str, list[dict[str, str]]] = {}
    for row in body:
        cells = dict(zip(header, row))
        out.setdefault(cells[column], []).append(cells)
    return out


def _check_drift(page, gates) -> None:
    """The drift a reviewer sees, per drift-panel source: its Gates row and its "Drift by source" row,
    checked against the GateResult objects the test made."""
    drift_gates = [g for g in gates if g.gate == "perplexity_drift"]
    assert [g.metric for g in drift_gates] == list(PANEL)
    shown = _rows_by(_table_after(page, "Gates"), "gate").get("perplexity_drift", [])
    assert [row["metric"] for row in shown] == list(PANEL)
    by_source = _rows_by(_table_after(page, "Drift by source"), "source")
    assert set(by_source) == set(PANEL)
    for gate, row in zip(drift_gates, shown):
        drift = gate.candidate / gate.reference - 1
        assert float(row["candidate"]) == pytest.approx(gate.candidate, rel=1e-3)
        assert float(row["reference"]) == pytest.approx(gate.reference, rel=1e-3)
        assert f"{gate.threshold:.2%}" in row["threshold"]  # "max 5.00%"
        assert f"{drift:+.2%}" in row["reason"] and f"on {gate.metric}" in row["reason"]
        assert ("pass" if gate.passed else "fail") in row["reason"].rsplit(":", 1)[-1].lower()
        (panel_row,) = by_source[gate.metric]
        assert float(panel_row["base"]) == pytest.approx(gate.reference, rel=1e-3)
        assert float(panel_row["candidate"]) == pytest.approx(gate.candidate, rel=1e-3)
        assert panel_row["drift"] == f"{drift:+.2%}" and "5.00%" in panel_row["limit"]


def _check_generations(page) -> None:
    rows = _rows_by(_table_after(page, "Generations: base vs candidate"), "prompt")
    for g in GENERATIONS:
        (row,) = rows[g["prompt"]]
        assert row["base"] == g["base"] and row["candidate"] == g["candidate"]


def _screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000  # a rendered page, not an empty one
    return path


def test_version_pages_show_verdict_drift_and_generations(review_store: dict, browser_page) -> None:
    page = browser_page
    v1, gates1, _ = review_store["promoted"]
    v2, gates2, _ = review_store["blocked"]

    # 1. The promoted version: its verdict, its aliases, the drift row, the generations.
    _open_version(page, review_store, v1)
    text = _text(page)
    assert re.search(r"Verdict:\W*PROMOTE", text), text[:3000]
    assert _aliases(text) == {"champion"}
    _check_drift(page, gates1)
    _check_generations(page)
    _screenshot(page, "version-promoted.png")

    # 2. The blocked version: BLOCKED with the failing gate and its reason; @champion stays on v1.
    _open_version(page, review_store, v2)
    text = _text(page)
    assert re.search(r"Verdict:\W*BLOCKED", text), text[:3000]
    failing = [g for g in gates2 if not g.passed]
    assert [(g.gate, g.metric) for g in failing] == [("perplexity_drift", "self_samples")]  # attribution
    assert "perplexity drift on self_samples" in text and f"{BLOCKED_PPL / BASE_PPL - 1:+.2%}" in text
    assert _aliases(text) == {"challenger"}
    _check_drift(page, gates2)
    _check_generations(page)
    _screenshot(page, "version-blocked.png")

    # 3. The registered model's page lists both versions with their aliases.
    page.goto(f"{review_store['uri']}/#/models/{review_store['name']}")
    page.get_by_text(f"Version {v1}", exact=True).first.wait_for()
    listed = _versions_listed(_text(page))
    assert set(listed) == {v1, v2}
    assert re.search(r"verdict\s*:\s*PROMOTE", listed[v1]) and "@ champion" in listed[v1]
    assert re.search(r"verdict\s*:\s*BLOCKED", listed[v2]) and "@ challenger" in listed[v2]
    assert re.search(r"blocked_reason\s*:\s*perplexity drift", listed[v2])
    _screenshot(page, "registered-model.png")


def test_screenshots_folder_is_git_ignored() -> None:
    """CI keeps outputs/screenshots/ as artifacts; git never sees them."""
    import subprocess

    if shutil.which("git") is None:  # pragma: no cover - git is part of the project's tooling
        raise RuntimeError("git not found")
    probe = "outputs/screenshots/version-promoted.png"
    proc = subprocess.run(["git", "check-ignore", "-q", probe], cwd=REPO_ROOT)
    assert proc.returncode == 0, f"{probe} is not git-ignored"
