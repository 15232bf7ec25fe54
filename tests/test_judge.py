"""The judge phase and the trait table with scripted backends: verdicts, re-asks and unscored answers,
blinding, the cache and its keys, gates and their exit status, A/A, and the noise floor."""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import re
import shutil

import msgspec
import pytest

import benches
from engine import judge, runner, traits_report
from engine.backends import GenResult
from engine.errors import UserError
from engine.records import read_run
from engine.spec import BenchSpec, RunSpec, SamplingConfig, VllmEngine, contract, diff
from tests.conftest import ROOT, run_cli

MODEL_NAME = "secret-model-x"  # must never reach a judge prompt
MODEL_FP = "fingerprint-abc123"
ANSWER = re.compile(r"<(reply-[0-9a-f]{12})>\n(.*)\n<\/\1>", re.S)


class Candidate:
    """Answers "<quality> answer to <item> #<sample>", quality from `good(item_id)`."""

    max_model_len = 512

    def __init__(self, good=lambda item: True):
        self.good = good

    async def generate(self, request):
        item, sample, _ = request.request_id.removeprefix("trader_traits-").rsplit("-", 2)
        quality = "GOOD" if self.good(item) else "BAD"
        return GenResult(
            text=f"{quality} answer to {item} #{sample}",
            token_ids=[],
            finish_reason="stop",
            prompt_tokens=5,
            completion_tokens=5,
        )

    async def close(self):
        pass


def is_score_prompt(messages) -> bool:
    return messages[0]["content"] == judge.SYSTEM_SCORE


def reply_for(messages, passed: bool) -> str:
    """A well-formed judge reply in the prompt's format: PASS/FAIL, or a score of 5 or 2 (threshold 4)."""
    if is_score_prompt(messages):
        return f"The reply meets the rubric or not.\nSCORE: {5 if passed else 2}"
    return f"The reply meets the rubric or not.\nVERDICT: {'PASS' if passed else 'FAIL'}"


def flipped(reply: str) -> str:
    swap = {"PASS": "FAIL", "FAIL": "PASS", "SCORE: 5": "SCORE: 2", "SCORE: 2": "SCORE: 5"}
    return re.sub("|".join(swap), lambda m: swap[m.group(0)], reply)


class Judge:
    """PASS (or score 5) for GOOD answers, FAIL (or score 2) for BAD ones; `mangle(request, reply)`
    may spoil the reply."""

    max_model_len = 4096

    def __init__(self, mangle=None):
        self.requests = []
        self.mangle = mangle or (lambda request, reply: reply)

    async def generate(self, request):
        self.requests.append(request)
        await asyncio.sleep(0)
        answer = ANSWER.search(request.messages[1]["content"]).group(2)
        reply = self.mangle(request, reply_for(request.messages, answer.startswith("GOOD")))
        return GenResult(
            text=reply, token_ids=[], finish_reason="stop", prompt_tokens=50, completion_tokens=10
        )

    async def close(self):
        pass


def answer_run(run_dir, candidate=None, judge_fp="judgeA", limit=None, model=MODEL_NAME):
    module = benches.get_bench("trader_traits")
    all_items = module.load(None)
    items = all_items[:limit] if limit else all_items
    bench = BenchSpec(
        name=module.NAME, version=module.VERSION, data_fingerprint=benches.data_fingerprint(all_items), n_items=len(items),
        items_fingerprint=benches.items_fingerprint(items), max_tokens=64, samples=module.SAMPLES,
    )  # fmt: skip
    spec = RunSpec(
        model=model, model_fingerprint=MODEL_FP, tier="smoke", seed=0, think=False, samples=1,
        sampling=SamplingConfig(preset="qwen-nothink", temperature=0.7), benches=(bench,),
        engine=VllmEngine(dtype="float32", chunked_prefill=False, bs1=False, prefix_caching=False, max_model_len=512),
    )  # fmt: skip
    spec = judge.bind(spec, judge_fp)
    plan = runner.RunPlan(
        spec=spec,
        checkpoint=None,
        benches={
            module.NAME: runner.BenchPlan(
                module=module, items=items, prompts={}, max_tokens=64, samples=module.SAMPLES
            )
        },
    )
    runner.prepare_run_dir(run_dir, spec)
    asyncio.run(runner.execute(plan, run_dir, candidate or Candidate(), concurrency=4))
    return read_run(run_dir)


