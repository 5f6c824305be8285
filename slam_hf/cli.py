"""`slam-hf`: train a SLAM model from a YAML file and write a Hub-ready folder, or generate from one.

    slam-hf train --config configs/slam-v1-tiny.yaml --output-dir outputs/slam-v1-tiny
    slam-hf train --config configs/slam-v2-tiny.yaml --output-dir outputs/slam-v2-tiny
    slam-hf train --config configs/slam-v3-tiny.yaml --output-dir outputs/slam-v3-tiny
    slam-hf train --config configs/slam-loop-tiny.yaml --output-dir outputs/slam-loop-tiny
    slam-hf generate --model outputs/slam-v1-tiny --input "To be, or not to be"
    slam-hf generate --model outputs/slam-v3-tiny --image digits.png --input "what number is shown?"
    slam-hf push --model outputs/slam-v1-tiny --repo your-name/slam-v1-tiny
    slam-hf export --ternary --model outputs/slam-v1-ternary --output-dir outputs/slam-v1-ternary-bitnet

`train` reads three YAML sections (`model`, `data`, `training`; plus optional `generation`, `exit_calibration`,
`output_dir`, `hub` and `torch_threads`); the output folder defaults to `outputs/<config name>`.
Text variants (SLAM v1, v2, the latent loop `slam_loop`): trains `AutoModelForCausalLM.from_config(config)` with
the transformers `Trainer` on the Shakespeare corpus shipped with `slam_hf.data` (whole works held out for
validation), measures held-out perplexity before and after training (the LM loss alone: auxiliary losses such as
SLAM v2's MoA load balancing and the loop's confidence-head loss are trained with but not scored), and saves
weights (safetensors), config with `auto_map`, remote code, tokenizer, a model card (README.md),
`training_metrics.json` and generation_config.json holding the YAML's `generation` section (the configs ship
sampling for the text models, greedy decoding for SLAM v3). A latent-loop model's exit threshold is calibrated on
the held-out rows for a loss budget (`exit_calibration`, --exit-loss-budget) before it is saved, and the
calibration is recorded in training_metrics.json and the model card.
Image-text variant (SLAM v3): trains `AutoModelForImageTextToText.from_config(config)` on MNIST digit tiles
("what number is shown?" -> the digit string; validation and test tiles are built from digit images never
seen in training), reports held-out exact match of greedy generation against chance, and saves the processor
(tokenizer + image processor, with their remote code) next to the model.
`generate` decodes with the folder's generation_config.json; flags override single fields (`--greedy`,
`--do-sample`, `--temperature`, `--top-k`, `--top-p`, `--max-new-tokens`), `--no-cache` turns the KV cache off;
for a latent-loop model it also says how many core iterations the new tokens used (`model.loop_statistics`).
Every folder loads with `trust_remote_code=True` where slam_hf is not installed; `push` checks a folder and
uploads it to the Hub (slam_hf.hub); `bench` runs the leaderboard (slam_hf.bench.runner); `export --ternary` writes a
BitNet b1.58 model (`ternary_linear: true`) in the packed format that transformers' own BitNet quantizer loads
(slam_hf.export), and `generate` runs such a folder through int8 layers unpacked once (`load_ternary`'s fast path).

This module holds the command line; the work lives in run_config (what a YAML means), training (what both
training paths share), train_text, train_image_text, hub and bench.

Not part of the remote code: this module may import anything.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from pathlib import Path

from .training.console import show_status_lines
from .training.run_config import IMAGE_TEXT_TASK, ConfigError, load_run_config, variants
from .training.trainer import distributed_teardown, using_torch_threads


def train(args) -> dict:
    """`slam-hf train`: returns the metrics written to training_metrics.json."""
    t_start = time.perf_counter()
    run = load_run_config(args.config)
    budget = getattr(args, "exit_loss_budget", None)
    if budget is not None:
        if run["exit_calibration"] is None:
            raise ConfigError(f"--exit-loss-budget applies to slam_loop runs; {args.config} trains {run['variant']}")
        run["exit_calibration"]["loss_budget"] = budget
    with using_torch_threads(run["torch_threads"]), distributed_teardown():
        # Training-only imports (datasets, Trainer, model cards) stay out of `generate` and `--help`.
        if variants()[run["variant"]].task == IMAGE_TEXT_TASK:
            from .training.image_text import train_image_text

            return train_image_text(args, run, t_start)
        from .training.text import train_text

        return train_text(args, run, t_start)


# --------------------------------------------------------------------------------------------------------------
# generate


# When neither the flag nor the folder's generation_config sets a length (transformers would stop at 20 tokens in
# all, prompt included).
DEFAULT_MAX_NEW_TOKENS = 50
SAMPLING_FLAGS = ("temperature", "top_k", "top_p")


def generate(args) -> str:
    """`slam-hf generate`: prints and returns prompt + continuation (text models), or the answer (image-text
    models such as SLAM v3, with or without `--image`). Decodes with the folder's generation_config.json; the
    flags given override its fields."""
    if not Path(args.model).is_dir() and not _looks_like_repo_id(args.model):
        raise ConfigError(f"model folder not found: {args.model}")
    image = getattr(args, "image", None)
    if image is not None and not Path(image).is_file() and not image.startswith(("http://", "https://")):
        raise ConfigError(f"image file not found: {image}")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # keep the output to the generated text
    config = AutoConfig.from_pretrained(args.model, trust_remote_code=True)
    image_text = getattr(config, "vision_config", None) is not None
    if image is not None and not image_text:
        raise ConfigError(
            f"--image needs an image-text model (slam_v3), but {args.model} holds a text-only "
            f"`{config.model_type}` model; drop --image to continue text with it"
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if image_text:
        return _generate_image_text(args, image, device)
    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=True)
    model.to(device).eval()
    if device == "cpu" and _is_bitnet_export(config):
        from .slam_ternary import to_int8_ternary

        to_int8_ternary(model)  # unpack the BitLinear weights once instead of on every call
    inputs = tokenizer(args.input, return_tensors="pt").to(device)
    with _quiet_loop_log():
        output = _run_generate(args, model, inputs)
    _report_loop_statistics(model)
    text = tokenizer.decode(output[0], skip_special_tokens=True)
    print(text)
    return text


def _report_loop_statistics(model) -> None:
    """A latent-loop model: the mean core iterations its generate() call used per new token (`loop_statistics`),
    on stderr with the exit it applied."""
    stats = getattr(model, "loop_statistics", None)
    if not stats:
        return
    from .training.run_config import loop_exit_description

    maximum, prompt = stats["max_iterations"], stats["prompt_mean_iterations"]
    if stats["new_tokens"]:
        used = (
            f"{stats['new_mean_iterations']:.2f} of {maximum} core iterations per new token "
            f"({100 * stats['new_compute_saved']:.0f} % of core compute saved)"
        )
        if prompt is not None:
            used += f", {prompt:.2f} per prompt token"
    elif prompt is not None:  # --no-cache: every step re-runs all positions, each forward without a past
        used = (
            f"{prompt:.2f} of {maximum} core iterations per position over every forward pass (without the KV cache "
            "each step re-runs the whole sequence, so new tokens are not counted apart)"
        )
    else:
        used = f"no token went through the loop (at most {maximum} core iterations)"
    print(f"[slam-hf] latent loop: {used}; exit {loop_exit_description(model.config)}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _quiet_loop_log():
    """Within the block, slam_hf's loop model does not log its own iteration summary: `slam-hf` shows slam_hf's
    INFO lines on stdout, where the generated text goes; `_report_loop_statistics` says it on stderr instead."""
    loop_logger = logging.getLogger("slam_hf.slam_loop")
    level = loop_logger.level
    loop_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        loop_logger.setLevel(level)


def _generate_image_text(args, image, device) -> str:
    """Encoder-decoder generation: the processor encodes the prompt (and image), the answer alone is printed."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.image_utils import load_image

    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(args.model, trust_remote_code=True)
    model.to(device).eval()
    token = processor.image_token
    if image is not None:
        try:
            picture = load_image(image)
        except Exception as err:  # PIL raises several types for unreadable files
            raise ConfigError(f"cannot read image {image}: {err}") from err
        # One image: its placeholder goes first unless the prompt places it (as in training).
        text = args.input if token in args.input else token + args.input
        if text.count(token) != 1:
            raise ConfigError(f"--input holds {text.count(token)} {token} tokens; one image needs exactly one")
        inputs = processor(images=picture, text=text, return_tensors="pt")
    else:
        if token in args.input:
            raise ConfigError(f"--input holds {token} but no --image was given; pass --image FILE")
        inputs = processor(text=args.input, return_tensors="pt")
    output = _run_generate(args, model, inputs.to(device))
    text = processor.decode(output[0], skip_special_tokens=True)
    print(text)
    return text


