"""BitNet b1.58 inference speed and memory on CPU: four implementations of the same ternary weights
(benchmarks/bench_ternary.py; issue 19, item 4).

One SLAM model (default: SLAM v1, small preset, `ternary_linear=True`, random init from the seed) is written three
ways, and each folder is loaded the way a user would load it:

    fp32          the same config with `ternary_linear=False` (plain nn.Linear), holding the dequantised ternary
                  weights W_q * gamma
    ternary_int8  slam_hf.export.load_ternary(export folder): Int8TernaryLinear, int8 weights unpacked once; the
                  large projections on oneDNN's int8 linear with a weight packed once, the others on torch._int_mm
    bitlinear     AutoModelForCausalLM.from_pretrained(export folder): transformers' packed BitLinear (unpacks its
                  2-bit weights on every call; its helpers are torch.compiled, so it is warmed up before timing and
                  the warm-up is reported on its own)
    fake_quant    AutoModelForCausalLM.from_pretrained(master folder): the training layer TernaryLinear, in eval

and a diagnostic, NO_PROJECTIONS: the fp32 model with every projection stubbed out, whose speed over fp32's is the
most any projection kernel can give (Amdahl).

Measured in ONE process, the models interleaved round-robin (order reversed every other round), medians: prefill
tokens/s (one forward with the KV cache over batch x length tokens, logits of the last position only, as
`generate`'s prefill), decode tokens/s (greedy `generate` at batch 1 with the KV cache, min_new_tokens =
max_new_tokens; the decode time runs from the end of the prompt's forward to the end of `generate`, so it holds the
M = 1 steps and generate's own per-step work) and a projection microbenchmark (the seven projections of one decoder
layer alone, M = 1 and M = 128). Memory: each implementation in its own subprocess (load + prefill + decode), its
peak resident set (VmHWM; `memory_worker` says why not ru_maxrss alone) and the bytes its projection weights take.
Correctness in the same run: logits (prefill and every decode step) and greedy tokens of ternary_int8, bitlinear and
fake_quant equal bit for bit.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from unittest import mock

import torch
from torch import nn

from slam_hf.bench.machine import cpu_name, git_state, load_average, software_versions
from slam_hf.bench.measure import MALLOC_ENV, interleave, max_rss_bytes, rss_status, summarize
from slam_hf.slam_ternary import Int8TernaryLinear, TernaryLinear, ternary_weight

IMPLEMENTATIONS = ("fp32", "ternary_int8", "bitlinear", "fake_quant")
NO_PROJECTIONS = "no_projections"
LABELS = {
    "fp32": "(a) fp32 nn.Linear",
    "ternary_int8": "(b) ternary-int8 (load_ternary)",
    "bitlinear": "(c) transformers BitLinear",
    "fake_quant": "(d) TernaryLinear fake-quant (eval)",
    NO_PROJECTIONS: "(z) diagnostic: projections stubbed (zeros), the time outside them",
}
REFERENCE = "ternary_int8"  # the correctness reference; bitlinear and fake_quant must equal it bit for bit
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CLOCKS = ("wall", "process")
EQUALITY_KEYS = ("prefill_logits_equal", "decode_logits_equal", "tokens_equal")
REPORT_KEYS = ("title", "created", "command", "duration_seconds", "environment", "settings", "model", "load")
REPORT_KEYS += ("correctness", "prefill", "decode", "layer", "memory", "weights", "ratios", "targets", "load_average")
ROOT = Path(__file__).resolve().parents[3]


@dataclass
class TernarySpeedSettings:
    """Everything the benchmark's numbers depend on (the defaults are the recorded run)."""

    variant: str = "slam_v1"
    preset: str = "small"
    seed: int = 0
    # Random init, scaled up from the presets' 0.02 so that greedy decoding does not repeat one token (at 0.02 every
    # new token is the same, which would make "identical tokens" a weak check). The ternary weights are scale-free
    # (W / mean|W|), so this changes only the embeddings and the LM head, not the speed.
    initializer_range: float = 0.3
    prefill_batches: tuple = (1, 4)
    prefill_length: int = 128
    prompt_length: int = 16
    new_tokens: int = 32
    decode_batch: int = 1
    warmup: int = 1  # untimed rounds of every measurement after the correctness pass (which warms up too)
    repeats: int = 7  # timed round-robin rounds
    layer_repeats: int = 40  # rounds of the projection microbenchmark
    threads: int = 1
    timer: str = "process"  # the headline clock: "process" (CPU time of this process) or "wall"; both are recorded
    memory: bool = True  # the per-implementation subprocesses (peak RSS)
    compile_bitlinear: bool = True  # False: transformers' BitLinear helpers run eager (torch.compiler "force_eager")
    fresh_compile_cache: bool = True  # BitLinear compiles into an empty TORCHINDUCTOR_CACHE_DIR (a cold compile)
    work_dir: str = ""  # the model folders (default: a temporary folder)

    def __post_init__(self):
        self.prefill_batches = tuple(int(b) for b in self.prefill_batches)
        if self.timer not in CLOCKS:
            raise ValueError(f"timer must be one of {CLOCKS}, got {self.timer!r}")


