"""report.md: what ran, where, on which data; the results per arm; the paper's figures beside ours."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from specroute.claims import NOT_CHECKABLE, evaluate_claims, paper_figures
from specroute.claims.paper import PARAMS as PAPER_PARAMS
from specroute.claims.paper import SEEDS
from specroute.claims.paper import STEPS as PAPER_STEPS
from specroute.claims.stats import fmt_interval
from specroute.losses import LOSS_TERMS
from specroute.flops.mfu import fmt_speed
from specroute.report.summary import failed_runs, layer_diagnostics
from specroute.report.sweeps import sweeps_section
from specroute.train.trainer import last_finite_text
from specroute.text import md_row, md_table, plural

#: The paper's per-seed figure for (claim of a comparison, metric), from docs/CLAIMS.md.
PAPER_WINS = {
    ("C1", "avg_lm"): f"{SEEDS}/{SEEDS} (C1)",
    ("C1", "threshold_hits"): f"{SEEDS}/{SEEDS} (C2)",
    ("C7", "best_lm"): f"{SEEDS}/{SEEDS} (C7)",
    ("C7", "avg_lm"): f"{SEEDS}/{SEEDS} (C7)",
    ("C7", "threshold_hits"): f"{SEEDS}/{SEEDS} (C8)",
    ("C9", "avg_lm"): "advantage disappears (C9)",
}


def fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def pm(a: dict[str, Any], metric: str, digits: int = 4) -> str:
    """Mean ± std over the arm's finished seeds; "(n=k)" added when some of its seeds failed."""
    m, s = a["mean"].get(metric), a["std"].get(metric)
    if m is None:
        return "–"
    text = f"{m:.{digits}f} ± {s:.{digits}f}" if len(a["seeds"]) > 1 else f"{m:.{digits}f}"
    return text + (f" (n={len(a['seeds'])})" if a.get("failed_seeds") else "")


def failed_section(summary: dict[str, Any]) -> list[str]:
    """The "Failed runs" section (empty when every run finished): per failed run the step, the values that
    were not finite and their last finite ones."""
    failed = failed_runs(summary)
    if not failed:
        return []
    lines = ["## Failed runs", "",
             f"{plural(len(failed), 'run')} stopped because a value the NaN guard checks "
             "(a step's total loss or gradient norm, an evaluation's held-out LM) was not finite. They are left "
             "out of every mean, comparison and claim below, which rest on the finished seeds (n shown where "
             "an arm lost some); `--resume` keeps them as they are (delete a run's folder to run it again). A "
             "smaller learning rate (`train.optimizer.lr_peak`) or a gradient clip (`train.grad_clip`) "
             "usually prevents this.", ""]
    during = {"train": "training step", "eval": "evaluation"}
    rows = [(arm, seed, f"{f['step']} of {f['steps']} ({during.get(f['during'], f['during'])})",
             ", ".join(f"{k} {v}" for k, v in f["nonfinite"].items()), last_finite_text(f["last_finite"]),
             "–" if f["lr"] is None else f"{f['lr']:.3g}") for arm, seed, f in failed]
    lines += md_table(("arm", "seed", "step", "non-finite", "last finite", "learning rate"), rows)
    return [*lines, ""]


def missing_section(summary: dict[str, Any]) -> list[str]:
    """The "Missing runs" section (empty when every run of the study has a result): the runs that have not
    finished in this folder yet (other shards or array tasks still running, or never started)."""
    missing = summary.get("missing") or {}
    if not missing:
        return []
    n = sum(len(seeds) for seeds in missing.values())
    lines = ["## Missing runs", "",
             (f"{plural(n, 'run')} of the study had no result in this folder when this report was written (not "
              "selected by --arm / --seed, or another process sharing the folder is still training them); every "
              "mean, comparison and claim below rests on "
              "the runs that had. `specroute report` on this folder rewrites the report from the runs finished "
              "by then."), ""]
    lines += md_table(("arm", "seeds"), [(arm, ", ".join(str(s) for s in seeds)) for arm, seeds in missing.items()])
    return [*lines, ""]


