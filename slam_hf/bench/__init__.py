"""`slam-hf bench` and the scripts in benchmarks/: the model zoo (`models`, with `parameters` for the active-parameter
accounting), the runner (`runner`), the reports (`report`: the results schema in `schema`, metric units and order in
`metrics`, matplotlib charts in `plots`), and what every benchmark measures with: timing loops,
peak memory, parameter and cache counts (`measure`), per-part diagnostics (`diagnostics`) and the machine and
software a run ran on (`machine`). Not remote code."""
