"""The default benches of a run: the standard battery, as far as its data is on this machine.

`python -m engine --model M --tier full` with no --benches grades M on every standard bench whose data
is here (a --data-dir folder, or the pinned hub file in the local cache); the others are named in one
line with the command that fetches them. The custom exams (godmode: a sandboxed agent; trader_traits:
needs a judge) run only when named.
"""

from __future__ import annotations

from pathlib import Path

# In the order a reader meets them in the output.
BATTERY = ("arith", "gsm8k", "mmlu_pro", "gpqa", "ifeval", "humaneval", "tradequiz", "aime_2026", "hmmt_feb_2026")


def data_available(name: str, data_dir: Path | None) -> bool:
    """Whether a bench's data can be read without the network: generated or shipped, under --data-dir,
    or its pinned hub file already in the cache."""
    import benches

    module = benches.get_bench(name)
    hub = getattr(module, "HUB", None)
    if hub is None:  # generated (arith) or shipped with the package (tradequiz's example)
        return True
    if data_dir is not None:
        return any((Path(data_dir) / name / f).is_file() for f in module.LOCAL_FILES)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        hf_hub_download(hub.repo, hub.filename, repo_type="dataset", revision=hub.revision, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        return False
    return True


def default_benches(data_dir: Path | None) -> tuple[list[str], str | None]:
    """(the battery's benches with data here, one line naming the skipped ones and how to fetch them)."""
    have = [b for b in BATTERY if data_available(b, data_dir)]
    missing = [b for b in BATTERY if b not in have]
    if not missing:
        return have, None
    fetch = f"`python -m engine data fetch --benches {','.join(missing)}`" + (" (gpqa is gated: set HF_TOKEN)" if "gpqa" in missing else "")
    if data_dir is not None:
        line = f"benches skipped, no data under --data-dir {data_dir}: {', '.join(missing)}; put DIR/<bench>/ files there, or fetch them with {fetch} and drop --data-dir"
    else:
        line = f"benches skipped, data not in the local hub cache: {', '.join(missing)}; fetch them with {fetch}"
    return have, line
