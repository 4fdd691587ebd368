"""The report's Markdown: the run's environment, the answer (fastcustom against each peer, its
share of the roof, its targets), then training, fresh processes, roofs and one detail table
per kernel, and how to read them."""

from fastcustom.bench.cases import (DESCRIPTIONS, FASTCUSTOM, FRESH_PROCESS_TASKS,
                                    KERNEL_ROOFS, KERNELS, PEERS, RATE_UNITS, ROOFS, SIZES)
from fastcustom.bench.results import NOISE_THRESHOLD, OVERHEAD_BOUND_SHARE, Speedup

NOISY = "⚠"          # a row or ratio whose IQR is above NOISE_THRESHOLD of its median
SEPARATE = "†"       # a ratio of two separately timed rows, not of interleaved rounds
NOT_IN_RUN = "not in this run"
# Minor page faults per call from which a row's time is mostly faulting in fresh memory
# (1,000 faults at a few µs each on a VM: milliseconds).
PAGE_FAULTS_FLAG = 1000
# How the report names the role a target or a column compares with.
ROLE_NAMES = {"notes": "the notes", "keras": "Keras", "xla": "best XLA form",
              "torch": "PyTorch", "jax": "JAX", "roof": "of the roof", FASTCUSTOM: "fastcustom"}
TASK_TITLES = {"notes' model": "training: the notes' model", "wide MLP": "training: the wide MLP",
               "softmax MLP": "training: the softmax MLP", "first call": "first call",
               "cold short fit": "cold short fits"}


# --- numbers ------------------------------------------------------------------------
def format_time(seconds):
    """A duration in 3 significant digits and a readable unit: 12.3 µs, 4.56 ms, 1.23 s."""
    for scale, unit in ((1e-6, "µs"), (1e-3, "ms"), (1.0, "s")):
        text = f"{seconds / scale:.3g}"
        if float(text) < 1000 or unit == "s":
            return f"{text} {unit}"


def _number(value):
    """Two decimals below 10, one below 100, none above (thousands separated): 0.91, 1.00,
    16.7, 1,234: a ratio of 1 reads 1.00, and digits stop where noise starts."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def format_ratio(value):
    return f"{_number(value)}×"


def format_rate(per_second, unit):
    """Work per second in GB/s, GFLOP/s or steps/s."""
    if unit == "steps":
        return f"{_number(per_second)} steps/s"
    return f"{_number(per_second / 1e9)} {RATE_UNITS[unit]}"


def format_amount(amount, unit):
    """Bytes or FLOPs in 3 significant digits: 64 MB, 256 B, 17.2 GFLOP."""
    name = "B" if unit == "B" else "FLOP"
    scale, prefix = next((s, p) for s, p in ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""))
                         if amount >= s or s == 1)
    return f"{amount / scale:.3g} {prefix}{name}"


def format_work(case):
    """What one call moves or computes: "64 MB read + 32 MB written", "17.2 GFLOP"."""
    if case.bytes_read is None:
        return format_amount(case.work, case.unit)
    read = f"{format_amount(case.bytes_read, 'B')} read"
    return read + (f" + {format_amount(case.bytes_written, 'B')} written"
                   if case.bytes_written else "")


def format_faults(per_call):
    """Minor page faults per call, flagged where they are enough to set the time."""
    if per_call is None:
        return "–"
    return f"{per_call:,.0f}" + (f" {NOISY}" if per_call >= PAGE_FAULTS_FLAG else "")


def format_noise(timing):
    """The IQR as a share of the median, flagged when above the threshold; rounds apart."""
    if timing.noise is None:
        return "–"
    return f"{timing.noise:.0%}" + (f" {NOISY}" if timing.noisy else "")


def format_speedup(speedup):
    """"16.7× (15.2–17.9)", with † when not interleaved and ⚠ when noisy; "–" for None."""
    if speedup is None:
        return "–"
    text = format_ratio(speedup.ratio)
    if speedup.low is not None:
        text += f" ({_number(speedup.low)}–{_number(speedup.high)})"
    return text + ("" if speedup.interleaved else f" {SEPARATE}") + (
        f" {NOISY}" if speedup.noisy else "")


def format_share(spread):
    """A share of the roof from a spread: "88% (84–95%)"."""
    if not spread:
        return "–"
    text = f"{spread['median']:.0%} ({spread['q1']:.0%}–{spread['q3']:.0%})"
    noisy = spread["median"] and spread["iqr"] / spread["median"] > NOISE_THRESHOLD
    return text + (f" {NOISY}" if noisy else "")


def _spread_speedup(spread, against=""):
    return Speedup(spread["median"], spread["q1"], spread["q3"], True, against)


def _target_text(reference, least, achieved):
    """"≥ 20× Keras: 8.3×, missed"."""
    name = ROLE_NAMES.get(reference, reference)
    if reference == "roof":
        wanted = f"≥ {least:.0%} {name}"
        got = "–" if achieved is None else f"{achieved:.0%}"
    else:
        wanted = f"≥ {least:.3g}× {name}"
        got = "–" if achieved is None else format_ratio(achieved)
    verdict = "not measured" if achieved is None else ("met" if achieved >= least else "**missed**")
    return f"{wanted}: {got}, {verdict}"


# --- the run ------------------------------------------------------------------------
def _fastcustom_info(machine):
    """What bench/conftest.py added to pytest-benchmark's machine_info ({} for other files)."""
    return machine.get("fastcustom", {})


