"""Issue 29, items 1-3: no write through a shared inode, no evidence destroyed, no failed run that
looks finished. Each test is built from the class (every file of the run, every kind of edit)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import msgspec
import pytest

from benches import Item, Scored
from engine import runner
from engine.backends import BackendError, GenResult
from engine.errors import ExitCode, RunIncomplete, UserError
from engine.records import MANIFEST_FILE, incomplete_reason, read_run, records_path, seal
from engine.spec import BenchSpec, RunSpec, SamplingConfig, VllmEngine


class Backend:
    """Replies "<question>!"; the requests `fail` names raise a BackendError (an error item)."""

    max_model_len = 512

    def __init__(self, fail=lambda request_id: False):
        self.fail = fail
        self.sent = []

    async def generate(self, request):
        self.sent.append(request.request_id)
        await asyncio.sleep(0)
        if self.fail(request.request_id):
            raise BackendError(f"{request.request_id}: HTTP 400 from the server: scripted failure")
        return GenResult(text=request.messages[-1]["content"] + "!", token_ids=[], finish_reason="stop",
                         prompt_tokens=3, completion_tokens=2)  # fmt: skip

    async def close(self):
        pass


def _plan(n: int = 6) -> runner.RunPlan:
    import types

    module = types.ModuleType("a")
    module.NAME, module.VERSION = "a", "1"
    module.messages = lambda item, think: [{"role": "user", "content": item.question}]
    module.score = lambda item, text: Scored(answer=text, score=float(text == item.target))
    items = [Item(id=f"a{i}", question=f"q{i}", target=f"q{i}!") for i in range(n)]
    spec = RunSpec(
        model="m", model_fingerprint="f", tier="smoke", seed=0, think=False, samples=1,
        sampling=SamplingConfig(preset="greedy", temperature=0.0, top_p=1.0, top_k=0),
        benches=(BenchSpec(name="a", version="1", data_fingerprint="d", n_items=n, items_fingerprint="i", max_tokens=16),),
        engine=VllmEngine(dtype="bfloat16", chunked_prefill=False, bs1=False, prefix_caching=False, max_model_len=512),
    )  # fmt: skip
    bench = runner.BenchPlan(module=module, items=items, prompts={}, max_tokens=16, samples=1)
    return runner.RunPlan(spec=spec, checkpoint=None, benches={"a": bench})


def _execute(plan, run_dir, backend):
    runner.prepare_run_dir(run_dir, plan.spec)
    asyncio.run(runner.execute(plan, run_dir, backend, concurrency=2))


def _snapshot(folder) -> dict[str, tuple[int, bytes]]:
    """Every file under `folder`: (inode, bytes)."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = (os.lstat(path).st_ino, open(path, "rb").read())
    return out


def _unfinished_run(tmp_path):
    """A run left with every kind of file a resume writes to: records with an error item and a torn
    tail (cut before the next append), notes, timing, the lock."""
    plan = _plan()
    run_dir = tmp_path / "original"
    with pytest.raises(RunIncomplete):
        _execute(plan, run_dir, Backend(fail=lambda rid: "a2" in rid))
    with open(records_path(run_dir, "a"), "ab") as f:
        f.write(b'{"item_id": "a9", "sam')  # killed mid-write
    return plan, run_dir


def test_a_hard_linked_copy_resumed_leaves_the_original_byte_identical(tmp_path):
    plan, original = _unfinished_run(tmp_path)
    before = _snapshot(original)
    assert {"spec.json", "records/a.jsonl", "notes.jsonl", "timing.jsonl", ".lock"} <= before.keys()
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-al", str(original), str(copy)], check=True)
    assert os.stat(records_path(copy, "a")).st_nlink == 2
    resumed = Backend()
    _execute(plan, copy, resumed)
    assert resumed.sent == ["a-a2-0-t0"]  # only the failed item again
    assert _snapshot(original) == before  # same inodes, same bytes: nothing written through a link
    run = read_run(copy)
    assert run.manifest.startswith("verified") and sorted(r.item_id for r in run.records["a"]) == [f"a{i}" for i in range(6)]
    for entry in ("records/a.jsonl", "notes.jsonl", "timing.jsonl", ".lock"):
        assert os.stat(copy / entry).st_nlink == 1  # the copy's files are its own now


@pytest.mark.skipif(os.geteuid() != 0, reason="making a file owned by another uid needs root")
def test_a_file_owned_by_another_user_is_copied_never_written(tmp_path):
    plan, original = _unfinished_run(tmp_path)
    os.chown(records_path(original, "a"), 12345, 12345)  # its only link, but another user's file
    theirs = open(records_path(original, "a"), "rb").read()
    held = os.open(records_path(original, "a"), os.O_RDONLY)  # the other user's open handle on the inode
    try:
        _execute(plan, original, Backend())
        assert os.pread(held, len(theirs) + 100, 0) == theirs  # their inode untouched
    finally:
        os.close(held)
    assert os.stat(records_path(original, "a")).st_uid == os.geteuid()
    assert read_run(original).manifest.startswith("verified")


def _edit_remove_line(lines):
    return lines[:2] + lines[3:]


def _edit_append_valid_record(lines):
    rec = msgspec.json.decode(lines[0])
    rec["item_id"] = "a99"
    rec.pop("checksum")
    from engine.records import ItemRecord

    return lines + [msgspec.json.encode(seal(msgspec.convert(rec, ItemRecord)))]


