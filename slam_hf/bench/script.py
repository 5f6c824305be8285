"""The command line of the benchmark scripts whose settings are one dataclass (benchmarks/bench_ternary.py,
bench_ternary_quality.py, bench_loop.py): an option per settings field, --quick (a smoke run that writes nothing
unless --out) and --out; the run, logged; the tables; the results files. Not remote code."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields
from pathlib import Path


class Sections:
    """`section(name, fn)`: runs one named part of a benchmark, logging its start and wall time; `seconds` holds
    name -> seconds for the results' `section_seconds`."""

    def __init__(self, log):
        self.log, self.seconds = log, {}

    def __call__(self, name: str, fn):
        started = time.perf_counter()
        self.log(f"[{name}]")
        value = fn()
        self.seconds[name] = time.perf_counter() - started
        self.log(f"[{name}: {self.seconds[name]:.0f} s]")
        return value


def settings_parser(settings_class, description: str, quick_help: str, default_out: str) -> argparse.ArgumentParser:
    """--field-name for every field of `settings_class`, typed by its default (a bool: --x / --no-x; a tuple: one or
    more values of its first item's type; None: str), then --quick and --out."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = settings_class()
    for field in fields(settings_class):
        value = getattr(defaults, field.name)
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        elif isinstance(value, tuple):
            p.add_argument(flag, type=type(value[0]), nargs="+", default=list(value))
        else:
            p.add_argument(flag, type=str if value is None else type(value), default=value)
    p.add_argument("--quick", action="store_true", help=f"{quick_help}; no files unless --out")
    p.add_argument("--out", default=None, help=f"results prefix, writes .json and .txt (default: {default_out})")
    return p


def parse_settings_args(
    settings_class, argv, description: str, quick: dict, default_out: str, quick_help="a smoke run (few steps and rows)"
) -> argparse.Namespace:
    """`settings_parser`'s arguments (`argv`, default sys.argv[1:]); with --quick, the `quick` values of the options
    not given; --out `default_out` unless --quick."""
    argv = sys.argv[1:] if argv is None else argv
    args = settings_parser(settings_class, description, quick_help, default_out).parse_args(argv)
    given = {token.split("=")[0][2:].replace("-", "_") for token in argv if token[:2] == "--"}
    if args.quick:
        for name, value in quick.items():
            if name not in given:
                setattr(args, name, value)
    if args.out is None and not args.quick:
        args.out = default_out
    return args


def write_results(results: dict, log_lines: list[str], out_prefix, text: str) -> list[Path]:
    """<prefix>.json (everything) and <prefix>.txt (the run's log, then `text`, the tables)."""
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    json_path, text_path = out_prefix.with_suffix(".json"), out_prefix.with_suffix(".txt")
    json_path.write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    text_path.write_text("\n".join([*log_lines, "", text]) + "\n", encoding="utf-8")
    return [json_path, text_path]


def run_script(args, argv, path: str, settings_class, run, tables, text=None) -> int:
    """A script's main(): `run(settings, log, command)` on the settings of `args`, every log line printed (flushed)
    and kept; then `tables(results)` printed and, with --out, the files (the log, then `text(results)`, by default
    the tables). `path`: the script's file, for the command line recorded in the results."""
    lines = []

    def log(line: str = ""):
        print(line, flush=True)
        lines.append(line)

    values = {f.name: getattr(args, f.name) for f in fields(settings_class)}
    settings = settings_class(**{name: tuple(v) if isinstance(v, list) else v for name, v in values.items()})
    command = " ".join(
        ["PYTHONPATH=. python", f"benchmarks/{Path(path).name}", *(sys.argv[1:] if argv is None else argv)]
    )
    results = run(settings, log, command)
    print("\n" + tables(results), flush=True)
    if args.out:
        for written in write_results(results, lines, args.out, (text or tables)(results)):
            print(f"wrote {written}")
    return 0


__all__ = ["parse_settings_args", "run_script", "settings_parser", "write_results"]