def _short_commit(results, info):
    path = info.get("huber_path", {})
    commit = path.get("commit") or results.commit.get("id")
    if not commit:
        return "commit unknown"
    dirty = path.get("dirty") if "dirty" in path else results.commit.get("dirty")
    return commit[:10] + (" with uncommitted changes" if dirty else "")


def _huber_path_line(info):
    path = info.get("huber_path")
    if not path:
        return "Huber path: not recorded."
    status, record = path.get("status", {}), path.get("build_record") or {}
    if status.get("path") == "fused-op":
        built = (f"built for TensorFlow {record.get('tensorflow', '?')}" if record
                 else "no build record")
        flags, target = record.get("flags"), record.get("cpu_target")
        if flags:
            flags = f"flags `{' '.join(flags) if isinstance(flags, list) else flags}`"
        elif target:    # the build record names the CPU baseline and the kernels built
            kernels = "/".join(record.get("cpu_kernels") or []) or "?"
            flags = f"compiled for {target}, with {kernels} kernels"
        else:
            flags = "compiler flags not recorded by the build"
        where = f"`{status.get('library')}`"
        return f"Huber path: **fused op** ({where}, {built}; {flags})."
    return (f"Huber path: **XLA** (the fused op did not load: {status.get('reason', '?')}). "
            f"fastcustom imported from `{path.get('package', '?')}` (a checkout imported by "
            "`python -m pytest` has no op unless it was built in place: run `pytest bench/`).")


def _versions_line(machine, info):
    names = {"tensorflow": "TensorFlow", "tensorflow-cpu": "TensorFlow (tensorflow-cpu)",
             "keras": "Keras", "numpy": "NumPy", "torch": "PyTorch", "jax": "JAX",
             "optax": "optax", "pytest-benchmark": "pytest-benchmark"}
    versions = info.get("versions", {})
    parts = [f"{title} {versions[name]}" for name, title in names.items() if name in versions]
    missing = [title for name, title in names.items()
               if name in ("torch", "jax", "optax") and name not in versions]
    text = ", ".join(parts + [f"Python {machine.get('python_version', '?')}"])
    return text + (f"; not installed: {', '.join(missing)}" if missing and versions else "")


def _threads_line(info):
    threads = info.get("threads")
    if not threads:
        return None
    auto = lambda n: "auto" if not n else str(n)   # noqa: E731
    parts = [f"{threads.get('cpus_allowed') or threads.get('cpu_count')} CPUs usable",
             f"TensorFlow intra-op {auto(threads.get('tf_intra_op'))}, "
             f"inter-op {auto(threads.get('tf_inter_op'))}"]
    if "torch" in threads:
        parts.append(f"PyTorch {threads['torch']}")
    env = threads.get("env", {})
    parts += [f"`{k}={v}`" for k, v in env.items() if k != "FASTCUSTOM_BENCH_QUICK"]
    return "Threads: " + "; ".join(parts) + "."


