"""The last-epoch section of the report's document: every benchmark's main metric with Holm and win counts,
retrieval recall@k both ways, every metric as the paper counts its wins, and the DataComp-style average."""
from __future__ import annotations

from typing import Any

from pisweep.report.docmodel import (
    BAD,
    DIM,
    GOOD,
    PLAIN,
    WARN,
    Block,
    Cell,
    Table,
    arm_names,
    interval,
    noise_note,
    num,
    pval,
    signed,
    tone_of,
)


def last_blocks(rep: dict[str, Any], gr: dict[str, Any], c: str, last: dict[str, Any]) -> list[Block]:
    a, b = arm_names(c)
    state = "final" if last["final"] else f"budget {gr['epochs']}: still running"
    note = noise_note([r["interval"] for r in last["tasks"]], rep["settings"]["assume_no_seed_noise"])
    t = Table(f"epoch {last['epoch']} ({state}) · every benchmark · {a} vs {b}" + (f" · {note}" if note else ""),
              [("benchmark", "left"), ("metric", "left"), (b, "right"), (a, "right"), ("Δ [interval]", "right"),
               ("p", "right"), ("p Holm", "right"), ("outcome", "left"), ("runs", "right")])
    missing = []
    for r in last["tasks"]:
        iv = r["interval"]
        if not iv:
            missing.append(r["task"])
            continue
        o = r.get("outcome", "tie")
        t.rows.append([Cell(r["name"]), Cell(r["metric"]), Cell(num(iv["mean_b"])), Cell(num(iv["mean_a"])),
                       Cell(f"{signed(iv['delta'])} {interval(iv['lo'], iv['hi'], True)}".strip(), tone_of(iv)),
                       Cell(pval(iv["p"])), Cell(pval(r.get("p_holm"))),
                       Cell(o, GOOD if o == "win" else BAD if o == "loss" else DIM if o == "no verdict" else PLAIN),
                       Cell(f"{r['n_a']}/{r['planned_a']} {r['n_b']}/{r['planned_b']}")])
    out = [Block("table", table=t)] if t.rows else []
    if missing:
        out.append(Block("p", f"no result at epoch {last['epoch']} ({len(missing)}): {', '.join(missing)} "
                              "(reasons under Coverage)", WARN))
    tl = last["tally"]
    parts = []
    for kind in ("classification", "retrieval"):
        k = tl[kind]
        if k["planned"]:
            parts.append(f"{k['wins']}/{k['with_results']} {kind} (of {k['planned']} planned; sign test "
                         f"p = {pval(k['sign_p'])})")
    al = tl["all"]
    sig = al["significant"]
    holm = last.get("holm") or {}
    within = (f" over the family '{holm['name']}' ({holm['tests']} tests: "
              f"{', '.join(k.replace('-', ' − ') for k in holm['comparisons'])} × their benchmarks)"
              if holm.get("family") else "")
    judged = (f"after Holm at {last['alpha']}{within}: {sig['win']} wins, {sig['loss']} losses, {sig['tie']} ties"
              + (f", {sig['no verdict']} without a verdict" if sig.get("no verdict") else ""))
    out.append(Block("p", f"wins ({a} > {b}): " + ", ".join(parts) + f"; all {al['wins']}/{al['with_results']} "
                          f"(p = {pval(al['sign_p'])}) · {judged}"))
    rr = [r for r in last["retrieval"] if r["interval"]]
    absent = sorted({f"{r['name']} {r['direction']} R@{r['k']}" for r in last["retrieval"] if not r["interval"]})
    if absent:
        out.append(Block("p", f"no retrieval recall at epoch {last['epoch']} for: {', '.join(absent)}", WARN))
    if rr:
        note2 = noise_note([r["interval"] for r in rr], rep["settings"]["assume_no_seed_noise"])
        t2 = Table(f"retrieval recall@k at epoch {last['epoch']} · {a} vs {b} (resampled by image)"
                   + (f" · {note2}" if note2 else ""),
                   [("benchmark", "left"), ("direction", "left"), ("k", "right"), (b, "right"), (a, "right"),
                    ("Δ [interval]", "right"), ("p", "right")])
        for r in rr:
            iv = r["interval"]
            t2.rows.append([Cell(r["name"]), Cell(r["direction"]), Cell(str(r["k"])),
                            Cell(num(iv["mean_b"]) if iv else "—"), Cell(num(iv["mean_a"]) if iv else "—"),
                            Cell(f"{signed(iv['delta'])} {interval(iv['lo'], iv['hi'], True)}".strip() if iv else
                                 "no result", tone_of(iv)), Cell(pval(iv["p"]) if iv else "—")])
        out.append(Block("table", table=t2))
    return out + paper_blocks(rep, last, a, b)


