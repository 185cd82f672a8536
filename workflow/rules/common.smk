import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

from snakemake.utils import validate

# The domain logic is the importable package workflow/cr51 (also pip-installable).
sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))
from cr51 import archive as cr51_archive
from cr51 import store as cr51_store
from cr51.digests import software_digest
from cr51.jobs import pin_threads
from cr51.schema import CAMPAIGN_TABLES as _CAMPAIGN, PLATE_TABLES
from cr51.settings import Settings

# One BLAS/OpenMP thread in every job (bit-identical numbers whatever the load): set here, at parse
# time, so that every job process inherits it before it imports numpy (cr51.jobs).
pin_threads()

#: The typed settings, built once: validated with every problem listed in words (ConfigError), the
#: defaults filled from the schema. The analysis part is what the jobs get.
SETTINGS = Settings.from_config(config)


# Snakemake's own validation fills the same defaults into `config` (recorded in the report and audit).
validate(config, "../schemas/config.schema.yaml")

RESULTS = SETTINGS.results_dir.rstrip("/")
TABLES = list(PLATE_TABLES)
CAMPAIGN_TABLES = [t.name for t in _CAMPAIGN]

# Which files form which plate, in which batch: decided at parse time (standard library only) by a
# scan of the drop folder, whose plates are then admitted into the archive under results_dir: plates
# are computed from the archive, and stay when their files leave the drop folder (cr51.archive).
# An inbox that lost most accepted plates (an unmounted share) stops here, before anything is written.
PARSE_START = time.time()  # the run's start for its audit record (rules/audit.smk)
SCAN = cr51_archive.scan_inbox(
    SETTINGS.raw_dir,
    RESULTS,
    layouts_dir=SETTINGS.analysis.layouts_dir,
    batch_count=SETTINGS.batch_count,
    settle_seconds=SETTINGS.settle_seconds,
    max_bytes=SETTINGS.analysis.max_export_bytes,
    max_layout_bytes=SETTINGS.analysis.max_layout_bytes,
    min_share=SETTINGS.inbox_min_share,
    confirm_cleanout=SETTINGS.confirm_cleanout,
    stale_after_hours=SETTINGS.stale_after_hours,
)
BATCHES = SCAN.batches()
PLATES_BY_BATCH = SCAN.by_batch()  # SCAN.plates_in of every batch, sorted once


wildcard_constraints:
    batch=r"b\d{3}",


def batch_inputs(wildcards):
    """The one input of a batch job: its manifest (cr51.store.batch_inputs), rewritten only when the
    batch's plates, digests, settings or software change. The plates' files themselves are read from
    the archive (content-addressed, never changed in place); their digests are in the parameters.
    """
    return f"{RESULTS}/batches/{wildcards.batch}.inputs.json"


def batch_plates(wildcards):
    """The plates of one batch, for the batch script (names are data, never shell).

    Each carries the digest of its files' contents: new bytes change this parameter and so rerun
    the batch even when the files' modification times did not move (cp -p, rsync -t).
    """
    return [
        {
            "name": p.name,
            "layout": p.layout,
            "export": p.export,
            "includes": p.includes,
            "digest": p.digest,
            "version": p.version,
            "shas": p.shas,
            "notes": p.notes,
        }
        for p in PLATES_BY_BATCH.get(wildcards.batch, [])
    ]


#: sha256 of the software (the cr51 package's sources, Python and library versions): Snakemake's
#: rerun triggers see a rule's script, not the modules it imports nor the installed libraries, so
#: this digest is a parameter of the batch jobs (after `pip install -U lmfit` every batch reruns).
SOFTWARE_DIGEST = software_digest()


def batch_settings():
    """The configuration a batch job reads (a change reruns every batch)."""
    return SETTINGS.analysis.to_dict()


#: The batch index (cr51.store.batch_index), an input of collect: rewritten (prepare_run, before the
#: DAG is built) when any batch's plates, digests, settings or software change, so collect reruns and
#: regenerates every missing batch output (after a failed batch job Snakemake alone would say
#: "Nothing to be done").
BATCH_INDEX = f"{RESULTS}/batches/index.json"