def now() -> dict:
    """Both clocks at once: wall (perf_counter) and process (CPU time of this process, every thread)."""
    return {"wall": time.perf_counter(), "process": time.process_time()}


def elapsed(start: dict, end: dict) -> dict:
    return {clock: end[clock] - start[clock] for clock in CLOCKS}


def bitlinear_stance(settings: TernarySpeedSettings):
    """A context in which transformers' BitLinear runs compiled (the default) or eager (`compile_bitlinear` off)."""
    return contextlib.nullcontext() if settings.compile_bitlinear else torch.compiler.set_stance("force_eager")


# --------------------------------------------------------------------------------------------------------------
# models and folders


def prepare_folders(settings: TernarySpeedSettings, root: Path) -> dict:
    """Build the ternary model from the seed and write {"master", "export", "fp32"} folders under `root`; fp32 holds
    every TernaryLinear's weight as W_q * gamma, the weights the ternary implementations compute with."""
    from transformers import AutoModelForCausalLM

    from slam_hf.export import export_ternary
    from slam_hf.presets import load_preset

    def config(ternary: bool):
        return load_preset(
            settings.variant, settings.preset, ternary_linear=ternary, initializer_range=settings.initializer_range
        )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        master = AutoModelForCausalLM.from_config(config(ternary=True)).eval()
    folders = {name: root / name for name in ("master", "export", "fp32")}
    master.save_pretrained(folders["master"])
    export_ternary(master, folders["export"])
    state = {name: tensor.detach().clone() for name, tensor in master.state_dict().items()}
    for name, module in master.named_modules():
        if isinstance(module, TernaryLinear):
            weight_q, gamma = ternary_weight(module.weight.detach())
            state[f"{name}.weight"] = (weight_q * gamma).to(module.weight.dtype)
    fp32 = AutoModelForCausalLM.from_config(config(ternary=False)).eval()
    missing, unexpected = fp32.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith("lm_head.weight")]:  # a tied head is not in the state
        raise RuntimeError(f"fp32 twin does not match the ternary model: missing {missing}, unexpected {unexpected}")
    fp32.save_pretrained(folders["fp32"])
    return {name: str(path) for name, path in folders.items()}


def load_implementation(name: str, folders: dict) -> nn.Module:
    """One implementation, loaded from its folder as a user would (module docstring)."""
    from transformers import AutoModelForCausalLM

    from slam_hf.export import load_ternary

    if name == "ternary_int8":
        return load_ternary(folders["export"]).eval()
    folder = {"fp32": "fp32", "bitlinear": "export", "fake_quant": "master"}.get(name)
    if folder is None:
        raise ValueError(f"unknown implementation {name!r}; choose one of {IMPLEMENTATIONS}")
    return AutoModelForCausalLM.from_pretrained(folders[folder]).eval()


