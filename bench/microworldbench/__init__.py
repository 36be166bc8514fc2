"""MicroWorldBench scorer: rubric judging of generated micro-world videos (no JAX).

Modules: rubrics (load/validate the official files), frames (PyAV sampling, JPEG data URLs),
judge (OpenAI-compatible client, strict replies), results (resumable results files), evaluate,
aggregate (official and strict scores, bootstrap CIs), agreement (judge agreement), report
(Markdown and PNG plots), cli (the `microworldbench` command).
"""

from __future__ import annotations

__version__ = "0.1.0"
