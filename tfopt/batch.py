"""Batch conversion: many models, each in a worker process, resumable, with a summary.

    tfopt batch SOURCES... -o OUT [--workers N] [--timeout S] [--executor local|ray]

A source is a directory whose children are models, a glob, or a manifest (.jsonl, .csv,
.toml) whose rows give `src` and per-model options. Every model is converted by
`tfopt.freeze` into OUT/<name>/; OUT/summary.{json,csv,md} has one row per model x target.
"""
from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

from tfopt.errors import TfoptError, UsageError, first_line

EXIT_SOME_FAILED = 5
MANIFEST_SUFFIXES = (".jsonl", ".csv", ".toml")
MODEL_SUFFIXES = (".keras", ".h5", ".pb", ".pbtxt", ".meta")
# manifest / batch-wide options and the tfopt.freeze argument each one sets
OPTIONS = {"targets": "targets", "to": "targets", "quantize": "quantize",
           "signature": "signature", "tags": "tags", "input_shapes": "input_shapes",
           "calibration": "calibration", "eval": "eval_data", "inputs": "inputs",
           "outputs": "outputs", "freeze_placeholders": "freeze_placeholders",
           "opset": "opset", "samples": "samples", "atol": "atol", "rtol": "rtol"}
STATE_DIR = ".batch"  # OUT/.batch/<name>.json: what the last conversion of a model was


@dataclass
class Job:
    name: str
    src: str
    options: dict = field(default_factory=dict)  # tfopt.freeze keyword arguments
    key: str = ""  # source content + options + tfopt version: equal means up to date