class ZeroProjection(nn.Module):
    """A stand-in for a projection that costs (almost) nothing: zeros of the output's shape."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states.new_zeros(*hidden_states.shape[:-1], self.out_features)


def without_projections(model: nn.Module) -> nn.Module:
    """`model` with every projection a ZeroProjection, in place: what the model costs outside its projections (its
    outputs are meaningless; `generate` still decodes exactly `new_tokens` tokens, min_new_tokens)."""
    for name, module in projection_modules(model).items():
        model.set_submodule(name, ZeroProjection(module.in_features, module.out_features))
    return model


def projection_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] in PROJECTIONS}


def kernel(module: nn.Module) -> str:
    """What computes a projection: an Int8TernaryLinear's matmul (oneDNN's on a packed weight, or torch._int_mm),
    else the module's class."""
    if not hasattr(module, "packed_weight"):
        return type(module).__name__
    return "_int_mm" if module.packed_weight is None else "oneDNN packed"


def weight_bytes(module: nn.Module) -> int:
    """Bytes of a projection's weight: nn.Linear / TernaryLinear `weight` (float), BitLinear `weight` (uint8, four
    weights a byte), Int8TernaryLinear `weight_t` (int8) or, packed, `packed_weight` (oneDNN's opaque blocked
    layout of the int8 weight: counted as one byte per weight)."""
    if getattr(module, "packed_weight", None) is not None:
        return module.in_features * module.out_features
    tensor = module.weight_t if hasattr(module, "weight_t") else module.weight
    return tensor.numel() * tensor.element_size()


def projection_weights(model: nn.Module) -> dict:
    """Bytes of the projection weights a model holds (weights only: no biases, no per-tensor scales), the logical
    weight count (in x out), bytes per weight and how many projections each kernel computes."""
    modules = projection_modules(model).values()
    weights = sum(m.in_features * m.out_features for m in modules)
    nbytes = sum(weight_bytes(m) for m in modules)
    return {
        "modules": len(modules),
        "kinds": sorted({type(m).__name__ for m in modules}),
        "kernels": dict(collections.Counter(kernel(m) for m in modules)),
        "weights": weights,
        "bytes": nbytes,
        "bytes_per_weight": nbytes / weights if weights else None,
    }


def state_bytes(model: nn.Module) -> int:
    """Bytes of every distinct parameter and buffer storage of a model (tied weights once), plus the oneDNN-packed
    weights, which are plain attributes (`weight_bytes`)."""
    tensors = [*model.parameters(), *model.buffers()]
    storages = {t.untyped_storage().data_ptr() or id(t): t.untyped_storage().nbytes() for t in tensors}
    packed = [m for m in model.modules() if getattr(m, "packed_weight", None) is not None]
    return sum(storages.values()) + sum(weight_bytes(m) for m in packed)


# --------------------------------------------------------------------------------------------------------------
# inputs and measurements


def inputs(settings: TernarySpeedSettings, vocab_size: int) -> dict:
    """Token ids from the seed, above the special ids 0-3: one prefill batch per size, and the decode prompt."""
    generator = torch.Generator().manual_seed(settings.seed + 1)
    shapes = {b: (b, settings.prefill_length) for b in settings.prefill_batches}
    prefill = {b: torch.randint(4, vocab_size, shape, generator=generator) for b, shape in shapes.items()}
    prompt = torch.randint(4, vocab_size, (settings.decode_batch, settings.prompt_length), generator=generator)
    return {"prefill": prefill, "prompt": prompt}


def generate_kwargs(settings: TernarySpeedSettings, model: nn.Module) -> dict:
    pad = model.config.pad_token_id
    n = settings.new_tokens
    return dict(do_sample=False, max_new_tokens=n, min_new_tokens=n, use_cache=True, pad_token_id=pad or 0)


@torch.no_grad()
def prefill(model: nn.Module, ids: torch.Tensor) -> dict:
    """Seconds (both clocks) of one prefill forward: KV cache on, logits of the last position only."""
    start = now()
    model(input_ids=ids, use_cache=True, logits_to_keep=1)
    return elapsed(start, now())


