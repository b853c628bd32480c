"""Build ``docs/RESULTS.md`` from the JSON files in ``models/results/``.

These kinds of result file are understood:

- evaluation results written by ``seqplanner evaluate --out`` (one result, or ``{"results": [...]}`` for
  several checkpoints): ``env_id``, ``checkpoint``, ``kind``, ``config`` and per-``episodes`` returns. Optional
  top-level keys ``dataset`` (table the row goes into), ``checkpoint_choice`` ("last" / "best"; default
  "last", which is what every trainer here writes) and ``note`` (free text shown under the table).
- several evaluation runs of one checkpoint pooled into one row: ``{"pool": true, "results": [...]}`` (e.g. more
  seeds evaluated later). The runs must agree on env, checkpoint, kind and DT target and use disjoint seeds;
  the top-level ``dataset`` / ``checkpoint_choice`` / ``note`` apply to the pooled row, and each run keeps its
  own line in the latency table (latency percentiles cannot be pooled from summaries).
- long-horizon prediction results (``"kind": "long_horizon"``, see :mod:`ros_seqplanner.sim.long_horizon`).
- TT token cross-entropy per group (``"kind": "token_loss"``, written by ``seqplanner token-loss --out``); all
  of them share one table.

Everything in the tables is recomputed from the per-episode entries (not copied from ``summary``), so a
result file edited by hand cannot disagree with its own table row. Statistics: mean ± std over all episodes
(all seeds pooled) and the std of the per-seed means.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ros_seqplanner.data.scores import SCORE_LABEL, normalized_score

KIND_ORDER = ("tt", "dt", "bc", "behaviour")
KIND_NAMES = {"tt": "Trajectory Transformer", "dt": "Decision Transformer", "bc": "BC (MLP)",
              "behaviour": "behaviour policy (SAC)"}


# Result kinds that are sections of their own rather than rows of an evaluation table.
SECTION_KINDS = ("long_horizon", "token_loss")

# Images next to the report that get their own section when present (python -m ros_seqplanner.sim.attention).
OPTIONAL_IMAGES = {"attention.png": "TT attention maps (one context window, every layer and head)"}


class ReportError(ValueError):
    """A result file is unreadable or does not have the expected fields."""


@dataclass
class EvalRow:
    """One table row: a checkpoint evaluated on an env (possibly with a DT target return)."""

    source: str
    dataset: str
    kind: str
    checkpoint: str
    env_id: str
    returns: np.ndarray
    scores: np.ndarray | None
    seeds: list[int]
    seed_of_episode: np.ndarray
    lengths: np.ndarray
    max_steps: int | None
    target_return: float | None
    checkpoint_choice: str
    act_ms: dict[str, float] = field(default_factory=dict)
    note: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    act_runs: list[tuple[dict[str, float], int, list[int]]] = field(default_factory=list)  # pooled: per run

    @property
    def name(self) -> str:
        """Model name for the table, with the policy options it was evaluated with (e.g. noise=policy)."""
        base = KIND_NAMES.get(self.kind, self.kind)
        opts = ", ".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{base} [{opts}]" if opts else base

    @property
    def episodes(self) -> int:
        return int(self.returns.size)

    def seed_std(self, values: np.ndarray) -> float | None:
        if len(self.seeds) < 2:
            return None
        return float(np.std([values[self.seed_of_episode == s].mean() for s in self.seeds]))


def _need(d: dict[str, Any], key: str, source: str) -> Any:
    if key not in d:
        raise ReportError(f"{source}: missing field {key!r}")
    return d[key]


def _checkpoint_meta(checkpoint: str) -> dict[str, Any]:
    """The checkpoint's JSON if it exists here (used to find dataset id and DT targets); else {}."""
    from ros_seqplanner.nets.checkpoint import checkpoint_paths

    try:
        js = checkpoint_paths(checkpoint)[1]
        return json.loads(js.read_text()) if js.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _dataset_label(result: dict[str, Any], meta: dict[str, Any], env_id: str) -> str:
    if result.get("dataset"):
        return str(result["dataset"])
    ds = meta.get("dataset") if isinstance(meta.get("dataset"), dict) else {}
    for value in (meta.get("dataset_id"), ds.get("dataset_id")):
        if value:
            return str(value)
    return env_id


