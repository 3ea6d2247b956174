"""The cross-method manipulation table: every manipulation method on Meta-World MT10 with what a robot has (camera
images, its proprioception, the instruction), trained on the same demos with the same budget for several seeds,
then evaluated on held-out splits and on probes of what each policy uses.

    python benchmarks/mt10.py                         # every run not done yet, then the table and figure
    python benchmarks/mt10.py --methods pi0,bc --seeds 0,1 --jobs 2
    python benchmarks/mt10.py --report                # only redraw results/mt10.{md,csv,png} from the run files
    python benchmarks/mt10.py --quick --out /tmp/q    # smoke: tiny models, two tasks, one seed (a test runs it)

Rows: each method with robot inputs (3 training seeds) and with Meta-World's privileged 39-D state instead of the
proprioception ("oracle", one seed; not OpenVLA, which reads no state). Columns, all on placements no demo used:
  standard           evaluation seed 1000's placements, the task's canonical (training) instruction
  seed 2000          another evaluation seed's placements
  novel phrasing     seed 1000's placements, told a paraphrase absent from training (HELD_OUT_INSTRUCTIONS)
  language           the standard split's tasks that share one scene (LANGUAGE_GROUPS): only the words differ
and the probes (seed 1000's placements, one input taken away):
  blank image        every camera image black
  other instruction  told another task's instruction (in a language group: another task of the group)
  no privileged      oracle rows: the object and goal entries of the 39-D state replaced by the demos' mean

Each run (method, inputs, seed) is one subprocess that trains, evaluates every split and probe, and writes
results/mt10/<method>-<inputs>-s<seed>.json: the commit, the full config, the seeds, a hash of the code it ran (the
method's config/train/eval/model modules and every repository file they import), wall clock (and the step a resumed
training started from) and per-task successes. A run whose file holds the current code hash and settings is reused,
so an interrupted table continues where it stopped.

A code change that changes no computation (a new flag whose default keeps the old behaviour, a renamed variable)
need not discard finished runs. Each method's behaviour fingerprint (`behaviour`: its tiny config, then a quick
training and every split and probe, hashed down to every weight and every action) is recorded per code hash in
<out>/fingerprints.json (`--fingerprint` records today's); a run made under an older code hash is reused when that
hash's recorded fingerprint equals today's, computed on the same machine. Anything the fingerprint sees differently
(another machine's floating point included) reruns the run.

    python benchmarks/mt10.py --fingerprint           # record today's fingerprints (before changing a method's code)
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._results import RESULTS, provenance, save_table  # noqa: E402


@dataclass(frozen=True)
class Method:
    folder: str  # the method's folder: its config.PRESETS, train.train, eval.load_policy, model.ClosedLoopPolicy
    flags: tuple[str, ...] = ()  # the flags that select this row's variant
    reads_state: bool = True  # False: image + instruction only (OpenVLA), so it has no oracle row


METHODS = {"bc": Method("bc"), "pi0": Method("pi0"), "pi05": Method("pi0", ("--variant", "pi05")),
           "openvla": Method("openvla", reads_state=False), "openvla-oft": Method("openvla", ("--variant", "oft")),
           "gr00t": Method("gr00t"),
           "gr00t-frozen-vlm": Method("gr00t", ("--no-tune_llm", "--no-tune_visual"))}  # the release's recipe
INPUTS = {"robot": "observation.state", "oracle": "observation.environment_state"}  # the state each row reads
# What every run shares: the same demos, inputs, budget and evaluation. (The methods' own defaults are the same.)
SHARED = dict(tasks="mt10", episodes_per_task=50, demo_image_size=128, cameras=("corner", "gripperPOV"), demo_seed=0,
              steps=3000,
              batch_size=32, eval_episodes=10, eval_seed=1000, eval_max_steps=200)
QUICK = dict(tasks=("reach-v3", "push-v3"), episodes_per_task=2, demo_image_size=32, cameras=("corner",), demo_seed=0,
             steps=4, batch_size=8, eval_episodes=1, eval_seed=1000, eval_max_steps=8)
# name -> EvalConfig overrides; "language" is read off "standard" (and "other instruction") for the grouped tasks
EVALS = {"standard": {}, "seed 2000": dict(seed=2000), "novel phrasing": dict(instruction="held_out"),
         "blank image": dict(blank_images=True), "other instruction": dict(instruction="other_task"),
         "no privileged": "privileged_fill"}
COLUMNS = ["standard", "seed 2000", "novel phrasing", "language", "blank image", "other instruction",
           "language, other instruction", "no privileged"]


FINGERPRINTS = "fingerprints.json"  # in the run files' directory: {method: {code version: behaviour fingerprint}}


def run_name(method: str, inputs: str, seed: int) -> str:
    return f"{method}-{inputs}-s{seed}"


def _repo_imports(path: Path) -> set[Path]:
    """The repository files `path` imports (absolute `folder.module` or relative `.module` imports, at any depth)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing file's package
                package = path.parent.relative_to(REPO).parts[:len(path.parent.relative_to(REPO).parts) - node.level + 1]
                base = ".".join([*package, *([base] if base else [])])
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]  # `from common import text` too
        else:
            continue
        for name in names:
            stem = REPO.joinpath(*name.split("."))
            for candidate in (stem.with_suffix(".py"), stem / "__init__.py"):
                if candidate.is_file():  # with the __init__.py of every package above it, which Python runs first
                    found |= {candidate, *(p / "__init__.py" for p in candidate.parents
                                           if p.is_relative_to(REPO) and (p / "__init__.py").is_file())}
    return found


