# 51Cr release assay: counter exports + plate layouts -> lysis, QC, suppression curves,
# relative potency between IVIG lots, and a report. See README.md and config/README.md.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/plates.smk"
include: "workflow/rules/collect.smk"
include: "workflow/rules/audit.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