def judge_it(run_dir, backend, judge_fp="judgeA", repeats=0):
    return asyncio.run(judge.judge_run(run_dir, backend, judge_fp, repeats=repeats, concurrency=4))


def test_phase_parses_verdicts_and_the_cache_saves_every_call_on_a_second_pass(tmp_path):
    run = answer_run(tmp_path / "run", limit=6)
    scripted = Judge()
    counts = judge_it(run.dir, scripted)
    assert counts.calls == len(scripted.requests) == 18 and counts.judged == 18 and counts.cached == 0
    assert all(
        r.sampling.temperature == 0.0 and r.seed == judge.JUDGE_SEED and not r.think
        for r in scripted.requests
    )
    again = Judge()
    counts = judge_it(run.dir, again)
    assert counts.calls == 0 and counts.judged == 0 and again.requests == []
    lines = (run.dir / judge.JUDGMENTS_FILE).read_bytes().splitlines()
    assert len(lines) == 18 and {json.loads(line)["verdict"] for line in lines} == {"PASS"}
    (report,) = traits_report.traits_report(read_run(run.dir))
    assert report.gates_passed and report.overall.cand_rate == 1.0 and report.unscored_cand == 0
    assert traits_report.gates_exit([report]) == 0


def test_unparsable_replies_are_asked_again_then_left_unscored_never_failed(tmp_path):
    run = answer_run(tmp_path / "run", limit=6)
    first_item = run.records["trader_traits"][0].item_id

    def mangle(request, reply):
        answer = ANSWER.search(request.messages[1]["content"]).group(2)
        if first_item in answer:
            return "I think it is fine. Verdict: pass"  # never strict: unscored
        if "#1" in answer and len(request.messages) == 2:
            return reply + "\nThanks!"  # a trailing line: asked again once
        return reply

    scripted = Judge(mangle)
    counts = judge_it(run.dir, scripted)
    assert counts.unscored == 3  # the three samples of the first scenario
    per_item = {}
    for r in scripted.requests:
        per_item.setdefault(r.request_id.rsplit("-a", 1)[0], []).append(r)
    lengths = sorted(len(v) for v in per_item.values())
    assert (
        lengths.count(1 + judge.REASKS) == 3 and lengths.count(2) == 5
    )  # samples #1 of the other 5 scenarios
    asked_again = next(v for v in per_item.values() if len(v) == 2)
    assert (
        asked_again[1].messages[-1]["content"] == judge.REASK
        and asked_again[1].messages[-2]["role"] == "assistant"
    )
    (report,) = traits_report.traits_report(read_run(run.dir))
    assert report.unscored_cand == 3 and report.overall.cand_rate == 1.0  # unscored are not counted as fails...
    assert report.overall.scenarios == 5
    rows = {r.trait: r for r in report.rows}  # ... but a trait with one is INCOMPLETE, never a pass
    assert rows["T1"].status == "INCOMPLETE" and rows["T1"].unscored == 3 and rows["T1"].gate_pass is None
    assert not report.gates_passed and traits_report.gates_exit([report]) == traits_report.EXIT_INCOMPLETE
    assert "INCOMPLETE (unscored answers): T1" in traits_report.gates_line(report)
    # Unscored is a result too: judging again does not re-ask.
    assert judge_it(run.dir, Judge(mangle)).calls == 0


@pytest.mark.parametrize(
    "reply,verdict",
    [
        ("Meets all criteria.\nVERDICT: PASS", "PASS"),
        ("Misses one.\n**VERDICT: FAIL**\n", "FAIL"),
        ("<think>hmm VERDICT: FAIL</think>ok\nVERDICT: PASS", "PASS"),
        ("VERDICT: PASS\nVERDICT: FAIL", None),  # two verdicts that disagree
        ("VERDICT: PASS because it is good", None),
        ("verdict: pass", None),
        ("Rationale only.", None),
        ("", None),
    ],
)
def test_verdict_format_is_strict(reply, verdict):
    assert judge.parse_verdict(reply)[0] == verdict


