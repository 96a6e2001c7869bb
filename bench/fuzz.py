"""Fuzzing: the FastCGI, SCGI and HTTP listeners and the YAML configuration loader.

    ./dev bench fuzz [--target fastcgi|scgi|http|yaml|all] [--inputs N] [--seconds S]
                     [--yaml-seconds S] [--engine auto|atheris|mutator] [--scenario-mib M] [--seed N]
                     [--out DIR] [--json]

Each target runs in a child process, one after the other (one CPU core). The
protocol targets drive a listener's protocol objects in-process (bench/_fuzzlib.py
says how and what is checked); with atheris installed (the bench extra) they are
coverage-guided, its mutations mixed with the structure-aware mutator and the
generators, otherwise the mutator keeps its own small corpus. The yaml target
feeds mutated configuration files to load_config and `daemonapp check`. Then
the hostile-peer scenarios stream --scenario-mib MiB each (huge length fields,
endless records, slow senders, clients that never read) and report the bytes a
connection held.

Printed: inputs per target and per second, crashes (exceptions escaped), hangs,
leaks, bound overruns, dead listeners (a valid connection unanswered after
garbage), failures logged, peak bytes held per connection and peak RSS; each
finding with its shortest input, written whole to --out. Exit status 1 when
something was found that is not a known bug (bench/README.md lists those).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
TARGETS = ("fastcgi", "scgi", "http", "yaml")


def _quiet_logs() -> None:
    """Twisted's log events go nowhere (LogWatch observers still see them)."""
    from twisted.logger import globalLogBeginner

    globalLogBeginner.beginLoggingTo([lambda event: None], discardBuffer=True,
                                     redirectStandardIO=False)


