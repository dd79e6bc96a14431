"""eval/report_finetune.py on small synthetic result files with known numbers (no model is loaded):
    python3 -m pytest -q eval/tests/test_report_finetune.py"""
import csv
import json
import math
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import report_finetune as rf  # noqa: E402

DOCS = ("alpha", "beta")
TOKENS = 1024
DEPTHS = (0.1, 0.5)

# per model: dense ppl per doc; per lambda: (ppl per doc, sparsity per doc, pass keys correct per depth)
MODELS = {
    "base": {"dense": (10.0, 20.0),
             0.1: ((10.5, 21.0), (0.30, 0.40), (1, 1)),
             0.5: ((12.0, 24.0), (0.60, 0.80), (1, 0)),
             0.9: ((13.0, 26.0), (0.85, 0.85), (0, 0))},  # a lambda only the base file has
    "dense-tuned": {"dense": (8.0, 16.0),
                    0.1: ((8.4, 16.0), (0.30, 0.40), (1, 1)),     # rel 1.05, 1.00 -> 1.025
                    0.5: ((9.6, 17.6), (0.60, 0.80), (0, 0))},    # rel 1.20, 1.10 -> 1.15
    "sparse-tuned": {"dense": (9.0, 18.0),
                     0.1: ((9.9, 18.9), (0.30, 0.40), (1, 1)),    # rel 1.10, 1.05 -> 1.075
                     0.5: ((9.9, 18.0), (0.70, 0.90), (1, 1))},   # rel 1.10, 1.00 -> 1.05
}


def rows_of(spec: dict, lambdas=None) -> list[dict]:
    rows = []
    for doc, p in zip(DOCS, spec["dense"]):
        rows.append({"task": "ppl", "doc": doc, "tokens": TOKENS, "backend": "dense", "phase": "prefill",
                     "order": "sdpa", "method": "dense", "sparsity": 0.0, "ppl": p, "seconds": 0.1})
    for depth in DEPTHS:
        rows.append({"task": "passkey", "doc": "filler", "tokens": TOKENS, "depth": depth, "key": "12345",
                     "backend": "dense", "phase": "prefill", "order": "sdpa", "method": "dense", "sparsity": 0.0,
                     "passkey_correct": 1, "seconds": 0.1})
    for lam, runs in spec.items():
        if lam == "dense" or (lambdas is not None and lam not in lambdas):
            continue
        ppls, sps, keys = runs
        common = {"backend": "blasst", "phase": "prefill", "order": "ascending", "method": "lambda", "target": None,
                  "lambda": lam, "seconds": 0.1}
        for doc, p, s in zip(DOCS, ppls, sps):
            rows.append({"task": "ppl", "doc": doc, "tokens": TOKENS, **common, "sparsity": s, "ppl": p,
                         "kl_mean": 0.01 * lam})
        for depth, k in zip(DEPTHS, keys):
            rows.append({"task": "passkey", "doc": "filler", "tokens": TOKENS, "depth": depth, "key": "12345",
                         **common, "sparsity": sum(sps) / 2, "passkey_correct": k, "kl_mean": 0.001})
    return rows


def write_eval(path, rows, name) -> str:
    commit = {"base": "0123456789ab", "dense-tuned": "abcdef012345", "sparse-tuned": "fedcba987654"}[name]
    meta = {"model": "SmolLM2-135M-Instruct", "commit": commit, "date": "2025-01-01T00:00:00+00:00",
            "machine": "test machine",
            "commands": ["python3 eval/evaluate.py --backend blasst --lambdas 0.1,0.5"
                         + ("" if name == "base" else f" --state-dict run/{name.split('-')[0]}.pt")]}
    path.write_text(json.dumps({"meta": meta, "rows": rows}))
    return str(path)


@pytest.fixture
def files(tmp_path):
    paths = {m: write_eval(tmp_path / f"{m}.json", rows_of(spec), m) for m, spec in MODELS.items()}
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({
        "args": {"steps": 300, "length": 1024, "lr": 2e-5, "target": 0.8, "seed": 0},
        "factor": 123.5,
        "arms": {"sparse": {"first_loss": 2.5, "last_loss": 2.125, "mean_sparsity": 0.75, "seconds": 60.0},
                 "dense": {"first_loss": 2.5, "last_loss": 2.0625, "mean_sparsity": 0.0, "seconds": 50.0}}}))
    return paths, str(summary), str(tmp_path / "out" / "ft")


