"""KL probe (tier 0): teacher-forced log-probabilities of fixed text, baseline vs candidate.

    corpus.py   probe text: the baseline run's completions + reference solutions + user files
    store.py    the reference file (top-K bins per scored position, header, sha256)
    reduce.py   what happens to logits where they are computed (build bins / score against them)
    metrics.py  KL, top-1 agreement, Δp, PPL ratio, per-source breakdown
    run.py      build_reference / score_candidate on the hf or vllm backend

The per-row kernel is probes/kl_kernel.py; the in-engine vLLM hook is engine/backends/vllm_logits.py.
"""
