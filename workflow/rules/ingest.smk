rule ingest_batch:
    input:
        unpack(batch_files),
    output:
        files=f"{RESULTS}/batches/{{batch}}/files.csv",
        wells=f"{RESULTS}/batches/{{batch}}/wells.csv",
        lysis=f"{RESULTS}/batches/{{batch}}/lysis.csv",
        qc=f"{RESULTS}/batches/{{batch}}/qc.csv",
    log:
        f"{RESULTS}/logs/ingest/{{batch}}.log",
    conda:
        "../envs/cr51.yaml"
    params:
        plates=batch_plates,
        settings=ingest_settings(),
    script:
        "../scripts/ingest_batch.py"
