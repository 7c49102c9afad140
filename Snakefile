# normdrop: BatchNorm and Dropout, alone and together (see README.md and PROTOCOL.md).
#   download -> prepare -> lr_search -> select_lr -> train -> aggregate -> tables, figures
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/common.smk"
include: "workflow/data.smk"
include: "workflow/lr_search.smk"
include: "workflow/train.smk"
include: "workflow/summary.smk"


localrules:
    all,
    download,
    prepare,
    select_lr,
    aggregate,


rule all:
    input:
        rules.aggregate.output,
