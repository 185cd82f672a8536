# Audit log: a run that executes jobs appends one record to results_dir/audit.jsonl
# (see docs/operations.md). A run with nothing to do is recorded by cr51-batch only.
import time

from cr51 import audit as cr51_audit
from cr51.jobs import cancel_reevaluation_timers
from cr51.settings import config_hash

AUDIT_START = time.time()


onsuccess:
    cr51_audit.record_run(RESULTS, "ok", AUDIT_START, config_hash(config), log)
    cancel_reevaluation_timers()  # else the process idles ~1 s before it exits


onerror:
    cr51_audit.record_run(RESULTS, "failed", AUDIT_START, config_hash(config), log)
    cancel_reevaluation_timers()