def _load_line(machine, info):
    load = info.get("load_average")
    if not load:
        return None
    cores = info.get("threads", {}).get("cpu_count") or machine.get("cpu", {}).get("count") or 1
    before, after = load["before"][0], load["after"][0]
    busy = before > 0.5 * cores
    verdict = (f" **A busy machine** (other work used more than half of its {cores} cores "
               "before the run): single medians are noisy; the interleaved ratios hold better."
               if busy else " A quiet machine before the run.")
    return (f"Load average (1 min): {before:.2f} before the run, {after:.2f} after (the "
            f"run's own threads count in that one).{verdict}")


def _machine_line(datetime, machine):
    cpu = machine.get("cpu", {}).get("brand_raw", "unknown CPU")
    cores = machine.get("cpu", {}).get("count", "?")
    gpu = f" and {machine['gpu']}" if machine.get("gpu") else ""
    return f"{cpu} ({cores} cores){gpu}, {(datetime or '?')[:16].replace('T', ' ')} UTC"


def header(results):
    """The title and the environment: machine, date, commit, Huber path, versions, threads,
    load; a warning for a quick run."""
    machine = results.machine
    info = _fastcustom_info(machine)
    lines = [f"# fastcustom benchmarks: {_machine_line(results.datetime, machine)}", ""]
    if info.get("quick"):
        lines += ["**A quick run** (`FASTCUSTOM_BENCH_QUICK=1`: 3 rounds a case): a smoke "
                  "test of the suite, not a measurement.", ""]
    facts = [f"fastcustom {_short_commit(results, info)}. {_huber_path_line(info)}",
             _versions_line(machine, info) + ".", _threads_line(info), _load_line(machine, info)]
    for datetime, other in results.sources[1:]:
        facts.append(f"Also: {_machine_line(datetime, other)} (a second file of this report).")
    lines += [f"- {fact}" for fact in facts if fact]
    return lines


# --- the answer ---------------------------------------------------------------------
ANSWER_COLUMNS = ["task", *(f"vs {title}" for title in PEERS.values()), "of the roof", "targets"]


def _row(cells):
    return "| " + " | ".join(cells) + " |"


def _table_head(columns):
    return [_row(columns), _row(["---"] * len(columns))]


def _kernel_label(row):
    device = "" if row.device == "cpu" else f", {row.device}"
    return f"{row.task} ({row.size} {row.shape}{device})"


def kernel_targets(row):
    """Target texts of an interleaved kernel row."""
    texts = []
    for reference, least in row.targets.items():
        if reference == "roof":
            achieved = row.roof_share["median"] if row.roof_share else None
        else:
            achieved = row.speedups.get(reference, {}).get("median")
        texts.append(_target_text(reference, least, achieved))
    return texts


def _kernel_answer(row):
    ratios = [format_speedup(_spread_speedup(row.speedups[role])) if role in row.speedups
              else "–" for role in PEERS]
    return _row([_kernel_label(row), *ratios, format_share(row.roof_share),
                 "; ".join(kernel_targets(row)) or "–"])


def training_targets(results, row):
    """Target texts of a training row, against the ratios the headline shows."""
    texts = []
    for reference, least in row.targets.items():
        speedup = results.training_speedup(row, reference)
        texts.append(_target_text(reference, least, speedup.ratio if speedup else None))
    return texts


def _training_answer(results, task):
    title = TASK_TITLES.get(task, f"training: {task}")
    headline = results.training_headline(task)
    if headline is None:
        why = NOT_IN_RUN if not results.training_rows(task) else "no fastcustom row (role)"
        return _row([title, *(["–"] * len(PEERS)), "–", why])
    implementation, steps_per_second, speedups = headline
    ours = results.training_reference(task, FASTCUSTOM)
    interleaved = results.interleaved_row(task)
    title += f": {implementation}, {format_rate(steps_per_second, 'steps')}"
    if ours:
        targets = "; ".join(training_targets(results, ours))
    else:   # a task timed only interleaved (a stream against its own pipeline)
        targets = "; ".join(kernel_targets(interleaved)) if interleaved else ""
    targets = targets or ("–" if speedups else "no peer rows in this run")
    share = format_share(interleaved.roof_share) if interleaved else "–"
    return _row([title, *(format_speedup(speedups.get(role)) for role in PEERS), share, targets])


