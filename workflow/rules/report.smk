# The report a lab reads: results/report.html (self-contained) and SVG figures for slides.
# The plate sections are drawn by the batch jobs (plates.html); this job only assembles them.
localrules:
    report,


rule report:
    input:
        files=f"{RESULTS}/files.csv",
        qc=f"{RESULTS}/qc.csv",
        potency=f"{RESULTS}/potency.csv",
        lots_differ=f"{RESULTS}/lots_differ.csv",
        potency_combined=f"{RESULTS}/potency_combined.csv",
        potency_combined_inputs=f"{RESULTS}/potency_combined_inputs.csv",
        sections=expand(f"{RESULTS}/batches/{{batch}}/plates.html", batch=BATCHES),
    output:
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
        plates=directory(f"{RESULTS}/figures/plates"),
    log:
        f"{RESULTS}/logs/report.log",
    conda:
        "../envs/cr51.yaml"
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        config=config,
        templates=sorted({i for p in SCAN.plates.values() for i in p.includes}),
    script:
        "../scripts/report.py"
