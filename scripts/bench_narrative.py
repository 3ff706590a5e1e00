#!/usr/bin/env python3
"""What the narrative and the second FHIR version cost the mapping of a 10,000-instance study, in-process.

A CT study of 4 series of 2,500 instances as DICOM JSON rows (the attributes a QIDO read gives), mapped the way
a cold read maps it. CPU time, each the median of ``--rounds`` runs taken in turn:

- rows -> facts (``study_facts``), the reading every version shares;
- facts -> R5 dict with and without its narrative (the narrative swapped for a constant one), and the ratio;
- facts -> R4 dict;
- a cold read's whole in-process work, rows to the cache entry's bytes: now (facts, R5 and R4 with the instance
  elements shared, two bodies) against R5 alone from the same facts; and, with ``--before DIR`` (a checkout of
  the code before issue 14, e.g. ``git worktree add /tmp/before <commit>``), against that code's rows -> R5 ->
  bytes, run in a subprocess on the same rows.

    .venv/bin/python scripts/bench_narrative.py [--instances 10000] [--rounds 15] [--before DIR]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __name__ == "__main__" and "--as-before" not in sys.argv:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.cache.freshness import content_version
from bridge.cache.service import make_entry
from bridge.mapping import tags
from bridge.mapping.imagingstudy import MappingOptions, SeriesRows, StudyRows

CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY = "1.2.826.0.1.3680043.8.498.99"


def element(vr: str, value: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]}


def rows(instances: int, series: int = 4) -> StudyRows:
    owner = {tags.PATIENT_ID: element("LO", "PAT-BENCH")}
    study = {
        tags.STUDY_INSTANCE_UID: element("UI", STUDY), tags.STUDY_DATE: element("DA", "20240305"),
        tags.STUDY_TIME: element("TM", "143000"), tags.PATIENT_NAME: element("PN", {"Alphabetic": "Doe^Jane"}),
        tags.STUDY_DESCRIPTION: element("LO", "CT <thorax> & abdomen"), tags.MODALITIES_IN_STUDY: element("CS", "CT"),
        tags.NUMBER_OF_STUDY_RELATED_SERIES: element("IS", series),
        tags.NUMBER_OF_STUDY_RELATED_INSTANCES: element("IS", instances), **owner,
    }  # fmt: skip
    listed = []
    for s in range(series):
        series_uid = f"{STUDY}.{s + 1}"
        row = {
            tags.SERIES_INSTANCE_UID: element("UI", series_uid), tags.SERIES_NUMBER: element("IS", s + 1),
            tags.MODALITY: element("CS", "CT"), tags.BODY_PART_EXAMINED: element("CS", "CHEST"), **owner,
        }  # fmt: skip
        instance_rows = [
            {tags.SOP_INSTANCE_UID: element("UI", f"{series_uid}.{i + 1}"), tags.SOP_CLASS_UID: element("UI", CT),
             tags.INSTANCE_NUMBER: element("IS", i + 1), tags.SERIES_INSTANCE_UID: element("UI", series_uid),
             tags.STUDY_INSTANCE_UID: element("UI", STUDY), **owner}
            for i in range(instances // series)
        ]  # fmt: skip
        listed.append(SeriesRows(row, instance_rows))
    return StudyRows(study, listed)


def median_ms(work: Callable[[], object], rounds: int) -> float:
    """The median CPU time of ``work`` (process time: the machine is shared, and waiting for a core is not work)."""
    return medians({"work": work}, rounds)["work"]


def medians(works: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Each work's median CPU time in ms, the works taken in turn within each round, so that all of them see the
    machine as it is in that round."""
    times: dict[str, list[float]] = {name: [] for name in works}
    for _ in range(rounds):
        for name, work in works.items():
            gc.collect()
            started = time.process_time()
            work()
            times[name].append(time.process_time() - started)
    return {name: statistics.median(taken) * 1000 for name, taken in times.items()}


def as_before(instances: int, rounds: int) -> None:
    """Run inside a checkout of the earlier code: its rows -> R5 -> entry, the median in ms on stdout."""
    from bridge.mapping.imagingstudy import imaging_study

    study = rows(instances)

    def entry() -> object:
        resource = imaging_study(study, MappingOptions()).resource
        return make_entry(resource, content_version(resource), "", 0.0, 0.0)

    print(median_ms(entry, rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--before", type=Path, help="a checkout of the code before issue 14")
    parser.add_argument("--as-before", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.as_before:
        as_before(args.instances, args.rounds)
        return

    from bridge.fhirversion import FhirVersion
    from bridge.mapping.imagingstudy import study_facts
    from bridge.render import both, narrative, r4, r5

    study, options = rows(args.instances), MappingOptions()
    facts = study_facts(study, options)
    constant = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'}

    def without_narrative(work: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            r5.narrative = lambda facts: constant  # type: ignore[assignment]
            try:
                return work()
            finally:
                r5.narrative = narrative.narrative

        return run

    def r5_entry() -> object:
        resource = r5.imaging_study(study_facts(study, options))
        return make_entry(resource, content_version(resource), "", 0.0, 0.0)

    def entry_now() -> Any:
        rendered = both(study_facts(study, options))
        resource = rendered[FhirVersion.R5]
        return make_entry(resource, content_version(resource), "", 0.0, 0.0, r4=rendered[FhirVersion.R4])

    rounds = args.rounds
    figures = medians({
        "rows -> facts": lambda: study_facts(study, options),
        "facts -> R5, constant narrative": without_narrative(lambda: r5.imaging_study(facts)),
        "facts -> R5, its narrative": lambda: r5.imaging_study(facts),
        "facts -> R4": lambda: r4.imaging_study(facts),
        "cold work, R5 alone": r5_entry,
        "cold work, R5 + R4": entry_now,
    }, rounds)  # fmt: skip
    figures["one narrative"] = median_ms(lambda: [narrative.narrative(facts) for _ in range(1000)], rounds) / 1000
    if args.before:
        script = Path(__file__).resolve()
        answer = subprocess.run(
            [sys.executable, str(script), "--as-before", "--instances", str(args.instances), "--rounds", str(rounds)],
            cwd=args.before, env={"PYTHONPATH": str(args.before)}, capture_output=True, text=True, check=True,
        )  # fmt: skip
        figures["cold work, code before issue 14"] = float(answer.stdout)
    for name, ms in figures.items():
        print(f"{name:35} {ms:9.3f} ms")
    print(f"narrative: {figures['facts -> R5, its narrative'] / figures['facts -> R5, constant narrative']:.3f}x")
    now = figures["cold work, R5 + R4"]
    print(f"cold work, R5 + R4 / R5 alone: {now / figures['cold work, R5 alone']:.3f}x")
    if args.before:
        before = figures["cold work, code before issue 14"]
        print(f"cold work, R5 + R4 / code before issue 14: {now / before:.3f}x (+{now - before:.1f} ms)")
    entry = entry_now()
    print(f"bytes: R5 {len(entry.body)}, R4 {len(entry.body_r4)}")


if __name__ == "__main__":
    main()