def code_version(folder: str) -> str:
    """A hash of the code a run executes: the method's config, train, eval and model modules and every repository
    file they import, transitively (so a new module in common/ or an RL head beside the method, which training and
    evaluation never import, leaves finished runs valid), read as syntax trees without docstrings, so an edit of
    the documentation or comments does not invalidate them either."""
    todo = [REPO / folder / f"{m}.py" for m in ("config", "train", "eval", "model")]
    files = set()
    while todo:
        path = todo.pop()
        if path not in files:
            files.add(path)
            todo += _repo_imports(path) - files
    digest = hashlib.sha1()
    for path in sorted(files):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                    and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
        digest.update(path.relative_to(REPO).as_posix().encode() + ast.dump(tree).encode())
    return digest.hexdigest()[:12]


def settings(quick: bool, overrides: tuple[str, ...] = ()) -> dict:
    """The shared settings of every run, with `overrides` ("key=value"; tuples comma-separated) for ablations."""
    shared = dict(QUICK if quick else SHARED)
    for item in overrides:
        key, _, value = item.partition("=")
        if key not in shared:
            raise SystemExit(f"--set {item}: unknown setting; choose from {sorted(shared)}")
        default = shared[key]
        shared[key] = tuple(value.split(",")) if isinstance(default, tuple) else type(default)(value)
    from common.envs.metaworld import resolve_tasks
    shared["tasks"] = resolve_tasks(shared["tasks"])
    return shared


def cli_flags(values: dict) -> list[str]:
    """Config fields as tyro flags (tuples as several values)."""
    flags = []
    for key, value in values.items():
        flags += [f"--{key}", *map(str, value)] if isinstance(value, tuple) else [f"--{key}", str(value)]
    return flags