def run_main(paths, out, *extra):
    return rf.main(["--base", paths["base"], "--dense-tuned", paths["dense-tuned"],
                    "--sparse-tuned", paths["sparse-tuned"], "--out", out, *extra])


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def pick(rows, model, task, lam, doc=None, depth=None):
    got = [r for r in rows if r["model"] == model and r["task"] == task and r["lambda"] == lam
           and (doc is None or r["doc"] == doc) and (depth is None or float(r["depth"]) == depth)]
    assert len(got) == 1, (model, task, lam, doc, depth, got)
    return got[0]


def test_csv_has_ppl_relative_to_each_models_own_dense(files, capsys):
    paths, summary, out = files
    assert run_main(paths, out, "--train-summary", summary) == 0
    rows = read_csv(out + ".csv")
    assert list(rows[0]) == rf.CSV_FIELDS
    # (2 ppl + 2 pass key inputs) x (dense + the lambdas of each model: base 3, each tuned model 2)
    assert len(rows) == 4 * ((1 + 3) + (1 + 2) + (1 + 2))
    for m in MODELS:
        for doc in DOCS:
            d = pick(rows, m, "ppl", "dense", doc)
            assert float(d["ppl_vs_own_dense"]) == 1.0 and float(d["sparsity"]) == 0.0
    assert float(pick(rows, "sparse-tuned", "ppl", "0.5", "alpha")["ppl_vs_own_dense"]) == pytest.approx(1.1)
    assert float(pick(rows, "sparse-tuned", "ppl", "0.5", "beta")["ppl_vs_own_dense"]) == pytest.approx(1.0)
    assert float(pick(rows, "dense-tuned", "ppl", "0.5", "beta")["ppl_vs_own_dense"]) == pytest.approx(1.1)
    assert float(pick(rows, "dense-tuned", "ppl", "0.1", "alpha")["ppl_vs_own_dense"]) == pytest.approx(1.05)
    assert float(pick(rows, "base", "ppl", "0.9", "beta")["ppl_vs_own_dense"]) == pytest.approx(1.3)
    r = pick(rows, "sparse-tuned", "ppl", "0.5", "alpha")
    assert (r["order"], float(r["sparsity"]), float(r["ppl"]), float(r["kl_mean"])) == \
        ("ascending", 0.7, 9.9, pytest.approx(0.005))
    k = pick(rows, "dense-tuned", "passkey", "0.5", depth=0.5)
    assert k["passkey_correct"] == "0" and k["ppl_vs_own_dense"] == "" and k["ppl"] == ""
    assert os.path.getsize(out + ".png") > 0
    assert "wrote " + out + ".png" in capsys.readouterr().out


def test_aggregates_geometric_mean_relative_ppl_and_pass_key_accuracy(files):
    paths, _, _ = files
    recs = []
    for m in rf.MODELS:
        r, _ = rf.records(rf.load_eval(paths[m], m), m, paths[m], "prefill", "blasst")
        recs += r
    agg = rf.aggregate(recs, {r["_input"] for r in recs})
    s = agg[("sparse-tuned", "ascending", 0.5)]
    assert s["geo_ppl"] == pytest.approx(math.sqrt(9.9 * 18.0))
    assert s["rel_ppl"] == pytest.approx(1.05)
    assert s["sparsity"] == pytest.approx(0.8)
    assert (s["passkey"], s["passkey_k"], s["n_passkey"]) == (1.0, 2, 2)
    d = agg[("dense-tuned", "ascending", 0.5)]
    assert d["rel_ppl"] == pytest.approx(1.15) and d["passkey"] == 0.0
    assert agg[("base", "ascending", 0.5)]["passkey"] == 0.5
    assert agg[("dense-tuned", "ascending", 0.1)]["rel_ppl"] == pytest.approx(1.025)
    dense = agg[("dense-tuned", None, "dense")]
    assert dense["geo_ppl"] == pytest.approx(math.sqrt(8.0 * 16.0)) and dense["rel_ppl"] == 1.0
    assert dense["passkey"] == 1.0 and dense["sparsity"] == 0.0


