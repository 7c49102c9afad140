# aggregate: every run's metrics and curves into results/summary/, checked against the config.


rule aggregate:
    input:
        runs=all_run_metas(),
        lrs=all_selected_lrs(),
    output:
        runs=f"{RESULTS}/summary/runs.parquet",
        epochs=f"{RESULTS}/summary/epochs.parquet",
        lr_search=f"{RESULTS}/summary/lr_search.parquet",
    log:
        f"{RESULTS}/logs/aggregate.log",
    conda:
        "../envs/normdrop.yaml"
    resources:
        gpu=0,
    params:
        out_dir=output_dir,
        config=config_json(),
    shell:
        "python -m normdrop.aggregate summarize --config-json {params.config}"
        " --out-dir {params.out_dir} > {log} 2>&1"