# ------------------------------------------------------------------------------------------------------ one run
def run_one(method: str, inputs: str, seed: int, out: Path, quick: bool, overrides: tuple[str, ...], threads: int,
            eval_workers: int, flags: tuple[str, ...] = ()) -> dict:
    """Train one policy, evaluate it on every split and probe, write its result file (inside a subprocess)."""
    import numpy as np
    import torch
    from common.config import parse_config, to_dict
    from common.envs.metaworld import LANGUAGE_GROUPS, collect_demos, demo_spec, eval_config, evaluate
    from common.train import resolve_checkpoint
    spec = METHODS[method]
    # the code and commit as it starts (an edit or a commit while it trains must not be stamped on it)
    version, started_at = code_version(spec.folder), provenance({})
    config, train, evaluation, model = (importlib.import_module(f"{spec.folder}.{m}")
                                        for m in ("config", "train", "eval", "model"))
    run_dir = out / "runs" / run_name(method, inputs, seed)
    shared = settings(quick, overrides)
    args = [*spec.flags, "--preset", "smoke" if quick else "tiny", *cli_flags(shared), "--state_key", INPUTS[inputs],
            "--seed", str(seed), "--run_dir", str(run_dir), "--eval_episodes", "0", "--threads", str(threads), *flags]
    cfg = parse_config(config.PRESETS, args)
    resume = (run_dir / "checkpoints" / "last").exists()  # an interrupted training continues exactly
    resumed_from = int(resolve_checkpoint(run_dir).name) if resume else 0  # train_seconds covers the steps after it
    started = time.time()
    train.train(replace(cfg, resume=resume))
    trained = time.time()

    policy, cfg = evaluation.load_policy(run_dir)
    cfg = replace(cfg, eval_episodes=shared["eval_episodes"], eval_workers=eval_workers)
    torch.set_num_threads(1)
    results = {}
    for name, overrides in EVALS.items():
        if overrides == "privileged_fill":
            if inputs != "oracle":
                continue  # robot inputs hold no privileged state to remove
            overrides = dict(privileged_fill=tuple(collect_demos(demo_spec(cfg)).stats[INPUTS["oracle"]]["mean"]))
        outcome = evaluate(model.ClosedLoopPolicy(policy), eval_config(cfg, **overrides), progress=False)
        results[name] = {task: dict(successes=r.successes, episodes=r.episodes, mean_length=r.mean_length)
                         for task, r in outcome.items()}
        print(f"{run_name(method, inputs, seed)} {name}: {np.mean([r.success_rate for r in outcome.values()]):.1%}",
              flush=True)
    record = dict(method=method, inputs=inputs, seed=seed, code_version=version,
                  settings=json.loads(json.dumps(shared)), flags=list(flags),
                  provenance=dict(provenance(to_dict(cfg)), commit=started_at["commit"], dirty=started_at["dirty"]),
                  language_groups=[list(g) for g in LANGUAGE_GROUPS], train_seconds=trained - started,
                  resumed_from_step=resumed_from, eval_seconds=time.time() - trained, threads=threads, results=results)
    path = out / f"{run_name(method, inputs, seed)}.json"
    path.write_text(json.dumps(record, indent=1))
    return record


def is_done(path: Path, method: str, shared: dict, flags: tuple[str, ...] = ()) -> bool:
    """Whether the run file at `path` holds a run of today's settings, method flags and code: the same code hash, or
    an older one whose recorded behaviour fingerprint equals today's."""
    if not path.exists():
        return False
    record = json.loads(path.read_text())
    if record["settings"] != json.loads(json.dumps(shared)) or record.get("flags", []) != list(flags):
        return False
    current = code_version(METHODS[method].folder)
    if record["code_version"] == current:
        return True
    recorded = read_fingerprints(path.parent).get(method, {}).get(record["code_version"])
    if recorded is None or recorded != fingerprint(method, path.parent):
        return False
    print(f"{path.stem}: its code version {record['code_version']} is not today's {current}, but the method computes "
          f"the same (behaviour fingerprint {recorded}): reused", flush=True)
    return True


# ------------------------------------------------------------------------------------------------ fingerprints
def read_fingerprints(out: Path) -> dict[str, dict[str, str]]:
    path = out / FINGERPRINTS
    return json.loads(path.read_text()) if path.exists() else {}


_TODAY: dict[str, str] = {}  # method -> today's fingerprint, computed once per process


def fingerprint(method: str, out: Path) -> str:
    """Today's behaviour fingerprint of `method` (computed in a fresh process, `behaviour`), recorded in
    out/fingerprints.json under today's code version."""
    if method not in _TODAY:
        result = subprocess.run([sys.executable, __file__, "--behaviour", method], capture_output=True, text=True,
                                cwd=REPO)
        if result.returncode:
            raise SystemExit(f"the behaviour fingerprint of {method} failed:\n{result.stdout}\n{result.stderr}")
        _TODAY[method] = result.stdout.split()[-1]
        known = read_fingerprints(out)
        known.setdefault(method, {})[code_version(METHODS[method].folder)] = _TODAY[method]
        out.mkdir(parents=True, exist_ok=True)
        (out / FINGERPRINTS).write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")
    return _TODAY[method]


