# One job per batch of plates: raw files -> wells -> lysis -> QC -> fits -> potency -> report sections.
# Plates are batched (not one job per plate) because every job pays ~1.5 s of Python start-up;
# a plate's batch depends only on its name, so a new plate reruns only its batch.
# One output file (tables, rendered rows, sections): Snakemake checksums every input once per output.


rule process_batch:
    input:
        unpack(batch_files),
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
        software=SOFTWARE_DIGEST,
        cache=lambda wildcards: f"{RESULTS}/cache/{wildcards.batch}",
        results=lambda wildcards, output: str(Path(output.batch).parent.parent),
    script:
        "../scripts/process_batch.py"
