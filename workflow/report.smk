# tables, hypotheses, figures, summary_report: everything a reader sees, from results/summary/;
# for a study (config key `study`), the rule `study` instead: its figure and table of effects.
# Output lists and report flags are built in common.smk.


rule tables:
    input:
        runs=RUNS,
    output:
        table_outputs(),
    log:
        layout.log(RESULTS, "tables"),
    params:
        summary=summary_dir,
        out_dir=tables_dir,
        datasets=DATASETS,
        models=MODELS,
    resources:
        gpu=0,
    conda:
        "../envs/normdrop.yaml"
    shell:
        "python -m normdrop.tables --summary-dir {params.summary:q} --out-dir {params.out_dir:q}"
        " --datasets {params.datasets:q} --models {params.models:q} > {log:q} 2>&1"


rule hypotheses:
    input:
        runs=RUNS,
    output:
        hypothesis_outputs(),
    log:
        layout.log(RESULTS, "hypotheses"),
    params:
        summary=summary_dir,
        out_dir=tables_dir,
        datasets=DATASETS,
        models=MODELS,
    resources:
        gpu=0,
    conda:
        "../envs/normdrop.yaml"
    shell:
        "python -m normdrop.hypotheses --summary-dir {params.summary:q} --out-dir {params.out_dir:q}"
        " --datasets {params.datasets:q} --models {params.models:q} > {log:q} 2>&1"


rule figures:
    input:
        **SUMMARY_FILES,
    output:
        figure_outputs(),
    log:
        layout.log(RESULTS, "figures"),
    params:
        summary=summary_dir,
        out_dir=figures_dir,
        datasets=DATASETS,
        models=MODELS,
        lr_milestones=config["train"]["lr_milestones"],
    resources:
        gpu=0,
        mem_mb=4000,
    conda:
        "../envs/normdrop.yaml"
    shell:
        "MPLBACKEND=Agg python -m normdrop.plots --summary-dir {params.summary:q}"
        " --out-dir {params.out_dir:q}"
        " --datasets {params.datasets:q} --models {params.models:q}"
        " --lr-milestones {params.lr_milestones:q} > {log:q} 2>&1"


rule summary_report:
    input:
        runs=RUNS,
    output:
        REPORT_MD,
    log:
        layout.log(RESULTS, "summary_report"),
    params:
        summary=summary_dir,
        figures=figures_dir,
        datasets=DATASETS,
        models=MODELS,
    resources:
        gpu=0,
    conda:
        "../envs/normdrop.yaml"
    shell:
        "python -m normdrop.report --summary-dir {params.summary:q} --out {output:q}"
        " --figures-dir {params.figures:q}"
        " --datasets {params.datasets:q} --models {params.models:q} > {log:q} 2>&1"


rule study:
    input:
        runs=RUNS,
    output:
        study_outputs(),
    log:
        layout.log(RESULTS, "study"),
    params:
        summary=summary_dir,
        tables=tables_dir,
        figures=figures_dir,
        study=study_json(),
    resources:
        gpu=0,
        mem_mb=4000,
    conda:
        "../envs/normdrop.yaml"
    shell:
        "MPLBACKEND=Agg python -m normdrop.study --summary-dir {params.summary:q}"
        " --tables-dir {params.tables:q} --figures-dir {params.figures:q}"
        " --study-json {params.study:q} > {log:q} 2>&1"
