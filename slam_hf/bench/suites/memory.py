"""Peak memory of a training step (and of one generate call), each (model, sequence length) measured in a fresh
subprocess: `python -m slam_hf.bench.suites.memory <the benchmark's options> --_memory-worker MODEL SEQ` parses
the benchmark's command line, builds the one model and prints one MEMORY_RESULT JSON line."""

import json
import os
import subprocess
import sys

import torch

import slam_hf
from slam_hf.bench.measure import MALLOC_ENV, PeakMemory, synchronize

from .slam_vs_llama import build_model, greedy_generate, make_batch, make_optimizer, train_step

# The checkout (or site-packages) that holds slam_hf: the workers import the same package as the parent.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(slam_hf.__file__)))

MEMORY_METHOD = {
    "cuda": (
        "torch.cuda.max_memory_allocated() during one training step (after a warmup step, so weights and AdamW "
        "states already exist; gradients are freed by zero_grad(set_to_none=True) and count in the step), minus "
        "torch.cuda.memory_allocated() just before it; each (model, seq) in a fresh subprocess. 'peak' = that "
        "maximum, including weights and optimizer states."
    ),
    "cpu": (
        "Fresh subprocess per (model, seq) with glibc MALLOC_MMAP_THRESHOLD_=65536 (large tensors are mmap'ed "
        "and returned to the OS on free, so RSS tracks live tensors). After one warmup step (weights and AdamW "
        "states exist; gradients are freed each step and count in the step), gc + malloc_trim, then the "
        "peak-RSS counter is reset (echo 5 > /proc/self/clear_refs) and "
        "one step runs; step delta = VmHWM - VmRSS before the step; 'peak' = VmHWM (whole process, incl. "
        "Python + torch runtime). If clear_refs is unavailable, ru_maxrss is used (then a lower bound)."
    ),
}


def memory_worker(args):
    """Runs in a fresh process: one model, one sequence length (or 'gen'); prints one JSON line."""
    name, seq = args._memory_worker
    model = build_model(name, args)
    mib = 1024 * 1024
    if seq == "gen":
        ids = make_batch(args, args.gen_prompt_len, args.gen_batch_size, salt=7)
        model.eval()

        def step():
            with torch.inference_mode():
                greedy_generate(args, model, ids)
    else:
        ids = make_batch(args, int(seq), args.batch_size)
        optimizer = make_optimizer(model)
        model.train()

        def step():
            train_step(model, optimizer, ids)

    step()  # warmup: allocates AdamW states, lazy kernels, caches
    synchronize(args.device)
    memory = PeakMemory(args.device, reset=True).start()
    step()
    reading = memory.read()
    result = {"before_mib": reading["before"] / mib, "peak_mib": reading["peak"] / mib}
    result["step_delta_mib"] = reading["delta"] / mib
    if args.device != "cuda":
        result["peak_reset"] = reading["exact"]
    print("MEMORY_RESULT " + json.dumps(result), flush=True)


def measure_memory(args, argv, jobs):
    """Runs one worker per (model, seq) job with the benchmark's command line `argv`; returns their readings."""
    env = dict(os.environ)
    env.update(MALLOC_ENV)
    env["PYTHONPATH"] = os.pathsep.join([_PACKAGE_ROOT] + [x for x in [env.get("PYTHONPATH")] if x])
    results = {}
    for name, seq in jobs:
        cmd = [sys.executable, "-m", __name__, *argv, "--_memory-worker", name, str(seq)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("MEMORY_RESULT ")]
        if proc.returncode != 0 or not line:
            raise RuntimeError(f"memory worker {name} seq={seq} failed:\n{proc.stdout}\n{proc.stderr}")
        results.setdefault(str(seq), {})[name] = json.loads(line[-1].split(" ", 1)[1])
        r = results[str(seq)][name]
        print(
            f"  memory {name:5s} seq={seq!s:<6} step delta {r['step_delta_mib']:9.1f} MiB   "
            f"peak {r['peak_mib']:9.1f} MiB",
            flush=True,
        )
    return results


def main(argv=None):
    from .slam_vs_llama_options import parse_args, prepare

    args = prepare(parse_args(sys.argv[1:] if argv is None else argv))
    return memory_worker(args)


if __name__ == "__main__":
    sys.exit(main())
