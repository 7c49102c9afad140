# normdrop: BatchNorm and Dropout, alone and together (see README.md and docs/protocol.md).
#   download -> prepare -> lr_search -> select_lr -> train -> aggregate -> tables, figures
import re

from snakemake.utils import min_version

min_version("9.0")


report: "workflow/report/workflow.rst"


# The paper's grid, found beside this file also when run with --directory elsewhere.
configfile: f"{workflow.basedir}/config.yaml"


include: "workflow/common.smk"
include: "workflow/data.smk"
include: "workflow/lr_search.smk"
include: "workflow/train.smk"
include: "workflow/aggregate.smk"
include: "workflow/report.smk"


wildcard_constraints:
    dataset="|".join(DATASETS),
    model="|".join(MODELS),
    variant="|".join(map(re.escape, VARIANTS)),  # swept names hold dots: dropout_p0.1
    seed=r"\d+",
    lr=r"[0-9.e+-]+",
    source="|".join(map(re.escape, RAW_SOURCES)),
    prepared="|".join(map(re.escape, PREPARED_KEYS)),


localrules:
    all,
    download,
    prepare,
    aggregate,
    tables,
    hypotheses,
    summary_report,
    study,


rule all:
    input:
        rules.aggregate.output,
        report_targets(),