def unreadable_section(summary: dict[str, Any]) -> list[str]:
    """The "Unreadable runs" section (empty when there are none): the runs left out of the report because a
    file of theirs is damaged, each with the file and what is wrong."""
    unreadable = summary.get("unreadable") or {}
    rows = [(arm, seed, why) for arm, seeds in unreadable.items() for seed, why in seeds.items()]
    if not rows:
        return []
    lines = ["## Unreadable runs", "",
             (f"{plural(len(rows), 'run')} of the study had a damaged file in this folder (cut off, or not what "
              "specroute writes there) and count as not finished: every mean, comparison and claim below rests "
              "on the other runs. Move such a run's folder away and run the study again with --resume to train "
              "it again."), ""]
    lines += md_table(("arm", "seed", "what is wrong"), rows)
    return [*lines, ""]


def diagnostics_section(arms: dict[str, Any]) -> list[str]:
    """The "Gate score scale and action dependence" table (empty for a summary without gate diagnostics):
    per arm and controlled layer, means over seeds of the score's std over tokens and G3's
    ||P(z, full) - P(z, cheap)||, ||T(full) - T(cheap)|| and its share of ||T||, before training -> last
    evaluation."""
    rows = []
    for a in arms.values():
        seeds = list(a["seeds"].values())
        diags = {w: [layer_diagnostics(s, w) for s in seeds] for w in ("initial", "final")}
        layers = sorted({l for d in diags["final"] for l in d.get("score_std", {})}, key=int)
        for l in layers:
            def cell(name: str, digits: int = 3) -> str:
                vals = []
                for w in ("initial", "final"):
                    xs = [d[name][l] for d in diags[w] if (d.get(name) or {}).get(l) is not None]
                    vals.append(f"{sum(xs) / len(xs):.{digits}g}" if xs else "–")
                return " → ".join(vals)
            g3 = a["gate"] == "G3"
            rows.append((a["label"], l, cell("score_std"), cell("pred_gap") if g3 else "–",
                         cell("target_gap") if g3 else "–", cell("target_share", 2) if g3 else "–"))
    if not rows:
        return []
    return ["", "### Gate score scale and action dependence", "",
            "Per controlled layer, mean over seeds, before training → last evaluation: the std of the gate's "
            "score over the held-out tokens; for G3 the mean over tokens of the predictor's action dependence "
            "‖P(z, full) − P(z, cheap)‖ (the vector the score is read from), the JEPA target's ‖T(full) − "
            "T(cheap)‖ and its share of ‖T(executed)‖ (how much of the target the action moves).", "",
            *md_table(("arm", "layer", "score std", "‖P(full) − P(cheap)‖", "‖T(full) − T(cheap)‖",
                       "share of ‖T‖"), rows)]


def loss_grad_section(summary: dict[str, Any]) -> list[str]:
    """The "Which loss drives the controller" section (empty when no arm logged ``loss_grad_norm``): per arm
    and trained group, each loss term's gradient norm (mean ± std over seeds of the mean over logged steps)
    and the term with the largest one."""
    arms = [a for a in summary["arms"].values() if a.get("loss_grad_norm")]
    if not arms:
        return []
    terms = [t for t in LOSS_TERMS if any(t in g for a in arms for g in a["loss_grad_norm"].values())]
    rows = []
    for a in arms:
        for group, norms in a["loss_grad_norm"].items():
            cell = {t: _mean_pm(norms[t], len(a["seeds"])) if t in norms else "–" for t in (*terms, "total")}
            rows.append((a["label"], group, *(cell[t] for t in (*terms, "total")), _dominant(norms)))
    return ["", "### Which loss drives the controller (gradient norm per loss term)", "",
            "L2 norm of each term's gradient on the trained parameter group, weighted as the term enters the "
            "total loss (λ · ∇term), every `train.loss_grad_norm_every` steps; mean over those steps, "
            "then mean ± std over seeds. `total` is the norm of their sum (below the sum of the norms when "
            "terms pull apart). G3's `gate` group is its encoder, predictor and score head: JEPA's gradient "
            "lands on the first two (the score head gets it only through later layers' inputs, next to "
            "nothing). Curves: `plots/loss_grad_norms.png`.", "",
            *md_table(("arm", "group", *terms, "total", "largest"), rows)]


#: How a ``train.trainable`` group is written in the report.
GROUPS = {"gate": "gate", "cheap_ffn": "cheap FFN", "backbone": "backbone"}
#: How an arm's causal evaluation is written: a threshold arm's own rule, a calibrated top-k one, none.
CAUSAL_RULES = {"native": "native (score > 0)", "calibrated": "calibrated τ", "none": "none"}


