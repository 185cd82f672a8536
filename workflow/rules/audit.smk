# Audit log: a run that executes jobs appends one record to results_dir/audit.jsonl
# (see docs/operations.md). A run with nothing to do is recorded by cr51-batch only.
# Every run prints one summary line (cr51.runsummary): plates ok, pending (why), rejected.
import time

from cr51 import audit as cr51_audit
from cr51.runsummary import summary_line
from cr51.jobs import cancel_reevaluation_timers
from cr51.settings import config_hash

AUDIT_START = time.time()
SUMMARY_PRINTED = []


def print_summary(failed=False):
    """The run's one summary line (cr51.runsummary), once per run, in the main process only."""
    if (
        not SUMMARY_PRINTED
        and not workflow.remote_exec
        and not workflow.subprocess_exec
    ):
        SUMMARY_PRINTED.append(True)
        print(summary_line(RESULTS, failed=failed), flush=True)


def _execute_then_summary(execute):
    """workflow.execute, then the summary line for a run with nothing to do (Snakemake calls no
    handler then); a run with jobs prints it from onsuccess/onerror, a dry run prints none.
    """

    def run(*args, **kwargs):
        result = execute(*args, **kwargs)
        if not workflow.dryrun:
            print_summary()
        return result

    return run


workflow.execute = _execute_then_summary(workflow.execute)


onsuccess:
    cr51_audit.record_run(RESULTS, "ok", AUDIT_START, config_hash(config), log)
    print_summary()  # every run ends with one line: plates ok, pending, rejected
    cancel_reevaluation_timers()  # else the process idles ~1 s before it exits


onerror:
    cr51_audit.record_run(RESULTS, "failed", AUDIT_START, config_hash(config), log)
    print_summary(failed=True)
    cancel_reevaluation_timers()
