"""Shared helpers for the local-Hub tests: run a loader script in a fresh interpreter that cannot import slam_hf.

`run_fresh(hub, tmp_path, body, args)` writes `PRELUDE + body` to a file and runs it with the repo off `sys.path`
(PYTHONPATH="", cwd an empty folder), `sys.modules["slam_hf"] = None` (so `import slam_hf` raises ImportError
even where slam_hf is installed), an empty HF_HOME (every file comes from the local Hub, nothing from a cache) and
the caller's torch intra-op thread count (1 under the single-threaded fixtures): the float reductions of a CPU
matmul depend on how it is split across threads, and the tests compare outputs bit for bit. The script reads its
inputs from `ARGS` (a dict, passed through `torch.save`) and stores what it found with `finish(results)`;
`run_fresh` returns that dict. `finish` adds `slam_hf_modules`: the names of any `slam_hf*` module that got
imported after all (must be empty).
"""

import os
import subprocess
import sys
import textwrap

import torch

PRELUDE = textwrap.dedent(
    """
    import os, sys
    sys.modules["slam_hf"] = None  # `import slam_hf` raises ImportError: every SLAM class must come from the Hub
    import torch
    torch.set_num_threads(int(os.environ["SLAM_TEST_TORCH_THREADS"]))
    ARGS = torch.load(sys.argv[1])
    OUT = sys.argv[2]

    def finish(results):
        results["slam_hf_modules"] = sorted(
            name for name, module in sys.modules.items() if name.startswith("slam_hf") and module is not None)
        torch.save(results, OUT)

    def module_of(obj):
        return type(obj).__module__
    """
)


def fresh_env(hub, home):
    threads = str(torch.get_num_threads())
    env = dict(hub.env)
    env.update(
        {
            "PYTHONPATH": "",
            "HF_HOME": str(home),
            "SLAM_TEST_TORCH_THREADS": threads,
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "TOKENIZERS_PARALLELISM": "false",
            "TRANSFORMERS_VERBOSITY": "error",
        }
    )
    for key in (
        "HF_HUB_CACHE",
        "HF_MODULES_CACHE",
        "HF_DATASETS_CACHE",
        "TRANSFORMERS_CACHE",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_DATASETS_OFFLINE",
    ):
        env.pop(key, None)
    return env


def run_fresh(hub, tmp_path, body, args=None, name="fresh", timeout=240):
    """Run PRELUDE + `body` in a new interpreter (see the module docstring); return what it passed to `finish`."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "cwd").mkdir()
    script = folder / "script.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    torch.save(dict(args or {}), folder / "args.pt")
    result = subprocess.run(
        [sys.executable, str(script), str(folder / "args.pt"), str(folder / "out.pt")],
        cwd=folder / "cwd",
        env=fresh_env(hub, folder / "hf_home"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"fresh process failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    out = torch.load(folder / "out.pt")
    assert out["slam_hf_modules"] == [], out["slam_hf_modules"]
    out["hf_home"] = str(folder / "hf_home")
    return out


def is_remote_module(module_name):
    """A class loaded with trust_remote_code lives in `transformers_modules.<org>.<repo>.<sha>.<file>`."""
    return module_name.startswith("transformers_modules.")


def run_offline(command, home, cwd, timeout=240, **extra_env):
    """Run `command` (a list; a script path first means this interpreter runs it) offline, with the repo off
    `sys.path` (PYTHONPATH="", `cwd` elsewhere), an empty HF_HOME `home` and one torch thread (the tests compare
    tiny tensors bit for bit); return its stdout after asserting that it succeeded."""
    env = {
        **os.environ,
        "PYTHONPATH": "",
        "HF_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        **extra_env,
    }
    result = subprocess.run(
        [sys.executable, *map(str, command)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"clean process failed:\n{result.stdout[-3000:]}\n{result.stderr[-4000:]}"
    return result.stdout