def arms_section(arms: dict[str, Any]) -> list[str]:
    """The "What each arm runs" table: gate, budget, loss weights, oracle labels (util/rank arms), trained
    groups (joint training lists the backbone) and the causal evaluation (empty for an older summary)."""
    if not arms or any("trainable" not in a for a in arms.values()):
        return []
    rows = []
    for a in arms.values():
        loss = a["loss"]
        oracle = (f"{a['oracle']['labeling']}, {a['oracle']['counterfactual']}"
                  if loss["util"] > 0 or loss["rank"] > 0 else "–")
        rows.append((a["label"], a["gate"], f"{a['enforcement']}, b = {a['full_fraction_budget']:g}",
                     " / ".join(f"{loss[k]:g}" for k in ("util", "rank", "jepa", "budget")), oracle,
                     " + ".join(GROUPS.get(g, g) for g in a["trainable"]),
                     CAUSAL_RULES.get(a.get("causal_rule"), "–")))
    return ["", "### What each arm runs", "",
            *md_table(("arm", "gate", "budget", "λ util / rank / jepa / budget", "oracle labels", "trained",
                       "causal evaluation"), rows)]


def causal_section(summary: dict[str, Any]) -> list[str]:
    """The "Causal evaluation" section (empty when no arm has one and none routes by threshold): per top-k
    arm the held-out LM under top-k and under the calibrated causal threshold, their gap over seeds and the
    realised full share per layer; a sentence naming the largest gap and the spread of the shares."""
    arms = summary["arms"]
    calibrated = [a for a in arms.values() if a.get("causal")]
    native = [a["label"] for a in arms.values() if a.get("causal_rule") == "native"]
    if not calibrated and not native:
        return []
    lines = ["", "### Causal evaluation: top-k gates under a calibrated threshold", "",
             ("Top-k routing ranks a token against the later tokens of its sequence (or batch), so it cannot run "
             "causally (generation). Each top-k run is also evaluated under the causal rule *full iff score > "
             "τ_l*, τ_l the (1 − b) quantile of layer l's gate scores on fixed training batches "
             "(`routing.budget.calibration_batches`), the layers calibrated in order, each with the earlier "
             "ones already thresholded; calibrated after training (and at every evaluation with "
             "`routing.budget.calibrate_every_eval`, which gives the avg_lm gap), τ saved with the controller "
             "(`thresholds.json`, which `specroute generate` uses). Gap = causal − top-k on the same seeds and "
             "held-out batches (w/t/l: seeds where the causal LM is lower / tied within 1.96 standard errors over batches / higher; 95% t interval over seeds). "
             + (f"Threshold arms route causally as trained (score > 0) and are evaluated natively: their LM "
                f"above is the causal one ({', '.join(native)})." if native else "")).strip(), ""]
    if not calibrated:
        return lines
    rows, gaps, shares = [], [], []
    curve = any("avg_lm" in a["causal"]["gap"] for a in calibrated)  # calibrate_every_eval: an avg_lm gap too
    for a in calibrated:
        c, n = a["causal"], len(a["seeds"])
        gap = c["gap"]["final_lm"]
        gaps.append((gap["mean_diff"], a["label"], gap))
        share = {l: v["mean"] for l, v in c["full_fraction"].items()}
        shares += [(v - a["full_fraction_budget"], a["label"], l) for l, v in share.items() if v is not None]
        rows.append((a["label"], pm(a, "final_lm"), pm(a, "causal_final_lm"), _gap_text(gap),
                     *((_gap_text(c["gap"]["avg_lm"]) if "avg_lm" in c["gap"] else "–",) if curve else ()),
                     ", ".join(f"{l}: {_mean_pm(v, n)}" for l, v in c["full_fraction"].items()),
                     ", ".join(f"{l}: {v['mean']:.3f}" for l, v in c["calibration_full_fraction"].items()),
                     ", ".join(f"{l}: {v['mean']:.3g}" for l, v in c["thresholds"].items())))
    lines += md_table(("arm", "final_lm top-k", "final_lm causal", "gap final_lm [95%] (w/t/l)",
                       *(("gap avg_lm [95%] (w/t/l)",) if curve else ()), "held-out full share by layer",
                       "calibration share",
                       "τ by layer"), rows)
    worst = max((g for g in gaps if g[0] is not None), key=lambda g: g[0], default=None)
    far = max(shares, key=lambda d: abs(d[0]), default=(0.0, "–", "–"))
    if worst is not None and shares:
        lines += ["", (f"The largest gap in final held-out LM (causal − top-k) is {worst[0]:+.4f} nats/token "
                  f"({worst[1]}, 95% interval {fmt_interval(worst[2]['interval'], 2)}); over the "
                  f"{plural(len(calibrated), 'top-k arm')} the gap runs from "
                  f"{min(g[0] for g in gaps if g[0] is not None):+.4f} to {worst[0]:+.4f}. "
                  f"On held-out text the threshold's full share differs from the arm's budget (top-k's share by "
                  f"construction) by {min(d for d, _, _ in shares):+.3f} to {max(d for d, _, _ in shares):+.3f} "
                  f"per layer (largest {far[0]:+.3f}: {far[1]}, layer {far[2]}), so the causal model spends a "
                  "somewhat different compute share on unseen text. Plot: `plots/causal_lm.png`.")]
    return lines