def fresh_speedup(row, way, reference):
    """How many times faster `way` was than the way `reference` names (a role or a way):
    the ratio of median seconds, its range from the two ways' min-max; None if absent."""
    ours = row.ways[way]["seconds"]
    others = [w for name, w in row.ways.items()
              if name != way and (w["role"] == reference or name == reference)]
    if not others:
        return None
    theirs = min(others, key=lambda w: w["seconds"]["median"])["seconds"]
    return Speedup(theirs["median"] / ours["median"], theirs["min"] / ours["max"],
                   theirs["max"] / ours["min"], False)


def fresh_targets(row, way):
    """Target texts of one way of a fresh-process row."""
    texts = []
    for reference, least in row.ways[way]["targets"].items():
        speedup = fresh_speedup(row, way, reference)
        texts.append(_target_text(reference, least, speedup.ratio if speedup else None))
    return texts


def _fresh_answer(results, task):
    title = TASK_TITLES.get(task, task)
    rows = results.fresh_rows(task)
    if not rows:
        return [_row([title, *(["–"] * len(PEERS)), "–", NOT_IN_RUN])]
    lines = []
    for row in rows:
        for way, data in row.ways.items():
            if data["role"] != FASTCUSTOM:
                continue
            ratios = [format_speedup(fresh_speedup(row, way, role)) for role in PEERS]
            label = f"{title} ({row.label}): {way}, {format_time(data['seconds']['median'])}"
            lines.append(_row([label, *ratios, "–", "; ".join(fresh_targets(row, way)) or "–"]))
    return lines


def answer(results):
    """The headline: one row per task, fastcustom's speed-up over each peer."""
    lines = ["## At a glance", "",
             "fastcustom's speed-up over each alternative: its time over fastcustom's, above "
             f"1× fastcustom is faster; the spread in brackets, {SEPARATE} timed apart, "
             f"{NOISY} noisy.", ""]
    lines += _table_head(ANSWER_COLUMNS)
    kernel_rows = [r for r in results.interleaved if r.task in KERNELS and r.size == "large"]
    for row in sorted(kernel_rows, key=lambda r: (KERNELS.index(r.task), r.device != "cpu")):
        lines.append(_kernel_answer(row))
    missing_kernels = [k for k in KERNELS if k != "Huber gradient"
                       and not any(r.task == k for r in kernel_rows)]
    for kernel in missing_kernels:
        lines.append(_row([kernel, *(["–"] * len(PEERS)), "–",
                           "no interleaved row " + ("(detail below)" if any(
                               c.kernel == kernel for c in results.cases) else NOT_IN_RUN)]))
    lines += [_training_answer(results, task) for task in results.training_tasks()]
    for task in FRESH_PROCESS_TASKS:
        lines += _fresh_answer(results, task)
    lines += ["", "The alternatives: the notes' code, Keras's built-in (for training: "
              "`model.fit` with the notes' loss and metric), the fastest XLA formulation, "
              "PyTorch and JAX. Kernels at the large size, training in steps/s, fresh "
              "processes in seconds. Brackets: the spread (IQR of the interleaved rounds; "
              f"{SEPARATE}: two separately timed rows, from their IQRs or min-max); {NOISY}: "
              f"spread above {NOISE_THRESHOLD:.0%} of the value. *Of the roof*: fastcustom's "
              "throughput over the machine's, both timed in the same loop. Every size is under "
              "\"By size\"; the rows behind each number further down."]
    missing = _missing_peers(results)
    if missing:
        lines += ["", "Peers that did not run: " + "; ".join(missing) + "."]
    return lines


def _missing_peers(results):
    reasons = {}
    for row in results.interleaved:
        for role, why in row.missing.items():
            reasons.setdefault(PEERS[role], why.splitlines()[0] if why else "skipped")
    return [f"{peer} ({why})" for peer, why in reasons.items()]