def parse_eval_result(result: dict[str, Any], source: str) -> EvalRow:
    """One ``evaluate`` result dict -> :class:`EvalRow`. Raises :class:`ReportError` on missing fields."""
    env_id = str(_need(result, "env_id", source))
    kind = str(_need(result, "kind", source))
    checkpoint = str(_need(result, "checkpoint", source))
    episodes = _need(result, "episodes", source)
    if not isinstance(episodes, list) or not episodes:
        raise ReportError(f"{source}: 'episodes' must be a non-empty list")
    try:
        rets = np.array([float(e["ret"]) for e in episodes])
        seeds_ep = np.array([int(e.get("seed", 0)) for e in episodes])
        lengths = np.array([int(e["length"]) for e in episodes])
    except (KeyError, TypeError, ValueError) as e:
        raise ReportError(f"{source}: bad episode entry ({e}); expected 'ret', 'length' and 'seed'") from e
    if not np.all(np.isfinite(rets)):
        raise ReportError(f"{source}: non-finite returns")
    try:
        scores = np.array([normalized_score(env_id, r) for r in rets])
    except KeyError:
        scores = None  # no D4RL reference for this env
    config = result.get("config") or {}
    meta = _checkpoint_meta(checkpoint)
    target = (config.get("reset_options") or {}).get("target_return")
    if target is None:
        target = (config.get("policy_options") or {}).get("target_return")
    if target is None and kind == "dt" and meta.get("target_returns"):
        target = meta["target_returns"][0]  # the DT policy's default target
    summary = result.get("summary") or {}
    act = {k: float(summary[k]) for k in ("act_ms_p50", "act_ms_p99", "act_ms_mean") if k in summary}
    if act and config.get("torch_threads") is not None:
        act["torch_threads"] = float(config["torch_threads"])
    return EvalRow(source=source, dataset=_dataset_label(result, meta, env_id), kind=kind, checkpoint=checkpoint,
                   env_id=env_id, returns=rets, scores=scores, seeds=sorted(set(seeds_ep.tolist())),
                   seed_of_episode=seeds_ep, lengths=lengths, max_steps=config.get("max_steps"),
                   target_return=None if target is None else float(target),
                   checkpoint_choice=str(result.get("checkpoint_choice", "last")), act_ms=act,
                   note=str(result.get("note", "")), device=str(config.get("device", "cpu")),
                   options=_row_options(config))


def _row_options(config: dict[str, Any]) -> dict[str, Any]:
    """What the row's name shows: the policy options, and a modelled planning latency (evaluate --latency-steps)."""
    opts = {k: v for k, v in (config.get("policy_options") or {}).items() if k != "target_return"}
    if config.get("latency_steps"):
        opts["latency_steps"] = int(config["latency_steps"])
        opts["catch_up"] = "yes" if config.get("catch_up", True) else "no"
        if config.get("compensate"):
            opts["compensate"] = "yes"
    return opts


def pool_rows(parts: list[EvalRow], source: str, top: dict[str, Any]) -> EvalRow:
    """One row from several runs of the same checkpoint (``{"pool": true, "results": [...]}``)."""
    first = parts[0]
    for r in parts[1:]:
        if (r.env_id, r.checkpoint, r.kind, r.target_return, r.options, r.max_steps) != (
                first.env_id, first.checkpoint, first.kind, first.target_return, first.options, first.max_steps):
            raise ReportError(f"{source}: pooled runs must share env, checkpoint, kind, target, options and max_steps")
    seeds = [s for r in parts for s in r.seeds]
    if len(seeds) != len(set(seeds)):
        raise ReportError(f"{source}: pooled runs must use disjoint seeds, got {sorted(seeds)}")
    devices = sorted({r.device for r in parts})
    return EvalRow(source=source, dataset=str(top.get("dataset") or first.dataset), kind=first.kind,
                   checkpoint=first.checkpoint, env_id=first.env_id,
                   returns=np.concatenate([r.returns for r in parts]),
                   scores=None if any(r.scores is None for r in parts) else np.concatenate([r.scores for r in parts]),
                   seeds=sorted(seeds), seed_of_episode=np.concatenate([r.seed_of_episode for r in parts]),
                   lengths=np.concatenate([r.lengths for r in parts]), max_steps=first.max_steps,
                   target_return=first.target_return,
                   checkpoint_choice=str(top.get("checkpoint_choice", first.checkpoint_choice)),
                   note=str(top.get("note", "")), options=first.options, device="/".join(devices),
                   act_runs=[(r.act_ms, int(r.lengths.sum()), r.seeds) for r in parts if "act_ms_p50" in r.act_ms])