def _gap_text(gap: dict[str, Any]) -> str:
    if gap["mean_diff"] is None:
        return "–"
    return (f"{gap['mean_diff']:+.4f} {fmt_interval(gap['interval'], 2)} "
            f"({gap['wins']}/{gap['ties']}/{gap['losses']})")


def _mean_pm(v: dict[str, Any], n: int) -> str:
    if v["mean"] is None:
        return "–"
    return f"{v['mean']:.3g} ± {v['std']:.2g}" if n > 1 else f"{v['mean']:.3g}"


def _dominant(norms: dict[str, dict[str, Any]]) -> str:
    """The term with the largest mean norm and how many times the next one's it is, e.g. ``rank (8.1× lm)``."""
    ranked = sorted(((v["mean"], t) for t, v in norms.items() if t != "total" and v["mean"] is not None), reverse=True)
    if not ranked:
        return "–"
    (top, name), rest = ranked[0], ranked[1:]
    if not rest:
        return name
    nxt, other = rest[0]
    return f"{name} ({top / nxt:.2g}× {other})" if nxt > 0 else f"{name} (others 0)"


def wall_time(summary: dict[str, Any]) -> str:
    """The study's total wall time, summed over the sessions that ran it (an interrupted run and each
    resume), e.g. ``"412 s (2 sessions)"``; an older summary has only ``wall_s``."""
    sessions = summary.get("sessions") or []
    total = sum(s["wall_s"] for s in sessions) if sessions else summary["wall_s"]
    return f"{total:.0f} s" + (f" ({plural(len(sessions), 'session')})" if len(sessions) > 1 else "")


