"""``seqplanner report`` on small synthetic result files (no training, no simulation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ros_seqplanner.cli import main
from ros_seqplanner.data.scores import normalized_score
from ros_seqplanner.sim.report import ReportError, load_results, render_report, write_report


def _result(kind: str, rets: list[list[float]], dataset: str | None = "halfcheetah-medium-v5",
            target: float | None = None, max_steps: int | None = None, p50: float = 1.0, **extra) -> dict:
    episodes = [{"seed": s, "episode": k, "ret": r, "length": max_steps or 1000, "terminated": False,
                 "truncated": True, "normalized_score": None, "act_ms_p50": p50, "act_ms_p99": 2 * p50}
                for s, seed_rets in enumerate(rets) for k, r in enumerate(seed_rets)]
    out = {"env_id": "HalfCheetah-v5", "checkpoint": f"/nowhere/{kind}_x", "kind": kind,
           "summary": {"act_ms_p50": p50, "act_ms_p99": 2 * p50, "act_ms_mean": 1.5 * p50},
           "config": {"max_steps": max_steps, "reset_options": {} if target is None else {"target_return": target},
                      "policy_options": {}},
           "episodes": episodes, **extra}
    if dataset is not None:
        out["dataset"] = dataset
    return out


def _write(d: Path, name: str, data: object) -> None:
    (d / name).write_text(json.dumps(data))


def _table_row(text: str, startswith: str) -> list[str]:
    rows = [line for line in text.splitlines() if line.startswith(startswith)]
    assert len(rows) == 1, rows
    return [c.strip() for c in rows[0].strip("|").split("|")]


def test_row_statistics_are_recomputed_from_episodes(tmp_path):
    rets = [[4000.0, 4200.0], [4400.0, 4800.0]]
    _write(tmp_path, "bc.json", _result("bc", rets))
    rows, horizons = load_results(tmp_path)
    assert horizons == [] and len(rows) == 1
    r = rows[0]
    flat = np.array(rets).ravel()
    assert r.returns.mean() == pytest.approx(flat.mean())
    assert r.scores.mean() == pytest.approx(np.mean([normalized_score("halfcheetah", x) for x in flat]))
    per_seed = [np.mean([normalized_score("halfcheetah", x) for x in s]) for s in rets]
    assert r.seed_std(r.scores) == pytest.approx(np.std(per_seed))
    text = render_report(rows, horizons)
    cells = _table_row(text[:text.index("## Per-step")], "| BC (MLP)")
    assert cells[2] == f"{flat.mean():.1f} ± {flat.std():.1f}"
    assert cells[5].startswith("2 x 2")
    assert cells[8] == "last"


def test_pooled_runs_make_one_row_and_keep_their_latencies(tmp_path):
    a = _result("tt", [[4300.0], [5100.0]], p50=250.0)
    b = _result("tt", [[4800.0], [4900.0]], p50=300.0)
    for ep in b["episodes"]:
        ep["seed"] += 3  # seeds 3, 4
    _write(tmp_path, "tt.json", {"pool": True, "results": [a, b], "note": "two runs", "checkpoint_choice": "step 7"})
    rows, _ = load_results(tmp_path)
    assert len(rows) == 1 and rows[0].seeds == [0, 1, 3, 4]
    text = render_report(rows, [])
    cells = _table_row(text[:text.index("## Per-step")], "| Trajectory Transformer")
    flat = np.array([4300.0, 5100.0, 4800.0, 4900.0])
    assert cells[2] == f"{flat.mean():.1f} ± {flat.std():.1f}" and cells[5].startswith("1 x 4") and cells[8] == "step 7"
    lat = [line for line in text[text.index("## Per-step"):].splitlines() if line.startswith("| Trajectory")]
    assert [line.split("|")[5].strip() for line in lat] == ["250.00", "300.00"]
    assert [line.split("|")[9].strip() for line in lat] == ["`tt.json` (seeds 0, 1)", "`tt.json` (seeds 3, 4)"]
    assert "`tt.json`: two runs" in text
    b["episodes"][0]["seed"] = 0  # a seed evaluated twice would be double-counted
    _write(tmp_path, "tt.json", {"pool": True, "results": [a, b]})
    with pytest.raises(ReportError, match="disjoint seeds"):
        load_results(tmp_path)
    _write(tmp_path, "tt.json", {"pool": True, "results": [a, _result("bc", [[1.0]])]})
    with pytest.raises(ReportError, match="must share"):
        load_results(tmp_path)


def test_summary_is_not_trusted(tmp_path):
    res = _result("bc", [[1000.0]])
    res["summary"]["return_mean"] = 99999.0  # a stale summary must not leak into the table
    _write(tmp_path, "bc.json", res)
    text = render_report(*load_results(tmp_path))
    assert "99999" not in text and "1000.0 ± 0.0" in text


def test_tables_per_dataset_ordering_targets_and_latency(tmp_path):
    _write(tmp_path, "a.json", {"results": [_result("behaviour", [[4800.0]]), _result("bc", [[4300.0]])]})
    _write(tmp_path, "dt.json", _result("dt", [[4500.0]], target=6000.0, p50=3.0))
    _write(tmp_path, "tt.json", _result("tt", [[300.0]], max_steps=100, p50=700.0, checkpoint_choice="best",
                                          note="one truncated episode"))
    _write(tmp_path, "rnd.json", _result("bc", [[-100.0]], dataset="halfcheetah-random-v5"))
    noisy = _result("behaviour", [[4500.0]])
    noisy["config"]["policy_options"] = {"noise": "policy"}
    _write(tmp_path, "noisy.json", noisy)
    text = render_report(*load_results(tmp_path))
    medium = text.index("## halfcheetah-medium-v5")
    random = text.index("## halfcheetah-random-v5")
    assert medium < random
    section = text[medium:random]
    order = [section.index(name) for name in ("Trajectory Transformer", "Decision Transformer", "BC (MLP)",
                                               "behaviour policy")]
    assert order == sorted(order)
    tt = _table_row(section, "| Trajectory Transformer")
    assert "cut at 100" in tt[6] and tt[8] == "best"
    assert _table_row(section, "| Decision Transformer")[7] == "6000"
    assert "one truncated episode" in section
    assert _table_row(section, "| behaviour policy (SAC) [noise=policy]")[2] == "4500.0 ± 0.0"
    lat = text[text.index("## Per-step action latency"):]
    assert _table_row(lat, "| Trajectory Transformer")[2:6] == ["cpu", "default", "700.00", "1400.00"]
    gpu = _result("tt", [[300.0]], p50=20.0, dataset="halfcheetah-random-v5")
    gpu["config"]["device"] = "cuda"
    gpu["config"]["torch_threads"] = 1  # recorded by evaluate since session 8
    _write(tmp_path, "tt_gpu.json", gpu)
    lat = render_report(*load_results(tmp_path)).split("## Per-step action latency")[1]
    assert _table_row(lat, "| Trajectory Transformer | halfcheetah-random-v5")[2:5] == ["cuda", "1", "20.00"]


def test_dataset_falls_back_to_checkpoint_meta_then_env(tmp_path):
    ckpt = tmp_path / "ck"
    (tmp_path / "ck.json").write_text(json.dumps({"kind": "dt", "dataset_id": "my-data", "target_returns": [1234.0]}))
    res = _result("dt", [[10.0]], dataset=None)
    res["checkpoint"] = str(ckpt)
    results = tmp_path / "results"
    results.mkdir()
    _write(results, "dt.json", res)
    _write(results, "bc.json", _result("bc", [[10.0]], dataset=None))
    rows, _ = load_results(results)
    by_kind = {r.kind: r for r in rows}
    assert by_kind["dt"].dataset == "my-data" and by_kind["dt"].target_return == 1234.0
    assert by_kind["bc"].dataset == "HalfCheetah-v5"


def test_long_horizon_section(tmp_path):
    lh = {"kind": "long_horizon", "dataset": "d", "horizons": [1, 2, 5, 10], "num_episodes": 2, "num_starts": 3,
          "metric": "mean abs error", "plot": "long_horizon.png",
          "models": {"mlp": {"error": [0.1, 0.2, 0.5, 1.5]}, "tt": {"error": [0.3, 0.3, 0.4, None], "note": "w"}}}
    _write(tmp_path, "lh.json", lh)
    rows, horizons = load_results(tmp_path)
    text = render_report(rows, horizons)
    assert not rows and len(horizons) == 1
    assert _table_row(text, "| mlp") == ["mlp", "0.100", "0.500", "1.500", ""]
    assert _table_row(text, "| tt") == ["tt", "0.300", "0.400", "n/a", "w"]
    assert "![open-loop prediction error](long_horizon.png)" in text
    assert "## Long-horizon open-loop prediction\n" in text  # no env_id: plain title
    _write(tmp_path, "lh_hopper.json", {**lh, "env_id": "Hopper-v5", "plot": "lh_hopper.png",
                                         "models": {"mlp": {"error": [9.0, 9.0, 9.0, 9.0]}}})
    _write(tmp_path, "lh.json", {**lh, "env_id": "HalfCheetah-v5"})
    text = render_report(*load_results(tmp_path))
    cheetah, hopper = (text.index(f"## Long-horizon open-loop prediction ({e})")
                       for e in ("HalfCheetah-v5", "Hopper-v5"))
    assert cheetah < hopper and "9.000" in text[hopper:] and "9.000" not in text[cheetah:hopper]


def test_token_loss_results_share_one_table(tmp_path):
    def tl(ck: str, data: str, ce: list[float], **extra) -> dict:
        return {"kind": "token_loss", "checkpoint": ck, "step": 100, "dataset_id": data, "windows": 8,
                "uniform_cross_entropy": 4.6151, "note": extra.pop("note", ""),
                "groups": {g: {"cross_entropy": v, "accuracy": 0.1, "within_near": 0.2, "tokens": 5}
                           for g, v in zip(("observation", "action", "reward", "value"), ce)}, **extra}

    _write(tmp_path, "b.json", tl("models/tt_b", "b-medium-v5", [1.0, 2.0, 3.0, 4.0]))
    _write(tmp_path, "a_held.json", tl("models/tt_a", "a-heldout", [1.111, 2.0, 3.0, 4.0], note="held-out",
                                       action_floor=1.5, value_fit={"r": 0.876, "falls": 7, "fall_profile": [
                                           {"first": 1, "last": 10, "target": -21.6, "predicted": 25.2},
                                           {"first": 21, "last": 30, "target": 40.4, "predicted": 80.0}],
                                           "starts": 12, "start_target": 180.4, "start_predicted": -19.6,
                                           "start_error": 203.3},
                                       start_groups={"observation": {"cross_entropy": 2.345},
                                                     "action": {"cross_entropy": 3.456}}))
    _write(tmp_path, "a.json", tl("models/tt_a", "a-medium-v5", [0.5, 2.0, 3.0, 4.0]))
    _write(tmp_path, "ev.json", _result("bc", [[100.0]]))
    rows, sections = load_results(tmp_path)
    assert len(rows) == 1 and len(sections) == 3
    text = render_report(rows, sections)
    table = text.split("## TT token cross-entropy per group")[1]
    assert text.count("## TT token cross-entropy per group") == 1
    lines = [line for line in table.splitlines() if line.startswith("| `")]
    assert [c.strip() for c in lines[0].strip("|").split("|")] == [
        "`tt_a`", "100", "a-heldout", "8", "1.11", "2.00", "1.50", "3.00", "4.00", "4.62", "0.88",
        "1-10: -22 / 25; 21-30: 40 / 80 (7 ep.)", "180 / -20 / 203 (12 ep.)", "2.35 / 3.46", "held-out",
        "`a_held.json`"]
    assert lines[1].split("|")[7].strip() == "-"  # no behaviour policy given
    assert [c.strip() for c in lines[1].split("|")[11:15]] == ["-", "-", "-", "-"]  # an older result without these
    _write(tmp_path, "b.json", tl("models/tt_b", "b-medium-v5", [1.0, 2.0, 3.0, 4.0], value_fit={
        "r": 0.5, "falls": 0, "fall_profile": []}))  # data without terminations
    line_b = [line for line in render_report(*load_results(tmp_path)).splitlines() if line.startswith("| `tt_b`")]
    assert [c.strip() for c in line_b[0].split("|")[11:14]] == ["0.50", "-", "-"]  # and before the start check
    assert [line.split("|")[3].strip() for line in lines] == ["a-heldout", "a-medium-v5", "b-medium-v5"]
    bad = tl("models/tt_c", "c", [1.0, 2.0, 3.0, 4.0])
    del bad["groups"]["value"]
    _write(tmp_path, "c.json", bad)
    with pytest.raises(ReportError, match=r"c\.json: token-loss result needs"):
        render_report(*load_results(tmp_path))
    _write(tmp_path, "c.json", tl("models/tt_c", "c", [1.0, 2.0, 3.0, 4.0], value_fit={"r": 0.5}))
    with pytest.raises(ReportError, match=r"c\.json: 'value_fit' needs"):
        render_report(*load_results(tmp_path))
    _write(tmp_path, "c.json", tl("models/tt_c", "c", [1.0, 2.0, 3.0, 4.0], value_fit={
        "r": 0.5, "falls": 0, "fall_profile": [], "start_target": 1.0}))  # a start target without the rest
    with pytest.raises(ReportError, match=r"c\.json: 'value_fit' needs"):
        render_report(*load_results(tmp_path))
    _write(tmp_path, "c.json", tl("models/tt_c", "c", [1.0, 2.0, 3.0, 4.0], start_groups={"action": {}}))
    with pytest.raises(ReportError, match=r"c\.json: 'start_groups' needs"):
        render_report(*load_results(tmp_path))


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    (json.dumps({"env_id": "HalfCheetah-v5", "kind": "bc", "checkpoint": "x"}), "missing field 'episodes'"),
    (json.dumps({"env_id": "HalfCheetah-v5", "kind": "bc", "checkpoint": "x", "episodes": [{"seed": 0}]}),
     "bad episode entry"),
    (json.dumps([1, 2]), "expected a JSON object"),
    (json.dumps({"kind": "long_horizon", "horizons": [1], "models": {"m": {"error": [1, 2]}}}), "one 'error'"),
])
def test_bad_files_raise_clear_errors(tmp_path, content, match):
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(ReportError, match=match):
        write_report(tmp_path, tmp_path / "out.md")


def test_cli_writes_report_and_reports_errors(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    out = tmp_path / "docs" / "RESULTS.md"
    assert main(["report", "--results", str(results), "--out", str(out)]) == 0
    assert "No results yet." in out.read_text()
    _write(results, "bc.json", _result("bc", [[4321.0]]))
    assert main(["report", "--results", str(results), "--out", str(out)]) == 0
    assert "4321.0" in out.read_text() and "attention.png" not in out.read_text()
    (out.parent / "attention.png").write_bytes(b"png")
    assert main(["report", "--results", str(results), "--out", str(out)]) == 0
    assert "](attention.png)" in out.read_text()
    assert main(["report", "--results", str(tmp_path / "missing"), "--out", str(out)]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_modelled_latency_rows_are_named_and_kept_out_of_the_latency_table(tmp_path):
    _write(tmp_path, "tt.json", _result("tt", [[5000.0]], p50=40.0))
    late = _result("tt", [[2000.0]], p50=14.0)
    late["config"].update(latency_steps=2, catch_up=False)
    _write(tmp_path, "tt_late.json", late)
    text = render_report(*load_results(tmp_path))
    lat = text.index("## Per-step action latency")
    row = _table_row(text[:lat], "| Trajectory Transformer [catch_up=no, latency_steps=2]")
    assert row[2] == "2000.0 ± 0.0"
    assert "latency_steps" not in text[lat:]  # its per-step time is mostly plan-following, not planning
    assert _table_row(text[lat:], "| Trajectory Transformer")[4] == "40.00"