def by_size(results):
    """Every interleaved kernel row: fastcustom's speed-ups at each size."""
    rows = sorted((r for r in results.interleaved if r.task in KERNELS),
                  key=lambda r: (KERNELS.index(r.task), r.device != "cpu", r.device,
                                 SIZES.index(r.size)))
    if not rows:
        return []
    lines = ["## By size", "", "The same interleaved speed-ups at every size. Small is the "
             "notes' model (batch 32): per-call overhead (Python, dispatch, launch) decides "
             "it; large is bound by memory or arithmetic.", ""]
    lines += _table_head(["kernel", "size", "fastcustom per call",
                          *(f"vs {t}" for t in PEERS.values()), "of the roof"])
    for row in rows:
        ours = row.seconds.get(row.fastcustom, {})
        lines.append(_row([row.task if row.device == "cpu" else f"{row.task} ({row.device})",
                           f"{row.size} {row.shape}",
                           format_time(ours["median"]) if ours else "–",
                           *(format_speedup(_spread_speedup(row.speedups[r]))
                             if r in row.speedups else "–" for r in PEERS),
                           format_share(row.roof_share)]))
    return lines


# --- training -------------------------------------------------------------------------
def training(results):
    """One table per training task: every row's steps/s, spread, steps per CPU-second,
    targets; then the loss parity and the step anatomy where the run has them."""
    tasks = results.training_tasks()
    lines = ["## Training", "",
             "Steps per second: the steps of a round over the median round (IQR: from the "
             "rounds' quartiles). Steps per CPU-second: over the process time of all its "
             "threads, the steadier number on a shared machine (it also counts threads that "
             "spin). Role: the row the headline compares (the best row of each peer).", ""]
    for task in tasks:
        rows = sorted(results.training_rows(task), key=lambda r: -r.steps_per_second)
        lines += [f"### {TASK_TITLES.get(task, task)}", ""]
        if not rows:
            only_interleaved = results.interleaved_row(task) is not None
            lines += ["No steps/s rows in this run; its interleaved row is in \"At a glance\"."
                      if only_interleaved else "Not in this run.", ""]
            continue
        lines += _table_head(["implementation", "role", "steps/s", "IQR", "rounds",
                              "steps per CPU-s", "targets"])
        for row in rows:
            low, high = row.steps_per_second_iqr
            noise = f"{_number(low)}–{_number(high)}" + (f" {NOISY}" if row.noisy else "")
            cpu = _number(row.steps_per_cpu_second) if row.steps_per_cpu_second else "–"
            lines.append(_row([row.implementation, ROLE_NAMES.get(row.role, "") if row.role else "",
                               _number(row.steps_per_second), noise, str(row.rounds), cpu,
                               "; ".join(training_targets(results, row)) or ""]))
        lines.append("")
    lines += _training_extras(results)
    return lines


def _training_extras(results):
    """The loss parity (test_speedups) and the step anatomy, from their extra_info."""
    lines = []
    for other in results.others:
        losses = other.info.get("final_loss")
        if losses:
            lines += ["Final training loss, same weights and epochs: " + ", ".join(
                f"{name} {value:.5f}" for name, value in losses.items()) + ".", ""]
        anatomy = other.info.get("anatomy")
        if anatomy:
            base = 1e6 / next(iter(anatomy.values()))
            lines += ["fastcustom.fit with one part changed (interleaved rounds):", ""]
            lines += _table_head(["variant", "steps/s", "µs a step", "vs the first"])
            lines += [_row([name, _number(value), f"{1e6 / value:.1f}",
                            f"{1e6 / value - base:+.1f}"]) for name, value in anatomy.items()]
            lines.append("")
    costs = [other.info["cost"] for other in results.others if other.info.get("cost")]
    if costs:
        lines += ["What a feature costs in steady state: the fit's speed with it over its speed "
                  "without, interleaved rounds (IQR in brackets):", ""]
        lines += _table_head(["with", "against", "speed", "rounds", "target"])
        for cost in costs:
            ratio = cost["ratio"]
            met = "met" if ratio["median"] >= cost["target"] else "missed"
            lines.append(_row([cost["with"], cost["without"],
                               f"{format_ratio(ratio['median'])} ({_number(ratio['q1'])}–"
                               f"{_number(ratio['q3'])})", str(ratio["rounds"]),
                               f"≥ {format_ratio(cost['target'])}: {met}"]))
        lines.append("")
    return lines


