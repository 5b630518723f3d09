"""Threshold evaluator: hit rate and false-hit rate of the semantic match per threshold.

What: given labelled question pairs (cached question, new question, should the cached answer
serve the new one?) and their cosine similarities, :func:`sweep` reports for every threshold in
0.70 … 0.99 (step 0.01) the share of true paraphrases served ("hit rate") and the share of traps
served ("false-hit rate"), with and without the hard-negative guard; :func:`best_threshold`
picks the threshold with the most paraphrase hits within a false-hit budget; :func:`render`
prints the table and the rows that fail. It backs ``aigw eval`` (the operator re-runs it on their
own traffic, as Alibaba Cloud's guide advises) and the project's own calibration.

Why separate from the embedder: the sweep is pure arithmetic on given similarities, so it is
tested without a model, and the same code scores any embedder's output.

Input format (:func:`load_pairs`): TSV with a header ``cached new should_hit [kind] [lang]``;
``should_hit`` is 1/0; blank lines and lines starting with ``#`` are skipped. A malformed row
raises :class:`ValueError` naming its line.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Pair",
    "Report",
    "Row",
    "best_threshold",
    "load_pairs",
    "render",
    "sweep",
    "thresholds",
]

GuardFn = Callable[[str, str], "str | None"]


@dataclass(frozen=True, slots=True)
class Pair:
    """One labelled pair: may ``cached``'s answer serve ``new``?"""

    cached: str
    new: str
    should_hit: bool
    kind: str = ""
    lang: str = ""


@dataclass(frozen=True, slots=True)
class Row:
    """The outcome at one threshold: hit rates (0..1) and counts, without and with the guard."""

    threshold: float
    hit_rate: float
    false_hit_rate: float
    guarded_hit_rate: float
    guarded_false_hit_rate: float
    hits: int
    false_hits: int
    guarded_hits: int
    guarded_false_hits: int


@dataclass(slots=True)
class Report:
    """What :func:`sweep` measured: one :class:`Row` per threshold and the per-pair inputs."""

    pairs: Sequence[Pair]
    similarities: Sequence[float]
    reasons: Sequence[str | None]
    positives: int
    negatives: int
    rows: list[Row] = field(default_factory=list)
    guarded: bool = True

    def row(self, threshold: float) -> Row:
        """The row for ``threshold`` (to the nearest 0.01)."""
        for row in self.rows:
            if abs(row.threshold - threshold) < 0.005:
                return row
        raise KeyError(threshold)


def thresholds(start: float = 0.70, stop: float = 0.99, step: float = 0.01) -> list[float]:
    """The thresholds swept, rounded so 0.85 is 0.85 and not 0.8500000000000001."""
    n = round((stop - start) / step)
    return [round(start + k * step, 4) for k in range(n + 1)]


def _rate(count: int, total: int) -> float:
    return count / total if total else 0.0


def sweep(
    pairs: Sequence[Pair],
    similarities: Sequence[float],
    guard: GuardFn | None,
    grid: Sequence[float] | None = None,
) -> Report:
    """Hit and false-hit rates at every threshold, without and with ``guard``.

    A pair is served at threshold t when its similarity ≥ t (and, guarded, the guard returns
    None). The guard runs once per pair, not per threshold. Rates are over the paraphrases
    (should_hit) and the traps (not should_hit) respectively; an empty class has rate 0.
    """
    if len(pairs) != len(similarities):
        raise ValueError(f"{len(pairs)} pairs but {len(similarities)} similarities")
    reasons: list[str | None] = [
        guard(p.cached, p.new) if guard is not None else None for p in pairs
    ]
    pos = sum(1 for p in pairs if p.should_hit)
    neg = len(pairs) - pos
    report = Report(pairs, list(map(float, similarities)), reasons, pos, neg)
    report.guarded = guard is not None
    for t in grid if grid is not None else thresholds():
        hits = fh = ghits = gfh = 0
        for p, s, r in zip(pairs, report.similarities, reasons, strict=True):
            if s < t:
                continue
            if p.should_hit:
                hits += 1
                ghits += r is None
            else:
                fh += 1
                gfh += r is None
        report.rows.append(
            Row(
                threshold=t,
                hit_rate=_rate(hits, pos),
                false_hit_rate=_rate(fh, neg),
                guarded_hit_rate=_rate(ghits, pos),
                guarded_false_hit_rate=_rate(gfh, neg),
                hits=hits,
                false_hits=fh,
                guarded_hits=ghits,
                guarded_false_hits=gfh,
            )
        )
    return report