def render(summary: dict[str, Any], plots: dict[str, str]) -> str:
    env, data, bb = summary["environment"], summary["data"], summary["backbone"]
    arms = summary["arms"]
    first = next(iter(arms.values()), {"steps": "–", "lm_thresholds": None})  # None: every run failed
    n_seeds = {len(a["seeds"]) for a in arms.values()}
    n_failed = len(failed_runs(summary))
    lines = [
        f"# {summary['study']} — profile `{summary['profile']}`",
        "",
        summary.get("description") or "",
        "",
        f"- resolved spec sha256: `{summary['spec_sha256']}`",
        f"- {plural(len(arms), 'arm')} × {plural(max(n_seeds, default=0), 'seed')}"
        + (f" ({'/'.join(map(str, sorted(n_seeds)))} per arm)" if len(n_seeds) > 1 else "")
        + f"; controller steps per run: {first['steps']}; total wall time {wall_time(summary)}"
        + (f"; **{plural(n_failed, 'failed run')}** (see Failed runs)" if n_failed else ""),
        "",
        "## Environment",
        "",
        *md_table(("python", "torch", "device", "dtype", "threads", "git commit", "specroute"),
                  [(env["python"], env["torch"], f"{env['device']} ({env.get('device_name') or '?'})", env["dtype"],
                    env["threads"], f"`{env['git_commit']}`", env["specroute"])]),
        "",
        "## Data",
        "",
        f"- kind `{data['kind']}`, tokenizer `{data['tokenizer']}`",
        f"- corpus sha256 `{data['corpus_sha256']}` ("
        + (plural(data["documents"], "document") if data.get("documents") is not None else "? documents") + ")",
        f"- tokenizer sha256 `{data['tokenizer_sha256']}`",
        f"- {data['train_tokens']:,} train tokens, {data['heldout_tokens']:,} held-out tokens "
        f"(held out by document)",
        f"- unigram entropy of the train split: {data['unigram_entropy_nats']:.3f} nats/token",
        "",
        "## Backbone",
        "",
    ]
    ent = data["unigram_entropy_nats"]
    ckpt = bb.get("checkpoint")
    if ckpt:
        lines += [(f"- pretrained checkpoint `{ckpt['source']}` ({ckpt['model_type']}), revision "
                   f"`{fmt(ckpt['revision'])}`, `{ckpt['weights_file']}` sha256 `{ckpt['weights_sha256']}`"), ""]
    made = ("frozen, not trained here" if ckpt else f"{fmt(bb['steps'])} steps, cache key `{fmt(bb['cache_key'])}`, "
            f"trained in {bb.get('wall_s_trained', bb['wall_s']):.0f} s")
    lines.append(
        f"{'Pretrained' if ckpt else 'Dense'} backbone ({bb['source']}, {made}): held-out LM **{bb['heldout_lm']:.3f}** "
        f"nats/token beside the corpus's unigram entropy **{ent:.3f}** "
        f"({abs(1 - bb['heldout_lm'] / ent) * 100:.0f}% {'lower' if bb['heldout_lm'] <= ent else 'higher'}"
        + (f"; {bb['initial_lm']:.3f} before training" if bb.get("initial_lm") is not None else "") + ")."
        + (f" Training throughput {fmt_speed(bb['speed']['tokens_per_s'], bb['speed']['mfu'])} (peak "
           f"{bb['speed']['peak_source']})." if bb.get("speed") else "")
    )
    lines += ["", *failed_section(summary)] if n_failed else []
    lines += ["", *missing_section(summary)] if summary.get("missing") else []
    lines += ["", *unreadable_section(summary)] if summary.get("unreadable") else []
    lines += ["", "## Results per arm", "",
              "Mean ± standard deviation over seeds (ddof 1). LM losses are held-out nats/token; "
              "`full` is the realised full fraction (mean over controlled layers, train); tokens/s and MFU "
              "(model FLOPs utilisation: analytic FLOP/s over the device's peak, specroute.flops.mfu) are "
              "the training steps' throughput.", ""]
    lines += md_table(
        ("arm", "gate", "util/rank", "initial_lm", "best_lm", "avg_lm", "final_lm", "grad_norm (mean)", "flops_proxy",
         "wall_s", "tokens/s", "MFU", "full (train)", "full (eval)"),
        [(a["label"], a["gate"], "on" if a["loss"]["util"] > 0 or a["loss"]["rank"] > 0 else "off",
          pm(a, "initial_lm"), pm(a, "best_lm"), pm(a, "avg_lm"), pm(a, "final_lm"), pm(a, "grad_norm", 3),
          pm(a, "flops_proxy", 3), pm(a, "wall_s", 1), pm(a, "tokens_per_s", 0), pm(a, "mfu", 3),
          pm(a, "full_fraction_train", 3),
          pm(a, "full_fraction_eval", 3)) for a in arms.values()])
    lines += arms_section(arms)
    lines += ["", "### Threshold hits", ""]
    taus = first["lm_thresholds"]
    if taus is None:
        lines.append("No run finished.")
    elif not taus:
        lines.append("No `train.lm_thresholds` in this spec.")
    else:
        lines += ["First step with held-out LM ≤ τ, per seed (– = never).", ""]
        rows = []
        for a in arms.values():
            cells = []
            for t in taus:
                hits = [s["threshold_hits"].get(f"{t:g}") for s in a["seeds"].values()]
                k = sum(h is not None for h in hits)
                cells.append(f"{k}/{plural(len(hits), 'seed')}: " + ", ".join(fmt(h) for h in hits))
            rows.append((a["label"], *cells))
        lines += md_table(("arm", *(f"τ = {t:g}" for t in taus)), rows)
    if any(a["mean"].get("latent_variance") is not None for a in arms.values()):
        lines += ["", "### G3 predictor latents (collapse check, last evaluation)", ""]
        lines += md_table(("arm", "latent variance", "effective rank"),
                          [(a["label"], pm(a, "latent_variance", 5), pm(a, "latent_effective_rank", 2))
                           for a in arms.values() if a["mean"].get("latent_variance") is not None])
    lines += diagnostics_section(arms)
    lines += loss_grad_section(summary)
    lines += causal_section(summary)
    lines += sweeps_section(summary)
    lines += ["", "## Per-seed comparisons", "",
              "Per seed, *better* against *worse*: a win or loss when the difference (better - worse) exceeds "
              "1.96 standard errors of the per-batch differences on the shared held-out batches, else a tie; "
              "threshold hits win when every threshold is reached no later and one strictly sooner. Over "
              "seeds: the mean difference with its 95% t interval and a two-sided sign-test p-value.", ""]
    if summary["comparisons"]:
        lines += md_table(("comparison", "better", "worse", "metric", "wins / ties / losses",
                           "mean diff [95% interval]", "sign p", "paper"), [])
    else:
        lines.append("No comparison to show: the spec declares none (`comparisons:`), or none has both its arms "
                     "finished.")
    for c in summary["comparisons"]:
        paper = PAPER_WINS.get((c["claim"], c["metric"]), "–")
        unit = "steps" if c["metric"] == "threshold_hits" else "nats"
        diff = f"{c['mean_diff']:+.4g} {unit} {fmt_interval(c['interval'])}" if c["mean_diff"] is not None else "–"
        lines.append(md_row(c["id"], c["better"], c["worse"], c["metric"],
                          f"{c['wins']} / {c['ties']} / {c['losses']} of {c['n']}", diff, f"{c['p_sign']:.2g}",
                          paper))
    rows = paper_figures(summary)
    if rows:
        lines += ["", "## The paper's figures beside ours", "",
                  *md_table(("claim", "figure", "ours", "paper", "note"), [])]
        for r in rows:
            digits = 4 if r["unit"] == "nats" else 2
            ours = f"{r['ours']:.{digits}f}{'×' if r['unit'] == 'x' else ''}" if r["ours"] is not None else "–"
            paper = f"{r['paper']:.{digits}f}{'×' if r['unit'] == 'x' else ''}"
            lines.append(md_row(r["claim"], r["what"], ours, paper, r["note"]))
    lines += ["", "## Claims", "",
              "Judged by `specroute.claims` on the arms of the study's declared roles; every criterion and margin "
              "is in docs/CLAIMS.md. C10's label measurement and C11's paper-profile proxies come from "
              "`specroute verify --claims REPORT`.", "",
              *md_table(("claim", "statement", "verdict", "n", "effect [95% interval]", "numbers", "criterion"), [])]
    for v in evaluate_claims(summary):
        verdict = f"**{v.label}**" + ("" if v.verdict == NOT_CHECKABLE else f" ({v.reason})")
        lines.append(md_row(v.id, v.statement, verdict, "–" if v.n is None else v.n, v.effect_text, v.numbers,
                          v.criterion))
    lines += ["", "## Plots", ""]
    for name, rel in plots.items():
        lines += [f"![{name}]({rel})", ""]
    lines += [
        "## Reading these numbers", "",
        f"Profile `{summary['profile']}`: {_scale_note(summary)} The paper's figures come from a "
        f"{PAPER_PARAMS / 1e6:.1f}M-parameter model trained {PAPER_STEPS // 1000}k steps on fineweb-edu on a "
        "V100; an empirical claim can come out either way at another scale. Wall times are measured on "
        f"{env['device']} with {env['threads']} threads and include evaluation.",
        "",
    ]
    return "\n".join(lines)


def _scale_note(summary: dict[str, Any]) -> str:
    d = summary["data"]
    seeds = sorted({len(a["seeds"]) for a in summary["arms"].values()}) or [0]
    return (f"{d['train_tokens']:,} training tokens of `{d['kind']}` data, tokenizer `{d['tokenizer']}`, "
            f"{'/'.join(map(str, seeds))} {'seed' if seeds == [1] else 'seeds'} per arm.")


def write_markdown(summary: dict[str, Any], plots: dict[str, str], path: Path) -> None:
    from specroute.store import atomic_write_text

    atomic_write_text(path, render(summary, plots))