def p_text(p: float | None) -> str:
    """"= 0.012" or "< 0.001", to follow a "p"."""
    text = pval(p)
    return f"< {text[1:]}" if text.startswith("<") else f"= {text}"


def paper_blocks(rep: dict[str, Any], last: dict[str, Any], a: str, b: str) -> list[Block]:
    """What the paper reports: every classification metric per benchmark, its win count over every metric of
    every benchmark, and the DataComp-style average of the main metrics."""
    out: list[Block] = []
    by_task: dict[str, dict[str, Any]] = {}
    for r in last.get("metrics", []):
        by_task.setdefault(r["task"], {"name": r["name"]})[r["metric"]] = r["interval"]
    if by_task:
        ivs = [iv for per in by_task.values() for k, iv in per.items() if k != "name"]
        note = noise_note(ivs, rep["settings"]["assume_no_seed_noise"])
        t = Table(f"every classification metric at epoch {last['epoch']} · Δ {a} − {b} [interval]"
                  + (f" · {note}" if note else ""),
                  [("benchmark", "left"), ("top-1 (acc1)", "right"), ("top-5 (acc5)", "right"),
                   ("per-class recall", "right")])
        for per in by_task.values():
            cells = [Cell(per["name"])]
            for metric in ("acc1", "acc5", "mean_per_class_recall"):
                iv = per.get(metric)
                cells.append(Cell(f"{signed(iv['delta'])} {interval(iv['lo'], iv['hi'], True)}".strip(), tone_of(iv))
                             if iv else Cell("—"))
            t.rows.append(cells)
        out.append(Block("table", table=t))
    pt = last.get("paper_tally") or {}
    if not by_task and pt:
        out.append(Block("p", "every classification metric and the paper's count per metric type: --html, --md or "
                              "--json", DIM))
    elif pt:
        parts = [f"{kind} {v['wins']}/{v['with_results']}" for kind, v in pt.items() if kind != "overall"]
        ov = pt.get("overall", {})
        out.append(Block("p", f"the paper's count ({a} > {b} on every metric of every benchmark, point deltas): "
                              + " · ".join(parts) + f" · overall {ov.get('wins', 0)}/{ov.get('with_results', 0)} "
                              "(the metrics of one benchmark move together, so no sign test is given for it; the "
                              "DataComp main-metric count is the one above)"))
    avg = last.get("average")
    if avg:
        iv = avg.get("interval")
        over = f"{len(avg['tasks'])} of {avg['planned']} benchmarks"
        if iv:
            note = noise_note([iv], rep["settings"]["assume_no_seed_noise"])
            out.append(Block("p", f"DataComp-style average of the main metrics ({over}): {a} − {b} = "
                                  f"{signed(iv['delta'])} {interval(iv['lo'], iv['hi'], True)}, p {p_text(iv['p'])} "
                                  f"({iv['n_a']} and {iv['n_b']} runs with every benchmark)"
                                  + (f" · {note}" if note else ""), tone_of(iv) if iv.get("decides") else PLAIN))
        else:
            out.append(Block("p", f"DataComp-style average ({over}): {avg.get('reason', 'no interval')}", WARN))
    return out