@torch.no_grad()
def timed_generate(model: nn.Module, prompt: torch.Tensor, settings: TernarySpeedSettings) -> dict:
    """One greedy `generate` with the time of every forward call: {"total", "decode", "decode_forward"} (both
    clocks), "forwards", "decode_steps". decode = end of `generate` - end of the prompt's forward."""
    calls = []
    pre = model.register_forward_pre_hook(lambda module, args: calls.append([now(), None]))
    post = model.register_forward_hook(lambda module, args, output: calls[-1].__setitem__(1, now()))
    try:
        start = now()
        model.generate(input_ids=prompt, **generate_kwargs(settings, model))
        end = now()
    finally:
        pre.remove()
        post.remove()
    return {
        "total": elapsed(start, end),
        "decode": elapsed(calls[0][1], end),
        "decode_forward": {c: sum(e[c] - s[c] for s, e in calls[1:]) for c in CLOCKS},
        "forwards": len(calls),
        "decode_steps": len(calls) - 1,
    }


def first_calls(models: dict, data: dict, settings: TernarySpeedSettings) -> dict:
    """Wall seconds of every model's very first prefill of each batch and first `generate`: with BitLinear they hold
    torch.compile's tracing and code generation (`compile_overhead` subtracts the steady-state medians)."""
    first = {}
    for name, model in models.items():
        first[name] = {"prefill": {b: prefill(model, ids)["wall"] for b, ids in data["prefill"].items()}}
        first[name]["generate"] = timed_generate(model, data["prompt"], settings)["total"]["wall"]
    return first


def compile_overhead(first: dict, prefill_stats: dict, decode_stats: dict) -> dict:
    """{name: first calls' wall seconds minus the median wall seconds of the same calls once warm}: the one-off cost
    of the first calls (torch.compile for BitLinear; allocator and oneDNN primitive set-up for the others)."""
    overhead = {}
    for name, calls in first.items():
        steady = sum(prefill_stats[name][b]["seconds"]["wall"]["median_s"] for b in calls["prefill"])
        steady += decode_stats[name]["seconds"]["total"]["wall"]["median_s"]
        total = sum(calls["prefill"].values()) + calls["generate"]
        overhead[name] = {"first_calls_s": total, "steady_s": steady, "overhead_s": total - steady}
    return overhead


@torch.no_grad()
def check_correctness(models: dict, data: dict, settings: TernarySpeedSettings) -> dict:
    """Logits of every prefill batch (all positions, no cache) and of every decode step, and the greedy tokens, of
    every model against REFERENCE, bit for bit (fp32, which does not quantise activations, for reference only)."""
    logits, step_logits, tokens = {}, {}, {}
    for name, model in models.items():
        logits[name] = [model(input_ids=ids, use_cache=False).logits for ids in data["prefill"].values()]
        kwargs = {**generate_kwargs(settings, model), "output_logits": True, "return_dict_in_generate": True}
        out = model.generate(input_ids=data["prompt"], **kwargs)
        step_logits[name], tokens[name] = torch.stack(out.logits), out.sequences
    report = {"reference": REFERENCE, **{key: {} for key in EQUALITY_KEYS}, "prefill_logits_max_abs_diff": {}}
    for name in [n for n in models if n != REFERENCE]:
        pairs = list(zip(logits[name], logits[REFERENCE]))
        report["prefill_logits_equal"][name] = all(torch.equal(a, b) for a, b in pairs)
        report["decode_logits_equal"][name] = torch.equal(step_logits[name], step_logits[REFERENCE])
        report["tokens_equal"][name] = torch.equal(tokens[name], tokens[REFERENCE])
        report["prefill_logits_max_abs_diff"][name] = max((a - b).abs().max().item() for a, b in pairs)
    prompt = data["prompt"].shape[1]
    new = tokens[REFERENCE][:, prompt:]
    report["new_tokens"] = new.tolist()
    report["distinct_new_tokens"] = int(new.unique().numel())
    report["fp32_same_new_tokens"] = int((tokens["fp32"][:, prompt:] == new).sum())
    ternary = [n for n in models if n not in ("fp32", REFERENCE)]
    report["ternary_bit_identical"] = all(report[key][n] for key in EQUALITY_KEYS for n in ternary)
    return report


def timing_rounds(models: dict, data: dict, settings: TernarySpeedSettings) -> dict:
    """`warmup` untimed then `repeats` timed round-robin rounds (`measure.interleave`); in each, every model runs
    each prefill batch once, then one `generate`. {name: [{"prefill": {batch: seconds}, "generate", "load"}]}."""

    def sampler(model):
        return lambda: {
            "prefill": {b: prefill(model, ids) for b, ids in data["prefill"].items()},
            "generate": timed_generate(model, data["prompt"], settings),
            "load": load_average(),
        }

    samplers = {name: sampler(model) for name, model in models.items()}
    return interleave(samplers, settings.warmup, settings.repeats)


