"""The report as a neutral document (headings, paragraphs, tables, figure slots), rendered by render_terminal.py
(rich), export.py (Markdown) and html.py, so the three say the same things in the same order. Pure."""
from __future__ import annotations

import re
from typing import Any

from pisweep.eval import registry
from pisweep.report.doc_dose import dose_blocks
from pisweep.report.doc_last import last_blocks
from pisweep.report.doc_matrix import matrix_blocks
from pisweep.report.doc_nights import nights_blocks
from pisweep.report.docmodel import (
    BAD,
    DIM,
    GOOD,
    METHODS,
    PLAIN,
    WARN,
    Block,
    Cell,
    Table,
    arm_cells,
    arm_columns,
    arm_names,
    epoch_range,
    epochs_text,
    hours,
    noise_note,
)

RUN_TABLE_LIMIT = 40  # runs listed one by one in the cost section


def document(rep: dict[str, Any], figures: bool = False) -> list[Block]:
    """Every section of the report; ``figures`` adds figure slots (HTML)."""
    s = rep["settings"]
    main = registry.get_task(rep["main_task"])
    out = [Block("h1", f"pisweep report · study {rep['study']}")]
    out.append(Block("p", f"main benchmark {main.display_name} ({rep['main_task']}, {rep['main_metric']}) · "
                          f"{int(s['level'] * 100)}% intervals over seeds and test set (t, S − 1 degrees of "
                          f"freedom) · verdicts: Holm at alpha {s['alpha']} over each family's comparisons and "
                          f"benchmarks together (every arm against random; perceptual against each control and "
                          f"posthoc) · "
                          f"suite v{rep['suite_version']}"))
    out.append(Block("p", method_text(rep), WARN if rep["method"]["fallbacks"] else PLAIN))
    out.append(Block("h2", "The answer"))
    if rep.get("world"):
        out.append(Block("p", rep["world"]["text"][:1].upper() + rep["world"]["text"][1:], DIM))
    for a in rep.get("answer", []):
        out.append(Block("p", a["text"], PLAIN if a["decides"] else WARN))
    if figures:
        out.append(Block("figure", figure="answer"))
    cov = rep["coverage"]
    if cov["still_running"]:
        out.append(Block("p", "Study still running or incomplete: this is what is known so far; what is missing is "
                              "marked (* partial epoch) and listed under Coverage.", WARN))
    for gr in rep["groups"]:
        out += group_blocks(rep, gr, figures)
    if figures:
        out += [Block("h2", "Emergence against data scale"),
                Block("p", "Improvements manifest at different stages depending on the data: the emergence epoch "
                           "of each group (main benchmark; other benchmarks faint), 'none' when not yet."),
                Block("figure", figure="emergence")]
    out += coverage_blocks(rep) + cost_blocks(rep) + definition_blocks(rep)
    return out


def method_text(rep: dict[str, Any]) -> str:
    m = rep["method"]
    done = ", ".join(f"{METHODS.get(k, k)}: {n}" for k, n in sorted(m["intervals"].items())) or "none yet"
    text = f"what the intervals include: {done}."
    if m["fallbacks"]:
        why = "; ".join(f"{k} ({n}, e.g. {m['fallback_examples'].get(k, '')})" for k, n in m["fallbacks"].items())
        text += (" Seed-level intervals from the ledger's per-run values where per-example results were not usable: "
                 + why + ". They leave the test set's noise out, and are undefined with one seed per arm.")
    return text


