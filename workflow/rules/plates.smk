# One job per batch of plates: raw files -> wells -> lysis -> QC -> fits -> potency -> report sections.
# Plates are batched (not one job per plate) because every job pays ~1.5 s of Python start-up;
# a plate's batch depends only on its name, so a new plate reruns only its batch.
# One input (the batch's manifest: its plates' archived files are named, with their digests, in the
# parameters) and one output file (rendered rows, versions, products, pages owned): Snakemake stats
# and checksums a job's inputs once per output, which for 5,000 archived files cost seconds a run.


rule process_batch:
    input:
        plates=batch_inputs,
    output:
        batch=f"{RESULTS}/batches/{{batch}}.jsonl",
    log:
        f"{RESULTS}/logs/batches/{{batch}}.log",
    conda:
        "../envs/cr51.yaml"
    resources:
        mem_mb=1000,
        runtime=30,
    params:
        plates=batch_plates,
        settings=batch_settings(),
        max_plate_seconds=SETTINGS.max_plate_seconds,
        software=SOFTWARE_DIGEST,
        cache=lambda wildcards: f"{RESULTS}/cache/{wildcards.batch}",
        results=lambda wildcards, output: str(Path(output.batch).parent.parent),
    script:
        "../scripts/process_batch.py"