class _Recorder:
    """A closed-loop policy that feeds every action it returns into `digest`."""

    def __init__(self, policy, digest):
        self.policy, self.digest = policy, digest

    def reset(self):
        if hasattr(self.policy, "reset"):
            self.policy.reset()

    def __call__(self, obs):
        import numpy as np
        actions = self.policy(obs)
        self.digest.update(np.ascontiguousarray(actions, dtype=np.float32).tobytes())
        return actions


def behaviour(method: str, seed: int = 0) -> str:
    """What the method's code computes, as one hash (at one thread; a fresh process makes it reproducible): the full
    config of the table's tiny run (so a changed preset or default counts), then the quick run of each of its input
    kinds with the table's cameras (the smoke preset trained a few steps from `seed`) and every split and probe
    evaluated for one episode per task; every trained weight, every action taken and every episode's outcome and
    length is hashed (what the quick run does not execute, it cannot see). Config fields that
    are None or False are left out of the config's hash, so adding an option that is off by default changes nothing."""
    import tempfile

    import torch
    from common.config import parse_config, to_dict
    from common.envs.metaworld import collect_demos, demo_spec, eval_config, evaluate
    torch.set_num_threads(1)
    spec = METHODS[method]
    config, train, evaluation, model = (importlib.import_module(f"{spec.folder}.{m}")
                                        for m in ("config", "train", "eval", "model"))
    digest = hashlib.sha1()
    tiny = parse_config(config.PRESETS, [*spec.flags, "--preset", "tiny", *cli_flags(settings(False))])
    switched_on = {k: v for k, v in to_dict(tiny).items() if v is not None and v is not False}  # a new option that
    digest.update(json.dumps(switched_on, sort_keys=True, default=str).encode())  # is off by default is no change
    quick = dict(settings(True), cameras=SHARED["cameras"])
    for inputs in [i for i in INPUTS if spec.reads_state or i == "robot"]:
        with tempfile.TemporaryDirectory() as run_dir:
            cfg = parse_config(config.PRESETS, [
                *spec.flags, "--preset", "smoke", *cli_flags(quick), "--state_key", INPUTS[inputs], "--seed",
                str(seed), "--run_dir", run_dir, "--eval_episodes", "0", "--threads", "1"])
            train.train(cfg)
            policy, cfg = evaluation.load_policy(run_dir)
            for name, tensor in sorted(policy.state_dict().items()):
                digest.update(name.encode() + tensor.detach().cpu().float().numpy().tobytes())
            cfg = replace(cfg, eval_episodes=1, eval_workers=1)
            for name, overrides in EVALS.items():
                if overrides == "privileged_fill":
                    if inputs != "oracle":
                        continue
                    overrides = dict(privileged_fill=tuple(collect_demos(demo_spec(cfg)).stats[INPUTS[inputs]]["mean"]))
                outcome = evaluate(_Recorder(model.ClosedLoopPolicy(policy), digest), eval_config(cfg, **overrides),
                                   progress=False)
                digest.update(json.dumps({task: [r.successes, r.lengths] for task, r in outcome.items()}).encode())
    return digest.hexdigest()[:12]


# ------------------------------------------------------------------------------------------------------ the table
def success(results: dict, tasks) -> tuple[int, int]:
    return sum(results[t]["successes"] for t in tasks), sum(results[t]["episodes"] for t in tasks)


def column_values(record: dict, column: str) -> tuple[int, int] | None:
    """(successes, episodes) of one run in one column, or None where the column does not apply."""
    results = record["results"]
    grouped = [t for g in record["language_groups"] for t in g if t in results["standard"]
               and sum(u in results["standard"] for u in g) > 1]
    if column.startswith("language"):
        source = results.get("other instruction" if "other" in column else "standard")
        return success(source, grouped) if grouped and source else None
    return success(results[column], results[column]) if column in results else None