def _run_generate(args, model, inputs):
    """model.generate with the folder's generation_config and the flags' overrides; says how it decodes (stderr)."""
    import torch
    from transformers import set_seed

    kwargs = _generation_overrides(args, model.generation_config)
    effective = model.generation_config.to_dict() | kwargs
    if effective["do_sample"]:
        knobs = ", ".join(f"{name} {effective[name]}" for name in SAMPLING_FLAGS if effective[name] is not None)
        mode = f"sampling ({knobs})" if knobs else "sampling"
    else:
        mode = "beam search" if (effective["num_beams"] or 1) > 1 else "greedy"
    cache = "on" if kwargs["use_cache"] else "off"
    print(
        f"[slam-hf] decoding (generation_config.json + flags): {mode}, at most {effective['max_new_tokens']} new "
        f"tokens, KV cache {cache}",
        file=sys.stderr,
        flush=True,
    )
    if args.seed is not None:
        set_seed(args.seed)  # just before sampling, so loading cannot move the random state
    with torch.no_grad():
        return model.generate(**inputs, **kwargs)


def _generation_overrides(args, defaults) -> dict:
    """The generate() keyword arguments that override the folder's generation_config `defaults`: the flags given,
    the KV cache switch, and a length when neither sets one."""
    kwargs = {"use_cache": not args.no_cache}
    given = {name: getattr(args, name) for name in SAMPLING_FLAGS if getattr(args, name) is not None}
    flags = ", ".join("--" + name.replace("_", "-") for name in given)
    if args.greedy:
        if given:
            raise ConfigError(f"--greedy does not sample; drop {flags} or --greedy")
        # The folder's sampling settings go too: greedy ignores them and transformers would warn about each.
        kwargs.update(do_sample=False, **dict.fromkeys(SAMPLING_FLAGS))
    elif args.do_sample:
        kwargs["do_sample"] = True
    if given and not kwargs.get("do_sample", defaults.do_sample):
        raise ConfigError(
            f"{flags} only apply when sampling, and the generation_config.json of {args.model} decodes greedily; "
            "add --do-sample"
        )
    kwargs.update(given)
    if args.max_new_tokens is not None:
        kwargs["max_new_tokens"] = args.max_new_tokens
    elif defaults.max_new_tokens is None:
        kwargs["max_new_tokens"] = DEFAULT_MAX_NEW_TOKENS
    return kwargs