def _limit_memory(gib: int) -> None:
    """A child may not take the shared machine down with it."""
    limit = gib << 30
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _write(path: str, stats: Any, engine: str) -> None:
    data = stats.as_dict()
    data["engine"] = engine
    data["max_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tmp = path + ".tmp"
    with open(tmp, "w") as out:
        json.dump(data, out)
    os.replace(tmp, path)


# ----------------------------------------------------------------------- children


def child(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(BENCH))
    _limit_memory(6)
    _quiet_logs()
    import _fuzzlib as fz

    target = args.child
    if target == "yaml":
        stats = fz.Stats("yaml")
        fz.fuzz_yaml(inputs=args.inputs, seconds=args.seconds, seed=args.seed, stats=stats,
                     progress=lambda s: _write(args.result, s, "mutator"))
        _write(args.result, stats, "mutator")
        return 0
    if target == "scenarios":
        results = []
        for scenario in fz.scenarios():
            result = fz.run_scenario(scenario, args.scenario_mib << 20)
            results.append({**result.__dict__, "bound": scenario.bound})
            with open(args.result, "w") as out:
                json.dump({"scenarios": results,
                           "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss},
                          out)
        return 0
    engine = args.engine
    if engine in ("auto", "atheris"):
        try:
            import atheris  # noqa: F401
        except ImportError:
            if engine == "atheris":
                print("fuzz: atheris is not installed (pip install atheris)", file=sys.stderr)
                return 2
            engine = "mutator"
        else:
            engine = "atheris"
    if engine == "mutator":
        stats = fz.Stats(target)
        fz.fuzz_protocol(target, inputs=args.inputs, seconds=args.seconds, seed=args.seed,
                         stats=stats, progress=lambda s: _write(args.result, s, "mutator"))
        _write(args.result, stats, "mutator")
        return 0
    return _atheris_child(args, fz, target)


def _atheris_child(args: argparse.Namespace, fz: Any, target: str) -> int:
    """libFuzzer's loop over the harness; it never returns (we exit when done)."""
    import atheris

    with atheris.instrument_imports(include=["daemonapp", "twisted.web", "twisted.protocols"]):
        # imported under instrumentation so that their branches guide the mutations
        import importlib

        for name in ("twisted.web.http", "daemonapp.listeners", "daemonapp.listeners.fastcgi",
                     "daemonapp.listeners.http", "daemonapp.listeners.scgi"):
            importlib.import_module(name)
    stats = fz.Stats(target)
    harness = fz.ProtocolHarness(target)
    generate = fz.GENERATORS[target]
    corpus: list[bytes] = []
    watch = fz.LogWatch()
    globalize = watch.watching()
    globalize.__enter__()
    start = time.monotonic()

    def finish() -> None:
        harness.liveness(stats)
        stats.seconds = time.monotonic() - start
        for sig, count in watch.failures.items():
            stats.logged[sig] = count
            stats.tracebacks.setdefault(f"logged: {sig}", watch.examples[sig])
        _write(args.result, stats, "atheris")
        sys.stdout.flush()
        os._exit(0)

    def one_input(data: bytes) -> None:
        harness.run(data, stats, seed=args.seed)
        if len(corpus) < 200 and len(data) < 65536:
            corpus.append(data)
        if stats.inputs % 200 == 0:
            harness.liveness(stats, data)
        if stats.inputs % 2000 == 0:
            stats.seconds = time.monotonic() - start
            _write(args.result, stats, "atheris")
        if stats.inputs >= args.inputs or time.monotonic() - start >= args.seconds:
            finish()

    def mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        pick = rng.random()
        if pick < 0.15 or not data:
            out = generate(rng)
        elif pick < 0.55:
            out = fz.mutate_bytes(data, rng, corpus, target)
        else:
            out = atheris.Mutate(data, max_size)
        return out[:max_size]

    seeds = Path(args.result).parent / f"seeds-{target}"  # in --out: nothing left in /tmp
    seeds.mkdir(exist_ok=True)
    rng = random.Random(args.seed)
    for index in range(64):
        (seeds / f"seed{index}").write_bytes(generate(rng))
    # large inputs are the scenarios' business: short ones keep the loop fast
    atheris.Setup([sys.argv[0], "-max_len=32768", "-rss_limit_mb=4096",
                   f"-seed={args.seed or 1}", "-print_final_stats=0", "-close_fd_mask=0",
                   str(seeds)], one_input, custom_mutator=mutator)
    atheris.Fuzz()
    return 0


# ----------------------------------------------------------------------- the parent


def run_child(target: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One target in its own process; killed when it makes no progress for 120 s."""
    result = workdir / f"{target}.json"
    seconds = args.seconds
    if target == "yaml" and args.yaml_seconds is not None:
        seconds = args.yaml_seconds
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", target,
           "--result", str(result), "--inputs", str(args.inputs),
           "--seconds", str(seconds), "--seed", str(args.seed),
           "--engine", args.engine, "--scenario-mib", str(args.scenario_mib)]
    log = open(workdir / f"{target}.log", "w")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    last_change = time.monotonic()
    last_mtime = 0.0
    deadline = time.monotonic() + seconds + 600
    killed = ""
    while proc.poll() is None:
        time.sleep(0.5)
        mtime = result.stat().st_mtime if result.exists() else 0.0
        if mtime != last_mtime:
            last_mtime, last_change = mtime, time.monotonic()
        if time.monotonic() - last_change > 120 and target != "scenarios":
            killed = "no progress for 120 s (a hang)"
        elif time.monotonic() > deadline:
            killed = "over its time limit"
        if killed:
            proc.kill()
            proc.wait()
            break
    log.close()
    data: dict[str, Any] = json.loads(result.read_text()) if result.exists() else {}
    data["exit"] = proc.returncode
    if killed:
        data["killed"] = killed
        data["hangs"] = data.get("hangs", 0) + 1
    if proc.returncode not in (0, None) and not killed:
        tail = (workdir / f"{target}.log").read_text()[-3000:]
        data.setdefault("crashes", {})[f"the child exited {proc.returncode}"] = 1
        data.setdefault("tracebacks", {})[f"crashes: the child exited {proc.returncode}"] = tail
    return data


def _count(data: dict[str, Any], key: str) -> int:
    value = data.get(key, 0)
    return sum(value.values()) if isinstance(value, dict) else int(value)


def _kib(size: float) -> str:
    return f"{size / 1024:,.1f}"


def print_report(results: dict[str, dict[str, Any]], out_dir: Path) -> int:
    """The tables; returns how many findings are not known bugs."""
    rows = [("TARGET", "ENGINE", "INPUTS", "INPUTS/S", "CRASHES", "HANGS", "LEAKS", "OVER",
             "DEAD", "LOGGED", "ANSWERED", "CLOSED", "WAITING", "PEAK HELD KiB", "RSS MiB")]
    total_inputs = 0
    for target, data in results.items():
        if target == "scenarios":
            continue
        inputs = data.get("inputs", 0)
        total_inputs += inputs
        seconds = data.get("seconds", 0) or 1
        rows.append((target, data.get("engine", "?"), f"{inputs:,}", f"{inputs / seconds:,.0f}",
                     str(_count(data, "crashes")), str(_count(data, "hangs")),
                     str(_count(data, "leaks")), str(_count(data, "over_bound")),
                     str(_count(data, "dead_listener")), str(_count(data, "logged")),
                     f"{data.get('answered', 0):,}", f"{data.get('closed', 0):,}",
                     f"{data.get('waiting', 0):,}", _kib(data.get("peak_held", 0)),
                     f"{data.get('max_rss_kib', 0) / 1024:,.0f}"))
    _table(rows)
    print(f"\ninputs in all: {total_inputs:,}   (yaml: ANSWERED = a Config, CLOSED = a "
          f"ConfigError; PEAK HELD = tracemalloc peak of one load, sampled)")
    unknown = 0
    scen = results.get("scenarios", {}).get("scenarios", [])
    if scen:
        print("\nhostile peers (one connection each unless said; HELD = bytes the connection's "
              "objects hold, TRACED = tracemalloc peak per connection)")
        rows = [("SCENARIO", "SENT KiB", "HELD KiB", "TRACED KiB", "AFTER PAUSE KiB",
                 "OUTCOME", "VERDICT")]
        for item in scen:
            verdict = "ok"
            if item["over"]:
                verdict = "OVER (known)" if item["known"] else "OVER"
                if item["error"]:
                    verdict += f" {item['error']}"
            rows.append((item["name"], _kib(item["sent"]), _kib(item["peak_held"]),
                         _kib(item["tracemalloc_peak"]), _kib(item["written_after_pause"]),
                         item["outcome"][:40], verdict))
            if item["over"] and not item["known"]:
                unknown += 1
        _table(rows)
        known = [item for item in scen if item["over"] and item["known"]]
        for item in known:
            print(f"  known: {item['name']}: {item['known']}")
    findings = []
    for target, data in results.items():
        for key, example in data.get("examples", {}).items():
            findings.append((target, key, bytes.fromhex(example),
                             data.get("example_sizes", {}).get(key, 0),
                             data.get("tracebacks", {}).get(key, "")))
        for key, tb in data.get("tracebacks", {}).items():
            if key.startswith(("logged:", "crashes: the child")):
                findings.append((target, key, b"", 0, tb))
    if findings:
        print(f"\nfindings (inputs written whole to {out_dir}):")
    for index, (target, key, example, size, tb) in enumerate(findings):
        unknown += 1
        name = out_dir / f"{target}-{index}.bin"
        if example:
            name.write_bytes(example)
        print(f"- {target}: {key}\n  input ({size} bytes): {example[:300]!r}")
        if tb:
            print("  " + tb.strip().splitlines()[-1][:300])
    if not findings:
        print("\nno findings")
    return unknown


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", choices=[*TARGETS, "all"], default="all")
    parser.add_argument("--inputs", type=int, default=20000, help="inputs per target")
    parser.add_argument("--seconds", type=float, default=300.0, help="time limit per target")
    parser.add_argument("--yaml-seconds", type=float,
                        help="time limit for the yaml target (default: --seconds)")
    parser.add_argument("--engine", choices=["auto", "atheris", "mutator"], default="auto")
    parser.add_argument("--scenario-mib", type=int, default=64,
                        help="MiB each hostile-peer scenario streams (0: no scenarios)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", help="where findings and logs go (default: a new temp dir)")
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    out_dir = Path(args.out or tempfile.mkdtemp(prefix="daemonapp-fuzz-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = list(TARGETS) if args.target == "all" else [args.target]
    if args.scenario_mib > 0 and args.target in ("all", "fastcgi", "scgi", "http"):
        targets.append("scenarios")
    results: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    for target in targets:
        print(f"fuzz: {target} ...", file=sys.stderr, flush=True)
        results[target] = run_child(target, args, out_dir)
        if target == "scenarios" and args.target != "all":
            keep = args.target
            results[target]["scenarios"] = [s for s in results[target].get("scenarios", [])
                                            if s["protocol"] == keep]
    print(f"daemonapp fuzz: {', '.join(targets)}; seed {args.seed}; "
          f"{time.monotonic() - started:,.0f} s; python {sys.version.split()[0]}")
    unknown = print_report(results, out_dir)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    if args.json:
        print(json.dumps(results, indent=1))
    return 1 if unknown else 0


if __name__ == "__main__":
    sys.exit(main())