def group_blocks(rep: dict[str, Any], gr: dict[str, Any], figures: bool) -> list[Block]:
    cmps = rep["comparisons"]
    scale = f"scale {gr['scale']}" + (f" ({gr['samples']:,} samples/epoch)" if gr.get("samples") else "")
    out = [Block("h2", f"{scale} · {gr['epochs']} epochs", group=gr)]
    main = gr.get("main")
    arms = list(gr["arms"])
    cols = [("epoch", "right")] + arm_columns(arms, cmps)
    note = noise_note([d for row in (main or {}).get("rows", []) for d in row["deltas"].values()],
                      rep["settings"]["assume_no_seed_noise"])
    t = Table(f"{registry.get_task(rep['main_task']).display_name} ({rep['main_metric']}) per evaluated epoch: "
              f"mean over seeds [{int(rep['settings']['level'] * 100)}% interval]" + (f" · {note}" if note else ""),
              cols)
    for row in (main or {}).get("rows", []):
        complete = all(row["complete"].values()) if row["complete"] else True
        t.rows.append([Cell(f"{row['epoch']}" + ("" if complete else "*"))] + arm_cells(row, arms, cmps))
    if main and main["rows"]:
        out.append(Block("table", table=t))
    else:
        out.append(Block("p", f"no result of {rep['main_task']} yet in this group.", WARN))
    for c in cmps:
        e = (main or {}).get("emergence", {}).get(c)
        if e is not None:
            out.append(Block("p", emergence_text(c, e), GOOD if e.get("emergence_epoch") else PLAIN))
    if main and main["pending_epochs"]:
        out.append(Block("p", f"not evaluated yet: epochs {epochs_text(main['pending_epochs'])}", DIM))
    if figures and gr.get("series"):
        out += [Block("h3", "Every benchmark per epoch (mean, interval band)"),
                Block("figure", figure=f"curves:{gr['key']}"),
                Block("h3", "Delta heatmap (benchmark × epoch)"), Block("figure", figure=f"heatmap:{gr['key']}")]
    out += matrix_blocks(rep, gr, figures)
    for c in cmps:
        last = gr.get("last", {}).get(c)
        if last:
            out += last_blocks(rep, gr, c, last)
    if gr.get("last_epoch") is None:
        out.append(Block("p", "no epoch evaluated for every run yet: no last-epoch table.", WARN))
    return out + dose_blocks(rep, gr, figures) + nights_blocks(rep, gr, figures)


def emergence_text(c: str, e: dict[str, Any]) -> str:
    a, b = arm_names(c)
    used = e.get("epochs_used") or []
    if e.get("at_source_epochs"):
        return (f"{a} vs {b}: at the posthoc cells' source epoch{'s' * (len(used) != 1)} "
                f"{epochs_text(used) if used else '(none evaluated for every run yet)'} only: a fine-tune of the "
                f"random runs' weights there, so no emergence or crossover epoch")
    if not used:
        return f"emergence ({a} vs {b}): no epoch evaluated for every run yet"
    span = f"over epochs {epochs_text(used)} of {e.get('budget')}"
    cross = e.get("crossover_epoch")
    cross_t = f"crossover epoch {cross}" if cross is not None else "no crossover (the mean delta is not above zero "\
                                                                   "through the last epoch)"
    if not e.get("decides", True):
        return (f"emergence epoch ({a} − {b}): no verdict ({span}; its intervals leave training randomness out: "
                f"run 2+ seeds per arm, or --assume-no-seed-noise) · {cross_t}")
    dist = e.get("distribution") or {}
    if cross is not None and dist:
        cross_t += f" {epoch_range(dist['crossover'])}"
    if dist:
        sus = dist["sustained_from"]
        likely = [k for k in sorted(sus, key=int) if sus[k] >= 0.95]
        cross_t += (f" · gain sustained from epoch {likely[0]} on with probability {sus[likely[0]]:.2f}" if likely
                    else f" · no epoch from which the gain is sustained with probability 0.95 "
                         f"(highest: {max(sus.values()):.2f})")
    if e.get("emergence_epoch") is None:
        return f"emergence epoch ({a} − {b}): not yet ({span}) · {cross_t}"
    prov = " (provisional: the last evaluated epoch or short of the budget)" if e.get("provisional") else ""
    em = f" {epoch_range(dist['emergence'])}" if dist else ""
    return f"emergence epoch ({a} − {b}): {e['emergence_epoch']}{em}{prov} {span} · {cross_t}"


