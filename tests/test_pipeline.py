"""The tiny preset end to end on real DailyDialog: build, bundle, load, decode, evaluate; DDP; bad bundles."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.bundle import BundleError, read_manifest, verify_bundle
from models.generator import GenerativeResponder
from training.config import PRESETS
from training.core.distributed import DistContext
from training.pipeline.build import build
from training.pipeline.inputs import BuildPaths
from training.pipeline.plan import (
    G2R_RETRIEVER,
    ND_STUDENT,
    NEGATIVE_TEACHER,
    NT_GENERATOR,
    STANDARD_GENERATOR,
)

ROOT = Path(__file__).resolve().parents[1]
CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def tiny_build(
    dailydialog_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict]:
    base = tmp_path_factory.mktemp("tiny")
    summary = build(
        PRESETS["tiny"], BuildPaths(dailydialog_dir, base / "artifacts", base / "runs"), CPU
    )
    return base, summary


def test_build_tiny_writes_a_verified_generator_bundle(tiny_build: tuple[Path, dict]) -> None:
    base, summary = tiny_build
    manifest = verify_bundle(base / "artifacts" / STANDARD_GENERATOR)
    assert manifest.kind == "generator"
    assert manifest.training["preset"] == "tiny" and manifest.training["method"] == "mle"
    assert manifest.training["steps"] == PRESETS["tiny"].generator.train.max_steps
    assert "test_perplexity" in manifest.metrics and "test_greedy_dist-2" in manifest.metrics
    assert set(summary["evaluation"]) == {STANDARD_GENERATOR, ND_STUDENT, NT_GENERATOR}
    assert set(summary["evaluation"][ND_STUDENT]) == {"perplexity", "greedy", "beam5"}


def test_build_serves_the_generator_its_rule_chose(tiny_build: tuple[Path, dict]) -> None:
    from models.bundle import read_serving

    base, summary = tiny_build
    serving = read_serving(base / "artifacts")
    assert serving is not None
    assert serving["generative"] == summary["served_generator"]
    assert serving["generative"] in {STANDARD_GENERATOR, ND_STUDENT, NT_GENERATOR}
    assert serving["retrieval"] == G2R_RETRIEVER
    why = serving["why"]
    assert why["split"] == "validation" and set(why["candidates"]) == {
        STANDARD_GENERATOR,
        ND_STUDENT,
        NT_GENERATOR,
    }
    eligible = [n for n, c in why["candidates"].items() if c["eligible"]]
    best = min(eligible, key=lambda n: why["candidates"][n]["max-ratio"])
    assert (
        why["candidates"][why["chosen"]]["max-ratio"] <= why["candidates"][best]["max-ratio"] + 0.01
    )
    nt = verify_bundle(base / "artifacts" / NT_GENERATOR)
    assert nt.training["method"] == "nt" and nt.training["steps"] == PRESETS["tiny"].nt_steps
    run_dir = base / "runs" / "tiny" / STANDARD_GENERATOR
    assert (run_dir / "loss_curve.png").exists() and (run_dir / "eval-test.md").exists()


def test_build_tiny_trains_teacher_on_dn_and_the_nd_student(tiny_build: tuple[Path, dict]) -> None:
    base, summary = tiny_build
    teacher = verify_bundle(base / "artifacts" / NEGATIVE_TEACHER)
    student = verify_bundle(base / "artifacts" / ND_STUDENT)
    n_train = summary["data"]["train_used"]
    assert teacher.training["train_pairs"] == summary["negative_set"]["pairs"] == round(n_train / 2)
    assert student.training["method"] == "nd" and student.training["teacher"] == teacher.bundle_id
    assert student.training["train_pairs"] == n_train
    dn = json.loads((base / "runs" / "tiny" / "negative_set.json").read_text())
    assert dn["negative_pairs"] == summary["negative_set"]["pairs"] and dn["top_responses"]


def test_build_tiny_writes_a_g2r_retriever_that_answers(tiny_build: tuple[Path, dict]) -> None:
    from models.retriever import RetrievalResponder

    base, _ = tiny_build
    manifest = verify_bundle(base / "artifacts" / G2R_RETRIEVER)
    assert manifest.kind == "retriever" and manifest.training["method"] == "g2r-dm"
    # tiny's bi-encoder has the tiny generator's encoder shape: the whole encoder is copied
    assert manifest.training["warm_start"] == str(base / "artifacts" / STANDARD_GENERATOR)
    responder = RetrievalResponder.load(base / "artifacts" / G2R_RETRIEVER)
    (candidates,) = responder.respond([["hello , how are you ?"]], top_k=3)
    assert len(candidates) == 3 and all(isinstance(t, str) and t for t, _ in candidates)
    scores = [s for _, s in candidates]
    assert scores == sorted(scores, reverse=True)


def test_build_again_skips_finished_stages(
    tiny_build: tuple[Path, dict], dailydialog_dir: Path
) -> None:
    base, _ = tiny_build
    bundle = base / "artifacts" / STANDARD_GENERATOR
    before = verify_bundle(bundle).files
    build(PRESETS["tiny"], BuildPaths(dailydialog_dir, base / "artifacts", base / "runs"), CPU)
    assert verify_bundle(bundle).files == before  # same weights: the stage was skipped


def _copy_build(tiny_build: tuple[Path, dict], to: Path) -> Path:
    import shutil

    base, _ = tiny_build
    shutil.copytree(base / "artifacts", to / "artifacts")
    shutil.copytree(base / "runs", to / "runs")
    return to


def test_build_with_every_bundle_present_skips_every_stage_and_its_evaluation(
    tiny_build: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, first = tiny_build
    copy = _copy_build(tiny_build, tmp_path)
    manifests = {p: p.read_bytes() for p in (copy / "artifacts").glob("*/manifest.json")}
    # Without the runs folder's records the evaluations come from the manifests and the choice
    # of the served generator from serving.json; a corpus that is not there is never read.
    for record in (copy / "runs" / "tiny").glob("*/eval-test.json"):
        record.unlink()
    (copy / "runs" / "tiny" / "selection" / "selection.json").unlink()
    summary = build(
        PRESETS["tiny"],
        BuildPaths(tmp_path / "no-corpus", copy / "artifacts", copy / "runs"),
        CPU,
    )
    assert [s["stage"] for s in summary["stages"] if s["ran"]] == []
    assert len(summary["stages"]) == 10
    assert {p: p.read_bytes() for p in manifests} == manifests  # nothing re-evaluated
    assert summary["evaluation"] == first["evaluation"]
    assert summary["served_generator"] == first["served_generator"]
    assert summary["data"] == first["data"] and summary["negative_set"] == first["negative_set"]
    err = capsys.readouterr().err
    assert "[build] stage 1/10 data: skipped" in err
    assert "[build] stage 10/10 evaluate: skipped, every generator was evaluated before" in err
    saved = json.loads((copy / "runs" / "tiny" / "build-summary.json").read_text())
    assert saved["evaluation"] == summary["evaluation"]


def test_build_with_a_biencoder_baseline_serves_the_better_retriever_on_validation(
    tiny_build: tuple[Path, dict], dailydialog_dir: Path, tmp_path: Path
) -> None:
    from dataclasses import replace

    from models.bundle import read_manifest, read_serving
    from training.pipeline.plan import BIENCODER_RETRIEVER

    copy = _copy_build(tiny_build, tmp_path)
    g2r_before = (copy / "artifacts" / G2R_RETRIEVER / "manifest.json").read_bytes()
    tiny = PRESETS["tiny"]
    assert tiny.retriever is not None
    preset = replace(tiny, retriever=replace(tiny.retriever, biencoder_baseline=True))
    summary = build(preset, BuildPaths(dailydialog_dir, copy / "artifacts", copy / "runs"), CPU)
    # Only the plain bi-encoder was trained; the G2R retriever was kept as it was.
    assert (copy / "artifacts" / G2R_RETRIEVER / "manifest.json").read_bytes() == g2r_before
    assert read_manifest(copy / "artifacts" / BIENCODER_RETRIEVER).training["method"] == "biencoder"
    serving = read_serving(copy / "artifacts")
    assert serving is not None
    why = serving["retrieval_why"]
    # the rule's measure: validation Hits@1 as served (re-ranked) when every candidate has it
    key = "served_hits@1" if "as served" in why["criterion"] else "hits@1"
    hits = {n: c[key] for n, c in why["candidates"].items()}
    assert set(hits) == {BIENCODER_RETRIEVER, G2R_RETRIEVER}
    assert serving["retrieval"] == why["chosen"] == summary["retriever"]
    assert hits[why["chosen"]] >= max(hits.values()) - 0.005


def test_build_redo_evaluate_evaluates_again_and_trains_nothing(
    tiny_build: tuple[Path, dict], dailydialog_dir: Path, tmp_path: Path
) -> None:
    copy = _copy_build(tiny_build, tmp_path)
    bundle = copy / "artifacts" / STANDARD_GENERATOR
    weights = verify_bundle(bundle).files
    record = copy / "runs" / "tiny" / STANDARD_GENERATOR / "eval-test.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "perplexity": -1.0}))
    summary = build(
        PRESETS["tiny"],
        BuildPaths(dailydialog_dir, copy / "artifacts", copy / "runs"),
        CPU,
        redo=["evaluate"],
    )
    assert [s["stage"] for s in summary["stages"] if s["ran"]] == ["data", "evaluate"]
    assert verify_bundle(bundle).files == weights
    assert json.loads(record.read_text())["perplexity"] > 1  # written again
    assert summary["evaluation"][STANDARD_GENERATOR]["perplexity"] > 1


def test_build_distils_the_retriever_from_the_teacher_it_is_given(
    tiny_build: tuple[Path, dict], dailydialog_dir: Path, tmp_path: Path
) -> None:
    """--g2r-teacher: the retriever is distilled from that bundle, not the served generator."""
    copy = _copy_build(tiny_build, tmp_path)
    served = json.loads((copy / "artifacts" / "serving.json").read_text())["generative"]
    name = next(n for n in (STANDARD_GENERATOR, ND_STUDENT) if n != served)
    teacher = copy / "artifacts" / name
    summary = build(
        PRESETS["tiny"],
        BuildPaths(dailydialog_dir, copy / "artifacts", copy / "runs"),
        CPU,
        redo=["retriever-g2r"],
        g2r_teacher=teacher,
    )
    assert [s["stage"] for s in summary["stages"] if s["ran"]] == ["data", "retriever-g2r"]
    training = read_manifest(copy / "artifacts" / G2R_RETRIEVER).training
    assert training["teacher"] == verify_bundle(teacher).bundle_id
    assert summary["g2r_teacher"] == str(teacher)
    assert (copy / "runs" / "tiny" / f"g2r-augment-{name}").is_dir()


def test_cli_build_prints_stage_lines_and_a_short_table_not_the_json(
    tiny_build: tuple[Path, dict], tmp_path: Path
) -> None:
    copy = _copy_build(tiny_build, tmp_path)
    command = [sys.executable, "-m", "training", "build", "--preset", "tiny"]
    command += ["--data", str(tmp_path / "no-corpus")]
    command += ["--out", str(copy / "artifacts"), "--runs", str(copy / "runs")]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("build (tiny): ") and "{" not in proc.stdout
    assert proc.stdout.rstrip().endswith(
        f"full summary: {copy / 'runs' / 'tiny'}/build-summary.json"
    )
    assert len(proc.stdout.splitlines()) < 25
    assert "[build] stage 2/10 generator-standard: skipped" in proc.stderr
    bad = subprocess.run(
        [*command, "--redo", "generator"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "invalid choice: 'generator'" in bad.stderr


def test_load_and_respond_returns_text(tiny_build: tuple[Path, dict]) -> None:
    base, _ = tiny_build
    responder = GenerativeResponder.load(base / "artifacts" / STANDARD_GENERATOR)
    replies = responder.respond([["Hello, how are you?"], ["what time is it ?", "it's ten ."]])
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)
    assert responder.bundle_id.startswith(f"{STANDARD_GENERATOR}@")


def test_load_corrupt_generator_bundle_names_the_file(
    tiny_build: tuple[Path, dict], tmp_path: Path
) -> None:
    base, _ = tiny_build
    import shutil

    bundle = tmp_path / "broken"
    shutil.copytree(base / "artifacts" / STANDARD_GENERATOR, bundle)
    tok = bundle / "tokenizer.json"
    tok.write_text(tok.read_text().replace("<sep>", "<SEP>", 1))
    with pytest.raises(BundleError, match=r"tokenizer\.json checksum mismatch"):
        GenerativeResponder.load(bundle)


def test_cli_set_decoding_changes_the_default_decoding_and_refuses_a_bad_one(
    tiny_build: tuple[Path, dict], tmp_path: Path
) -> None:
    """set-decoding rewrites only the manifest's decoding section: the bundle still verifies,
    keeps its id (the weights' hash) and decodes with the new default; an invalid value
    changes nothing."""
    import shutil

    base, _ = tiny_build
    bundle = tmp_path / "gen"
    shutil.copytree(base / "artifacts" / STANDARD_GENERATOR, bundle)
    before = GenerativeResponder.load(bundle)

    def run(*sets: str) -> subprocess.CompletedProcess[str]:
        args = [a for s in sets for a in ("--set", s)]
        return subprocess.run(
            [sys.executable, "-m", "training", "set-decoding", "--bundle", str(bundle), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    proc = run("anti_lm=0.5", "anti_lm_steps=2", "block_adjacent_repeats=true")
    assert proc.returncode == 0, proc.stderr
    after = GenerativeResponder.load(bundle)  # verifies every checksum
    assert after.bundle_id == before.bundle_id
    assert (after.decoding.anti_lm, after.decoding.anti_lm_steps) == (0.5, 2)
    assert after.decoding.block_adjacent_repeats is True
    assert after.decoding.no_repeat_ngram_size == before.decoding.no_repeat_ngram_size
    manifest = (bundle / "manifest.json").read_text()
    for bad in (
        ("anti_lm=1.5",),
        ("no_such_field=1",),
        ("strategy=nucleus",),
        ("block_adjacent_repeats=yes",),
    ):
        proc = run(*bad)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert (bundle / "manifest.json").read_text() == manifest


def test_cli_evaluate_writes_json_and_markdown(
    tiny_build: tuple[Path, dict], dailydialog_dir: Path, tmp_path: Path
) -> None:
    base, _ = tiny_build
    out = tmp_path / "eval.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "evaluate",
            "--bundle",
            str(base / "artifacts" / STANDARD_GENERATOR),
            "--data",
            str(dailydialog_dir),
            "--split",
            "test",
            "--max-examples",
            "40",
            "--samples",
            "5",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["n_examples"] == 40 and len(result["samples"]) == 5
    assert set(result["decodings"]) == {"greedy", "beam5"}
    assert "| model |" in out.with_suffix(".md").read_text()


def test_cli_reports_bad_data_dir_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "train-generator",
            "--preset",
            "tiny",
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "g"),
            "--runs",
            str(tmp_path / "runs"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and str(tmp_path) in proc.stderr


def test_torchrun_two_gloo_processes_train_one_bundle(
    dailydialog_dir: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29531",
            "-m",
            "training",
            "train-generator",
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "--data",
            str(dailydialog_dir),
            "--out",
            str(tmp_path / "ddp"),
            "--runs",
            str(tmp_path / "runs"),
            "--max-steps",
            "6",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = verify_bundle(tmp_path / "ddp")
    assert manifest.training["world_size"] == 2 and manifest.training["steps"] == 6


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("nd", ["--ablation", "no-att", "--nd-lambda", "2", "--nd-gamma-fraction", "0.25"]),
        ("nd", ["--ablation", "random-targets"]),  # the one ablation that draws D_N
        ("nt", []),
        ("ul", []),
        # D_N by clustered entropy (the preset's nd.entropy, changed here), as the build makes it
        (
            "mle",
            [
                *("--subset", "negative", "--set", "nd.entropy.method=avg-embedding"),
                *("--set", "nd.entropy.clusters=8", "--set", "nd.entropy.dim=8"),
            ],
        ),
    ],
)
def test_cli_train_generator_methods(
    tiny_build: tuple[Path, dict],
    dailydialog_dir: Path,
    tmp_path: Path,
    method: str,
    extra: list[str],
) -> None:
    base, _ = tiny_build
    artifacts = base / "artifacts"
    out = artifacts / f"cli-{method}"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "train-generator",
            "--preset",
            "tiny",
            "--method",
            method,
            "--data",
            str(dailydialog_dir),
            "--out",
            str(out),
            "--runs",
            str(tmp_path / "runs"),
            "--tokenizer",
            str(base / "runs" / "tiny" / "tokenizer.json"),
            "--max-steps",
            "4",
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = verify_bundle(out)
    assert manifest.training["method"] == method and manifest.training["steps"] == 4
    if method in ("nt", "ul"):
        assert manifest.training["base"] == verify_bundle(artifacts / STANDARD_GENERATOR).bundle_id
    if method == "mle":  # D_N by the preset's entropy, its statistics beside the run
        [path] = (tmp_path / "runs").glob(f"tiny+*/{out.name}/negative_set.json")
        report = json.loads(path.read_text())
        assert report["entropy"].startswith("avg-embedding (k-means 8 response")
        assert 0 < report["negative_pairs"] < report["train_pairs"]
    if method == "nd" and "no-att" in extra:
        nd = manifest.training["nd"]
        assert nd["use_att"] is False
        assert nd["lambda"] == 2.0 and nd["gamma"] == 1.0  # 0.25 of --max-steps 4
    if method == "nd" and "random-targets" in extra:
        assert manifest.training["nd"]["targets"] == "random"


def test_cli_compare_writes_one_table(
    tiny_build: tuple[Path, dict], dailydialog_dir: Path, tmp_path: Path
) -> None:
    base, _ = tiny_build
    out = tmp_path / "cmp"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "compare",
            "--data",
            str(dailydialog_dir),
            "--max-examples",
            "12",
            "--samples",
            "3",
            "--out",
            str(out),
            "--bundle",
            f"standard={base / 'artifacts' / STANDARD_GENERATOR}",
            "--bundle",
            f"nd={base / 'artifacts' / ND_STUDENT}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    assert list(result) == ["standard", "nd"]
    assert set(result["nd"]) >= {"perplexity", "greedy", "beam5", "model", "training"}
    assert "dist-2" in result["standard"]["greedy"]
    md = out.with_suffix(".md").read_text()
    assert md.count("\n| standard |") == 5 and "## greedy: ratios against standard" in md
    # the baseline's own ratios are 1 (or n/a where a tiny model's metric is 0)
    assert re.search(r"\| standard \| ((1\.00x|n/a) \| ){7}", md) and "Sample replies" in md

    # --decodings: greedy alone (a timed run skips beam search); an unknown one is refused
    argv = [sys.executable, "-m", "training", "compare", "--data", str(dailydialog_dir)]
    argv += [
        "--max-examples",
        "4",
        "--samples",
        "1",
        "--bundle",
        f"nd={base / 'artifacts' / ND_STUDENT}",
    ]

    def compare(decodings: str, name: str) -> subprocess.CompletedProcess[str]:
        cmd = [*argv, "--decodings", decodings, "--out", str(tmp_path / name)]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)

    greedy = compare("greedy", "greedy")
    assert greedy.returncode == 0, greedy.stderr[-3000:]
    only = json.loads((tmp_path / "greedy.json").read_text())["nd"]
    assert "greedy" in only and "beam5" not in only
    bad = compare("nucleus", "bad")
    assert bad.returncode == 2 and "argument --decodings: unknown ['nucleus']" in bad.stderr


def test_cli_reply_prints_generator_and_retriever_replies(tiny_build: tuple[Path, dict]) -> None:
    base, _ = tiny_build
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "reply",
            "--device",
            "cpu",
            "--context",
            "hello , how are you ?",
            "--bundle",
            str(base / "artifacts" / ND_STUDENT),
            "--bundle",
            str(base / "artifacts" / G2R_RETRIEVER),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("> hello , how are you ?") == 2
    assert (
        "  greedy: " in proc.stdout
        and "  beam 5: " in proc.stdout
        and "  retrieved: " in proc.stdout
    )


def test_cli_parses_every_subcommand() -> None:
    from training.cli import parse_args

    for command in (
        "build",
        "train-generator",
        "evaluate",
        "compare",
        "set-decoding",
        "reply",
        "augment",
        "train-retriever",
        "build-index",
    ):
        with pytest.raises(SystemExit) as exc:
            parse_args([command, "--help"])
        assert exc.value.code == 0


def test_cli_nd_student_fine_tuned_from_the_standard_model(
    tiny_build: tuple[Path, dict], dailydialog_dir: Path, tmp_path: Path
) -> None:
    base, _ = tiny_build
    artifacts = base / "artifacts"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "train-generator",
            "--preset",
            "tiny",
            "--method",
            "nd",
            "--data",
            str(dailydialog_dir),
            "--out",
            str(tmp_path / "nd-ft"),
            "--runs",
            str(tmp_path / "runs"),
            "--teacher",
            str(artifacts / NEGATIVE_TEACHER),
            "--init-from",
            str(artifacts / STANDARD_GENERATOR),
            "--max-steps",
            "3",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = verify_bundle(tmp_path / "nd-ft")
    assert manifest.training["nd"]["init_from"] == str(artifacts / STANDARD_GENERATOR)
    assert manifest.training["steps"] == 3
    # the run kept its last weights (a fixed-budget fine-tune), at a constant learning rate
    log = [
        json.loads(line) for line in (tmp_path / "runs" / "tiny" / "nd-ft" / "metrics.jsonl").open()
    ]
    lrs = {r["lr"] for r in log if r["kind"] == "train"}
    assert len(lrs) == 1