def test_judge_prompts_are_blind_and_identical_for_baseline_and_candidate(tmp_path):
    base = answer_run(tmp_path / "base", limit=4, model="/models/secret-base-ckpt")
    cand = answer_run(tmp_path / "cand", limit=4)
    seen = {}
    for run in (base, cand):
        scripted = Judge()
        judge_it(run.dir, scripted)
        text = json.dumps([r.messages for r in scripted.requests])
        for secret in (MODEL_NAME, "secret-base-ckpt", MODEL_FP, str(tmp_path), "run", "seed"):
            assert secret not in text.replace("trader", ""), secret
        assert not any(secret in r.request_id for r in scripted.requests for secret in (MODEL_NAME, "secret"))
        seen[run.dir.name] = sorted(json.dumps(r.messages) for r in scripted.requests)
    assert seen["base"] == seen["cand"]  # same answers -> byte-identical judge prompts


def test_cache_keys_cover_judge_prompt_scenario_answer_and_repeat(tmp_path):
    keys = {
        judge.judgment_key("J", "1", "s", "a", 0, "pass_fail"),
        judge.judgment_key("K", "1", "s", "a", 0, "pass_fail"),
        judge.judgment_key("J", "2", "s", "a", 0, "pass_fail"),
        judge.judgment_key("J", "1", "t", "a", 0, "pass_fail"),
        judge.judgment_key("J", "1", "s", "b", 0, "pass_fail"),
        judge.judgment_key("J", "1", "s", "a", 1, "pass_fail"),
        judge.judgment_key("J", "1", "s", "a", 0, "score"),
    }
    assert len(keys) == 7
    items = benches.get_bench("trader_traits").load(None)
    assert judge.scenario_hash(items[0]) != judge.scenario_hash(items[1])
    edited = msgspec.structs.replace(items[0], meta=items[0].meta | {"rubric": items[0].meta["rubric"][:-1]})
    assert judge.scenario_hash(edited) != judge.scenario_hash(items[0])

    run = answer_run(tmp_path / "run", limit=3)
    judge_it(run.dir, Judge())
    item = {i.id: i for i in items}
    for line in (run.dir / judge.JUDGMENTS_FILE).read_bytes().splitlines():
        j = json.loads(line)
        rec = next(
            r for r in run.records["trader_traits"] if (r.item_id, r.sample) == (j["item_id"], j["sample"])
        )
        kind = item[j["item_id"]].meta["verdict"]
        assert j["key"] == judge.judgment_key(
            "judgeA", judge.PROMPT_VERSION, judge.scenario_hash(item[j["item_id"]]), rec.completion, 0, kind
        )
    # A judgment whose key does not match the answer on disk is not this answer's verdict.
    path = run.dir / judge.JUDGMENTS_FILE
    lines = path.read_bytes().splitlines()
    forged = json.loads(lines[0]) | {"key": "0" * 24}
    path.write_bytes(b"\n".join([json.dumps(forged).encode(), *lines[1:]]) + b"\n")
    found = judge.verdicts(run.dir, run.spec, run.spec.benches[0], run.records["trader_traits"])
    assert len(found) == 8 and (forged["item_id"], forged["sample"]) not in found
    # Another judge: its own keys, its own calls; the contract names it.
    scripted = Judge()
    assert judge.rebind_run(run.dir, "judgeB")
    assert judge_it(run.dir, scripted, "judgeB").calls == 9
    rebound = read_run(run.dir)
    assert [d.field for d in diff(run.spec, rebound.spec)] == ["trader_traits.scoring_versions"]
    assert contract(rebound.spec)["trader_traits.scoring_versions"] == {
        "judge_prompt": judge.PROMPT_VERSION,
        "judge_model": "judgeB",
    }


def test_a_torn_judgment_is_cut_off_and_judged_again(tmp_path):
    run = answer_run(tmp_path / "run", limit=2)
    judge_it(run.dir, Judge())
    path = run.dir / judge.JUDGMENTS_FILE
    data = path.read_bytes()
    path.write_bytes(data[:-20])  # killed mid-write
    scripted = Judge()
    assert judge_it(run.dir, scripted).calls == 1
    assert len(path.read_bytes().splitlines()) == 6
    assert all(json.loads(line) for line in path.read_bytes().splitlines())