def discover(sources: list[str], defaults: dict) -> list[Job]:
    """The jobs named by directories, globs and manifests, batch-wide options first."""
    jobs: list[Job] = []
    for source in sources:
        path = Path(source)
        if path.is_file() and path.suffix in MANIFEST_SUFFIXES:
            jobs += [_job(row, defaults, f"{path} row {i + 1}", path.parent)
                     for i, row in enumerate(read_manifest(path))]
        elif path.is_dir() and not _is_model(path):
            jobs += [_job({"src": str(child)}, defaults, str(child), None)
                     for child in sorted(path.iterdir()) if _is_model(child)]
        else:
            matches = sorted(glob.glob(source)) if any(c in source for c in "*?[") else \
                [source]
            if not matches or not all(Path(m).exists() for m in matches):
                raise UsageError(f"batch source {source} matches no model; pass a directory "
                                 "of models, a glob, or a .jsonl/.csv/.toml manifest")
            jobs += [_job({"src": m}, defaults, m, None) for m in matches]
    names = [j.name for j in jobs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UsageError(f"two models would write OUT/{duplicates[0]}; give them distinct "
                         "names with a manifest 'name' column")
    if not jobs:
        raise UsageError(f"no models found in {', '.join(sources)}")
    return jobs


def _is_model(path: Path) -> bool:
    return (path.is_dir() and any((path / f).is_file() for f in
                                  ("saved_model.pb", "saved_model.pbtxt"))) \
        or (path.is_file() and path.suffix in MODEL_SUFFIXES)


def read_manifest(path: Path) -> list[dict]:
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if path.suffix == ".csv":
            return [{k: v for k, v in row.items() if v not in (None, "")}
                    for row in csv.DictReader(io.StringIO(path.read_text()))]
        import tomllib

        data = tomllib.loads(path.read_text())
        return list(data.get("model", data.get("models", [])))
    except (ValueError, OSError) as exc:
        raise UsageError(f"cannot read manifest {path}: {first_line(exc)}") from exc


def _job(row: dict, defaults: dict, where: str, base: Path | None) -> Job:
    row = dict(row)
    if "src" not in row:
        raise UsageError(f"{where} has no 'src'")
    src = Path(row.pop("src"))
    if base is not None and not src.is_absolute():
        src = base / src
    name = row.pop("name", None) or src.name.removesuffix(".meta").split(".")[0]
    unknown = sorted(k for k in row if k not in OPTIONS)
    if unknown:
        raise UsageError(f"{where}: unknown option(s) {unknown}; known: "
                         f"{', '.join(sorted(OPTIONS))}")
    options = dict(defaults)
    for key, value in row.items():
        if key in ("targets", "to", "tags", "inputs", "outputs") and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if key in ("input_shapes", "freeze_placeholders") and isinstance(value, str):
            value = json.loads(value)
        options[OPTIONS[key]] = value
    return Job(name, str(src), options)


def content_key(job: Job) -> str:
    """sha256 of the source's files (names and bytes), the options and the tfopt version."""
    from tfopt import __version__

    digest = hashlib.sha256(__version__.encode())
    digest.update(json.dumps(job.options, sort_keys=True, default=str).encode())
    src = Path(job.src)
    files = sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else \
        sorted(Path(p) for p in glob.glob(glob.escape(str(src).removesuffix(".meta")) + "*")) \
        if src.suffix == ".meta" else [src]
    for file in files:
        digest.update(str(file.relative_to(src) if src.is_dir() else file.name).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def convert(job: dict, out_dir: str) -> dict:
    """One model, in whatever process runs it: never raises, returns the model's record."""
    import tfopt

    start = time.perf_counter()
    record = {"name": job["name"], "src": job["src"], "key": job["key"], "pid": os.getpid()}
    try:
        result = tfopt.freeze(job["src"], Path(out_dir) / job["name"], overwrite=True,
                              **job["options"])
    except TfoptError as exc:
        return dict(record, status="failed", cause="bad input", error=first_line(exc),
                    seconds=round(time.perf_counter() - start, 2), rows=[])
    except Exception as exc:  # a bug or a library failure: keep the batch going
        return dict(record, status="failed", cause="internal error",
                    error=f"{type(exc).__name__}: {first_line(exc)}",
                    seconds=round(time.perf_counter() - start, 2), rows=[])
    rows = [{"target": a.format, "status": a.status, "error": a.error, "bytes": a.bytes,
             "nodes": a.nodes, "precision": a.precision,
             "max_abs_err": a.parity.max_abs_err if a.parity else None,
             "parity": (a.parity.passed if a.parity else None), "seconds": a.seconds}
            for a in result.artifacts]
    status = "ok" if result.exit_code == 0 else "failed"
    cause = None if status == "ok" else \
        "target failed" if result.failed_targets else "parity"
    errors = [f"{a.format}: {a.error}" for a in result.artifacts if a.error] + \
        [f"{f}: outputs differ beyond tolerance" for f in result.parity_failures]
    return dict(record, status=status, cause=cause, error="; ".join(errors) or None,
                seconds=round(time.perf_counter() - start, 2), rows=rows)


def _worker(connection) -> None:
    """A local worker: imports TF once, then converts the jobs it is sent until None."""
    from tfopt.logs import quiet_libraries

    quiet_libraries(False)
    import tfopt.api  # noqa: F401  (the import cost is paid once per worker)

    while True:
        message = connection.recv()
        if message is None:
            return
        job, out_dir = message
        connection.send(convert(job, out_dir))


class LocalExecutor:
    """N worker processes; a job that crashes or outlives the timeout costs its worker,
    which is replaced, and becomes a failed record."""

    def __init__(self, workers: int, timeout: float | None):
        self.size, self.timeout = workers, timeout
        self.context = multiprocessing.get_context("spawn")

    def run(self, jobs: list[dict], out_dir: str, on_done) -> None:
        pending = list(jobs)
        idle, busy = [], {}  # busy: connection -> (process, job, deadline)
        processes = []

        def start():
            parent, child = self.context.Pipe()
            process = self.context.Process(target=_worker, args=(child,), daemon=True)
            process.start()
            child.close()
            processes.append(process)
            return parent, process

        stopping = False

        def done(record) -> None:
            nonlocal stopping
            if not on_done(record):
                stopping = True

        try:
            for _ in range(min(self.size, len(pending))):
                idle.append(start())
            while (pending or busy) and not stopping:
                while pending and idle:
                    connection, process = idle.pop()
                    job = pending.pop(0)
                    connection.send((job, out_dir))
                    deadline = time.monotonic() + self.timeout if self.timeout else None
                    busy[connection] = (process, job, deadline, time.monotonic())
                waits = [d for _, _, d, _ in busy.values() if d is not None]
                left = max(0.0, min(waits) - time.monotonic()) if waits else None
                ready = wait(list(busy) + [p.sentinel for p, *_ in busy.values()], left)
                now = time.monotonic()
                for connection, (process, job, deadline, began) in list(busy.items()):
                    record = None
                    if connection in ready:
                        try:
                            record = connection.recv()
                        except (EOFError, OSError):
                            record = None
                        if record is not None:
                            del busy[connection]
                            idle.append((connection, process))
                            done(record)
                            continue
                    if process.sentinel in ready or not process.is_alive():
                        cause, error = "crashed", _death(process)
                    elif deadline is not None and now >= deadline:
                        cause, error = "timeout", f"still running after {self.timeout:g} s"
                    else:
                        continue
                    process.kill()
                    process.join()
                    del busy[connection]
                    done(dict(job, status="failed", cause=cause, error=error,
                              seconds=round(now - began, 2), rows=[]))
                    if pending:
                        idle.append(start())
        finally:  # also stops the jobs still running after --fail-fast
            for process in processes:
                if process.is_alive():
                    process.kill()
                process.join()


def _death(process) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        hint = " (killed: out of memory?)" if code == -9 else ""
        return f"worker died from signal {-code}{hint}"
    return f"worker exited with code {code}"


class RayExecutor:
    """One Ray task per model on an existing cluster (or a local one), with CPU and memory
    requests; a task past the timeout is cancelled."""

    def __init__(self, address: str | None, timeout: float | None, cpus: float, memory_mb: int):
        try:
            import ray
        except ImportError:
            raise UsageError("--executor ray needs Ray: pip install 'tfopt[ray]'") from None
        self.ray, self.timeout = ray, timeout
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     ignore_reinit_error=True)
        self.task = ray.remote(num_cpus=cpus, memory=memory_mb * 1024 * 1024,
                               max_retries=0)(convert)

    def run(self, jobs: list[dict], out_dir: str, on_done) -> None:
        ray = self.ray
        started = {self.task.remote(job, out_dir): (job, time.monotonic()) for job in jobs}
        while started:
            ready, _ = ray.wait(list(started), num_returns=1, timeout=1.0)
            now = time.monotonic()
            for ref in ready:
                job, began = started.pop(ref)
                try:
                    record = ray.get(ref)
                except Exception as exc:  # the task's worker died
                    record = dict(job, status="failed", cause="crashed",
                                  error=first_line(exc), seconds=round(now - began, 2),
                                  rows=[])
                if not on_done(record):
                    for other in started:
                        ray.cancel(other, force=True)
                    return
            for ref, (job, began) in list(started.items()):
                if self.timeout and now - began > self.timeout:
                    ray.cancel(ref, force=True)
                    started.pop(ref)
                    if not on_done(dict(job, status="failed", cause="timeout",
                                        error=f"still running after {self.timeout:g} s",
                                        seconds=round(now - began, 2), rows=[])):
                        return


@dataclass
class BatchResult:
    records: list[dict]
    skipped: list[str]
    out_dir: str
    seconds: float

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.records if r["status"] != "ok"]

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.failed else 0