def fresh_processes(results):
    """One table per fresh-process task (or "not in this run")."""
    lines = ["## Fresh processes", "",
             "Seconds from a fresh interpreter: the median over its processes, min–max, and "
             "how many processes ran each way (the ways alternated).", ""]
    tasks = list(dict.fromkeys([*FRESH_PROCESS_TASKS, *(r.task for r in results.fresh)]))
    for task in tasks:
        rows = results.fresh_rows(task)
        lines += [f"### {TASK_TITLES.get(task, task)}", ""]
        if not rows:
            lines += ["Not in this run.", ""]
            continue
        for row in rows:
            # "seconds" holds the measured amount: seconds, or what `unit` names (peak MB)
            unit = row.info.get("unit", "seconds")
            digits = 0 if unit == "MB" else 2
            lines += [f"{row.label}:", ""] if row.label else []
            lines += _table_head(["way", "role", unit, "min–max", "processes", "targets"])
            for way, data in row.ways.items():
                s = data["seconds"]
                lines.append(_row([way, ROLE_NAMES.get(data["role"], "") if data["role"] else "",
                                   f"{s['median']:.{digits}f}",
                                   f"{s['min']:.{digits}f}–{s['max']:.{digits}f}",
                                   str(s["rounds"]), "; ".join(fresh_targets(row, way)) or ""]))
            lines.append("")
    return lines


# --- roofs and kernels ------------------------------------------------------------------
def roofs(results):
    lines = ["## Roofs", "",
             "Measured in this run: each roof's own rounds, and the interleaved loops that "
             "timed it beside the kernels. A roof is its fastest round of all of them (bold: "
             "the one the kernels are judged against); its own median and IQR show how "
             "steady it was.", ""]
    if not results.ceiling_cases:
        return lines + ["No roof was measured in this run.", ""]
    lines += _table_head(["roof", "device", "implementation", "per call", "median", "IQR",
                          "rounds", "best round (of all)", "best rate"])
    for case in sorted(results.ceiling_cases, key=lambda c: (list(ROOFS).index(c.roof)
                                                             if c.roof in ROOFS else 9,
                                                             c.device, c.implementation)):
        best = results.ceiling(case.roof, case.device) is case
        rate = format_rate(case.best_throughput, case.unit)
        rounds = case.measured_rounds or case.timing.rounds
        lines.append(_row([ROOFS.get(case.roof, (case.kernel,))[0], case.device,
                           case.implementation, format_work(case), format_time(case.median),
                           format_noise(case.timing), str(case.timing.rounds),
                           f"{format_time(case.best_seconds or case.timing.best)} ({rounds})",
                           f"**{rate}**" if best else rate]))
    return lines + [""]


def kernel_table(results, kernel):
    """Every implementation of `kernel` at every size (and device)."""
    roof_kind = KERNEL_ROOFS.get(kernel)
    lines = [f"## {kernel}", "",
             f"Judged against the {ROOFS[roof_kind][0]} roof." if roof_kind else "", ""]
    lines += _table_head(["size", "implementation", "median", "IQR", "rounds", "vs notes",
                          "per call", "rate", "of roof", "page faults"])
    previous = None
    for case in (c for c in results.cases if c.kernel == kernel):
        where = (case.size, case.shape, case.device)
        label = "" if where == previous else (
            f"{case.size} {case.shape}" + ("" if case.device == "cpu" else f" ({case.device})"))
        previous = where
        base = results.baseline(case)
        speedup = format_ratio(base.median / case.median) if base else "–"
        share = results.share_of_roof(case)
        if share is not None and share < OVERHEAD_BOUND_SHARE:
            rate, of_roof = "overhead-bound", f"< {OVERHEAD_BOUND_SHARE:.0%}"
        else:
            rate = format_rate(case.throughput, case.unit)
            of_roof = "–" if share is None else f"{share:.0%}"
        name = f"**{case.implementation}**" if case.implementation == FASTCUSTOM else \
            case.implementation
        lines.append(_row([label, name, format_time(case.median), format_noise(case.timing),
                           str(case.timing.rounds), speedup, format_work(case), rate, of_roof,
                           format_faults(case.page_faults)]))
    return lines + [""]


