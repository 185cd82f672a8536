# Audit log: a run that executes jobs appends one record to results_dir/audit.jsonl
# (see docs/operations.md). A run with nothing to do is recorded by cr51-batch only (a plain snakemake
# run with nothing to do records only a broken chain: repair_chain).
# Every run prints one summary line (cr51.runsummary): plates ok, pending (why), rejected, and a
# damaged audit log (the chain is checked before each record, cr51.audit).
import os

from cr51 import audit as cr51_audit
from cr51.runsummary import summary_line
from cr51.jobs import cancel_reevaluation_timers
from cr51.settings import config_hash

AUDIT_START = PARSE_START  # before the scan admits this run's plates into the archive
SUMMARY_PRINTED = []


def print_summary(failed=False, problems=None):
    """The run's one summary line (cr51.runsummary), once per run, in the main process only, with what
    was wrong with the audit log's chain (``problems``; ``None``: a run that records nothing, which
    records a broken chain here, cr51.audit.repair_chain)."""
    if (
        not SUMMARY_PRINTED
        and not workflow.remote_exec
        and not workflow.subprocess_exec
    ):
        SUMMARY_PRINTED.append(True)
        if problems is None:
            problems = cr51_audit.repair_chain(RESULTS, AUDIT_START)
        print(summary_line(RESULTS, failed=failed, audit_problems=problems), flush=True)


def _execute_then_summary(execute):
    """workflow.execute after prepare_run (rules/common.smk: the batch index, damaged results; the
    executor says whether this is a dry run, which workflow.dryrun does not before execute), then
    the summary line for a run with nothing to do (Snakemake calls no handler then); a run with
    jobs prints it from onsuccess/onerror, a dry run prints none.
    """

    def run(*args, **kwargs):
        if not workflow.remote_exec and not workflow.subprocess_exec:
            plugin = kwargs.get("executor_plugin", args[0] if args else None)
            common = getattr(plugin, "common_settings", None)
            prepare_run(
                bool(
                    getattr(common, "dryrun_exec", False)
                    or getattr(common, "touch_exec", False)
                )
            )
        result = execute(*args, **kwargs)
        if not workflow.dryrun:
            print_summary()
        return result

    return run


workflow.execute = _execute_then_summary(workflow.execute)


def record(status, log):
    """Append this run's audit record (log: the run's log files, as the handlers get them); the
    problems found in the audit chain (cr51.audit)."""
    return cr51_audit.record_run(RESULTS, status, AUDIT_START, config_hash(config), log)


def record_results():
    """The results manifest (cr51.store.check_results), when collect wrote its files in this run."""
    outputs = final_outputs()
    if all(os.path.exists(p) and os.path.getmtime(p) >= AUDIT_START for p in outputs):
        cr51_store.write_results_manifest(RESULTS_MANIFEST, outputs, batch_outputs())


onsuccess:
    record_results()
    problems = record("ok", log)
    print_summary(problems=problems)  # one line: plates ok, pending, rejected
    cancel_reevaluation_timers()  # else the process idles ~1 s before it exits


onerror:
    problems = record("failed", log)
    print_summary(failed=True, problems=problems)
    cancel_reevaluation_timers()
