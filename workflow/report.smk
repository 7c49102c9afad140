# tables, hypotheses, figures, summary_report: everything a reader sees, from results/summary/;
# for a study (config key `study`), the rule `study` instead: its figure and table of effects.
# Output lists and report flags are built in common.smk.


rule tables:
    input:
        runs=f"{SUMMARY}/runs.parquet",
    output:
        table_outputs(),
    log:
        f"{RESULTS}/logs/tables.log",
    conda:
        "../envs/normdrop.yaml"
    resources:
        gpu=0,
    params:
        summary=summary_dir,
        out_dir=tables_dir,
        datasets=DATASETS,
        models=MODELS,
    shell:
        "python -m normdrop.tables --summary-dir {params.summary} --out-dir {params.out_dir}"
        " --datasets {params.datasets} --models {params.models} > {log} 2>&1"


rule hypotheses:
    input:
        runs=f"{SUMMARY}/runs.parquet",
    output:
        hypothesis_outputs(),
    log:
        f"{RESULTS}/logs/hypotheses.log",
    conda:
        "../envs/normdrop.yaml"
    resources:
        gpu=0,
    params:
        summary=summary_dir,
        out_dir=tables_dir,
        datasets=DATASETS,
        models=MODELS,
    shell:
        "python -m normdrop.hypotheses --summary-dir {params.summary} --out-dir {params.out_dir}"
        " --datasets {params.datasets} --models {params.models} > {log} 2>&1"


rule figures:
    input:
        SUMMARY_FILES,
    output:
        figure_outputs(),
    log:
        f"{RESULTS}/logs/figures.log",
    conda:
        "../envs/normdrop.yaml"
    resources:
        gpu=0,
        mem_mb=4000,
    params:
        summary=summary_dir,
        out_dir=figures_dir,
        datasets=DATASETS,
        models=MODELS,
        milestones=config["train"]["lr_milestones"],
    shell:
        "MPLBACKEND=Agg python -m normdrop.plots --summary-dir {params.summary}"
        " --out-dir {params.out_dir}"
        " --datasets {params.datasets} --models {params.models}"
        " --milestones {params.milestones} > {log} 2>&1"


rule summary_report:
    input:
        runs=f"{SUMMARY}/runs.parquet",
    output:
        f"{SUMMARY}/report.md",
    log:
        f"{RESULTS}/logs/summary_report.log",
    conda:
        "../envs/normdrop.yaml"
    resources:
        gpu=0,
    params:
        summary=summary_dir,
        figures=figures_dir,
        datasets=DATASETS,
        models=MODELS,
    shell:
        "python -m normdrop.report --summary-dir {params.summary} --out {output}"
        " --figures-dir {params.figures}"
        " --datasets {params.datasets} --models {params.models} > {log} 2>&1"


rule study:
    input:
        runs=f"{SUMMARY}/runs.parquet",
    output:
        study_outputs(),
    log:
        f"{RESULTS}/logs/study.log",
    conda:
        "../envs/normdrop.yaml"
    resources:
        gpu=0,
        mem_mb=4000,
    params:
        summary=summary_dir,
        tables=tables_dir,
        figures=figures_dir,
        study=study_json(),
    shell:
        "MPLBACKEND=Agg python -m normdrop.study --summary-dir {params.summary}"
        " --tables-dir {params.tables} --figures-dir {params.figures}"
        " --study-json {params.study} > {log} 2>&1"