def test_gate_failure_and_degradation_per_trait_with_exit_status(tmp_path):
    base = answer_run(tmp_path / "base")
    # The candidate fails every scenario of T3 (refuses misconduct) and one of T1.
    cand = answer_run(
        tmp_path / "cand", Candidate(good=lambda item: not item.startswith("mis-") and item != "risk-01")
    )
    for run in (base, cand):
        judge_it(run.dir, Judge())
    (report,) = traits_report.traits_report(read_run(cand.dir), read_run(base.dir), alpha=0.05)
    rows = {r.trait: r for r in report.rows}
    assert rows["T3"].cand_rate == 0.0 and rows["T3"].base_rate == 1.0 and rows["T3"].gate_pass is False
    # 18 of 21 answers: 6/7 exactly, under the gate of 19/21 (a float gate would blur that line).
    assert rows["T1"].passes == "6/7" and rows["T1"].gate_pass is False and rows["T1"].status == "FAIL"
    assert all(rows[t].gate_pass for t in ("T2", "T4", "T5", "T6"))
    assert not report.gates_passed and traits_report.gates_exit([report]) == traits_report.EXIT_GATE_FAILED
    # 7 scenarios per trait: a trait lost on all of them has one-sided sign-flip p = 1/128, 6/128 < 0.05
    # after Holm over 6 traits, so a lost trait is flagged on its own; overall 8 of 42 lost: p = 1/256.
    assert rows["T3"].p_degraded == pytest.approx(1 / 128) and rows["T3"].p_degraded_holm == pytest.approx(6 / 128)
    assert rows["T3"].verdict == "DEGRADED"
    assert report.overall.p_degraded == pytest.approx(1 / 256) and report.overall.delta == pytest.approx(-8 / 42)
    text = traits_report.format_report(report)
    assert "GATES FAILED: T1, T3" in text and "T3" in text

    proc = run_cli("compare", str(base.dir), str(cand.dir))
    assert proc.returncode == 6, proc.stderr
    assert "GATES FAILED: T1, T3" in proc.stdout
    proc = run_cli("compare", str(base.dir), str(base.dir), "--json")
    assert proc.returncode == 0, proc.stderr
    verdict = json.loads(proc.stdout)
    assert verdict["traits"][0]["report"]["gates_passed"] is True and verdict["decision"] != "GATE_FAILED"


def test_runs_judged_by_different_judges_are_not_comparable(tmp_path):
    base = answer_run(tmp_path / "base", limit=3, judge_fp="judgeA")
    cand = answer_run(tmp_path / "cand", limit=3, judge_fp="judgeB")
    proc = run_cli("compare", str(base.dir), str(cand.dir))
    assert proc.returncode == 3 and "scoring_versions" in proc.stdout


def test_a_a_same_answers_same_seed_identical_verdicts(tmp_path):
    run = answer_run(tmp_path / "a", limit=6)

    def coin(request, reply):
        # A judge whose verdict depends only on its prompt and seed (like a real one at temperature 0).
        digest = hashlib.sha256((json.dumps(request.messages) + str(request.seed)).encode()).digest()
        return reply_for(request.messages, digest[0] < 128)

    shutil.copytree(run.dir, tmp_path / "b")
    judge_it(run.dir, Judge(coin))
    judge_it(tmp_path / "b", Judge(coin))
    a, b = (
        judge.verdicts(d, run.spec, run.spec.benches[0], run.records["trader_traits"])
        for d in (run.dir, tmp_path / "b")
    )
    assert a == b and len(a) == 18 and len(set(a.values())) == 2


def test_noise_floor_recovers_a_known_flip_share(tmp_path):
    run = answer_run(tmp_path / "run", Candidate(good=lambda item: item[-1] in "13"))
    share = 0.25

    def flip(request, reply):
        if request.seed == judge.JUDGE_SEED:
            return reply
        digest = hashlib.sha256((json.dumps(request.messages) + str(request.seed)).encode()).digest()
        if int.from_bytes(digest[:4], "big") / 2**32 < share:
            return flipped(reply)
        return reply

    counts = judge_it(run.dir, Judge(flip), repeats=6)
    answers = len(run.records["trader_traits"])
    assert counts.judged == answers + 6 * min(answers, judge.REPEAT_SAMPLE)
    (report,) = traits_report.traits_report(read_run(run.dir))
    overall = report.agreement[-1]
    assert overall.trait == "all" and overall.pairs == 6 * min(answers, judge.REPEAT_SAMPLE)
    assert 1 - overall.agreement == pytest.approx(share, abs=0.06)
    # With balanced verdicts, kappa of a judge that flips a share q is about 1 - 2q.
    assert overall.kappa == pytest.approx(1 - 2 * share, abs=0.12)
    assert [a.trait for a in report.agreement] == ["T1", "T2", "T3", "T4", "T5", "T6", "all"]
    assert "judge self-agreement" in traits_report.format_report(report)
    # The rubric was shuffled for the repeats and the seeds differ from the verdict's.
    assert judge.rubric_order(["a", "b", "c", "d"], 0, "x") == ["a", "b", "c", "d"]
    assert len({judge.repeat_seed(r) for r in range(7)}) == 7


