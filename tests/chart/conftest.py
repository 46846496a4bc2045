"""pytest plugin for the chart tests: prints a plain closing line `chart: N passed, N failed`."""

import sys

_counts = {"passed": 0, "failed": 0, "skipped": 0}


def pytest_runtest_logreport(report):
    if report.when == "call":
        if report.passed:
            _counts["passed"] += 1
        elif report.failed:
            _counts["failed"] += 1
        elif report.skipped:
            _counts["skipped"] += 1
    elif report.failed:  # setup or teardown error
        _counts["failed"] += 1
    elif report.skipped and report.when == "setup":
        _counts["skipped"] += 1


def pytest_unconfigure(config):
    # After pytest's own summary, so this is the last line of the run.
    line = f"chart: {_counts['passed']} passed, {_counts['failed']} failed"
    if _counts["skipped"]:
        line += f", {_counts['skipped']} skipped"
    sys.stdout.write("\n" + line + "\n")
    sys.stdout.flush()