def run_batch(sources: list[str], out_dir, *, workers: int | None = None,
              timeout: float | None = None, executor: str = "local",
              address: str | None = None, force: bool = False, fail_fast: bool = False,
              ray_cpus: float = 1.0, ray_memory_mb: int = 4096, progress=None,
              **defaults) -> BatchResult:
    """Convert many models; the Python API behind `tfopt batch`.

    defaults are tfopt.freeze keyword arguments for every model (targets, quantize, ...);
    a manifest row overrides them for its model. Models whose source, options and tfopt
    version are unchanged since they last converted are skipped unless `force`.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    jobs = discover(list(sources), defaults)
    state = out / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    records, todo, skipped = [], [], []
    for job in jobs:
        job.key = content_key(job)
        previous = _read_state(state / f"{job.name}.json")
        if not force and previous and previous.get("key") == job.key \
                and previous.get("status") == "ok" and (out / job.name).is_dir():
            records.append(dict(previous, skipped=True))
            skipped.append(job.name)
        else:
            todo.append(job.__dict__.copy())
    progress = progress or Progress(len(jobs), len(skipped))
    stop = {"flag": False}

    def on_done(record: dict) -> bool:
        record = dict(record, finished_at=time.time())
        (state / f"{record['name']}.json").write_text(json.dumps(record, default=str))
        records.append(record)
        progress.update(record)
        if record["status"] != "ok" and fail_fast:
            stop["flag"] = True
        return not stop["flag"]

    # largest sources first: with several workers, a big model started last would finish last
    todo.sort(key=lambda job: -_source_bytes(job["src"]))
    if todo:
        runner = RayExecutor(address, timeout, ray_cpus, ray_memory_mb) if executor == "ray" \
            else LocalExecutor(workers or os.cpu_count() or 1, timeout)
        runner.run(todo, str(out), on_done)
    progress.close()
    order = {j.name: i for i, j in enumerate(jobs)}
    records.sort(key=lambda r: order.get(r["name"], len(order)))
    result = BatchResult(records, skipped, str(out), round(time.perf_counter() - start, 2))
    write_summary(result)
    return result


def _source_bytes(src: str) -> int:
    path = Path(src)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size if path.exists() else 0


def _read_state(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def versions() -> dict[str, str]:
    from importlib import metadata

    found = {}
    for package in ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "protobuf"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


SUMMARY_COLUMNS = ("model", "target", "status", "cause", "error", "bytes", "nodes", "parity",
                   "max_abs_err", "precision", "seconds", "skipped")


def summary_rows(records: list[dict]) -> list[dict]:
    rows = []
    for record in records:
        base = {"model": record["name"], "cause": record.get("cause"),
                "skipped": bool(record.get("skipped"))}
        if not record.get("rows"):
            rows.append(dict(base, target="-", status=record["status"], error=record["error"],
                             seconds=record.get("seconds")))
        for row in record.get("rows", []):
            rows.append(dict(base, **row, cause=None if row["status"] == "ok" and
                             row.get("parity") is not False else record.get("cause")))
    return [{c: r.get(c) for c in SUMMARY_COLUMNS} for r in rows]


def write_summary(result: BatchResult) -> None:
    out = Path(result.out_dir)
    rows = summary_rows(result.records)
    groups: dict[str, list[str]] = {}
    for record in result.failed:
        groups.setdefault(record.get("cause") or "failed", []).append(record["name"])
    data = {"models": len(result.records), "converted": len(result.records) -
            len(result.failed) - len(result.skipped), "skipped": result.skipped,
            "failed": len(result.failed), "failures_by_cause": groups,
            "seconds": result.seconds, "versions": versions(), "rows": rows}
    (out / "summary.json").write_text(json.dumps(data, indent=2, default=str))
    with open(out / "summary.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# tfopt batch: {data['models']} models, {data['failed']} failed, "
             f"{len(result.skipped)} up to date", "",
             "| " + " | ".join(SUMMARY_COLUMNS) + " |",
             "|" + " --- |" * len(SUMMARY_COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join("" if row[c] is None else str(row[c]).replace("|", "/")
                                        for c in SUMMARY_COLUMNS) + " |")
    if groups:
        lines += ["", "## Failures by cause", ""]
        lines += [f"- {cause}: {', '.join(names)}" for cause, names in groups.items()]
    lines += ["", "versions: " + ", ".join(f"{k} {v}" for k, v in data["versions"].items())]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


class Progress:
    """A one-line bar on a terminal; plain log lines elsewhere (CI)."""

    def __init__(self, total: int, done: int = 0, stream=None):
        self.total, self.done, self.failed = total, done, []
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.monotonic()

    def update(self, record: dict) -> None:
        self.done += 1
        if record["status"] != "ok":
            self.failed.append(record["name"])
        elapsed = time.monotonic() - self.start
        eta = elapsed / max(self.done, 1) * (self.total - self.done)
        state = "ok" if record["status"] == "ok" else f"FAILED ({record.get('cause')})"
        if self.tty:
            width = 24
            filled = int(width * self.done / max(self.total, 1))
            failed = f", failed: {', '.join(self.failed[-3:])}" if self.failed else ""
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/"
                              f"{self.total} {elapsed:.0f}s elapsed, ETA {eta:.0f}s{failed}"
                              "\x1b[K")
        else:
            self.stream.write(f"tfopt batch: [{self.done}/{self.total}] {record['name']} {state}"
                              f" in {record.get('seconds')} s; elapsed {elapsed:.0f} s, "
                              f"ETA {eta:.0f} s\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


def parser():
    import argparse

    parser = argparse.ArgumentParser(
        prog="tfopt batch",
        epilog="exit codes: 0 every model converted; 2 usage error; 5 some models failed "
               "(see OUT/summary.md)",
        description="Convert many models, each in a worker process, resumably.")
    parser.add_argument("sources", nargs="+",
                        help="directories of models, globs, or .jsonl/.csv/.toml manifests")
    parser.add_argument("-o", "--output", required=True, help="output directory")
    parser.add_argument("--to", help="targets for every model (default: all)")
    parser.add_argument("--quantize", help="quantization mode for every model")
    parser.add_argument("--calibration", help="calibration data for every model")
    parser.add_argument("--signature", help="signature for every model")
    parser.add_argument("--workers", type=int, help="local worker processes (default: CPUs)")
    parser.add_argument("--timeout", type=float, help="seconds a model may take")
    parser.add_argument("--executor", choices=["local", "ray"], default="local")
    parser.add_argument("--address", help="Ray cluster address (ray://host:10001, auto)")
    parser.add_argument("--ray-cpus", type=float, default=1.0, help="CPUs per Ray task")
    parser.add_argument("--ray-memory", type=int, default=4096, help="MB per Ray task")
    parser.add_argument("--force", action="store_true", help="reconvert up-to-date models")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failure")
    parser.add_argument("--debug", action="store_true", help="tracebacks on errors")
    return parser


def main(argv: list[str] | None = None) -> int:
    from tfopt.cli import guarded
    from tfopt.logs import quiet_libraries

    args = parser().parse_args(argv)
    quiet_libraries(args.debug)
    defaults = {k: v for k, v in (("targets", args.to.split(",") if args.to else None),
                                  ("quantize", args.quantize),
                                  ("calibration", args.calibration),
                                  ("signature", args.signature)) if v is not None}
    result, code = guarded(lambda: run_batch(
        args.sources, args.output, workers=args.workers, timeout=args.timeout,
        executor=args.executor, address=args.address, force=args.force,
        fail_fast=args.fail_fast, ray_cpus=args.ray_cpus, ray_memory_mb=args.ray_memory,
        **defaults), args.debug)
    if code is not None:
        return code
    print(f"tfopt batch: {len(result.records)} models, {len(result.failed)} failed, "
          f"{len(result.skipped)} up to date -> {result.out_dir}/summary.md")
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