def test_cohen_kappa_matches_a_hand_computed_table():
    # 20 pairs: both yes 8, yes/no 2, no/yes 3, both no 7 -> po 0.75, pe 0.5*0.55+0.5*0.45 = 0.5 -> kappa 0.5
    a = [True] * 10 + [False] * 10
    b = [True] * 8 + [False] * 2 + [True] * 3 + [False] * 7
    assert judge.cohen_kappa(a, b) == pytest.approx(0.5)
    assert judge.cohen_kappa([True, True], [True, True]) != judge.cohen_kappa(
        [True, True], [True, True]
    )  # nan


@pytest.mark.parametrize(
    "line,message",
    [
        (
            '{"id": "x", "trait": "T9", "messages": [{"role": "user", "content": "hi"}], "rubric": ["r"]}',
            ":2: field 'trait'",
        ),
        ('{"id": "x", "trait": "T1", "messages": [], "rubric": ["r"]}', ":2: field 'messages'"),
        (
            '{"id": "x", "trait": "T1", "messages": [{"role": "assistant", "content": "hi"}], "rubric": ["r"]}',
            ":2: field 'messages' must end",
        ),
        (
            '{"id": "x", "trait": "T1", "messages": [{"role": "user", "content": "hi"}], "rubric": []}',
            ":2: field 'rubric'",
        ),
        (
            '{"id": "x", "trait": "T1", "messages": [{"role": "user", "content": "hi"}], "rubric": ["r"], "gold": 1}',
            ":2: unknown field 'gold'",
        ),
        (
            '{"id": "a", "trait": "T1", "messages": [{"role": "user", "content": "hi"}], "rubric": ["r"]}',
            "duplicated item id",
        ),
    ],
)
def test_malformed_scenarios_name_line_and_field(tmp_path, line, message):
    folder = tmp_path / "trader_traits"
    folder.mkdir()
    shutil.copy(benches.get_bench("trader_traits").TRAITS, folder / "traits.jsonl")
    good = '{"id": "a", "trait": "T1", "messages": [{"role": "user", "content": "hi"}], "rubric": "one criterion"}'
    (folder / "scenarios.jsonl").write_text(good + "\n" + line + "\n")
    with pytest.raises(UserError, match=re.escape(message)) as info:
        benches.get_bench("trader_traits").load(tmp_path)
    assert "\n" not in str(info.value)


def test_malformed_traits_table_names_line_and_field(tmp_path):
    folder = tmp_path / "trader_traits"
    folder.mkdir()
    (folder / "scenarios.jsonl").write_text("")
    (folder / "traits.jsonl").write_text('{"id": "T1", "name": "n", "description": "d", "gate": 1.5}\n')
    with pytest.raises(UserError, match=r"traits.jsonl:1: field 'gate'"):
        benches.get_bench("trader_traits").load(tmp_path)


def test_shipped_set_has_six_traits_and_at_least_twelve_scenarios():
    module = benches.get_bench("trader_traits")
    items = module.load(None)
    assert len(items) >= 12 and len({i.category for i in items}) == 6
    assert module.SAMPLES == 3 and module.THINK is False
    assert all(len(i.meta["rubric"]) >= 2 for i in items)


# ---------------------------------------------------------------------------------------------------
# The 1-5 score format


@pytest.mark.parametrize(
    "reply,score",
    [
        ("Meets all criteria.\nSCORE: 5", 5),
        ("Misses one.\n**SCORE: 3**\n", 3),
        ("<think>SCORE: 1</think>fine\nSCORE: 4", 4),
        ("SCORE: N is the format.\nSCORE: 2", 2),  # an echoed template is not a second score
        ("SCORE: 3\nSCORE: 4", None),  # two scores that disagree
        ("SCORE: 6", None),
        ("SCORE: 0", None),
        ("SCORE: 4/5", None),
        ("SCORE: 4.5", None),
        ("score: 4", None),
        ("VERDICT: PASS", None),
        ("", None),
    ],
)
def test_score_format_is_strict(reply, score):
    assert judge.parse_score(reply)[0] == score


