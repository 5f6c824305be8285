"""The measurements behind the scripts in benchmarks/, one concern per module, importable and testable.

SLAM v1 / v2 vs. Llama (benchmarks/bench_slam_vs_llama.py): `slam_vs_llama` (the models, parameter matching, the
training step), `slam_vs_llama_options` (its command line), `cost_model`, `throughput`, `moa`, `heldout`, `memory`
(peak-memory workers, `python -m slam_hf.bench.suites.memory`), `breakdowns` and `report_text`.
SLAM v3 (benchmarks/bench_slam_v3.py): `v3_models`, `v3_cache`, `v3_decode`, `v3_encoder`, `v3_paths_profile` and
`v3_summary`. One MLA layer vs. one MHA layer (benchmarks/bench_mla.py): `mla`."""