def best_threshold(report: Report, max_false_hit_rate: float, guarded: bool = True) -> Row | None:
    """The row with the highest hit rate whose false-hit rate is within the budget.

    Ties go to the higher threshold (same hits, more margin). None if no threshold meets it.
    """
    best: Row | None = None
    for row in report.rows:
        fhr = row.guarded_false_hit_rate if guarded else row.false_hit_rate
        hr = row.guarded_hit_rate if guarded else row.hit_rate
        if fhr > max_false_hit_rate:
            continue
        if best is None:
            best = row
            continue
        best_hr = best.guarded_hit_rate if guarded else best.hit_rate
        if hr > best_hr or (hr == best_hr and row.threshold > best.threshold):
            best = row
    return best


def load_pairs(path: str | Path) -> list[Pair]:
    """Read a labelled TSV (see the module docstring). Raises ValueError on a malformed row."""
    out: list[Pair] = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header: list[str] | None = None
        for lineno, cols in enumerate(reader, 1):
            if not cols or not "".join(cols).strip() or cols[0].startswith("#"):
                continue
            if header is None:
                header = [c.strip().lower() for c in cols]
                if header[:3] != ["cached", "new", "should_hit"]:
                    raise ValueError(f"{path}:{lineno}: header must start cached, new, should_hit")
                continue
            if len(cols) < 3 or cols[2].strip() not in ("0", "1"):
                raise ValueError(f"{path}:{lineno}: expected cached, new, should_hit (0/1)")
            extra = dict(zip(header[3:], cols[3:], strict=False))
            out.append(
                Pair(
                    cols[0],
                    cols[1],
                    cols[2].strip() == "1",
                    extra.get("kind", ""),
                    extra.get("lang", ""),
                )
            )
    return out


def _pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def render(
    report: Report,
    threshold: float | None = None,
    max_false_hit_rate: float = 0.05,
    show_failures: bool = True,
) -> str:
    """The table (threshold → hit %, false-hit % without/with guard), the best threshold for the
    budget, and the rows that fail at ``threshold`` (default: that best threshold)."""
    lines = [
        f"pairs: {report.positives} should hit, {report.negatives} should not",
        "threshold  hit%   false-hit%  | guarded: hit%  false-hit%",
    ]
    for r in report.rows:
        lines.append(
            f"  {r.threshold:.2f}    {_pct(r.hit_rate)}  {_pct(r.false_hit_rate)}    |"
            f"          {_pct(r.guarded_hit_rate)}  {_pct(r.guarded_false_hit_rate)}"
        )
    best = best_threshold(report, max_false_hit_rate, guarded=report.guarded)
    label = "with guard" if report.guarded else "without guard"
    if best is None:
        lines.append(f"no threshold keeps false hits ≤ {_pct(max_false_hit_rate)} ({label})")
    else:
        hr = best.guarded_hit_rate if report.guarded else best.hit_rate
        fhr = best.guarded_false_hit_rate if report.guarded else best.false_hit_rate
        lines.append(
            f"best threshold for false hits ≤ {_pct(max_false_hit_rate).strip()} ({label}): "
            f"{best.threshold:.2f} (hit {_pct(hr).strip()}, false hit {_pct(fhr).strip()})"
        )
    t = threshold if threshold is not None else (best.threshold if best else None)
    if show_failures and t is not None:
        lines.append(f"failing rows at {t:.2f}:")
        for row in failures(report, t):
            lines.append(row)
    return "\n".join(lines)


def failures(report: Report, threshold: float) -> list[str]:
    """The pairs decided wrongly at ``threshold`` (guard applied if the report has one)."""
    out = []
    for p, s, r in zip(report.pairs, report.similarities, report.reasons, strict=True):
        served = s >= threshold and r is None
        if served == p.should_hit:
            continue
        if p.should_hit:
            why = f"missed ({'guard: ' + r if r else 'below threshold'})"
        else:
            why = "false hit"
        out.append(f"  {s:.4f}  {why:32s} [{p.kind or '-'}] {p.cached!r} -> {p.new!r}")
    return out