def load_results(directory: str | Path) -> tuple[list[EvalRow], list[dict[str, Any]]]:
    """Read every ``*.json`` under ``directory`` -> (evaluation rows, section results: long-horizon and
    token-loss files, each with its file name as ``_source``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ReportError(f"results directory {directory} does not exist")
    rows: list[EvalRow] = []
    sections: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ReportError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(data, dict):
            raise ReportError(f"{path}: expected a JSON object")
        if data.get("kind") in SECTION_KINDS:
            sections.append({**data, "_source": path.name})
            continue
        items = data["results"] if isinstance(data.get("results"), list) else [data]
        parsed = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise ReportError(f"{path}: result {i} is not an object")
            parsed.append(parse_eval_result(item, path.name if len(items) == 1 else f"{path.name}[{i}]"))
        if data.get("pool"):
            if not parsed:
                raise ReportError(f"{path}: 'pool' needs a non-empty 'results' list")
            parsed = [pool_rows(parsed, path.name, data)]
        rows.extend(parsed)
    return rows, sections


# ---------------------------------------------------------------------------------------------- markdown
def _pm(values: np.ndarray | None, digits: int = 1) -> str:
    if values is None:
        return "n/a"
    return f"{values.mean():.{digits}f} ± {values.std():.{digits}f}"


def _row_sort_key(r: EvalRow) -> tuple:
    k = KIND_ORDER.index(r.kind) if r.kind in KIND_ORDER else len(KIND_ORDER)
    return (k, r.target_return if r.target_return is not None else -np.inf, r.source)


def eval_table(rows: list[EvalRow]) -> list[str]:
    """Markdown table lines for the rows of one dataset."""
    lines = ["| model | checkpoint | return (mean ± std) | normalised score | seed std (score) | episodes x seeds "
             "| steps/episode | DT target | last/best | result file |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=_row_sort_key):
        seed_sd = r.seed_std(r.scores) if r.scores is not None else None
        eps_per_seed = r.episodes // max(len(r.seeds), 1)
        steps = f"{r.lengths.mean():.0f}" + (f" (cut at {r.max_steps})" if r.max_steps else "")
        lines.append(
            f"| {r.name} | `{Path(r.checkpoint).name}` | {_pm(r.returns)} | {_pm(r.scores)} | "
            f"{'n/a' if seed_sd is None else f'{seed_sd:.1f}'} | {eps_per_seed} x {len(r.seeds)} "
            f"(seeds {', '.join(map(str, r.seeds))}) | {steps} | "
            f"{'-' if r.target_return is None else f'{r.target_return:g}'} | {r.checkpoint_choice} | `{r.source}` |")
    return lines


def latency_lines(rows: list[EvalRow]) -> list[str]:
    """Per-step action latency (ms) of every row that reports it (one line per run of a pooled row); TT first.
    Rows with a modelled planning latency (``latency_steps``) are left out: most of their steps only follow a
    plan, so their per-step time is not a planning latency."""
    rows = [r for r in rows if "latency_steps" not in r.options]
    have = [(r, a, n, seeds) for r in sorted(rows, key=_row_sort_key)
            for a, n, seeds in (r.act_runs or ([(r.act_ms, int(r.lengths.sum()), r.seeds)]
                                               if "act_ms_p50" in r.act_ms else []))]
    if not have:
        return []
    lines = ["| model | dataset | device | torch threads | act p50 (ms) | act p99 (ms) | act mean (ms) "
             "| steps measured | run |", "|---|---|---|---|---|---|---|---|---|"]
    for r, a, n, seeds in have:
        threads = f"{a['torch_threads']:.0f}" if "torch_threads" in a else "default"
        lines.append(f"| {r.name} | {r.dataset} | {r.device} | {threads} | {a['act_ms_p50']:.2f} | "
                     f"{a.get('act_ms_p99', float('nan')):.2f} | {a.get('act_ms_mean', float('nan')):.2f} | {n} | "
                     f"`{r.source}` (seeds {', '.join(map(str, seeds))}) |")
    return lines


def horizon_lines(result: dict[str, Any], show: tuple[int, ...] = (1, 5, 10, 20, 50, 100)) -> list[str]:
    """Table of open-loop prediction error at selected horizons for one long-horizon result."""
    models = result.get("models")
    horizons = result.get("horizons")
    if not isinstance(models, dict) or not isinstance(horizons, list) or not models:
        raise ReportError(f"{result.get('_source', 'long-horizon result')}: needs 'horizons' and 'models'")
    cols = [h for h in show if h in horizons]
    lines = [f"Dataset `{result.get('dataset', '?')}`, {result.get('num_episodes', '?')} held-out episode(s), "
             f"{result.get('num_starts', '?')} start(s); metric: {result.get('metric', 'error')}.", "",
             "| model | " + " | ".join(f"h={h}" for h in cols) + " | notes |",
             "|---|" + "---|" * len(cols) + "---|"]
    for name, m in models.items():
        err = m.get("error")
        if not isinstance(err, list) or len(err) != len(horizons):
            raise ReportError(f"{result.get('_source')}: model {name!r} needs one 'error' per horizon")
        vals = [err[horizons.index(h)] for h in cols]
        lines.append(f"| {name} | " + " | ".join("n/a" if v is None else f"{v:.3f}" for v in vals)
                     + f" | {m.get('note', '')} |")
    if result.get("plot"):
        lines += ["", f"![open-loop prediction error]({result['plot']})"]
    if result.get("note"):
        lines += ["", str(result["note"])]
    return lines


def token_loss_lines(results: list[dict[str, Any]]) -> list[str]:
    """One table of every token-loss result (``seqplanner token-loss --out``), by checkpoint."""
    lines = ["Teacher-forced cross-entropy (nats) of each token group on random windows of the named data "
             "(`seqplanner token-loss`); uniform = log(N + 1) over the N bins + stop. Bins are per-dimension "
             "quantiles, so a group's number measures precision relative to that group's spread: compare the "
             "same group across models, not groups with each other. The planner samples candidate actions "
             "from the action distribution and scores beams by the reward and value tokens. 'action floor': "
             "the entropy of a binned action dimension given the state under the behaviour policy that made "
             "the data (`--behaviour`), which no model of that data can beat. 'value r': correlation of the "
             "expected value token (the planner's beam score) with its target over all value tokens (in halfcheetah "
             "data, which never terminates, much of the target's spread is the cut-off at the 1000-step time "
             "limit, as in the official TT, which no model of the state can foresee); 'value before a fall': "
             "target / prediction, means over the transitions 1-10, 21-30 and 41-50 steps before each termination "
             "(up to 256 episodes; '-' for data without terminations). The planner looks only a few steps ahead, "
             "so the value must drop well before a fall for it to steer away: a prediction that stays near the "
             "data mean cannot warn it. 'value at a start': target / prediction / mean absolute error of the value "
             "token of each episode's first transition, predicted from the initial state and first action (what a "
             "plan at the start of an episode scores by; '-' for results measured before token-loss reported it). "
             "'at a start': observation / action cross-entropy on the windows that start an episode (its first steps, "
             "which a controller meets after every reset and uniform windows rarely hold; '-' for results "
             "measured before token-loss reported it).",
             "",
             "| checkpoint | step | data | windows | observation | action | action floor | reward | value | uniform | "
             "value r | value before a fall: target / predicted | value at a start: target / predicted / error | "
             "at a start: observation / action | note | result file |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (str(r.get("checkpoint")), str(r.get("dataset_id")))):
        try:
            ce = [float(r["groups"][g]["cross_entropy"]) for g in ("observation", "action", "reward", "value")]
            uniform = float(r["uniform_cross_entropy"])
        except (KeyError, TypeError, ValueError) as e:
            raise ReportError(f"{r.get('_source')}: token-loss result needs 'groups' and 'uniform_cross_entropy' "
                              f"({e!r})") from e
        ck = Path(str(r.get("checkpoint", "?"))).name
        floor = "-" if r.get("action_floor") is None else f"{float(r['action_floor']):.2f}"
        cells = [f"`{ck}`", str(r.get("step", "?")), str(r.get("dataset_id", "?")), str(r.get("windows", "?")),
                 *(f"{v:.2f}" for v in ce[:2]), floor, *(f"{v:.2f}" for v in ce[2:]), f"{uniform:.2f}",
                 *_value_fit_cells(r), _start_cell(r), str(r.get("note", "")), f"`{r['_source']}`"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _start_cell(r: dict[str, Any]) -> str:
    sg = r.get("start_groups")
    if sg is None:  # written before token-loss measured it
        return "-"
    try:
        return f"{float(sg['observation']['cross_entropy']):.2f} / {float(sg['action']['cross_entropy']):.2f}"
    except (KeyError, TypeError, ValueError) as e:
        raise ReportError(f"{r.get('_source')}: 'start_groups' needs observation and action cross_entropy "
                          f"({e!r})") from e


def _value_fit_cells(r: dict[str, Any]) -> list[str]:
    vf = r.get("value_fit")
    if vf is None:  # written before token-loss measured it
        return ["-", "-", "-"]
    try:
        parts = [f"{int(f['first'])}-{int(f['last'])}: {float(f['target']):.0f} / {float(f['predicted']):.0f}"
                 for f in vf["fall_profile"]]
        fall = f"{'; '.join(parts)} ({int(vf['falls'])} ep.)" if parts else "-"
        start = "-"
        if vf.get("start_target") is not None:  # token-loss results before session 10 lack it
            start = (f"{float(vf['start_target']):.0f} / {float(vf['start_predicted']):.0f} / "
                     f"{float(vf['start_error']):.0f} ({int(vf['starts'])} ep.)")
        return [f"{float(vf['r']):.2f}", fall, start]
    except (KeyError, TypeError, ValueError) as e:
        raise ReportError(f"{r.get('_source')}: 'value_fit' needs r, falls and fall_profile, and start_predicted, "
                          f"start_error and starts with start_target ({e!r})") from e


def render_report(rows: list[EvalRow], sections: list[dict[str, Any]], title: str = "Results",
                  images: dict[str, str] | None = None) -> str:
    """The whole RESULTS.md text; ``sections``: long-horizon and token-loss results; ``images`` maps a
    section title to an image path (relative to the report)."""
    out = [f"# {title}", "",
           "Generated by `seqplanner report` from the JSON files in `models/results/`; do not edit by hand.", "",
           f"Normalised scores use D4RL's reference returns on gymnasium v5 envs ({SCORE_LABEL}); they are not "
           "directly comparable with published D4RL (v2) numbers. Mean ± std is over all episodes (seeds pooled); "
           "'seed std' is the std of the per-seed means. 'last/best' says which training checkpoint was evaluated.",
           ""]
    horizons = [r for r in sections if r.get("kind") == "long_horizon"]
    losses = [r for r in sections if r.get("kind") == "token_loss"]
    if not rows and not sections:
        out += ["No results yet.", ""]
    for dataset in sorted({r.dataset for r in rows}):
        ds_rows = [r for r in rows if r.dataset == dataset]
        out += [f"## {dataset}", "", *eval_table(ds_rows), ""]
        notes = [f"- `{r.source}`: {r.note}" for r in sorted(ds_rows, key=_row_sort_key) if r.note]
        if notes:
            out += [*notes, ""]
    lat = latency_lines(rows)
    if lat:
        out += ["## Per-step action latency", "",
                "Measured inside `seqplanner evaluate` (wall time of `policy.act`), on the machine that ran it. "
                "A TT policy plans every `plan_freq` steps (presets: 5 for hopper-medium, 1 for the others) "
                "and replays its plan in between, so with plan_freq > 1 p50 is a replayed step "
                "and p99 a planning step. Torch threads: as recorded by `evaluate` (one by default since "
                "session 8); \"default\" (older runs) is torch's, one per core, which slows two evaluations "
                "side by side on a 2-core machine ~2.5x at p50 and ~22x at p99 (BENCHMARKS.md).",
                "", *lat, ""]
    for h in sorted(horizons, key=lambda h: str(h.get("env_id", ""))):
        env = f" ({h['env_id']})" if h.get("env_id") else ""
        out += [f"## Long-horizon open-loop prediction{env}", "", *horizon_lines(h), ""]
    if losses:
        out += ["## TT token cross-entropy per group", "", *token_loss_lines(losses), ""]
    for section, image in (images or {}).items():
        out += [f"## {section}", "", f"![{section}]({image})", ""]
    return "\n".join(out).rstrip() + "\n"


def build_report(results_dir: str | Path, out: str | Path, title: str = "Results") -> str:
    """The report text for ``results_dir`` as it will be written to ``out`` (images that sit beside ``out``)."""
    rows, sections = load_results(results_dir)
    images = {title_: name for name, title_ in OPTIONAL_IMAGES.items() if (Path(out).parent / name).is_file()}
    return render_report(rows, sections, title, images)


def write_report(results_dir: str | Path, out: str | Path, title: str = "Results") -> Path:
    """Load ``results_dir`` and write the markdown report to ``out``; returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build_report(results_dir, out, title))
    return out