def summarize_timing(samples: dict, data: dict, settings: TernarySpeedSettings) -> tuple[dict, dict]:
    """({name: {batch: prefill stats}}, {name: decode stats}); tokens/s from the median seconds of each clock, the
    headline (tokens_per_s, decode_tokens_per_s) from `timer`'s."""
    prefill_stats, decode_stats = {}, {}
    for name, runs in samples.items():
        prefill_stats[name] = {}
        for b, ids in data["prefill"].items():
            seconds = {c: summarize([run["prefill"][b][c] for run in runs]) for c in CLOCKS}
            per_s = {c: ids.numel() / seconds[c]["median_s"] for c in CLOCKS}
            prefill_stats[name][b] = {"tokens": ids.numel(), "seconds": seconds, "tokens_per_s": per_s[settings.timer]}
            prefill_stats[name][b].update({f"tokens_per_s_{c}": per_s[c] for c in CLOCKS})
        generates = [run["generate"] for run in runs]
        tokens = generates[0]["decode_steps"] * settings.decode_batch
        seconds = {k: {c: summarize([g[k][c] for g in generates]) for c in CLOCKS} for k in ("total", "decode")}
        seconds["decode_forward"] = {c: summarize([g["decode_forward"][c] for g in generates]) for c in CLOCKS}
        median = {k: seconds[k][settings.timer]["median_s"] for k in seconds}
        decode_stats[name] = {
            "decode_steps": generates[0]["decode_steps"],
            "forwards": generates[0]["forwards"],
            "seconds": seconds,
            "decode_tokens_per_s": tokens / median["decode"],
            **{f"decode_tokens_per_s_{c}": tokens / seconds["decode"][c]["median_s"] for c in CLOCKS},
            "decode_forward_tokens_per_s": tokens / median["decode_forward"],
            "generate_tokens_per_s": settings.new_tokens * settings.decode_batch / median["total"],
        }
    return prefill_stats, decode_stats


@torch.no_grad()
def layer_microbenchmark(models: dict, settings: TernarySpeedSettings, layer_index: int = 0) -> dict:
    """The seven projections of one decoder layer alone (no attention, norms or lm_head), each implementation's own
    modules, on the same float32 input rows, at M = 1 and M = prefill_length rows; one warm-up and `layer_repeats`
    interleaved rounds, medians of the `timer` clock. M = 1 samples time 20 calls each (divided), M > 1 one call.
    The same seven weights are used over and over, so they sit in the CPU's caches: this prices the kernels, not the
    memory traffic of a model's decode step, where every weight comes from DRAM once per token. Returns
    {M: {name: {projection: s, "layer": sum of the medians}}}."""
    generator = torch.Generator().manual_seed(settings.seed + 2)
    layers = {}
    for name, model in models.items():
        by_layer = collections.defaultdict(dict)  # e.g. model.layers.0 -> {q_proj: module, ...}, in order
        for path, module in projection_modules(model).items():
            by_layer[path.rsplit(".", 2)[0]][path.rsplit(".", 1)[-1]] = module
        layers[name] = list(by_layer.values())[layer_index]

    def sampler(modules, x, inner):
        def sample():
            seconds = {}
            for p, module in modules.items():
                start = now()
                for _ in range(inner):
                    module(x[p])
                seconds[p] = elapsed(start, now())[settings.timer] / inner
            return seconds

        return sample

    results = {}
    for rows in (1, settings.prefill_length):
        x = {p: torch.randn(rows, m.in_features, generator=generator) for p, m in layers[REFERENCE].items()}
        samplers = {name: sampler(modules, x, 20 if rows == 1 else 1) for name, modules in layers.items()}
        samples = interleave(samplers, 1, settings.layer_repeats)
        results[rows] = {}
        for name, runs in samples.items():
            medians = {p: statistics.median(run[p] for run in runs) for p in layers[name]}
            results[rows][name] = {**medians, "layer": sum(medians.values())}
    return results