def report(out: Path, stem: str) -> str:
    """Table (Markdown + CSV) and figure from every run file in `out`."""
    from common.metrics import wilson_interval
    records = [json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.name != FINGERPRINTS]
    if not records:
        raise SystemExit(f"no run files in {out}: run the benchmark first")
    rows = {}
    for r in records:
        rows.setdefault((r["method"], r["inputs"]), []).append(r)
    order = [(m, i) for i in INPUTS for m in METHODS if (m, i) in rows]
    md_rows, csv_rows, per_task = [], [], {}
    for key in order:
        runs = sorted(rows[key], key=lambda r: r["seed"])
        cells = []
        for column in COLUMNS:
            values = [column_values(r, column) for r in runs]
            if any(v is None for v in values):
                cells.append("—")
                csv_rows.append([*key, column, "", "", "", "", "", len(runs)])
                continue
            rates = [s / n for s, n in values]
            mean = statistics.mean(rates)
            std = statistics.stdev(rates) if len(rates) > 1 else float("nan")
            lo, hi = wilson_interval(sum(s for s, _ in values), sum(n for _, n in values))
            cells.append(f"{mean:.0%}" + (f" ± {std:.0%}" if len(rates) > 1 else "") + f" [{lo:.2f}, {hi:.2f}]")
            csv_rows.append([*key, column, mean, std, lo, hi, ";".join(f"{x:.4f}" for x in rates), len(runs)])
        minutes = statistics.mean((r["train_seconds"] + r["eval_seconds"]) / 60 for r in runs)
        train_minutes = statistics.mean(r["train_seconds"] / 60 for r in runs)
        resumed = any(r.get("resumed_from_step", 0) > 0 for r in runs)  # its minutes miss the steps before that
        md_rows.append([f"{key[0]} ({key[1]})", ",".join(str(r["seed"]) for r in runs), *cells,
                        f"{train_minutes:.0f}{' (resumed)' if resumed else ''} / {minutes:.0f}"])
        standard = [r["results"]["standard"] for r in runs]
        per_task[key] = {t: statistics.mean(s[t]["successes"] / s[t]["episodes"] for s in standard) for t in standard[0]}
    commits = sorted({f"{r['provenance']['commit']}{'+' if r['provenance']['dirty'] else ''}" for r in records})
    shared = records[0]["settings"]
    flags = sorted({" ".join(r.get("flags", [])) for r in records} - {""})  # an ablation's method flags (--flags)
    with_flags = ", with " + ", ".join(f"`{f}`" for f in flags) if flags else ""
    header = (f"Meta-World MT10, success rate on placements no demo used: mean ± sample std over training seeds "
              f"[95% Wilson interval of the pooled episodes]; {shared['eval_episodes']} episodes per task per seed. "
              f"Robot inputs: camera {'+'.join(shared['cameras'])} at {shared['demo_image_size']} px, 4-D "
              f"proprioception, the instruction; oracle: the privileged 39-D state instead of the proprioception. "
              f"Same demos ({shared['episodes_per_task']} per task), {shared['steps']} steps of batch "
              f"{shared['batch_size']} for every method{with_flags}. Regenerate: `python benchmarks/mt10.py` (runs) or "
              f"`--report` (this table). Runs at commits {', '.join(commits)} (+: uncommitted changes); each run "
              f"file holds its full config.")
    columns = ["method (inputs)", "seeds", *COLUMNS, "minutes per run (train / all)"]
    csv_columns = ["method", "inputs", "column", "mean", "std", "wilson_lo", "wilson_hi", "per_seed", "seeds"]
    table = save_table(stem, header, columns, md_rows, csv_columns, csv_rows, directory=out.parent)
    tasks = list(next(iter(per_task.values())))
    task_rows = [[t.removesuffix("-v3"), *(f"{per_task[k][t]:.0%}" for k in order)] for t in tasks]
    save_table(f"{stem}_tasks", "Standard split, success per task (mean over seeds).",
               ["task", *(f"{m} ({i})" for m, i in order)], task_rows, ["task", *(f"{m}-{i}" for m, i in order)],
               [[t, *(per_task[k][t] for k in order)] for t in tasks], directory=out.parent)
    plot(rows, order, out.parent / f"{stem}.png")
    return table