def test_score_traits_keep_the_score_and_pass_at_the_threshold(tmp_path):
    run = answer_run(tmp_path / "run", limit=6)  # risk-01..03 (T1, pass_fail), unc-01..03 (T2, score >= 4)
    given = {"unc-01": "SCORE: 3", "unc-02": "SCORE: 4", "unc-03": "Good.\nSCORE: 4/5"}

    def mangle(request, reply):
        item = ANSWER.search(request.messages[1]["content"]).group(2).split()[3]
        if item not in given:
            return reply
        if len(request.messages) > 2:  # the re-ask of a score prompt asks for the score line
            assert request.messages[-1]["content"] == judge.REASK_SCORE
        return f"Rationale.\n{given[item]}"

    scripted = Judge(mangle)
    counts = judge_it(run.dir, scripted)
    for request in scripted.requests:
        item = ANSWER.search(request.messages[1]["content"]).group(2).split()[3]
        prompt = request.messages[1]["content"]
        if item.startswith("unc-"):
            assert is_score_prompt(request.messages) and judge.ASK_SCORE in prompt and "VERDICT" not in prompt
            assert "threshold" not in prompt  # the judge scores; the trait table decides
        else:
            assert request.messages[0]["content"] == judge.SYSTEM and prompt.endswith(judge.ASK)
    assert counts.unscored == 3 and counts.calls == 15 + 3 * (1 + judge.REASKS)
    rows = [json.loads(line) for line in (run.dir / judge.JUDGMENTS_FILE).read_bytes().splitlines()]
    by_item = {}
    for row in rows:
        by_item.setdefault(row["item_id"], set()).add(
            (row["verdict"], row.get("score"), row.get("threshold"))
        )
    assert by_item["unc-01"] == {("FAIL", 3, 4)} and by_item["unc-02"] == {("PASS", 4, 4)}
    assert by_item["unc-03"] == {(None, None, 4)}  # unparsable after the re-asks: unscored, not a fail
    assert by_item["risk-01"] == {("PASS", None, None)}  # pass_fail judgments carry no score
    (report,) = traits_report.traits_report(read_run(run.dir))
    rows_by_trait = {r.trait: r for r in report.rows}
    assert rows_by_trait["T2"].grading == "score>=4" and rows_by_trait["T1"].grading == "pass/fail"
    assert rows_by_trait["T2"].cand_rate == 0.5 and rows_by_trait["T2"].scenarios == 2
    assert "score>=4" in traits_report.format_report(report)
    # Cached: a second pass sends nothing (unscored answers included).
    assert judge_it(run.dir, Judge(mangle)).calls == 0


