# Aggregation: cheap, so on a cluster it runs on the submitting host.
localrules:
    collect,
    combine,


rule collect:
    input:
        **{name: batch_tables(name) for name in TABLES},
        raw=SCAN.files,
    output:
        **{
            name: report(
                f"{RESULTS}/{name}.csv",
                category="Tables",
                caption=f"../report/{name}.rst",
            )
            for name in TABLES
        },
    log:
        f"{RESULTS}/logs/collect.log",
    conda:
        "../envs/cr51.yaml"
    resources:
        mem_mb=2000,
        runtime=15,
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
        combined=report(
            f"{RESULTS}/potency_combined.csv",
            category="Tables",
            caption="../report/potency_combined.rst",
        ),
        inputs=report(
            f"{RESULTS}/potency_combined_inputs.csv",
            category="Tables",
            caption="../report/potency_combined_inputs.rst",
        ),
    log:
        f"{RESULTS}/logs/combine.log",
    conda:
        "../envs/cr51.yaml"
    resources:
        mem_mb=1000,
        runtime=15,
    params:
        settings=batch_settings(),
    script:
        "../scripts/combine.py"