# --------------------------------------------------------------------------------------------------------------
# memory: one subprocess per implementation


def memory_worker(spec: dict) -> dict:
    """In a fresh process: load one implementation, one prefill of the largest batch and one `generate`; the peak
    resident set (the kernel's VmHWM: this process's own high-water mark), the resident set after the imports and
    after the load. `ru_maxrss` is recorded too, but Linux carries the launching process's high-water mark across
    fork and exec into it (`ru_maxrss_at_start_bytes` shows that inherited floor)."""
    inherited = max_rss_bytes()
    settings = TernarySpeedSettings(**spec["settings"])
    torch.set_num_threads(settings.threads)
    after_imports = rss_status()
    modules_before = set(sys.modules)
    start = time.perf_counter()
    model = load_implementation(spec["implementation"], spec["folders"])
    load_seconds = time.perf_counter() - start
    after_load = rss_status()
    imported = set(sys.modules) - modules_before  # code the load pulled in (its RSS counts too)
    data = inputs(settings, model.config.vocab_size)
    with bitlinear_stance(settings), torch.no_grad():
        start = time.perf_counter()
        prefill(model, data["prefill"][max(data["prefill"])])
        model.generate(input_ids=data["prompt"], **generate_kwargs(settings, model))
        run_seconds = time.perf_counter() - start
    status = rss_status()
    return {
        "implementation": spec["implementation"],
        "peak_rss_bytes": None if status is None else status["VmHWM"],
        "ru_maxrss_bytes": max_rss_bytes(),
        "ru_maxrss_at_start_bytes": inherited,
        "rss_after_imports_bytes": None if after_imports is None else after_imports["VmRSS"],
        "rss_after_load_bytes": None if after_load is None else after_load["VmRSS"],
        "load_seconds": load_seconds,
        "modules_imported_by_load": len(imported),
        "torch_inductor_imported_by_load": "torch._inductor" in imported,
        "prefill_and_generate_seconds": run_seconds,
        "projection_weights": projection_weights(model),
        "state_bytes": state_bytes(model),
    }