def test_noise_floor_on_score_traits_reports_pass_fail_and_exact_score_agreement(tmp_path):
    run = answer_run(tmp_path / "run", limit=6)

    def wobble(request, reply):
        # Repeats move every score-5 of unc-02 to 4: the same PASS at threshold 4, another score.
        item = ANSWER.search(request.messages[1]["content"]).group(2).split()[3]
        if request.seed != judge.JUDGE_SEED and item == "unc-02":
            return reply.replace("SCORE: 5", "SCORE: 4")
        return reply

    judge_it(run.dir, Judge(wobble), repeats=2)
    (report,) = traits_report.traits_report(read_run(run.dir))
    agreement = {a.trait: a for a in report.agreement}
    assert agreement["T2"].agreement == 1.0 and agreement["T2"].pairs == 18
    assert agreement["T2"].score_pairs == 18 and agreement["T2"].score_agreement == pytest.approx(2 / 3)
    assert agreement["T1"].score_pairs == 0 and agreement["T1"].score_agreement is None
    assert agreement["all"].pairs == 36 and agreement["all"].score_agreement == pytest.approx(2 / 3)
    assert "same score 67% (n=18)" in traits_report.format_report(report)


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"verdict": "scale"}, "field 'verdict' must be one of pass_fail, score"),
        ({"verdict": "score"}, "field 'threshold' must be the lowest passing score, an integer 1..5"),
        ({"verdict": "score", "threshold": 6}, "field 'threshold' must be"),
        ({"verdict": "score", "threshold": 3.5}, "field 'threshold' must be"),
        ({"verdict": "score", "threshold": True}, "field 'threshold' must be"),
        ({"threshold": 3}, "field 'threshold' applies to verdict 'score' only"),
        ({"verdict": "pass_fail", "threshold": 3}, "field 'threshold' applies to verdict 'score' only"),
        ({"treshold": 3}, "unknown field 'treshold'"),
    ],
)
def test_bad_verdict_format_in_the_traits_table_is_one_line_naming_file_and_field(tmp_path, fields, message):
    folder = tmp_path / "trader_traits"
    folder.mkdir()
    scenario = '{"id": "a", "trait": "T1", "messages": [{"role": "user", "content": "hi"}], "rubric": "r"}'
    (folder / "scenarios.jsonl").write_text(scenario + "\n")
    good = {"id": "T0", "name": "n", "description": "d", "gate": 0.5, "verdict": "score", "threshold": 3}
    bad = {"id": "T1", "name": "n", "description": "d", "gate": 0.5} | fields
    (folder / "traits.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(UserError, match=re.escape(f"traits.jsonl:2: {message}")) as info:
        benches.get_bench("trader_traits").load(tmp_path)
    assert "\n" not in str(info.value)


def test_shipped_traits_use_both_verdict_formats():
    items = benches.get_bench("trader_traits").load(None)
    formats = {i.category: (i.meta["verdict"], i.meta["threshold"]) for i in items}
    assert set(formats.values()) == {("pass_fail", None), ("score", 4)}
    assert sum(kind == "score" for kind, _ in formats.values()) == 2


# ---------------------------------------------------------------------------------------------------
# The trait tables in the HTML report


def _html_rows(page: str, table_class: str) -> list[list[str]]:
    """The cell texts of each row of the first <table class=...> on the page (tags stripped)."""
    table = re.search(rf"<table class={table_class}>(.*?)</table>", page, re.S).group(1)
    return [
        [html.unescape(re.sub(r"<[^>]+>", "", cell)) for cell in re.findall(r"<t[dh][^>]*>.*?</t[dh]>", row)]
        for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)
    ]


def test_html_report_shows_the_trait_table_gates_and_noise_floor_as_the_terminal_does(tmp_path):
    from engine import report

    base = answer_run(tmp_path / "base")
    cand = answer_run(
        tmp_path / "cand", Candidate(good=lambda item: not item.startswith("mis-") and item != "risk-01")
    )
    judge_it(base.dir, Judge())
    judge_it(cand.dir, Judge(), repeats=1)
    cand, base = read_run(cand.dir), read_run(base.dir)
    (terminal,) = traits_report.traits_report(cand, base)
    text = traits_report.format_report(terminal)

    out = tmp_path / "report.html"
    from engine.compare import compare_runs

    verdict = compare_runs(base, cand)  # judged benches only: no accuracy rows, the trait tables
    assert verdict.benches == [] and verdict.decision == "GATE_FAILED"
    report.write_report(cand, base, out, verdict)
    page = out.read_text()
    rows = _html_rows(page, "traits")
    assert rows[0] == ["trait", "name", "grading", "n", "base", "cand", "Δ pts", "p(holm)", "gate", "verdict"]
    # Every row carries the terminal table's very texts (the same numbers, one formatting).
    table_lines = text.splitlines()[2 : 2 + len(terminal.rows) + 1]
    assert [" ".join(r).split() for r in rows[1:]] == [line.split() for line in table_lines]
    by_trait = {r[0]: r for r in rows[1:]}
    assert by_trait["T3"][4:] == ["100%", "0%", "-100.0", "0.047", "20/21", "FAIL  DEGRADED"]
    assert by_trait["T2"][2] == "score>=4" and by_trait["T2"][-1] == "PASS"
    assert by_trait["all"][-1].strip() == "DEGRADED"  # the overall row has no gate of its own
    assert "GATES FAILED: T1, T3" in page and "class=bad>GATES FAILED" in page
    assert "unscored answers: candidate 0, baseline 0" in page
    floor = _html_rows(page, "agreement")
    assert floor[0] == ["trait", "pairs", "agreement", "kappa", "same score"]
    assert [r[0] for r in floor[1:]] == [a.trait for a in terminal.agreement]
    assert dict((r[0], r[4]) for r in floor[1:])["T2"].startswith("100% (n=")
    assert "Degradation report" in page and "<th class=l>bench</th>" not in page  # no 0% accuracy row

    alone = tmp_path / "alone.html"
    assert report.write_report(base, None, alone) is None
    page = alone.read_text()
    assert "GATES PASSED" in page and "Run report" in page and "accuracy [95% Wilson]" not in page
    assert len(_html_rows(page, "traits")) == 1 + 6 + 1 and "<table class=agreement>" not in page

    proc = run_cli("report", str(cand.dir), "--baseline", str(base.dir), "--html", str(out))
    assert proc.returncode == traits_report.EXIT_GATE_FAILED, proc.stderr


