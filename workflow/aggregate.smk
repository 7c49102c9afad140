# aggregate: every run's metrics and curves into results/summary/, checked against the config.


rule aggregate:
    input:
        runs=all_run_metas(),
        lrs=all_selected_lrs(),
    output:
        **SUMMARY_FILES,
    log:
        layout.log(RESULTS, "aggregate"),
    params:
        out_dir=output_dir,
        config=config_json(),
    resources:
        gpu=0,
    conda:
        "../envs/normdrop.yaml"
    shell:
        "python -m normdrop.aggregate collect --config-json {params.config:q}"
        " --out-dir {params.out_dir:q} > {log:q} 2>&1"