def run_memory_worker(name: str, folders: dict, settings: TernarySpeedSettings, scratch: Path) -> dict:
    """`memory_worker` for one implementation in its own Python process (glibc malloc tuned by MALLOC_ENV so that
    freed tensors leave the resident set)."""
    spec_path, out_path = scratch / f"memory-{name}.spec.json", scratch / f"memory-{name}.out.json"
    spec_path.write_text(json.dumps({"implementation": name, "folders": folders, "settings": asdict(settings)}))
    env = {**os.environ, **MALLOC_ENV, "OMP_NUM_THREADS": str(settings.threads)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", __name__, "--_memory-worker", str(spec_path), str(out_path)]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"memory worker {name} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(out_path.read_text())


# --------------------------------------------------------------------------------------------------------------
# the run


def busiest_processes() -> list[str] | None:
    """The five processes using the most CPU (`ps`): what else was running."""
    try:
        command = ["ps", "-eo", "pcpu,etime,comm", "--sort=-pcpu"]
        out = subprocess.run(command, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [line.strip() for line in out.splitlines()[1:6]]


def speed_ratios(r: dict, name: str, reference: str) -> dict:
    """`name`'s tokens/s over `reference`'s: {"prefill": {batch: ratio}, "decode": ratio}."""
    p, d = r["prefill"], r["decode"]
    return {
        "prefill": {b: p[name][b]["tokens_per_s"] / p[reference][b]["tokens_per_s"] for b in p[reference]},
        "decode": d[name]["decode_tokens_per_s"] / d[reference]["decode_tokens_per_s"],
    }


def ratios_and_targets(r: dict) -> tuple[dict, list[dict]]:
    """ternary_int8's speed over fp32's, BitLinear's and fake_quant's, the ceiling (NO_PROJECTIONS over fp32), the
    projection bytes over fp32's; the issue's targets, met or missed."""
    w = r["weights"]
    ratios = {f"int8_vs_{n}": speed_ratios(r, REFERENCE, n) for n in ("fp32", "bitlinear", "fake_quant")}
    ratios["ceiling_vs_fp32"] = speed_ratios(r, NO_PROJECTIONS, "fp32")
    ratios["projection_bytes_vs_fp32"] = {name: w[name]["bytes"] / w["fp32"]["bytes"] for name in w}

    fp32, length = ratios["int8_vs_fp32"], r["settings"]["prefill_length"]
    checks = [
        (f"ternary-int8 >= 2x fp32 prefill tokens/s (batch {b} x {length})", v, 2.0) for b, v in fp32["prefill"].items()
    ]
    checks += [
        ("ternary-int8 >= 1x fp32 decode tokens/s (batch 1, greedy, KV cache)", fp32["decode"], 1.0),
        ("ternary-int8 >= 10x transformers' BitLinear decode tokens/s", ratios["int8_vs_bitlinear"]["decode"], 10.0),
    ]
    targets = [{"target": t, "measured": v, "threshold": x, "met": v >= x} for t, v, x in checks]
    memory = ratios["projection_bytes_vs_fp32"][REFERENCE]
    text = "ternary-int8 projection weight memory <= 0.3x fp32"
    targets.append({"target": text, "measured": memory, "threshold": 0.3, "met": memory <= 0.3})
    identical = bool(r["correctness"]["ternary_bit_identical"])
    text = "logits (prefill, every decode step) and greedy tokens of (b), (c), (d) identical bit for bit"
    targets.append({"target": text, "measured": identical, "threshold": True, "met": identical})
    return ratios, targets


def mib(n) -> str:
    """Bytes as MiB text ("" for None)."""
    return "" if n is None else f"{n / 2**20:,.0f}"


def run_ternary_speed(settings: TernarySpeedSettings, log=print, command: str = "") -> dict:
    """The whole benchmark (module docstring), with `settings.threads` torch threads (restored after). Returns the
    results dict (REPORT_KEYS)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        with bitlinear_stance(settings), tempfile.TemporaryDirectory() as scratch:
            cache = {"TORCHINDUCTOR_CACHE_DIR": str(Path(scratch) / "inductor")}  # inherited by the memory workers
            with mock.patch.dict(os.environ, cache if settings.fresh_compile_cache else {}):
                return _run(settings, log, command, Path(settings.work_dir or scratch), Path(scratch))
    finally:
        torch.set_num_threads(threads)


def environment(settings: TernarySpeedSettings) -> dict:
    """The machine, software and code of the run, and what was busy at its start."""
    return {
        "cpu": cpu_name(),
        "logical_cores": os.cpu_count(),
        "torch_threads": settings.threads,
        "software": software_versions(),
        "git": git_state(ROOT),
        "load_average_at_start": load_average(),
        "busiest_processes_at_start": busiest_processes(),
    }


def _run(settings: TernarySpeedSettings, log, command: str, root: Path, scratch: Path) -> dict:
    started = time.perf_counter()
    env = environment(settings)
    log(f"CPU: {env['cpu']}, {env['logical_cores']} logical cores; torch threads {settings.threads}")
    log(f"load average at start: {env['load_average_at_start']}")
    for line in env["busiest_processes_at_start"] or []:
        log(f"  busiest: {line}")
    log(f"settings: {asdict(settings)}")

    t0 = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    folders = prepare_folders(settings, root)
    log(f"[folders written in {time.perf_counter() - t0:.1f} s: {', '.join(folders)}]")
    models, load = {}, {}
    for name in IMPLEMENTATIONS:
        t0 = time.perf_counter()
        models[name] = load_implementation(name, folders)
        load[name] = {"load_seconds": time.perf_counter() - t0}
    log("loaded: " + ", ".join(f"{n} {v['load_seconds']:.2f} s" for n, v in load.items()))
    weights = {name: projection_weights(m) for name, m in models.items()}
    log(f"ternary-int8 projections by kernel: {weights[REFERENCE]['kernels']}")
    config = models["fp32"].config
    data = inputs(settings, config.vocab_size)

    log("[first calls: BitLinear's torch.compile among them]")
    first = first_calls(models, data, settings)
    log("  " + ", ".join(f"{n} {sum(v['prefill'].values()) + v['generate']:.1f} s" for n, v in first.items()))
    log("[correctness: logits and greedy tokens]")
    correctness = check_correctness(models, data, settings)
    equal = json.dumps({k: correctness[k] for k in EQUALITY_KEYS})
    log(f"ternary implementations bit-identical: {correctness['ternary_bit_identical']}; {equal}")

    log(f"[timing: {settings.warmup} warm-up + {settings.repeats} timed round-robin rounds]")
    stubbed = without_projections(load_implementation("fp32", folders))
    samples = timing_rounds({**models, NO_PROJECTIONS: stubbed}, data, settings)
    prefill_stats, decode_stats = summarize_timing(samples, data, settings)
    for name, overhead in compile_overhead(first, prefill_stats, decode_stats).items():
        load[name]["first_calls"] = {**first[name], **overhead}
    log(f"BitLinear compile + warm-up, over its steady state: {load['bitlinear']['first_calls']['overhead_s']:.1f} s")
    for name, stats in prefill_stats.items():
        per_batch = ", ".join(f"{b}x{settings.prefill_length} {s['tokens_per_s']:.0f}" for b, s in stats.items())
        decode = decode_stats[name]["decode_tokens_per_s"]
        log(f"  {name}: prefill tok/s {per_batch}; decode tok/s {decode:.1f} ({settings.timer} clock)")

    log(f"[projection microbenchmark: {settings.layer_repeats} rounds]")
    layer = layer_microbenchmark(models, settings)
    for rows, by_name in layer.items():
        log(f"  M={rows}: " + ", ".join(f"{n} {1e6 * v['layer']:.0f} us" for n, v in by_name.items()))

    memory = {}
    if settings.memory:
        log("[memory: one subprocess per implementation]")
        for name in IMPLEMENTATIONS:
            m = memory[name] = run_memory_worker(name, folders, settings, scratch)
            rss = {k: mib(m[f"{k}_bytes"]) for k in ("peak_rss", "rss_after_load", "rss_after_imports")}
            log(
                f"  {name}: peak RSS (VmHWM) {rss['peak_rss']} MiB, after load {rss['rss_after_load']} MiB, after "
                f"imports {rss['rss_after_imports']} MiB"
            )

    loads = [run["load"][0] for runs in samples.values() for run in runs if run["load"]]
    env["busiest_processes_at_end"] = busiest_processes()
    env["dynamo_counters"] = {k: dict(v) for k, v in torch._dynamo.utils.counters.items() if k in ("stats", "frames")}
    results = {
        "title": "BitNet b1.58 inference on CPU: fp32 vs ternary-int8 vs transformers' BitLinear vs fake-quant",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "duration_seconds": None,
        "environment": env,
        "settings": asdict(settings),
        "model": {
            "variant": settings.variant,
            "preset": settings.preset,
            "parameters": {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()},
            "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size,
            "num_hidden_layers": config.num_hidden_layers,
            "vocab_size": config.vocab_size,
            "onednn_min_weights": Int8TernaryLinear.onednn_min_weights,
        },
        "load": load,
        "correctness": correctness,
        "prefill": prefill_stats,
        "decode": decode_stats,
        "layer": layer,
        "memory": memory,
        "weights": weights,
        "load_average": {
            "at_start": env["load_average_at_start"],
            "timed_rounds_1min_median": statistics.median(loads) if loads else None,
            "at_end": load_average(),
        },
    }
    results["ratios"], results["targets"] = ratios_and_targets(results)
    results["duration_seconds"] = time.perf_counter() - started
    return results


__all__ = [
    "IMPLEMENTATIONS",
    "LABELS",
    "NO_PROJECTIONS",
    "REPORT_KEYS",
    "TernarySpeedSettings",
    "check_correctness",
    "layer_microbenchmark",
    "load_implementation",
    "memory_worker",
    "prepare_folders",
    "projection_weights",
    "run_memory_worker",
    "run_ternary_speed",
    "state_bytes",
    "without_projections",
]


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "--_memory-worker":
        sys.exit("usage: python -m slam_hf.bench.suites.ternary_speed --_memory-worker SPEC OUT")
    Path(sys.argv[3]).write_text(json.dumps(memory_worker(json.loads(Path(sys.argv[2]).read_text()))))