def plot(rows: dict, order: list, path: Path) -> None:
    """Bars = mean over seeds, dots = seeds, one group of bars per column."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    columns = [c for c in COLUMNS if any(column_values(r, c) is not None for k in order for r in rows[k])]
    width = 0.8 / len(order)
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(columns) * len(order) / 3), 4))
    for i, key in enumerate(order):
        for j, column in enumerate(columns):
            values = [column_values(r, column) for r in rows[key]]
            if any(v is None for v in values):
                continue
            rates = [s / n for s, n in values]
            x = j + (i - (len(order) - 1) / 2) * width
            ax.bar(x, statistics.mean(rates), width, color=f"C{i}", alpha=0.45 if key[1] == "oracle" else 0.9,
                   label=f"{key[0]} ({key[1]})" if j == 0 else None)
            ax.scatter([x] * len(rates), rates, color="black", s=6, zorder=3)
    ax.set_xticks(range(len(columns)), columns, rotation=20, ha="right")
    ax.set(ylabel="success rate", ylim=(0, 1), title="Meta-World MT10: bars = mean over training seeds, dots = seeds")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------ driver
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {list(METHODS)}")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds of the robot-input rows ('' for none)")
    parser.add_argument("--oracle_seeds", default="0", help="training seeds of the oracle rows ('' for none)")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side (each gets 2 // jobs threads)")
    parser.add_argument("--out", type=Path, default=RESULTS / "mt10", help="run files go here, the table beside it")
    parser.add_argument("--quick", action="store_true", help="smoke presets, two tasks, a few steps, one seed")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help=f"change a shared setting for an ablation (use another --out): {sorted(SHARED)}")
    parser.add_argument("--flags", default="", help="a method's own config flags for an ablation, appended to every "
                        "run's (use another --out), e.g. --flags=--color_jitter for GR00T's colour jitter")
    parser.add_argument("--report", action="store_true", help="only regenerate the table and figure")
    parser.add_argument("--fingerprint", action="store_true",
                        help="record today's behaviour fingerprint of --methods in <out>/fingerprints.json")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # internal: method:inputs:seed:threads:eval_workers
    parser.add_argument("--behaviour", help=argparse.SUPPRESS)  # internal: print one method's fingerprint
    args = parser.parse_args()
    flags = tuple(args.flags.split())
    if args.behaviour:
        print(behaviour(args.behaviour))
        return
    if args.fingerprint:
        for method in args.methods.split(","):
            print(f"{method} (code version {code_version(METHODS[method].folder)}): {fingerprint(method, args.out)}")
        return
    if args.run:
        method, inputs, seed, threads, workers = args.run.split(":")
        run_one(method, inputs, int(seed), args.out, args.quick, tuple(args.set), int(threads), int(workers), flags)
        return
    stem = args.out.name
    if not args.report:
        methods = args.methods.split(",")
        unknown = set(methods) - set(METHODS)
        if unknown:
            raise SystemExit(f"unknown methods {sorted(unknown)}; choose from {list(METHODS)}")
        seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",") if s]
        oracle_seeds = [int(s) for s in args.oracle_seeds.split(",") if s]
        robot = [(m, "robot", s) for s in seeds for m in methods]
        oracle = [(m, "oracle", s) for s in oracle_seeds for m in methods if METHODS[m].reads_state]
        jobs = robot[:len(methods)] + oracle + robot[len(methods):]  # a first seed of every row comes first
        shared = settings(args.quick, tuple(args.set))
        todo = [j for j in jobs if not is_done(args.out / f"{run_name(*j)}.json", j[0], shared, flags)]
        print(f"{len(jobs) - len(todo)} of {len(jobs)} runs already done; {len(todo)} to run, {args.jobs} at a time")
        args.out.mkdir(parents=True, exist_ok=True)
        threads, workers = max(1, 2 // args.jobs), max(1, 2 // args.jobs)

        def launch(job):
            name = run_name(*job)
            log = args.out / "logs" / f"{name}.log"
            log.parent.mkdir(exist_ok=True)
            command = [sys.executable, __file__, "--run", f"{job[0]}:{job[1]}:{job[2]}:{threads}:{workers}",
                       "--out", str(args.out), *(["--quick"] if args.quick else []), f"--flags={args.flags}", "--set",
                       *args.set]
            started = time.time()
            with open(log, "w") as f:
                code = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, cwd=REPO).returncode
            print(f"{name}: {'done' if code == 0 else f'FAILED (exit {code}), see {log}'} in "
                  f"{(time.time() - started) / 60:.1f} min", flush=True)
            return code

        with ThreadPoolExecutor(args.jobs) as pool:
            codes = list(pool.map(launch, todo))
        if any(codes):
            raise SystemExit(f"{sum(c != 0 for c in codes)} runs failed")
    report(args.out, stem)


if __name__ == "__main__":
    main()