def coverage_blocks(rep: dict[str, Any]) -> list[Block]:
    cov = rep["coverage"]
    states = ", ".join(f"{n} {k}" for k, n in sorted(cov["run_states"].items()))
    out = [Block("h2", "Coverage"),
           Block("p", f"runs: {cov['runs_with_main_results']}/{cov['runs_planned']} with results of "
                      f"{rep['main_task']} ({states}) · benchmarks with results: {len(cov['tasks_with_results'])}/"
                      f"{cov['tasks_planned']} · evals queued or running: {cov['evals_open']}")]
    if cov["runs_without_main_results"]:
        listed = cov["runs_without_main_results_list"][:20]
        more = cov["runs_without_main_results"] - len(listed)
        out.append(Block("p", f"missing cells ({cov['runs_without_main_results']} runs without results of "
                              f"{rep['main_task']}): " + ", ".join(f"{r['label']} ({r['state']}"
                                                                    + (f": {r['reason']}" if r["reason"] else "") + ")"
                                                                    for r in listed)
                         + (f", and {more} more" if more > 0 else ""), WARN))
    if cov["datasets_missing"]:
        out.append(Block("p", f"missing datasets ({len(cov['datasets_missing'])}): "
                              + ", ".join(f"{t} ({_short(w)})" for t, w in cov["datasets_missing"].items())
                              + _under(cov["datasets_missing"].values()), WARN))
    if cov["evals_failed"]:
        out.append(Block("p", "failed evals: " + ", ".join(
            f"{t}: {f['evals']} ({f['reason']})" for t, f in cov["evals_failed"].items()), BAD))
    other = [t for t in cov["tasks_without_results"]
             if t not in cov["datasets_missing"] and t not in cov["evals_failed"]]
    if other:
        out.append(Block("p", f"benchmarks not evaluated yet: {', '.join(other)}", WARN))
    for g in cov["groups_short_of_budget"]:
        out.append(Block("p", f"group {g['group']}: last epoch evaluated for every run is "
                              f"{g['last_epoch'] if g['last_epoch'] is not None else 'none'} of {g['budget']}", WARN))
    return out


_PATH = re.compile(r"(/[^\s:,()]+)+")


def _short(reason: str | None) -> str:
    """A reason with its paths cut to their last part (the folder is named; the parent is said once)."""
    return _PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1], reason or "?")


def _under(reasons: Any) -> str:
    parents = set()
    for r in reasons:
        m = _PATH.search(r or "")
        if m:
            parents.add(m.group(0).rstrip("/").rsplit("/", 1)[0])
    return f" (under {parents.pop()})" if len(parents) == 1 else ""


def cost_blocks(rep: dict[str, Any]) -> list[Block]:
    c = rep["cost"]
    u = c["unit"]
    t = Table(f"Cost ({u}): wall time × ranks of every attempt", [
        ("arm", "left"), ("runs", "right"), ("attempts", "right"), ("preemptions", "right"), ("stage 2", "right"),
        ("stage 1", "right"), ("total", "right"), ("per run", "right"), ("lost", "right")])
    for arm, a in c["arms"].items():
        t.rows.append([Cell(arm), Cell(str(a["runs"])), Cell(str(a["attempts"])), Cell(str(a["preemptions"])),
                       Cell(hours(a["stage2_h"])), Cell(hours(a["stage1_h"])), Cell(hours(a["total_h"])),
                       Cell(hours(a["per_run_h"])), Cell(hours(a["lost_h"]), WARN if a["lost_h"] else PLAIN)])
    out = [Block("h2", "Cost"), Block("table", table=t),
           Block("p", f"total {hours(c['total_h'])} {u}, of which {hours(c['lost_h'])} lost to interrupted attempts "
                      f"(redone after a requeue). {c['note']}." + (f" {c['attempts_without_end']} attempts have no "
                                                                   f"recorded end (not counted)."
                                                                   if c["attempts_without_end"] else ""), DIM)]
    runs = c["runs"]
    if 0 < len(runs) <= RUN_TABLE_LIMIT:
        t2 = Table(f"Cost per run ({u})", [("run", "left"), ("attempts", "right"), ("preemptions", "right"),
                                           ("restarts without save", "right"), ("hours", "right"), ("lost", "right")])
        for r in runs:
            t2.rows.append([Cell(r["label"]), Cell(str(r["attempts"])), Cell(str(r["preemptions"])),
                            Cell(str(r["unsaved_restarts"])), Cell(hours(r["rank_h"])),
                            Cell(hours(r["lost_rank_h"]), WARN if r["lost_rank_h"] else PLAIN)])
        out.append(Block("table", table=t2))
    elif runs:
        hs = sorted(r["rank_h"] for r in runs)
        out.append(Block("p", f"per run: min {hours(hs[0])}, median {hours(hs[len(hs) // 2])}, max {hours(hs[-1])} "
                              f"{u} over {len(runs)} runs (every run in --json / --csv)", DIM))
    return out


def definition_blocks(rep: dict[str, Any]) -> list[Block]:
    return [Block("h2", "Definitions")] + [Block("p", f"{k}: {v}", DIM) for k, v in rep["definitions"].items()]