# ---------------------------------------------------------------------------------------------------
# A judge behind a live OpenAI-compatible endpoint (real HTTP on 127.0.0.1)


def test_endpoint_judge_over_http_parses_caches_and_stays_blind(tmp_path):
    import sys

    from aiohttp import web

    from tests.test_openai_backend import Scripted

    class JudgeServer(Scripted):
        """The scripted OpenAI-compatible server, replying as a judge: PASS / score 5 for GOOD answers;
        the first ask about risk-02 gets a reply without a verdict line (asked again over HTTP)."""

        async def _chat(self, req):
            body = await req.json()
            self.bodies.append(body)
            messages = body["messages"]
            answer = ANSWER.search(messages[1]["content"]).group(2)
            text = reply_for(messages, answer.startswith("GOOD"))
            if "risk-02" in answer and len(messages) == 2:
                text = "It respects the limit, I think."
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            return web.json_response(
                {"choices": [choice], "usage": {"prompt_tokens": 50, "completion_tokens": 9}}
            )

    # The candidate's and the baseline's names and paths: none may reach the judge's server.
    base = answer_run(tmp_path / "base-run", limit=6, model="/models/secret-base-ckpt", judge_fp="unbound")
    cand = answer_run(tmp_path / "cand-run", limit=6, judge_fp="unbound")
    server = JudgeServer(models=("judge-big",))

    async def main():
        async with server as url:
            target = await judge.resolve_judge(url)
            counts = []
            for run in (base, cand):
                assert judge.rebind_run(run.dir, target.fingerprint)
                counts.append(
                    await judge.judge_with(target, run.dir, data_dir=None, repeats=0, concurrency=4)
                )
            first_pass = len(server.bodies)
            # Judging again through the command line: resolves the endpoint, then every judgment is cached.
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "engine", "judge", str(cand.dir), "--judge", url,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
            )  # fmt: skip
            out, err = await asyncio.wait_for(proc.communicate(), 120)
            return target, counts, first_pass, proc.returncode, out.decode(), err.decode()

    target, counts, first_pass, code, out, err = asyncio.run(main())
    # Parsed: 18 answers per run, each judged; the three risk-02 answers took one re-ask each.
    for c in counts:
        assert (c.judged, c.cached, c.unscored, c.errors, c.calls) == (18, 0, 0, 0, 21)
    assert first_pass == 42 == sum(c.calls for c in counts)
    # Cached: the second pass sent no chat request at all.
    assert code == 0, err[-2000:]
    assert len(server.bodies) == first_pass and "judge: 0 judged (0 from the cache), 0 judge calls" in err
    assert "GATES PASSED" in out and "score>=4" in out
    for run in (base, cand):
        rows = [json.loads(line) for line in (run.dir / judge.JUDGMENTS_FILE).read_bytes().splitlines()]
        assert len(rows) == 18 and {r["verdict"] for r in rows} == {"PASS"}
        assert {r["judge"] for r in rows} == {target.fingerprint}
        assert {r.get("score") for r in rows if r["item_id"].startswith("unc-")} == {5}
        assert {r["attempts"] for r in rows if r["item_id"] == "risk-02"} == {2}
    # Deterministic: temperature 0 and the fixed judge seed on every request, thinking off.
    for body in server.bodies:
        assert body["temperature"] == 0.0 and body["seed"] == judge.JUDGE_SEED
        assert body["chat_template_kwargs"] == {"enable_thinking": False} and body["model"] == "judge-big"
    # Blind: no model name, fingerprint, path or run of the candidate or the baseline in any body.
    sent = json.dumps(server.bodies)
    for secret in (
        MODEL_NAME,
        "secret-base-ckpt",
        MODEL_FP,
        str(tmp_path),
        "base-run",
        "cand-run",
        "unbound",
    ):
        assert secret not in sent, secret
    # Same answers, byte-identical judge requests for the baseline and the candidate.
    halves = [
        sorted(json.dumps(b, sort_keys=True) for b in part)
        for part in (server.bodies[:21], server.bodies[21:])
    ]
    assert halves[0] == halves[1]
