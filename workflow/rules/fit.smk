rule fit_batch:
    input:
        wells=f"{RESULTS}/batches/{{batch}}/wells.csv",
        qc=f"{RESULTS}/batches/{{batch}}/qc.csv",
    output:
        fits=f"{RESULTS}/batches/{{batch}}/fits.csv",
        potency=f"{RESULTS}/batches/{{batch}}/potency.csv",
        lots_differ=f"{RESULTS}/batches/{{batch}}/lots_differ.csv",
    log:
        f"{RESULTS}/logs/fit/{{batch}}.log",
    conda:
        "../envs/cr51.yaml"
    params:
        settings=fit_settings(),
    script:
        "../scripts/fit_batch.py"