def write_batch_index(repair=None):
    """Write the batch index and each batch's input manifest if they changed; ``repair`` (a mark of
    damaged results to rewrite) makes the index's content new, so collect reruns; the last mark is
    kept, so the index is stable otherwise. The garbage collector is paused meanwhile (the parameters
    of 10,000 plates, cr51.archive.paused_gc).
    """
    with cr51_archive.paused_gc():
        params = {
            b: {
                "plates": batch_plates(SimpleNamespace(batch=b)),
                "settings": batch_settings(),
                "software": SOFTWARE_DIGEST,
            }
            for b in BATCHES
        }
        if repair is None:
            repair = cr51_store.index_repair(BATCH_INDEX)
        for b, p in params.items():
            manifest = batch_inputs(SimpleNamespace(batch=b))
            cr51_store.write_if_changed(manifest, cr51_store.batch_inputs(b, p))
        cr51_store.write_if_changed(BATCH_INDEX, cr51_store.batch_index(params, repair))


# Written before Snakemake builds its DAG by prepare_run (rules/audit.smk), not for a dry run;
# here only when missing (a dry run on a new results folder: the jobs' inputs must exist).
if (
    not workflow.subprocess_exec
    and not workflow.remote_exec
    and not all(
        Path(p).exists()
        for p in [BATCH_INDEX]
        + [batch_inputs(SimpleNamespace(batch=b)) for b in BATCHES]
    )
):
    write_batch_index()


def batch_outputs():
    """The output of every batch that holds plates."""
    return expand(f"{RESULTS}/batches/{{batch}}.jsonl", batch=BATCHES)


def report_templates():
    """Layout templates the accepted plates include (their sha256 goes into the report)."""
    return sorted({i for p in SCAN.plates.values() for i in p.includes})


def unassigned_files():
    """Drop-folder files that are in no plate (pending, refused at scan, templates)."""
    return [asdict(f) for f in SCAN.others]


def final_outputs():
    """The run's products: every file collect writes (the result tables, the report, the forest plot;
    a deleted one is written again)."""
    return [f"{RESULTS}/{name}.csv" for name in TABLES + CAMPAIGN_TABLES] + [
        f"{RESULTS}/potency_combined.csv",
        f"{RESULTS}/potency_combined_inputs.csv",
        f"{RESULTS}/plate_history.csv",
        f"{RESULTS}/trends.csv",
        f"{RESULTS}/report.html",
        f"{RESULTS}/figures/forest.svg",
    ]


#: What a successful run's tables and batch files were (cr51.store.check_results), written by
#: rules/audit.smk after a run in which collect ran. A result file that is missing or no longer
#: matches, or a batch file found damaged (then removed), makes the run rewrite them: the batch
#: index gets a new repair mark, so collect reruns (and with it the batch jobs whose output is
#: missing). A touched index is not enough: Snakemake also compares an input's recorded checksum.
RESULTS_MANIFEST = f"{RESULTS}/.results-manifest.json"


def prepare_run(dryrun):
    """Before Snakemake builds the DAG of a run (rules/audit.smk): the batch index brought up to
    date, and damaged or missing results marked for rewriting. A dry run changes nothing (it only
    says what a run would rewrite)."""
    tables, batches = cr51_store.check_results(
        RESULTS_MANIFEST, final_outputs(), batch_outputs()
    )
    names = ", ".join(Path(p).name for p in tables + batches)
    if dryrun:
        if names:
            print(
                f"cr51: a run would rewrite damaged results: {names}", file=sys.stderr
            )
        return
    write_batch_index()
    for path in batches:
        Path(path).unlink(missing_ok=True)
    if names:
        write_batch_index({"at": time.time(), "files": names})
        print(
            f"cr51: rewriting damaged or unrecorded results: {names}", file=sys.stderr
        )