def others(results):
    rows = [o for o in results.others if not ({"final_loss", "anatomy", "ratios"} & set(o.info))]
    if not rows:
        return []
    lines = ["## Other benchmarks", "", "Rows without the report's schema (other suites run "
             "in the same command), with pytest-benchmark's statistics.", ""]
    lines += _table_head(["benchmark", "median", "IQR", "rounds"])
    lines += [_row([o.name, format_time(o.timing.median), format_noise(o.timing),
                    str(o.timing.rounds)]) for o in rows]
    return lines + [""]


def how_to_read(results):
    """Definitions, and what is known to move some rows."""
    gpu = any(c.device not in ("cpu",) for c in results.cases)
    lines = ["## How to read this report", "",
             "- **Speed-up**: the alternative's time over fastcustom's, so 2× means fastcustom "
             "takes half the time. A target of 0.8× means at most 1.25× the other's time.",
             "- **Interleaved**: fastcustom, its peers and the roof are called in turn in one "
             "loop (a shuffled order each round), and each round gives one ratio; the median "
             "and IQR of those ratios are shown. A slow spell of a shared machine slows all of "
             "them alike, so these ratios hold where single medians do not.",
             f"- **Noise**: IQR / median of a row's rounds; {NOISY} above "
             f"{NOISE_THRESHOLD:.0%}. Rows with few rounds (first call, multi-worker) show "
             "min–max.",
             "- **Work**: every implementation of a kernel is given the same work, the "
             "task's: Huber forward and the metric read both inputs, forward + gradient also "
             "writes the gradient (an implementation that makes two passes moves more and is "
             "slower for it); MyDense counts 2·B·I·O FLOP forward, 6·B·I·O with gradients.",
             "- **Roofs**: forward and the metric against a read of both inputs on all cores "
             "(NumPy `max`, a thread per core), forward + gradient against `np.add(a, b, "
             "out=c)` on all cores (the same reads and writes), MyDense against the fastest "
             "plain matmul measured. Each roof is its best round. Below "
             f"{OVERHEAD_BOUND_SHARE:.0%} of the roof a row is *overhead-bound*: its time per "
             "call is the number to read. A share above 100% at medium size means the inputs "
             "sat in cache; at the large size, a noisy roof.",
             f"- **Page faults** per call (minor, all threads): {NOISY} from "
             f"{PAGE_FAULTS_FLAG:,}, where the time goes to faulting in fresh memory (a 32 MB "
             "output is 8,192 pages) rather than to the kernel: its allocator handed the last "
             "call's buffer back to the OS. Two known cases at the large size: forward + "
             "gradient in a `tf.function` in some processes (TensorFlow's default CPU "
             "allocator is glibc's malloc; `TF_CPU_ALLOCATOR_USE_BFC=true` avoids it; "
             "bench/RESULTS.md), and JAX's forward + gradient (about 16,600 a call, its "
             "gradient and a temporary, with or without TensorFlow in the process), which is "
             "why JAX leads at medium size and trails at the large one.",
             "- Ratios, not absolute times, carry from one machine to another; compare runs "
             "only on a quiet machine."]
    present = [name for name in DESCRIPTIONS if any(c.implementation == name
                                                    for c in results.cases)]
    if present:
        lines += ["- **Implementations** in the kernel tables:"]
        lines += [f"  - *{name}*: {DESCRIPTIONS[name]}" for name in present]
    if gpu:
        lines.append("- GPU rows (the device named) from bench/gpu/harness.py are timed with "
                     "CUDA events and judged against a device-to-device copy (read + write).")
    return lines + [""]


def markdown(results):
    """The whole report as Markdown text: the answer first, then the detail."""
    out = header(results) + [""] + answer(results) + [""] + by_size(results)
    out += [""] + training(results) + fresh_processes(results) + roofs(results)
    for kernel in KERNELS:
        if any(c.kernel == kernel for c in results.cases):
            out += kernel_table(results, kernel)
    out += others(results) + how_to_read(results)
    text = "\n".join(out)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip() + "\n"