def _looks_like_repo_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/")) and not os.path.exists(name)


# --------------------------------------------------------------------------------------------------------------
# argument parsing


EXAMPLES = """examples:
  slam-hf train --config configs/slam-v1-tiny.yaml --output-dir outputs/slam-v1-tiny
  slam-hf train --config configs/slam-v2-tiny.yaml --output-dir outputs/slam-v2-tiny
  slam-hf train --config configs/slam-v3-tiny.yaml --output-dir outputs/slam-v3-tiny
  slam-hf train --config configs/slam-loop-tiny.yaml --output-dir outputs/slam-loop-tiny --exit-loss-budget 0.01
  slam-hf generate --model outputs/slam-v1-tiny --input "To be, or not to be" --max-new-tokens 40
  slam-hf generate --model outputs/slam-v1-tiny --input "To be, or not to be" --greedy --no-cache
  slam-hf generate --model outputs/slam-v3-tiny --image digits.png --input "what number is shown?"
  slam-hf push --model outputs/slam-v1-tiny --repo your-name/slam-v1-tiny"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slam-hf",
        description="Train SLAM models with transformers, generate from them and publish them to the Hub.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,generate,push,bench,export}")
    for add_subcommand in (_add_train, _add_generate, _add_push, _add_bench, _add_export):
        add_subcommand(sub)
    return parser


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train from a YAML config and write a Hub-ready folder",
        description="Train a SLAM model and write a Hub-ready folder (safetensors, config with auto_map, remote "
        "code, tokenizer or processor, model card, training_metrics.json): SLAM v1/v2 and the latent loop as causal "
        "LMs on the Shakespeare corpus (the loop's exit threshold calibrated on the held-out rows before saving), "
        "SLAM v3 on MNIST digit tiles (image + 'what number is shown?' -> the digits).",
    )
    p.add_argument("--config", required=True, help="YAML file with `model`, `data` and `training` sections")
    p.add_argument("--output-dir", help="folder to write (default: `output_dir` in the YAML)")
    p.add_argument("--max-steps", type=_positive_int, help="override training.max_steps")
    p.add_argument("--seed", type=int, help="override training.seed")
    p.add_argument(
        "--max-train-rows",
        type=_positive_int,
        help="override data.max_train_rows (slam_v3: data.train_rows); quick runs",
    )
    p.add_argument(
        "--max-eval-rows",
        type=_positive_int,
        help="override data.max_eval_rows (slam_v3: data.eval_rows and data.test_rows); quick runs",
    )
    p.add_argument(
        "--resume-from-checkpoint",
        metavar="PATH|latest",
        help="continue a run from a checkpoint-N folder (written with training.save_strategy/save_steps in the "
        "YAML), restoring weights, optimizer, scheduler, RNG and data position; `latest`: the newest checkpoint-N "
        "in the output folder",
    )
    p.add_argument(
        "--exit-loss-budget",
        type=_non_negative_float,
        metavar="BUDGET",
        help="slam_loop: override exit_calibration.loss_budget, the held-out loss increase over full depth the "
        "calibrated exit may cost (0.005 = 0.5 %%, the default)",
    )
    p.set_defaults(func=train)


def _add_generate(sub) -> None:
    g = sub.add_parser(
        "generate",
        help="continue a prompt (or answer about an image) with a trained model",
        description="Load a folder written by `slam-hf train` (or a Hub repo) with trust_remote_code=True. "
        "Text models (SLAM v1, v2, slam_loop) print the prompt followed by its continuation (a latent-loop model "
        "also reports the mean core iterations per new token on stderr); image-text models (SLAM v3) "
        "load their processor too and print the answer to the prompt about --image (or to the prompt alone). "
        "Decoding follows the folder's generation_config.json (what `slam-hf train` wrote: sampling for the "
        "text models, greedy for SLAM v3); the flags below override single fields.",
    )
    g.add_argument("--model", required=True, help="model folder or Hub repo id")
    g.add_argument("--input", required=True, help="prompt text")
    g.add_argument(
        "--image",
        help="image file (or URL) for an image-text model (slam_v3); its <image> placeholder goes before the "
        "prompt unless the prompt holds one",
    )
    g.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        help=f"default: the folder's generation_config, else {DEFAULT_MAX_NEW_TOKENS}",
    )
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--greedy", action="store_true", help="greedy decoding, whatever generation_config says")
    mode.add_argument("--do-sample", action="store_true", help="sample, even where generation_config is greedy")
    for flag, cast in (("--temperature", _positive_float), ("--top-k", _positive_int), ("--top-p", _positive_float)):
        g.add_argument(flag, type=cast, help="override generation_config's value (sampling only)")
    g.add_argument("--seed", type=int, help="random seed for sampling")
    g.add_argument("--no-cache", action="store_true", help="generate without the KV cache (use_cache=False)")
    g.set_defaults(func=generate)


def _add_push(sub) -> None:
    h = sub.add_parser(
        "push",
        help="check a saved SLAM folder and upload it to the Hub",
        description="Check a folder the way a Hub user's from_pretrained(..., trust_remote_code=True) will read it "
        "(config.json and its auto_map, the remote code, weights against checksums.json and loaded strictly, the "
        "tokenizer or processor, the model card), add checksums.json and a model card if they are missing, upload "
        "it in one commit and verify every uploaded file against the Hub's checksums. Uses HF_TOKEN / your saved "
        "login and HF_ENDPOINT like every huggingface_hub tool.",
    )
    h.add_argument("--model", required=True, help="folder written by `slam-hf train` or save_pretrained")
    h.add_argument("--repo", required=True, help="Hub repo id: ORG/NAME, or NAME in your own namespace")
    h.add_argument("--revision", help="branch to commit to (created from main if missing; default main)")
    h.add_argument(
        "--private", action="store_true", help="create the repo private (an existing repo keeps its setting)"
    )
    h.add_argument("--commit-message", help="default: 'Upload <class> (<parameters>) with slam-hf push'")
    h.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to the branch")
    h.add_argument("--token", help="Hub token (default: HF_TOKEN or the saved login)")
    h.add_argument(
        "--dry-run", action="store_true", help="run the checks (and add the missing files) but upload nothing"
    )
    h.set_defaults(func=push)


def _add_bench(sub) -> None:
    b = sub.add_parser(
        "bench",
        help="train and measure SLAM models against transformers baselines",
        description="Train every model listed in the YAML (SLAM variants and transformers baselines built from "
        "config) with one tokenizer, the same rows, budget, optimizer, schedule and seeds, then measure parameters, "
        "peak memory, held-out loss / perplexity / top-1 accuracy, throughput, latency, generation speed, cache "
        "bytes per token and loss-curve stability. Writes results.json, leaderboard.md, loss_curves.png and "
        "quality_vs_throughput.png.",
    )
    b.add_argument("--config", required=True, help="benchmark YAML, e.g. configs/bench/smoke.yaml")
    b.add_argument("--output-dir", required=True, help="folder for the results and reports")
    b.add_argument("--models", help="comma-separated subset of the YAML's models")
    b.add_argument("--seeds", help="comma-separated seeds, replacing the YAML's")
    b.add_argument("--steps", type=_positive_int, help="replace the YAML's budget by this many optimizer steps")
    b.add_argument(
        "--max-train-seconds", type=_positive_float, help="per-model training time cap (the row says where it stopped)"
    )
    b.add_argument(
        "--resume",
        action="store_true",
        help="reuse (model, seed) runs that already finished in --output-dir with the same settings and software",
    )
    b.set_defaults(func=bench)


def bench(args) -> dict:
    """`slam-hf bench`: returns the results dict (also written to --output-dir/results.json)."""
    from .bench.runner import BenchConfigError, load_bench_config, run_bench

    config = load_bench_config(args.config)
    if args.models:
        chosen = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in chosen if m not in config["models"]]
        if unknown:
            raise BenchConfigError(f"--models names {unknown}, not in {args.config} ({', '.join(config['models'])})")
        config["models"] = chosen
        config["compile"] = [m for m in config["compile"] if m in chosen]
    if args.seeds:
        try:
            config["seeds"] = [int(s) for s in args.seeds.split(",")]
        except ValueError as err:
            raise BenchConfigError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from err
    if args.steps:
        config["budget"] = {"steps": args.steps}
    if args.max_train_seconds:
        config["max_train_seconds"] = args.max_train_seconds
    command = "slam-hf bench --config " + str(args.config) + " --output-dir " + str(args.output_dir)
    for flag in ("models", "seeds", "steps", "max_train_seconds"):
        if getattr(args, flag):
            command += f" --{flag.replace('_', '-')} {getattr(args, flag)}"
    return run_bench(
        config, args.output_dir, command=command, log=lambda line: print(line, flush=True), resume=args.resume
    )


def _is_bitnet_export(config) -> bool:
    quantization = getattr(config, "quantization_config", None)
    quantization = quantization if isinstance(quantization, dict) else getattr(quantization, "to_dict", dict)()
    return quantization.get("quant_method") == "bitnet"


def _add_export(sub) -> None:
    e = sub.add_parser(
        "export",
        help="write a trained model in a deployment format (--ternary: BitNet b1.58, packed 2-bit weights)",
        description="--ternary: load a folder holding a SLAM model trained with `ternary_linear: true` and write it "
        "with every ternary projection packed as transformers' BitLinear stores it (four 2-bit weights per byte, "
        "weight_scale = 1 / gamma) and `quantization_config` (quant_method bitnet, offline) in config.json, so stock "
        "`from_pretrained(..., trust_remote_code=True)` loads it through transformers' BitNet quantizer with the "
        "same logits. The tokenizer (or processor) is copied along.",
    )
    e.add_argument("--model", required=True, help="folder written by `slam-hf train` or save_pretrained")
    e.add_argument("--output-dir", required=True, help="folder to write")
    e.add_argument("--ternary", action="store_true", required=True, help="the BitNet b1.58 format (the only one)")
    e.set_defaults(func=export)


def export(args) -> Path:
    """`slam-hf export --ternary`: returns the folder written."""
    if not Path(args.model).is_dir():
        raise ConfigError(f"model folder not found: {args.model}")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    from .export import export_ternary

    config = AutoConfig.from_pretrained(args.model, trust_remote_code=True)
    if _is_bitnet_export(config):
        raise ConfigError(f"{args.model} is already a BitNet export (its config has a bitnet quantization_config)")
    if not getattr(config, "ternary_linear", False):
        raise ConfigError(
            f"{args.model} holds a full-precision model (ternary_linear is false): train it with `ternary_linear: "
            "true` in the YAML's model section (BitNet weights are learned, not rounded after training)"
        )
    image_text = getattr(config, "vision_config", None) is not None
    model_class = AutoModelForImageTextToText if image_text else AutoModelForCausalLM
    model = model_class.from_pretrained(args.model, trust_remote_code=True)
    folder = export_ternary(model, args.output_dir)
    preprocessor = (AutoProcessor if image_text else AutoTokenizer).from_pretrained(args.model, trust_remote_code=True)
    preprocessor.save_pretrained(folder)
    packed = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    source = sum(f.stat().st_size for f in Path(args.model).glob("*.safetensors"))
    print(f"[slam-hf] wrote {folder}: weights {packed / 2**20:.1f} MiB (from {source / 2**20:.1f} MiB)", flush=True)
    return folder


def push(args) -> dict:
    """`slam-hf push`: returns push_folder's result (repo id, commit sha, url, files)."""
    from .hub import push_folder

    result = push_folder(
        args.model,
        args.repo,
        revision=args.revision,
        private=args.private or None,
        commit_message=args.commit_message,
        create_pr=args.create_pr,
        token=args.token,
        dry_run=args.dry_run,
    )
    print(f"[slam-hf] checked {result['summary']}", flush=True)
    if args.dry_run:
        print(f"[slam-hf] dry run: {len(result['files'])} files would be uploaded to {args.repo}", flush=True)
    else:
        print(
            f"[slam-hf] pushed {len(result['files'])} files to {result['repo_id']} at commit {result['commit']}, "
            f"verified against the Hub's checksums: {result['url']}",
            flush=True,
        )
    return result


def _positive(cast, what):
    """An argparse `type` that accepts only numbers > 0."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {what}, got {text!r}")
        return value

    return parse


_positive_int = _positive(int, "integer")
_positive_float = _positive(float, "number")


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    show_status_lines("[slam-hf] %(message)s")
    from .bench.runner import BenchConfigError
    from .hub import FolderError

    try:
        args.func(args)
    except (ConfigError, FolderError, BenchConfigError) as err:
        parser.exit(2, f"slam-hf {args.command}: error: {err}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