def _edit_resealed_score(lines):
    from engine.records import ItemRecord

    rec = msgspec.json.decode(lines[3], type=ItemRecord)
    return lines[:3] + [msgspec.json.encode(seal(msgspec.structs.replace(rec, score=1.0 - rec.score)))] + lines[4:]


def _edit_swap(lines):
    return [lines[1], lines[0], *lines[2:]]


def _edit_torn_tail(lines):
    return lines + [b'{"item_id": "a0"']


EDITS = {
    "line removed": (_edit_remove_line, 3),
    "valid record appended": (_edit_append_valid_record, 7),
    "record re-sealed with another score": (_edit_resealed_score, 4),
    "lines reordered": (_edit_swap, 1),
    "torn tail appended": (_edit_torn_tail, 7),
}


@pytest.mark.parametrize("edit", EDITS)
def test_an_edited_finished_run_is_refused_for_resume_and_nothing_deleted(tmp_path, edit):
    change, line = EDITS[edit]
    plan = _plan()
    run_dir = tmp_path / "run"
    _execute(plan, run_dir, Backend())
    path = records_path(run_dir, "a")
    lines = path.read_bytes().split(b"\n")[:-1]
    edited = b"\n".join(change(lines))
    path.write_bytes(edited + (b"" if edit == "torn tail appended" else b"\n"))
    before = _snapshot(run_dir)
    backend = Backend()
    with pytest.raises(UserError, match=rf"records/a\.jsonl:{line}: does not match .*{MANIFEST_FILE}.*nothing deleted.*new directory with --out"):
        _execute(plan, run_dir, backend)
    assert backend.sent == []
    after = _snapshot(run_dir)
    after.pop(".lock", None), before.pop(".lock", None)
    assert after == before  # the manifest and the edited records stay: the evidence of the edit
    with pytest.raises(UserError, match=rf"a\.jsonl:{line}: does not match"):
        read_run(run_dir)  # compare says the same


def test_a_run_whose_requests_all_failed_has_no_manifest_and_says_incomplete(tmp_path):
    plan = _plan()
    run_dir = tmp_path / "run"
    with pytest.raises(RunIncomplete, match=r"6 request\(s\) failed for good \(a 6\); 0 of 6 done; no manifest") as exc:
        _execute(plan, run_dir, Backend(fail=lambda rid: True))
    assert exc.value.exit_code == ExitCode.INCOMPLETE
    run = read_run(run_dir)
    assert not (run_dir / MANIFEST_FILE).exists() and run.manifest == "absent"
    assert "INCOMPLETE run: 0 of 6 item samples answered (6 request(s) failed" in incomplete_reason(run)
    # A rerun where some still fail: still incomplete; all answered: finished.
    with pytest.raises(RunIncomplete, match=r"\(a 1\); 5 of 6 done"):
        _execute(plan, run_dir, Backend(fail=lambda rid: "a4" in rid))
    _execute(plan, run_dir, Backend())
    assert read_run(run_dir).manifest.startswith("verified") and incomplete_reason(read_run(run_dir)) is None


def test_endpoint_run_with_every_request_failing_exits_incomplete(tmp_path):
    """The CLI end to end with --backend openai against a scripted server that refuses every chat
    request: exit code 5, no manifest, and no suggestion to commit it as a baseline."""
    script = r'''
import asyncio, sys
from aiohttp import web
async def chat(req):
    return web.json_response({"error": {"message": "scripted refusal"}}, status=400)
async def models(req):
    return web.json_response({"data": [{"id": "m", "root": "/ckpt/m", "max_model_len": 1024}]})
async def main():
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    r = web.AppRunner(app); await r.setup()
    site = web.TCPSite(r, "127.0.0.1", 0); await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
'''
    server = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        out = tmp_path / "run"
        env = {**os.environ, "PYTHONPATH": os.getcwd(), "HF_HUB_OFFLINE": "1"}
        done = subprocess.run(
            [sys.executable, "-m", "engine", "--model", "m", "--benches", "arith", "--tier", "smoke", "--limit", "3",
             "--backend", "openai", "--base-url", f"http://127.0.0.1:{port}", "--out", str(out), "--baseline", "none"],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
    finally:
        server.kill()
        server.wait()
    assert done.returncode == ExitCode.INCOMPLETE, done.stderr[-2000:]
    assert "incomplete: 3 request(s) failed for good" in done.stderr
    assert not (out / MANIFEST_FILE).exists()
    assert "commit it" not in done.stdout + done.stderr


def test_report_of_an_unfinished_run_says_incomplete_in_its_headline(tmp_path):
    from engine import baselines, report

    plan = _plan()
    with pytest.raises(RunIncomplete):
        _execute(plan, tmp_path / "run", Backend(fail=lambda rid: "a1" in rid))
    run = read_run(tmp_path / "run")
    report.write_report(run, None, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "(INCOMPLETE)</h1>" in page and "5 of 6 item samples answered (1 request(s) failed" in page
    hint = baselines.resolve_baseline(None, run, ["m"], ()).message
    assert "INCOMPLETE" in hint and "commit it" not in hint
    _execute(plan, tmp_path / "run", Backend())
    finished = read_run(tmp_path / "run")
    report.write_report(finished, None, tmp_path / "done.html")
    assert "INCOMPLETE" not in (tmp_path / "done.html").read_text()
    assert "commit it" in baselines.resolve_baseline(None, finished, ["m"], ()).message