def test_markdown_tables_and_computed_reading(files):
    paths, summary, out = files
    run_main(paths, out, "--train-summary", summary, "--no-plot")
    assert not os.path.exists(out + ".png")
    md = open(out + ".md").read()
    # sources and training summary
    assert "base: `" in md and "commit 0123456789," in md and "commit fedcba9876," in md
    assert "test machine" in md and "--state-dict run/sparse.pt" in md
    assert "steps=300" in md and "123.5" in md
    assert "| sparse | 2.5000 | 2.1250 | 0.750 | 60 |" in md and "| dense | 2.5000 | 2.0625 | 0.000 | 50 |" in md
    assert "Note:" not in md  # the files' commands load state dicts as their names say
    # table: the lambda only the base file has is left out and said so
    assert "## Order ascending" in md and "| 0.9 |" not in md and "left out of the tables: 0.9" in md
    row = next(line for line in md.splitlines() if line.startswith("| 0.5 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == ["0.5",
                     "0.700", f"{math.sqrt(12.0 * 24.0):.3f}", "1.2000", "0.500 (1/2)",
                     "0.700", f"{math.sqrt(9.6 * 17.6):.3f}", "1.1500", "0.000 (0/2)",
                     "0.800", f"{math.sqrt(9.9 * 18.0):.3f}", "1.0500", "1.000 (2/2)"]
    table = md[md.index("## Order ascending"):]
    dense_row = next(line for line in table.splitlines() if line.startswith("| dense |"))
    assert f"| {math.sqrt(8.0 * 16.0):.3f} | 1.0000 | 1.000 (2/2) |" in dense_row
    # the reading names the model that loses less at each lambda (dense-tuned at 0.1, sparse-tuned at 0.5)
    lines = md.splitlines()
    r01 = next(line for line in lines if line.startswith("- ascending, lambda 0.1:"))
    r05 = next(line for line in lines if line.startswith("- ascending, lambda 0.5:"))
    assert "**dense-tuned** loses less" in r01 and "+2.50 % vs +7.50 % for sparse-tuned" in r01
    assert "**sparse-tuned** loses less" in r05 and "+5.00 % vs +15.00 % for dense-tuned" in r05
    assert "pass key 2/2 (sparse-tuned) vs 0/2 (dense-tuned)" in r05
    final = next(line for line in lines if line.startswith("At the highest measured sparsity"))
    assert "lambda 0.5" in final and "**sparse-tuned** loses less" in final


def test_reading_follows_the_numbers_when_they_swap(tmp_path):
    # the same files with the tuned models' roles exchanged: the reading names the other model
    swapped = {"base": MODELS["base"], "dense-tuned": MODELS["sparse-tuned"], "sparse-tuned": MODELS["dense-tuned"]}
    paths = {m: write_eval(tmp_path / f"{m}.json", rows_of(spec), m) for m, spec in swapped.items()}
    out = str(tmp_path / "ft")
    run_main(paths, out, "--no-plot")
    md = open(out + ".md").read()
    r05 = next(line for line in md.splitlines() if line.startswith("- ascending, lambda 0.5:"))
    assert "**dense-tuned** loses less" in r05


def test_missing_file_is_named(files):
    paths, _, out = files
    paths = dict(paths, **{"dense-tuned": paths["dense-tuned"] + ".nope"})
    with pytest.raises(SystemExit) as e:
        run_main(paths, out)
    assert "--dense-tuned" in str(e.value) and "no such file" in str(e.value)


def test_missing_train_summary_is_named(files):
    paths, summary, out = files
    with pytest.raises(SystemExit) as e:
        run_main(paths, out, "--train-summary", summary + ".nope")
    assert "--train-summary" in str(e.value) and "no such file" in str(e.value)


def test_no_common_lambda(tmp_path):
    paths = {m: write_eval(tmp_path / f"{m}.json", rows_of(spec, lambdas={0.5} if m == "sparse-tuned" else {0.1}), m)
             for m, spec in MODELS.items()}
    with pytest.raises(SystemExit) as e:
        run_main(paths, str(tmp_path / "ft"))
    msg = str(e.value)
    assert "no lambda in common" in msg and "sparse-tuned: 0.5" in msg and "base: 0.1" in msg
    assert not os.path.exists(tmp_path / "ft.csv")


def test_empty_unreadable_and_lambda_less_files(tmp_path, files):
    paths, _, out = files
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"meta": {}, "rows": []}))
    with pytest.raises(SystemExit, match="--base .*: no rows"):
        run_main(dict(paths, base=str(empty)), out)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(SystemExit, match="--sparse-tuned .*not a readable JSON file"):
        run_main(dict(paths, **{"sparse-tuned": str(broken)}), out)
    dense_only = tmp_path / "dense_only.json"
    write_eval(dense_only, rows_of(MODELS["base"], lambdas=set()), "base")
    with pytest.raises(SystemExit, match="--base .*no blasst rows with method 'lambda'"):
        run_main(dict(paths, base=str(dense_only)), out)


def test_help_explains_the_inputs_and_outputs(capsys):
    with pytest.raises(SystemExit) as e:
        rf.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for word in ("--base", "--dense-tuned", "--sparse-tuned", "--train-summary", "--out", "ppl_vs_own_dense",
                 "<out>.png"):
        assert word in text
