# The run's products from the batch outputs, in one job (each job costs ~1 s of start-up):
# the result tables, the combination of plates per lot (Ph. Eur. 5.3), and the report a lab
# reads (report.html, the index: self-contained, + the forest SVG; each plate's page and curves
# figure are written by its batch job, results/plates/ and results/figures/plates/; collect removes
# the ones no plate owns any more). Cheap: on a cluster it runs on the submitting host.
# Its raw inputs are the files in no plate (their rows in files.csv); a plate's own files reach it
# through its batch. Snakemake checksums every input once per output after a job, so listing all
# raw files here cost 26,000 hashes (1.2 s) per run at 1,000 plates.
localrules:
    collect,


rule collect:
    input:
        batches=batch_outputs(),
        index=BATCH_INDEX,
        templates=report_templates(),
        raw=SCAN.unassigned_files(),
    output:
        **{
            name: report(
                f"{RESULTS}/{name}.csv",
                category="Tables",
                caption=f"../report/{name}.rst",
            )
            for name in TABLES
        },
        **{
            name: report(
                f"{RESULTS}/{name}.csv",
                category="Campaign",
                caption=f"../report/{name}.rst",
            )
            for name in CAMPAIGN_TABLES
        },
        combined=report(
            f"{RESULTS}/potency_combined.csv",
            category="Tables",
            caption="../report/potency_combined.rst",
        ),
        combined_inputs=report(
            f"{RESULTS}/potency_combined_inputs.csv",
            category="Tables",
            caption="../report/potency_combined_inputs.rst",
        ),
        history=report(
            f"{RESULTS}/plate_history.csv",
            category="Tables",
            caption="../report/plate_history.rst",
        ),
        trends=report(
            f"{RESULTS}/trends.csv",
            category="Tables",
            caption="../report/trends.rst",
        ),
        workbook=report(
            f"{RESULTS}/results.xlsx",
            category="Tables",
            caption="../report/results_xlsx.rst",
        ),
        html=report(
            f"{RESULTS}/report.html",
            category="Report",
            caption="../report/report_html.rst",
        ),
        forest=report(
            f"{RESULTS}/figures/forest.svg",
            category="Potency",
            caption="../report/forest.rst",
        ),
    log:
        f"{RESULTS}/logs/collect.log",
    conda:
        "../envs/cr51.yaml"
    # two: its history-wide analyses and pages run in two processes (cr51.jobs.side_by_side); with
    # --cores 1 they run one after the other
    threads: 2
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        others=unassigned_files(),
        raw_dir=SETTINGS.raw_dir,
        results=lambda wildcards, output: str(Path(output.history).parent),
        max_export_bytes=SETTINGS.analysis.max_export_bytes,
        settings=batch_settings(),
        tables=TABLES,
        config=config,
    script:
        "../scripts/collect.py"
