rule collect:
    input:
        **{name: batch_tables(name) for name in TABLES},
        raw=SCAN.files,
    output:
        **{name: f"{RESULTS}/{name}.csv" for name in TABLES},
    log:
        f"{RESULTS}/logs/collect.log",
    conda:
        "../envs/cr51.yaml"
    params:
        others=unassigned_files(),
        raw_dir=config["raw_dir"],
        max_export_bytes=config["max_export_bytes"],
    script:
        "../scripts/collect.py"


rule combine:
    input:
        potency=f"{RESULTS}/potency.csv",
        qc=f"{RESULTS}/qc.csv",
    output:
        combined=f"{RESULTS}/potency_combined.csv",
        inputs=f"{RESULTS}/potency_combined_inputs.csv",
    log:
        f"{RESULTS}/logs/combine.log",
    conda:
        "../envs/cr51.yaml"
    params:
        settings=fit_settings(),
    script:
        "../scripts/combine.py"
